"""Cost of symmetric_encryption_keys per message: serialize + deserialize (a Fernet round trip).

    pytest bench/test_crypto.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,median,mean,ops

Groups: one key; three keys where the newest (first) one matches, as after a rotation;
three keys where the oldest matches (a message from a process still on the old key).
Each group compares channels_redis's serializer with ours, on a ~150-byte chat message
with the layers' 12-byte random prefix and ``expiry`` 60 (so the Fernet TTL is checked).
"""

from __future__ import annotations

import pytest
from channels_redis.serializers import registry as stock_registry

from channels_redis_fast.serializers import registry as fast_registry

KEYS = [
    "new-key-0123456789abcdef0123456789abcdef",
    "mid-key-0123456789abcdef0123456789abcdef",
    "old-key-0123456789abcdef0123456789abcdef",
]
MESSAGE = {
    "type": "chat.message",
    "room": "lobby",
    "user": "someone@example.com",
    "text": "Hello there, this is a fairly ordinary chat message of some length.",
    "id": 123456789,
}
IMPLEMENTATIONS = {"channels_redis": stock_registry, "channels_redis_fast": fast_registry}


def _serializer(registry, keys):
    return registry.get_serializer(
        "msgpack", symmetric_encryption_keys=keys, random_prefix_length=12, expiry=60
    )


def _round_trip(benchmark, impl: str, writer_keys: list, reader_keys: list) -> None:
    writer = _serializer(IMPLEMENTATIONS[impl], writer_keys)
    reader = _serializer(IMPLEMENTATIONS[impl], reader_keys)
    assert reader.deserialize(writer.serialize(MESSAGE)) == MESSAGE

    def run():
        return reader.deserialize(writer.serialize(MESSAGE))

    benchmark(run)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.benchmark(group="encrypt+decrypt, 1 key")
def test_one_key(benchmark, impl):
    _round_trip(benchmark, impl, KEYS[:1], KEYS[:1])


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.benchmark(group="encrypt+decrypt, 3 keys, newest matches")
def test_three_keys_newest(benchmark, impl):
    _round_trip(benchmark, impl, KEYS, KEYS)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.benchmark(group="encrypt+decrypt, 3 keys, oldest matches")
def test_three_keys_oldest(benchmark, impl):
    _round_trip(benchmark, impl, KEYS[2:], KEYS)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.benchmark(group="decrypt only, 1 key")
def test_decrypt_one_key(benchmark, impl):
    serializer = _serializer(IMPLEMENTATIONS[impl], KEYS[:1])
    data = serializer.serialize(MESSAGE)
    benchmark(serializer.deserialize, data)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.benchmark(group="encrypt only, 1 key")
def test_encrypt_one_key(benchmark, impl):
    serializer = _serializer(IMPLEMENTATIONS[impl], KEYS[:1])
    benchmark(serializer.serialize, MESSAGE)
