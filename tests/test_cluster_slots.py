"""Cluster topology as data: key slots (both twins), the slot map, MOVED/ASK replies."""

from __future__ import annotations

import importlib
import re
import socket
import subprocess

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot as redis_py_key_slot

from channels_redis_fast.cluster_slots import (
    ClusterUnreachableError,
    Node,
    NotAClusterError,
    Redirect,
    Shard,
    SlotMap,
    UncoveredSlotError,
    describe_url,
    fetch_slot_map,
    key_slot,
    parse_redirect,
)
from channels_redis_fast.speedups import NO_EXTENSIONS
from channels_redis_fast.testing import free_port

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Keys where the hash-tag rules matter: braces anywhere, empty tags, nested and unclosed ones.
braced = st.text(alphabet="{}ab:.é", max_size=12)
keys = st.one_of(st.binary(max_size=64), braced.map(str.encode), st.text(max_size=40).map(str.encode))


def _outcome(func, *args):
    try:
        return True, func(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return False, type(exc).__name__


# ------------------------------------------------------------------------------- key_slot


@SETTINGS
@given(key=keys)
def test_key_slot_matches_redis_py_on_bytes(impl, key):
    assert impl.key_slot(key) == redis_py_key_slot(key)


@SETTINGS
@given(key=st.one_of(braced, st.text(max_size=40)))
def test_key_slot_of_str_is_that_of_its_utf8_bytes(impl, key):
    try:
        encoded = key.encode()
    except UnicodeEncodeError:  # a lone surrogate: no bytes to send, so no slot either
        with pytest.raises(UnicodeEncodeError):
            impl.key_slot(key)
        return
    assert impl.key_slot(key) == redis_py_key_slot(encoded)


@pytest.mark.skipif(NO_EXTENSIONS, reason="pure-Python build")
@SETTINGS
@given(key=st.one_of(keys, braced, st.text(), st.integers(), st.none(), st.binary().map(bytearray)))
def test_key_slot_twins_agree_also_on_errors(key):
    py = importlib.import_module("channels_redis_fast._speedups_py")
    cc = importlib.import_module("channels_redis_fast._speedups")
    assert _outcome(cc.key_slot, key) == _outcome(py.key_slot, key)
    assert _outcome(cc.key_slots, [key, key]) == _outcome(py.key_slots, [key, key])


def test_key_slot_hash_tag_rules(impl):
    assert impl.key_slot("{user1000}.following") == impl.key_slot("user1000")
    assert impl.key_slot("foo{}{bar}") == redis_py_key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert impl.key_slot("foo{{bar}}zap") == impl.key_slot("{bar")  # up to the first "}"
    assert impl.key_slot("foo{bar}{zap}") == impl.key_slot("bar")  # the first tag only
    assert impl.key_slot("{unclosed") == redis_py_key_slot(b"{unclosed")
    assert impl.key_slots(["a", b"b", "{a}x"]) == [impl.key_slot("a"), impl.key_slot("b"), impl.key_slot("a")]
    with pytest.raises(TypeError, match="str or bytes"):
        impl.key_slot(12)


def test_key_slot_matches_the_server(redis_cluster):
    samples = ["", "a", "{", "}", "{}", "{a}", "a{b}c", "{}{x}", "é{ü}", "asgi:group:chat", "asgi:specific.abc!"]
    samples += [f"asgi:{i}{{t{i % 7}}}é" for i in range(200)]
    node = redis_cluster.nodes[0].client()
    pipe = node.pipeline(transaction=False)
    for key in samples:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    assert [key_slot(key) for key in samples] == pipe.execute()


# ------------------------------------------------------------------------------- the map


def _map_from_harness(cluster) -> dict[int, Node]:
    """slot -> primary, from CLUSTER NODES as the harness reads it."""
    owners = {}
    for v in cluster.view():
        if v.is_master and not v.failed:
            for start, end in v.slots:
                for slot in range(start, end + 1):
                    owners[slot] = Node(v.host, v.port)
    return owners


def _map_from_redis_cli(cluster) -> dict[int, Node]:
    """slot -> primary, from `redis-cli --cluster check`."""
    node = cluster.primaries()[0]
    out = subprocess.run(
        ["redis-cli", "--cluster", "check", f"{node.host}:{node.port}"], capture_output=True, text=True
    ).stdout
    owners = {}
    for address, ranges in re.findall(r"M: \w+ (\S+)\n\s+slots:(\S*) \(", out):
        host, _, port = address.rpartition(":")
        for item in ranges.split(","):
            start, _, end = item.strip("[]").partition("-")
            for slot in range(int(start), int(end or start) + 1):
                owners[slot] = Node(host, int(port))
    return owners


def _owners(slot_map: SlotMap) -> dict[int, Node]:
    return {slot: slot_map.node_for_slot(slot) for slot in range(16384)}


async def test_fetched_map_is_the_clusters(cluster):
    slot_map = await fetch_slot_map(cluster.urls)
    assert slot_map.covers_all and slot_map.uncovered() == []
    assert _owners(slot_map) == _map_from_harness(cluster) == _map_from_redis_cli(cluster)
    assert slot_map.primaries == [Node(*n.address) for n in cluster.primaries()]
    for primary in cluster.primaries():
        assert slot_map.replicas_of(Node(*primary.address)) == tuple(
            Node(*r.address) for r in cluster.replicas_of(primary)
        )


def test_shards_and_slots_replies_give_the_same_map(cluster):
    client = cluster.nodes[0].client()
    from_shards = SlotMap.from_shards_reply(client.execute_command("CLUSTER", "SHARDS"), "127.0.0.1")
    from_slots = SlotMap.from_slots_reply(client.execute_command("CLUSTER", "SLOTS"), "127.0.0.1")
    resp3 = cluster.nodes[0].client(protocol=3)
    from_resp3 = SlotMap.from_shards_reply(resp3.execute_command("CLUSTER", "SHARDS"), "127.0.0.1")
    resp3.close()
    raw = _raw_command(cluster.nodes[0], "CLUSTER", "SHARDS")
    assert isinstance(raw[0], list) and raw[0][0] == b"slots"
    from_raw = SlotMap.from_shards_reply(raw, "127.0.0.1")
    assert from_shards == from_slots == from_resp3 == from_raw
    assert from_shards.primaries == from_slots.primaries == from_resp3.primaries == from_raw.primaries
    assert from_shards.shards == from_raw.shards
    assert _owners(from_shards) == _map_from_harness(cluster)


async def test_map_routes_keys_where_the_server_takes_them(cluster):
    slot_map = await fetch_slot_map(cluster.urls[:1])
    names = [f"asgi:group:{i}" for i in range(300)] + ["{tagged}.1", "{tagged}.2"]
    groups = slot_map.group_by_node(names)
    assert sorted(groups) == sorted(slot_map.primaries)
    assert sorted(k for ks in groups.values() for k in ks) == sorted(names)  # each key once
    by_port = {node.port: node for node in cluster.nodes}
    for node, members in groups.items():
        assert node == slot_map.node_for_key(members[0])
        pipe = by_port[node.port].client().pipeline(transaction=False)
        for name in members:
            pipe.set(name, b"1")
        assert pipe.execute() == [True] * len(members)  # no MOVED among them


async def test_map_after_failover_names_the_new_primary(cluster):
    replica = cluster.replicas()[0]
    old = next(p for p in cluster.primaries() if replica in cluster.replicas_of(p))
    before = await fetch_slot_map(cluster.urls)
    cluster.failover(replica)
    after = await fetch_slot_map(cluster.urls)
    moved = {s for s in range(16384) if before.node_for_slot(s) != after.node_for_slot(s)}
    assert moved and all(before.node_for_slot(s) == Node(*old.address) for s in moved)
    assert all(after.node_for_slot(s) == Node(*replica.address) for s in moved)
    assert after.replicas_of(Node(*replica.address)) == (Node(*old.address),)
    assert _owners(after) == _map_from_harness(cluster)


async def test_map_after_slot_migration(cluster):
    slot = key_slot("{resharded}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    before = await fetch_slot_map(cluster.urls)
    cluster.migrate_slot(slot, target)
    after = await fetch_slot_map(cluster.urls)
    assert before.node_for_slot(slot) == Node(*source.address)
    assert after.node_for_slot(slot) == Node(*target.address)
    assert [s for s in range(16384) if before.node_for_slot(s) != after.node_for_slot(s)] == [slot]
    assert _owners(after) == _map_from_redis_cli(cluster)


async def test_map_after_a_primary_is_killed(cluster):
    victim = cluster.primaries()[1]
    replacement = cluster.kill(victim)
    slot_map = await fetch_slot_map(cluster.urls)  # the dead node is tried and skipped
    dead = Node(*victim.address)
    assert slot_map.covers_all and _owners(slot_map) == _map_from_harness(cluster)
    assert Node(*replacement.address) in slot_map.primaries
    assert all(dead != n and dead not in slot_map.replicas_of(n) for n in slot_map.primaries)
    client = replacement.client()
    shards = client.execute_command("CLUSTER", "SHARDS")
    assert SlotMap.from_shards_reply(shards, "127.0.0.1") == SlotMap.from_slots_reply(
        client.execute_command("CLUSTER", "SLOTS"), "127.0.0.1"
    )


def test_map_ranges_uncovered_and_assign():
    a, b = Node("10.0.0.1", 7000), Node("10.0.0.2", 7000)
    slot_map = SlotMap([Shard(a, (), ((0, 99),)), Shard(b, (Node("10.0.0.3", 7000),), ((200, 16383),))])
    assert not slot_map.covers_all and slot_map.uncovered() == [(100, 199)]
    assert slot_map.ranges() == [(0, 99, a), (200, 16383, b)]
    with pytest.raises(UncoveredSlotError, match="slot 150"):
        slot_map.node_for_slot(150)
    with pytest.raises(UncoveredSlotError):
        slot_map.group_by_node([next(f"k{i}" for i in range(10**5) if 100 <= key_slot(f"k{i}") < 200)])
    slot_map.assign(150, a)
    assert slot_map.node_for_slot(150) == a and slot_map.uncovered() == [(100, 149), (151, 199)]
    with pytest.raises(ValueError, match="outside"):
        SlotMap([Shard(a, (), ((0, 16384),))])


# ------------------------------------------------------------------------------- MOVED / ASK


def _raw_reply(node, *args: str) -> str:
    """One command over a plain socket: the server's reply line, as it was sent."""
    command = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(node.address, timeout=5) as sock:
        sock.sendall(command.encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(4096)
    return reply.decode().rstrip("\r\n")


def _raw_command(node, *args: str):
    """One command over a plain socket, its reply parsed by hiredis with no redis-py
    callback on top (RESP2 flat lists, as redis-py versions without one hand over)."""
    command = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    reader = hiredis.Reader()
    with socket.create_connection(node.address, timeout=5) as sock:
        sock.sendall(command.encode())
        reply = False
        while reply is False:
            reader.feed(sock.recv(65536))
            reply = reader.gets()
    return reply


def test_moved_reply_is_parsed(cluster):
    key = "asgi:specific.abc!def"
    owner = cluster.node_for_key(key)
    other = next(p for p in cluster.primaries() if p is not owner)
    text = _raw_reply(other, "GET", key)
    assert text.startswith("-MOVED ")
    expected = Redirect("MOVED", key_slot(key), owner.host, owner.port)
    assert parse_redirect(text[1:]) == expected
    assert parse_redirect(text[1:].encode()) == expected
    # MovedError, or in redis-py 5.0 (no MOVED in its reply table) a plain ResponseError.
    with pytest.raises(redis.exceptions.ResponseError) as info:
        other.client().get(key)
    assert parse_redirect(info.value) == expected
    assert expected.node("ignored") == Node(owner.host, owner.port)


def test_ask_reply_is_parsed(cluster):
    slot = key_slot("{asked}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    source.client().set("{asked}.1", b"1")
    cluster.begin_migration(slot, target)
    cluster.move_keys(slot, source, target)
    text = _raw_reply(source, "GET", "{asked}.1")
    expected = Redirect("ASK", slot, target.host, target.port)
    assert parse_redirect(text[1:]) == expected
    # AskError, or in redis-py 5.0 a plain ResponseError.
    with pytest.raises(redis.exceptions.ResponseError) as info:
        source.client().get("{asked}.1")
    assert parse_redirect(info.value) == expected
    cluster.finish_migration(slot, source, target)


def test_parse_redirect_edge_cases():
    assert parse_redirect("MOVED 3999 ::1:6381") == Redirect("MOVED", 3999, "::1", 6381)
    assert parse_redirect("ASK 1 [fe80::1]:7000") == Redirect("ASK", 1, "fe80::1", 7000)
    unknown_host = parse_redirect("MOVED 12 :7001")
    assert unknown_host == Redirect("MOVED", 12, "", 7001)
    assert unknown_host.node("10.1.1.1") == Node("10.1.1.1", 7001)
    for other in ("ERR unknown command", "TRYAGAIN Multiple keys request during rehashing", "12 a:1", ""):
        assert parse_redirect(other) is None
    assert parse_redirect(redis.ResponseError("MOVED 1 h:2")) == Redirect("MOVED", 1, "h", 2)
    assert parse_redirect(ValueError("nothing")) is None


# ------------------------------------------------------------------------------- fetching


async def test_fetch_skips_dead_startup_nodes(cluster):
    dead = f"redis://127.0.0.1:{free_port()}"
    slot_map = await fetch_slot_map([dead, cluster.urls[3]])
    assert _owners(slot_map) == _map_from_harness(cluster)


async def test_fetch_names_every_node_it_tried():
    dead = [f"redis://127.0.0.1:{free_port()}", f"redis://user:secret@127.0.0.1:{free_port()}"]
    with pytest.raises(ClusterUnreachableError) as info:
        await fetch_slot_map(dead)
    message = str(info.value)
    assert "tried 2" in message and dead[0] in message
    assert describe_url(dead[1]) in message and "secret" not in message


async def test_fetch_applies_the_options_to_every_node(redis_cluster):
    # No such user on the cluster: AUTH fails on each node, and the error lists them all.
    with pytest.raises(ClusterUnreachableError) as info:
        await fetch_slot_map(redis_cluster.urls[:2], {"username": "nobody", "password": "not-set"})
    assert all(describe_url(url) in str(info.value) for url in redis_cluster.urls[:2])


async def test_fetch_from_a_plain_server_says_it_is_not_a_cluster(redis_server):
    with pytest.raises(NotAClusterError, match=f"127.0.0.1:{redis_server.port} is not a Redis Cluster node"):
        await fetch_slot_map([redis_server.url])


def test_describe_url_hides_passwords():
    assert describe_url("redis://:pw@h:1") == "redis://***@h:1"
    assert describe_url("rediss://u:pw@h:1/0") == "rediss://u:***@h:1/0"
    assert describe_url("redis://h:1") == "redis://h:1"


def test_the_layers_reply_errors_parse_as_redirects():
    # connection.reply_error classifies error replies for the layer's own connections
    # (redis-py's table: MOVED -> MovedError, ASK -> AskError; redis-py 5.0's table has
    # neither, so a plain ResponseError) and keeps the code in front.
    from channels_redis_fast.connection import reply_error

    moved = reply_error("MOVED 5851 127.0.0.1:7101")
    ask = reply_error("ASK 17 127.0.0.1:7102")
    assert isinstance(moved, redis.exceptions.ResponseError) and isinstance(ask, redis.exceptions.ResponseError)
    assert parse_redirect(moved) == Redirect("MOVED", 5851, "127.0.0.1", 7101)
    assert parse_redirect(ask) == Redirect("ASK", 17, "127.0.0.1", 7102)
