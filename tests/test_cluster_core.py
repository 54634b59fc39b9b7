"""The core layer on a real Redis Cluster (3 primaries + 3 replicas): the same behaviour
as on one Redis, through slot migrations and failovers, counting every message."""

from __future__ import annotations

import asyncio
import collections

import pytest
import redis

from channels_redis_fast.cluster_config import ClusterModeRequiredError
from channels_redis_fast.cluster_slots import ClusterUnreachableError
from channels_redis_fast.core import ChannelFull, RedisChannelLayer
from channels_redis_fast.testing.server_process import free_port
from conftest import nothing_arrives, receive_soon, until


def _layer(cluster, **kwargs) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[cluster.hosts_entry()], **kwargs)


def _keys_on(cluster) -> dict[int, list[bytes]]:
    """Every key, by the port of the primary holding it."""
    return {node.port: sorted(node.client().keys("*")) for node in cluster.primaries()}


async def _close(*layers: RedisChannelLayer) -> None:
    for layer in layers:
        await layer.close_pools()


# ------------------------------------------------------------------------------ basics


async def test_direct_send_and_receive_on_channels_of_every_node(cluster):
    layer = _layer(cluster)
    channels = [await layer.new_channel() for _ in range(12)] + [f"general.{i}" for i in range(12)]
    for index, channel in enumerate(channels):
        await layer.send(channel, {"type": "t", "n": index})
    for index, channel in enumerate(channels):
        assert (await receive_soon(layer, channel)) == {"type": "t", "n": index}
    # The keys were spread over the primaries (each key on its slot's owner, or a send
    # would have been refused with MOVED).
    general_ports = {cluster.node_for_key(f"asgi{channel}").port for channel in channels[12:]}
    assert len(general_ports) > 1
    await _close(layer)


async def test_keys_and_bytes_are_those_of_one_redis(cluster):
    layer = _layer(cluster)
    await layer.send("bytes.check", {"type": "t", "v": b"\x00\xff"})
    owner = cluster.node_for_key("asgibytes.check")
    (member,) = owner.client().zrange("asgibytes.check", 0, -1)
    assert layer.deserialize(member) == {"type": "t", "v": b"\x00\xff"}
    await _close(layer)


async def test_groups_over_many_slots_and_two_processes(cluster):
    sender, other = _layer(cluster), _layer(cluster)
    mine = [await sender.new_channel() for _ in range(20)]
    theirs = [await other.new_channel() for _ in range(20)]
    general = [f"worker.{i}" for i in range(10)]
    for channel in mine + general:
        await sender.group_add("room", channel)
    for channel in theirs:
        await other.group_add("room", channel)
    await other.group_add("lobby", theirs[0])
    for n in range(3):
        await sender.group_send("room", {"type": "m", "n": n})
    for n in range(3):
        for channel in mine + general:
            assert (await receive_soon(sender, channel)) == {"type": "m", "n": n}
        for channel in theirs:
            assert (await receive_soon(other, channel)) == {"type": "m", "n": n}
    await other.group_discard("room", theirs[1])
    await sender.group_send("room", {"type": "m", "n": 3})
    assert (await receive_soon(other, theirs[0]))["n"] == 3
    await nothing_arrives(other, theirs[1])
    # Destination keys are on every primary: the send crossed slots and nodes.
    ports = {cluster.node_for_key("asgi" + c[: c.index("!") + 1]).port for c in mine + theirs}
    ports |= {cluster.node_for_key("asgi" + c).port for c in general}
    assert len(ports) == 3
    await _close(sender, other)


async def test_work_queue_shared_by_two_processes_delivers_each_message_once(cluster):
    one, two = _layer(cluster), _layer(cluster)
    for n in range(40):
        await one.send("jobs", {"type": "job", "n": n})
    got = []

    async def drain(layer):
        while True:
            try:
                got.append((await asyncio.wait_for(layer.receive("jobs"), 0.5))["n"])
            except asyncio.TimeoutError:
                return

    await asyncio.gather(drain(one), drain(two))
    assert sorted(got) == list(range(40))
    # The pumps' in-flight keys live in the queue's slot (one slot per script).
    owner = cluster.node_for_key("asgijobs")
    for key in owner.client().keys("asgijobs$inflight*"):
        assert cluster.key_slot(key) == cluster.key_slot("asgijobs")
    await _close(one, two)


async def test_capacity_and_channel_capacity(cluster):
    layer = _layer(cluster, capacity=2, channel_capacity={"tiny*": 1})
    await layer.send("full", {"type": "a"})
    await layer.send("full", {"type": "b"})
    with pytest.raises(ChannelFull):
        await layer.send("full", {"type": "c"})
    await layer.send("tiny1", {"type": "a"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny1", {"type": "b"})
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    for n in range(3):
        await layer.group_send("g", {"type": "g", "n": n})  # the third is dropped, as specified
    assert [(await receive_soon(layer, channel))["n"] for _ in range(2)] == [0, 1]
    await nothing_arrives(layer, channel)
    assert layer.stats_counters["group_over_capacity"] == 1
    await _close(layer)


async def test_expiry_and_group_expiry(cluster):
    layer = _layer(cluster, expiry=1, group_expiry=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "old"})
    await layer.group_add("g", channel)
    await asyncio.sleep(1.2)
    await nothing_arrives(layer, channel)
    await layer.group_send("g", {"type": "to nobody"})
    await nothing_arrives(layer, channel)
    await _close(layer)


async def test_encryption(cluster):
    # About what lands in Redis: local delivery off (issue 16).
    layer = _layer(cluster, symmetric_encryption_keys=["secret"], local_delivery=False)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hidden", "text": "plain words"})
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "hidden", "text": "more words"})
    key = "asgi" + channel[: channel.index("!") + 1]
    raw = cluster.node_for_key(key).client().zrange(key, 0, -1)
    assert len(raw) == 2 and not any(b"words" in member for member in raw)
    assert (await receive_soon(layer, channel))["text"] == "plain words"
    assert (await receive_soon(layer, channel))["text"] == "more words"
    await _close(layer)


async def test_flush_deletes_the_layers_keys_on_every_primary(cluster):
    layer = _layer(cluster)
    for n in range(30):
        await layer.send(f"flushme.{n}", {"type": "x"})
        await layer.group_add(f"group{n}", f"flushme.{n}")
    cluster.node_for_key("foreign").client().set("foreign", b"stays")
    assert sum(len(keys) for keys in _keys_on(cluster).values()) == 61
    assert all(_keys_on(cluster).values())  # every primary holds some
    await layer.flush()
    assert [key for keys in _keys_on(cluster).values() for key in keys] == [b"foreign"]


# ------------------------------------------------------------------------------ errors


async def test_plain_host_url_of_a_cluster_node_names_the_cluster_option(cluster):
    node = cluster.primaries()[0]
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{node.port}"])
    # Some key must live elsewhere: send until one does.
    channels = [f"plain.{i}" for i in range(30)]
    assert any(cluster.node_for_key(f"asgi{c}") is not node for c in channels)
    with pytest.raises(ClusterModeRequiredError, match=r"cluster"):
        for channel in channels:
            await layer.send(channel, {"type": "x"})
    await _close(layer)


async def test_unreachable_startup_nodes_are_named_and_nothing_is_written(cluster):
    port = free_port()
    layer = RedisChannelLayer(hosts=[{"cluster": [f"redis://127.0.0.1:{port}"]}])
    with pytest.raises(ClusterUnreachableError, match=rf"127\.0\.0\.1:{port}"):
        await layer.send("x", {"type": "x"})
    await _close(layer)


def test_a_prefix_with_a_broken_hash_tag_is_refused(cluster):
    with pytest.raises(ValueError, match="hash tag"):
        _layer(cluster, prefix="a{b")
    _layer(cluster, prefix="{asgi}")


# ------------------------------------------------------------------------------ connections


def _client_counts(cluster) -> dict[int, int]:
    """Clients connected to each primary, the harness's own included."""
    return {node.port: len(node.client().client_list()) for node in cluster.primaries()}


async def test_a_handful_of_connections_per_primary(cluster):
    before = _client_counts(cluster)
    layer = _layer(cluster)
    channels = [await layer.new_channel() for _ in range(3)]
    await asyncio.gather(*[layer.send(f"many.{n}", {"type": "x"}) for n in range(300)])
    for channel in channels:
        await layer.group_add("g", channel)
    await asyncio.gather(*[layer.group_send("g", {"type": "g"}) for _ in range(50)])
    await asyncio.gather(*[receive_soon(layer, channels[0]) for _ in range(50)])
    after = _client_counts(cluster)
    pump_port = cluster.node_for_key("asgi" + channels[0][: channels[0].index("!") + 1]).port
    # One multiplexed connection per primary (300 concurrent sends, 50 group sends),
    # plus one for the pump of this process's key on its owner.
    assert {port: after[port] - before[port] for port in after} == {
        port: 2 if port == pump_port else 1 for port in after
    }
    stats = await layer.stats()
    assert len(stats["shards"]) == 3
    await _close(layer)


async def test_a_receive_through_a_plain_url_of_a_cluster_node_raises_the_clear_error(cluster):
    node = cluster.primaries()[0]
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{node.port}"])
    channel = next(c for c in (f"elsewhere.{i}" for i in range(100)) if cluster.node_for_key(f"asgi{c}") is not node)
    with pytest.raises(ClusterModeRequiredError, match="cluster"):
        await receive_soon(layer, channel)
    await _close(layer)


async def test_flush_covers_work_queue_backups_under_a_hash_tag_prefix(cluster):
    layer = _layer(cluster, prefix="{tagged}")
    await layer.send("jobs", {"type": "job"})
    owner = cluster.node_for_key("{tagged}")
    # A pump's in-flight key, as one left behind by a process that died mid-delivery.
    backup = layer._inflight_key("{tagged}jobs")
    owner.client().zadd(backup, {b"member": 1.0})
    owner.client().set("{tagged}-foreign", b"stays")
    await layer.flush()
    assert owner.client().keys("{tagged}*") == [b"{tagged}-foreign"]


# ------------------------------------------------------------------------------ topology


async def _traffic(cluster, change, kind: str = "direct", channel_count: int = 20, after: int = 200):
    """Send before, while and after ``change(keys)`` runs in a thread (``keys``: the Redis
    keys the traffic goes through); returns (lost, duplicated, refused, redirects) once
    everything accepted was received or every receive stayed empty for a second.

    ``kind``: "direct" (send to process channels), "group" (group_send to a group of
    process channels) or "work" (a general channel, read by several receivers).
    """
    sender, receiver = _layer(cluster), _layer(cluster)
    if kind == "work":
        channels = ["jobs"] * 4  # four receivers of one work queue
        keys = ["asgijobs"]
    else:
        channels = [await receiver.new_channel() for _ in range(channel_count)]
        keys = ["asgi" + channels[0][: channels[0].index("!") + 1]]
    if kind == "group":
        for channel in channels:
            await receiver.group_add("room", channel)
        keys.append("asgi:group:room")
    accepted: dict[str, list[int]] = collections.defaultdict(list)
    received: dict[str, list[int]] = collections.defaultdict(list)
    refused = []
    changed = asyncio.Event()
    done = asyncio.Event()

    async def send_all():
        n = 0
        left = after
        while left:
            channel = channels[n % len(channels)]
            try:
                if kind == "group":
                    await sender.group_send("room", {"type": "m", "n": n})
                    for member in channels:
                        accepted[member].append(n)
                else:
                    await sender.send(channel, {"type": "m", "n": n})
                    accepted[channel].append(n)
            except (redis.RedisError, OSError) as exc:
                refused.append(exc)
            n += 1
            if changed.is_set():
                left -= 1
            await asyncio.sleep(0.002)
        done.set()

    async def receive_all(channel):
        while True:
            try:
                # A short wait even before the sends are done: a receive that began before
                # the last send must not sit out a long timeout once nothing more comes.
                message = await asyncio.wait_for(receiver.receive(channel), 1.0)
            except asyncio.TimeoutError:
                if done.is_set():
                    return
                continue
            received[channel].append(message["n"])

    sending = asyncio.ensure_future(send_all())
    receiving = [asyncio.ensure_future(receive_all(c)) for c in channels]
    await asyncio.sleep(0.2)
    await asyncio.to_thread(change, keys)
    changed.set()
    await sending
    await asyncio.gather(*receiving)
    names = set(channels)
    lost = sum(len(set(accepted[c]) - set(received[c])) for c in names)
    duplicated = sum(len(received[c]) - len(set(received[c])) for c in names)
    if kind != "work":  # one receiver per channel: each in order
        for channel in names:
            assert received[channel] == sorted(received[channel])
    # Messages were sent and received on both sides of the change.
    assert len(accepted[channels[0]]) * len(names) > after
    redirects = sender._cluster.redirects
    await _close(sender, receiver)
    return lost, duplicated, refused, redirects


def _migrate_all(cluster, moved: list):
    def migrate(keys):
        # Each key's slot moves to another primary while messages go through it.
        for key in keys:
            slot = cluster.key_slot(key)
            target = next(p for p in cluster.primaries() if p is not cluster.node_for_slot(slot))
            cluster.migrate_slot(slot, target, batch=1)
            moved.append(slot)

    return migrate


@pytest.mark.parametrize("kind", ["direct", "group", "work"])
async def test_slot_migration_under_traffic_loses_and_duplicates_nothing(cluster, kind):
    moved: list[int] = []
    lost, duplicated, refused, redirects = await _traffic(cluster, _migrate_all(cluster, moved), kind)
    assert moved and redirects  # the sender was told where the slots went
    assert (lost, duplicated) == (0, 0)
    assert len(refused) <= 5, refused


@pytest.mark.parametrize("kind", ["direct", "group", "work"])
async def test_manual_failover_under_traffic_loses_and_duplicates_nothing(cluster, kind):
    def failover(keys):
        primary = cluster.node_for_key(keys[0])
        cluster.failover(cluster.replicas_of(primary)[0])

    lost, duplicated, refused, redirects = await _traffic(cluster, failover, kind)
    assert redirects
    assert (lost, duplicated) == (0, 0)
    assert len(refused) <= 5, refused


async def test_a_half_done_migration_is_followed_with_asking(cluster):
    # One hash tag: every key of this layer is in one slot, which is being migrated.
    layer = _layer(cluster, prefix="{mig}")
    slot = cluster.key_slot("{mig}")
    for channel in ("a", "b"):
        await layer.send(channel, {"type": "m", "n": 0})
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    cluster.begin_migration(slot, target)
    assert cluster.move_keys(slot, source, target, batch=1, limit=1) == 1
    for channel in ("a", "b", "c"):  # a moved key, a key still on the source, a new key
        await layer.send(channel, {"type": "m", "n": 1})
    assert layer._cluster.redirects >= 2  # ASK for the moved key and the new one
    assert target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 2
    waiting = asyncio.ensure_future(receive_soon(layer, "c", timeout=30))
    await asyncio.sleep(0.3)
    cluster.finish_migration(slot, source, target)
    assert (await waiting) == {"type": "m", "n": 1}
    for channel in ("a", "b"):
        assert [(await receive_soon(layer, channel))["n"] for _ in range(2)] == [0, 1]
    await _close(layer)


async def test_a_pending_receive_follows_ask_to_the_importing_node_mid_migration(cluster):
    # One hash tag: the process key's slot is migrated while a receive waits on it.
    sender, receiver = _layer(cluster, prefix="{ask}"), _layer(cluster, prefix="{ask}")
    receiver.brpop_timeout = 1  # the pop blocked on the source before the migration ends soon
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "m", "n": 0})
    assert (await receive_soon(receiver, channel))["n"] == 0
    slot = cluster.key_slot("{ask}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    waiting = asyncio.ensure_future(receive_soon(receiver, channel, timeout=30))
    await asyncio.sleep(0.3)
    cluster.begin_migration(slot, target)
    # The process key is empty (gone from the source), so the send follows ASK to the target.
    await sender.send(channel, {"type": "m", "n": 1})
    assert target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
    assert (await waiting) == {"type": "m", "n": 1}
    assert [s for s, _, _ in cluster._open_migrations()] == [slot]  # received mid-migration
    await sender.send(channel, {"type": "m", "n": 2})
    assert (await receive_soon(receiver, channel))["n"] == 2
    await asyncio.to_thread(cluster.finish_migration, slot, source, target)
    await sender.send(channel, {"type": "m", "n": 3})
    assert (await receive_soon(receiver, channel))["n"] == 3
    await nothing_arrives(receiver, channel)
    await _close(sender, receiver)


async def test_a_pending_receive_gets_messages_sent_after_its_primary_crashed(cluster):
    sender, receiver = _layer(cluster), _layer(cluster)
    channel = await receiver.new_channel()
    key = "asgi" + channel[: channel.index("!") + 1]
    await sender.send(channel, {"type": "m", "n": 0})
    assert (await receive_soon(receiver, channel))["n"] == 0
    waiting = asyncio.ensure_future(receive_soon(receiver, channel, timeout=60))
    await asyncio.sleep(0.3)
    promoted = await asyncio.to_thread(cluster.kill, cluster.node_for_key(key))
    assert promoted is not None
    await sender.send(channel, {"type": "m", "n": 1})  # on the promoted replica
    assert (await waiting) == {"type": "m", "n": 1}
    await _close(sender, receiver)
