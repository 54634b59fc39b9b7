"""Bad input fails before anything reaches Redis; bad data in Redis is skipped, not fatal."""
# These tests are about what reaches Redis: their layers run with local_delivery off
# (issue 16; tests/test_local_delivery.py covers the in-process path).


from __future__ import annotations

import asyncio
import collections
import logging
import os
import subprocess
import sys
import textwrap
import time

import channels_redis.core as stock_core
import msgpack
import pytest

from channels_redis_fast.core import RedisChannelLayer

TIMEOUT = 5

NON_DICTS = ["a string", ["a", "list"], None, 42, ("a", "tuple"), b"bytes"]
UNSERIALIZABLE = [{"type": "x", "s": {1, 2}}, {"type": "x", "o": object()}, {"type": "x", "nested": [{"f": len}]}]
BAD_CHANNELS = [
    "a b",
    "a?b",
    "é",
    "!abc",
    "a!b!c",
    "",
    "x" * 100,
    "specific." + "x" * 95,
    None,
    b"bytes.channel",
    42,
]
BAD_GROUPS = ["a!b", "a b", "é", "", "g" * 100, None, b"group", 7]


@pytest.fixture
def client(redis_server, redis_url):
    return redis_server.client()


@pytest.fixture
async def layer(redis_url):
    layer = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    yield layer
    await layer.flush()


def snapshot(client):
    return sorted(client.keys("*")), client.dbsize()


async def test_non_dict_messages(layer, client):
    channel = await layer.new_channel()
    await layer.group_add("bad", channel)
    before = snapshot(client)
    for message in NON_DICTS:
        for target in ("some.channel", channel):
            with pytest.raises(AssertionError):
                await layer.send(target, message)
            with pytest.raises(TypeError):  # the same error is a TypeError too
                await layer.send(target, message)
        with pytest.raises(AssertionError):
            await layer.group_send("bad", message)
        assert snapshot(client) == before, message


async def test_dict_subclasses_are_fine(layer):
    class MyDict(dict):
        pass

    channel = await layer.new_channel()
    await layer.send(channel, collections.OrderedDict(type="ordered", n=1))
    await layer.send(channel, MyDict(type="mine"))
    assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "ordered", "n": 1}
    assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "mine"}


async def test_unserializable_values(layer, client):
    channel = await layer.new_channel()
    await layer.group_add("bad", channel)
    await layer.group_add("bad", "worker.bad")
    before = snapshot(client)
    for message in UNSERIALIZABLE:
        for target in ("some.channel", channel):
            with pytest.raises(TypeError):
                await layer.send(target, message)
        with pytest.raises(TypeError):
            await layer.group_send("bad", message)
        assert snapshot(client) == before
    # the layer still works afterwards
    await layer.send(channel, {"type": "ok"})
    assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "ok"}


async def test_unserializable_matches_msgpack_error(layer):
    with pytest.raises(TypeError) as ours:
        await layer.send("some.channel", {"s": {1}})
    with pytest.raises(TypeError) as theirs:
        msgpack.packb({"s": {1}})
    assert type(ours.value) is type(theirs.value)


async def test_reserved_key(layer, client):
    channel = await layer.new_channel()
    await layer.group_add("bad", channel)
    before = snapshot(client)
    message = {"type": "x", "__asgi_channel__": "elsewhere"}
    for target in ("some.channel", channel):
        with pytest.raises(AssertionError, match="__asgi_channel__"):
            await layer.send(target, message)
    with pytest.raises(AssertionError, match="__asgi_channel__"):
        await layer.group_send("bad", message)
    assert snapshot(client) == before


@pytest.mark.parametrize("name", BAD_CHANNELS, ids=repr)
async def test_invalid_channel_names(layer, client, name):
    stock = stock_core.RedisChannelLayer(hosts=["redis://127.0.0.1:1"])
    with pytest.raises(TypeError):  # what stock raises for it, without any Redis
        stock.require_valid_channel_name(name)
    with pytest.raises(TypeError):
        await layer.send(name, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add("good", name)
    with pytest.raises(TypeError):
        await layer.group_discard("good", name)
    with pytest.raises(TypeError):
        await asyncio.wait_for(layer.receive(name), 1)
    assert client.dbsize() == 0


@pytest.mark.parametrize("name", BAD_GROUPS, ids=repr)
async def test_invalid_group_names(layer, client, name):
    with pytest.raises(TypeError):
        await layer.group_add(name, "good.channel")
    with pytest.raises(TypeError):
        await layer.group_discard(name, "good.channel")
    with pytest.raises(TypeError):
        await layer.group_send(name, {"type": "x"})
    assert client.dbsize() == 0


async def test_wrong_client_prefix(layer, redis_url):
    other = RedisChannelLayer(local_delivery=False, hosts=[redis_url])
    foreign = await other.new_channel()
    with pytest.raises(AssertionError):
        await asyncio.wait_for(layer.receive(foreign), 1)
    with pytest.raises(AssertionError):
        await asyncio.wait_for(layer.receive("specific.madeup!abc"), 1)
    # the rightful owner still gets its messages
    await layer.send(foreign, {"type": "for-other"})
    assert await asyncio.wait_for(other.receive(foreign), TIMEOUT) == {"type": "for-other"}
    await other.flush()


def test_validation_survives_python_O(redis_url, tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, sys
        from channels_redis_fast.core import RedisChannelLayer

        assert False, "asserts must be off in this child"

        async def main(url):
            layer = RedisChannelLayer(local_delivery=False, hosts=[url])
            other = RedisChannelLayer(local_delivery=False, hosts=[url])
            results = [f"optimize={sys.flags.optimize}"]
            checks = [
                ("non-dict", lambda: layer.send("a.channel", "not a dict")),
                ("reserved", lambda: layer.send("a.channel", {"__asgi_channel__": "x"})),
                ("group-non-dict", lambda: layer.group_send("grp", ["x"])),
                ("bad-name", lambda: layer.send("a b", {"type": "x"})),
                ("bad-group", lambda: layer.group_add("a!b", "a.channel")),
            ]
            foreign = await other.new_channel()
            checks.append(("wrong-prefix", lambda: layer.receive(foreign)))
            for label, make in checks:
                try:
                    await asyncio.wait_for(make(), 2)
                except AssertionError:
                    results.append(f"{label}:AssertionError")
                except TypeError:
                    results.append(f"{label}:TypeError")
                except BaseException as exc:
                    results.append(f"{label}:{type(exc).__name__}")
                else:
                    results.append(f"{label}:accepted")
            await layer.close_pools()
            print(" ".join(results))

        asyncio.run(main(sys.argv[1]))
        """
    )
    path = tmp_path / "check_O.py"
    path.write_text(script)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-O", str(path), redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # import the installed package, not the source tree
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "optimize=1",
        "non-dict:AssertionError",
        "reserved:AssertionError",
        "group-non-dict:AssertionError",
        "bad-name:TypeError",
        "bad-group:TypeError",
        "wrong-prefix:AssertionError",
    ]


# ------------------------------------------------------------------------------ bad data in Redis


def warnings_about_skipped(caplog):
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("channels_redis_fast")
    ]


GARBAGE = [
    os.urandom(48),
    b"\x00" * 12 + b"\xc1\xc1 never valid msgpack",
    b"\x01" * 12 + msgpack.packb([1, 2, 3]),  # valid msgpack, not a dict
    b"\x02" * 12 + msgpack.packb({"type": "no channel key"}),  # a dict, but no target
    b"short",
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=["random", "invalid", "list", "no-target", "short"])
async def test_garbage_in_process_key_is_skipped(layer, client, caplog, garbage):
    channel = await layer.new_channel()
    key = "asgi" + layer.non_local_name(channel)
    with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
        # garbage first, already waiting when the receiver starts
        client.zadd(key, {garbage: time.time()})
        await layer.send(channel, {"type": "good", "n": 1})
        assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "good", "n": 1}
        assert len(warnings_about_skipped(caplog)) == 1
        # garbage arriving while the receiver waits
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.1)
        client.zadd(key, {garbage + b"-2": time.time()})
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert len(warnings_about_skipped(caplog)) == 2
        await layer.send(channel, {"type": "good", "n": 2})
        assert await asyncio.wait_for(waiting, TIMEOUT) == {"type": "good", "n": 2}


async def test_garbage_in_worker_channel_is_skipped(layer, client, caplog):
    with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
        client.zadd("asgiworker.garbage", {os.urandom(40): time.time()})
        await layer.send("worker.garbage", {"type": "good"})
        assert await asyncio.wait_for(layer.receive("worker.garbage"), TIMEOUT) == {"type": "good"}
    assert len(warnings_about_skipped(caplog)) == 1


async def test_token_under_a_foreign_key_is_skipped(redis_url, caplog):
    key_a = "encryption-key-a-" + "a" * 24
    key_b = "encryption-key-b-" + "b" * 24
    receiver = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[key_a])
    stranger = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[key_b])
    friend = RedisChannelLayer(local_delivery=False, hosts=[redis_url], symmetric_encryption_keys=[key_a])
    try:
        channel = await receiver.new_channel()
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
            await stranger.send(channel, {"type": "forged"})
            await stranger.send("enc.worker", {"type": "forged"})
            await friend.send(channel, {"type": "genuine"})
            await friend.send("enc.worker", {"type": "genuine"})
            assert await asyncio.wait_for(receiver.receive(channel), TIMEOUT) == {"type": "genuine"}
            assert await asyncio.wait_for(receiver.receive("enc.worker"), TIMEOUT) == {"type": "genuine"}
        assert len(warnings_about_skipped(caplog)) == 2
        # the group path too
        await receiver.group_add("enc", channel)
        with caplog.at_level(logging.WARNING, logger="channels_redis_fast"):
            await stranger.group_send("enc", {"type": "forged"})
            await friend.group_send("enc", {"type": "genuine-group"})
            assert await asyncio.wait_for(receiver.receive(channel), TIMEOUT) == {"type": "genuine-group"}
        assert len(warnings_about_skipped(caplog)) == 3
    finally:
        await receiver.flush()
