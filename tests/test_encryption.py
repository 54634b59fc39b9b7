"""symmetric_encryption_keys: Fernet tokens, key rotation, tampering, weak keys.

The wire format stays Fernet tokens that stock channels_redis reads and writes; our codec
is checked byte for byte against cryptography's Fernet.
"""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time

import pytest
from channels_redis.core import RedisChannelLayer as StockLayer
from channels_redis.serializers import registry as stock_registry
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from channels_redis_fast import serializers
from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.serializers import FernetCodec, registry
from conftest import receive_soon

NEW = "new-secret-0123456789abcdef0123456789"
OLD = "old-secret-0123456789abcdef0123456789"
OTHER = "foreign-secret-0123456789abcdef01234"


def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


# ------------------------------------------------------------------------------ the codec


def test_tokens_are_byte_identical_to_fernet(monkeypatch):
    codec = FernetCodec([NEW, OLD])
    reference = _fernet(NEW)
    ivs = [bytes([i]) * 16 for i in range(1, 6)]
    monkeypatch.setattr(serializers.os, "urandom", lambda n: ivs.pop(0))
    monkeypatch.setattr(serializers.time, "time", lambda: 1_700_000_000.5)
    # Several in a row: the running CBC context must not leak state between tokens.
    for i, payload in enumerate([b"", b"x" * 15, b"y" * 16, b"z" * 17, bytes(range(256)) * 3]):
        expected = reference._encrypt_from_parts(payload, 1_700_000_000, bytes([i + 1]) * 16)
        assert codec.encrypt(payload) == expected


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 150, 4096, 1 << 20])
def test_round_trips_with_cryptography(size):
    payload = bytes(i % 251 for i in range(size))
    codec = FernetCodec([NEW, OLD])
    multi = MultiFernet([_fernet(NEW), _fernet(OLD)])
    assert multi.decrypt(codec.encrypt(payload), ttl=70) == payload
    assert codec.decrypt(multi.encrypt(payload), 70) == payload
    assert codec.decrypt(_fernet(OLD).encrypt(payload), 70) == payload  # the second key


def test_refuses_what_fernet_refuses():
    codec = FernetCodec([NEW])
    token = _fernet(NEW).encrypt(b"hello world")
    raw = bytearray(base64.urlsafe_b64decode(token))
    for position in (0, 5, 12, 30, len(raw) - 40, len(raw) - 1):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        with pytest.raises(InvalidToken):
            codec.decrypt(base64.urlsafe_b64encode(bytes(tampered)), None)
    for garbage in (b"", b"!!!", b"gAAAAA", token[:-4], token[:40], b"x" * 120):
        with pytest.raises(InvalidToken):
            codec.decrypt(garbage, None)
    with pytest.raises(InvalidToken):
        codec.decrypt(_fernet(OTHER).encrypt(b"hello"), None)  # a foreign key
    old = _fernet(NEW).encrypt_at_time(b"stale", int(time.time()) - 200)
    assert codec.decrypt(old, None) == b"stale"
    with pytest.raises(InvalidToken):
        codec.decrypt(old, 70)  # older than the TTL
    future = _fernet(NEW).encrypt_at_time(b"skewed", int(time.time()) + 600)
    with pytest.raises(InvalidToken):
        codec.decrypt(future, 70)  # too far in the future, as Fernet has it


def test_serializers_interoperate_with_channels_redis():
    message = {"type": "chat.message", "text": "hi", "blob": b"\x00\xff" * 40}
    ours = registry.get_serializer(
        "msgpack", symmetric_encryption_keys=[NEW, OLD], random_prefix_length=12, expiry=60
    )
    stock = stock_registry.get_serializer(
        "msgpack", symmetric_encryption_keys=[NEW], random_prefix_length=12, expiry=60
    )
    assert stock.deserialize(ours.serialize(message)) == message
    assert ours.deserialize(stock.serialize(message)) == message
    # Keys given as a generator are consumed once, for both the codec and ``crypter``.
    from_generator = registry.get_serializer(
        "msgpack", symmetric_encryption_keys=(k for k in [NEW]), random_prefix_length=12, expiry=60
    )
    assert from_generator.deserialize(stock.serialize(message)) == message
    assert isinstance(from_generator.crypter, MultiFernet)


def test_short_key_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
        RedisChannelLayer(symmetric_encryption_keys=["too-short"])
    assert any("only 9 bytes" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
        RedisChannelLayer(symmetric_encryption_keys=[NEW])
    assert not caplog.records


# -------------------------------------------------------------------------- through Redis


def _skipped(caplog) -> list:
    return [r for r in caplog.records if "could not be read" in r.getMessage()]


@pytest.mark.asyncio
async def test_key_rotation(redis_url, caplog):
    both = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[NEW, OLD])
    new_only = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[NEW])
    old_only = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[OLD])
    stock_both = StockLayer(hosts=[redis_url], symmetric_encryption_keys=[NEW, OLD])
    layers = [both, new_only, old_only]
    try:
        # Step 1 of a rotation: [new, old] writes with the new key; everyone on [new] or
        # [new, old] reads it, ours and stock.
        await both.send("rot.a", {"type": "m", "n": 1})
        assert (await receive_soon(new_only, "rot.a"))["n"] == 1
        await both.send("rot.a", {"type": "m", "n": 2})
        assert (await receive_soon(both, "rot.a"))["n"] == 2
        await both.send("rot.a", {"type": "m", "n": 3})
        assert (await asyncio.wait_for(stock_both.receive("rot.a"), 5))["n"] == 3
        await stock_both.send("rot.a", {"type": "m", "n": 4})
        assert (await receive_soon(new_only, "rot.a"))["n"] == 4
        # A process still on the old key: [new, old] reads its messages.
        await old_only.send("rot.b", {"type": "m", "n": 5})
        assert (await receive_soon(both, "rot.b"))["n"] == 5
        # Step 2: the old key is gone. A straggler's message is skipped with a warning,
        # and later messages still arrive.
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
            await old_only.send("rot.c", {"type": "m", "n": 6})
            await new_only.send("rot.c", {"type": "m", "n": 7})
            assert (await receive_soon(new_only, "rot.c"))["n"] == 7
        assert len(_skipped(caplog)) == 1
        assert "InvalidToken" in _skipped(caplog)[0].getMessage()
        # The same on a process-specific channel (batch delivery).
        channel = await new_only.new_channel()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
            await old_only.send(channel, {"type": "m", "n": 8})
            await both.send(channel, {"type": "m", "n": 9})
            assert (await receive_soon(new_only, channel))["n"] == 9
        assert len(_skipped(caplog)) == 1
        assert new_only.stats_counters["malformed"] == 2
    finally:
        for layer in layers:
            await layer.close_pools()
        await stock_both.flush()


@pytest.mark.asyncio
@pytest.mark.parametrize("general", [True, False], ids=["general", "specific"])
async def test_tampered_and_foreign_ciphertext_refused(redis_server, redis_url, caplog, general):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[NEW])
    foreign = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[OTHER])
    client = redis_server.client()
    try:
        channel = "tamper.me" if general else await layer.new_channel()
        key = "asgi" + (channel if general else channel[: channel.index("!") + 1])
        await layer.send(channel, {"type": "m", "n": 1})
        ((member, score),) = client.zrange(key, 0, -1, withscores=True)
        tampered = bytearray(member)
        tampered[40] ^= 0x04  # inside the token, after the 12-byte random prefix
        client.zrem(key, member)
        client.zadd(key, {bytes(tampered): score})
        await foreign.send(channel, {"type": "m", "n": 2})
        await layer.send(channel, {"type": "m", "n": 3})
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
            assert (await receive_soon(layer, channel))["n"] == 3
        assert len(_skipped(caplog)) == 2
        assert layer.stats_counters["malformed"] == 2
        await layer.send(channel, {"type": "m", "n": 4})
        assert (await receive_soon(layer, channel))["n"] == 4
    finally:
        await layer.close_pools()
        await foreign.close_pools()
