"""The pub/sub layer on a real Redis Cluster (3 primaries + 3 replicas): sharded pub/sub.

Pub/sub is at most once: what is published while nobody listens is gone. So the fault
tests count exactly, and assert what is guaranteed: every message published before the
change and every message published after the layer subscribed again on the new owner
arrives, once and in order; a publish that fails raises; nothing arrives twice.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
import redis
from asgiref.sync import async_to_sync

from channels_redis_fast.connection import PUSH_TYPE
from channels_redis_fast.cluster_slots import ClusterUnreachableError
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing.server_process import free_port
from conftest import nothing_arrives, receive_soon, until

#: RESP3 needs hiredis >= 3.0 to tell push frames from replies; with an older one the layer
#: refuses it at construction (tests/test_resp3.py checks that refusal).
RESP = pytest.mark.parametrize(
    "protocol",
    [2, pytest.param(3, marks=pytest.mark.skipif(PUSH_TYPE is None, reason="RESP3 needs hiredis >= 3.0"))],
    ids=["resp2", "resp3"],
)


def _layer(cluster, protocol: int = 2, **kwargs) -> RedisPubSubChannelLayer:
    return RedisPubSubChannelLayer(hosts=[cluster.hosts_entry(protocol=protocol)], **kwargs)


async def _close(*layers: RedisPubSubChannelLayer) -> None:
    for layer in layers:
        await layer.close()


def _shard_subscribers(cluster, name: str) -> int:
    """Sharded subscribers of ``name`` on the primary that serves its slot."""
    owner = cluster.node_for_key(name)
    reply = owner.client().execute_command("PUBSUB", "SHARDNUMSUB", name)
    return int(reply[1])


def _routes_to_owners(cluster, layer, names) -> bool:
    """Does ``layer`` publish each name to the primary that serves its slot?"""
    router = layer._get_layer().router
    return all(router.describe(router.node_of(name)).endswith(f":{cluster.node_for_key(name).port}") for name in names)


def _clients(cluster) -> dict[int, list[dict]]:
    """CLIENT LIST of each primary, by port (the harness's own client included)."""
    return {node.port: node.client().client_list() for node in cluster.primaries()}


# ------------------------------------------------------------------------------ basics


@RESP
async def test_direct_send_and_receive_over_many_slots(cluster, protocol):
    sender, receiver = _layer(cluster, protocol), _layer(cluster, protocol)
    channels = [await receiver.new_channel() for _ in range(30)]
    # Each is subscribed with SSUBSCRIBE on the primary of its slot, none with SUBSCRIBE.
    assert all(_shard_subscribers(cluster, channel) == 1 for channel in channels)
    assert len({cluster.node_for_key(channel).port for channel in channels}) == 3
    for node in cluster.nodes:
        if node.running:
            assert node.client().execute_command("PUBSUB", "CHANNELS") == []
    for n in range(3):
        for index, channel in enumerate(channels):
            await sender.send(channel, {"type": "m", "n": n, "i": index})
    for index, channel in enumerate(channels):
        assert [await receive_soon(receiver, channel) for _ in range(3)] == [
            {"type": "m", "n": n, "i": index} for n in range(3)
        ]
        await nothing_arrives(receiver, channel, 0.01)
    await _close(sender, receiver)


@RESP
async def test_group_send_reaches_members_over_many_slots_in_two_processes(cluster, protocol):
    sender, one, two = _layer(cluster, protocol), _layer(cluster, protocol), _layer(cluster, protocol)
    groups = [f"room{i}" for i in range(6)]
    # The group channels themselves hash to slots of every primary.
    assert len({cluster.node_for_key(f"asgi__group__{g}").port for g in groups}) == 3
    members = {one: [await one.new_channel() for _ in range(8)], two: [await two.new_channel() for _ in range(8)]}
    for layer, channels in members.items():
        for index, channel in enumerate(channels):
            await layer.group_add(groups[index % len(groups)], channel)
            await layer.group_add("everyone", channel)
    for group in groups + ["everyone"]:
        await sender.group_send(group, {"type": "g", "group": group})
    for layer, channels in members.items():
        for index, channel in enumerate(channels):
            got = sorted([(await receive_soon(layer, channel))["group"] for _ in range(2)])
            assert got == sorted([groups[index % len(groups)], "everyone"])
    # group_discard: the member leaves; the group channel stays while others are in it.
    await one.group_discard("everyone", members[one][0])
    await sender.group_send("everyone", {"type": "g", "group": "everyone"})
    await nothing_arrives(one, members[one][0])
    for layer, channels in members.items():
        for channel in channels[1:] if layer is one else channels:
            assert (await receive_soon(layer, channel))["group"] == "everyone"
            # Each got exactly what was sent (a receive that times out frees its channel,
            # so this comes last).
            await nothing_arrives(layer, channel, 0.01)
    await _close(sender, one, two)


async def test_a_freed_channel_is_unsubscribed_on_its_node(cluster):
    layer = _layer(cluster)
    channel = await layer.new_channel()
    await layer.group_add("lonely", channel)
    assert _shard_subscribers(cluster, channel) == 1
    assert _shard_subscribers(cluster, "asgi__group__lonely") == 1
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.05)  # cancelled: frees the channel
    await until(lambda: _shard_subscribers(cluster, channel) == 0, what="SUNSUBSCRIBE of the channel")
    await until(lambda: _shard_subscribers(cluster, "asgi__group__lonely") == 0, what="the group's too")
    await _close(layer)


async def test_flush_forgets_every_subscription(cluster):
    layer = _layer(cluster)
    channels = [await layer.new_channel() for _ in range(6)]
    await layer.flush()
    # The sockets were closed: the servers drop their subscriptions as they notice.
    await until(lambda: not any(_shard_subscribers(cluster, c) for c in channels), what="subscriptions gone")
    channel = await layer.new_channel()  # usable again
    await layer.send(channel, {"type": "again"})
    assert (await receive_soon(layer, channel)) == {"type": "again"}
    await _close(layer)


def test_sync_callers(cluster):
    # async_to_sync runs each call on a fresh loop; the layer bridges them to one I/O loop.
    layer = _layer(cluster)
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("sync", channel)
    async_to_sync(layer.send)(channel, {"type": "direct"})
    async_to_sync(layer.group_send)("sync", {"type": "group"})
    assert [async_to_sync(layer.receive)(channel) for _ in range(2)] == [{"type": "direct"}, {"type": "group"}]
    assert _shard_subscribers(cluster, channel) == 1
    async_to_sync(layer.close)()


# ------------------------------------------------------------------------------ connections


@RESP
async def test_one_subscriber_and_one_publisher_connection_per_primary(cluster, protocol):
    before = {port: {c["id"] for c in clients} for port, clients in _clients(cluster).items()}
    layer = _layer(cluster, protocol)
    channels = [await layer.new_channel() for _ in range(60)]
    for index, channel in enumerate(channels):
        await layer.group_add(f"g{index % 10}", channel)
    await asyncio.gather(*[layer.send(channel, {"type": "x"}) for channel in channels])
    await asyncio.gather(*[layer.group_send(f"g{n}", {"type": "g"}) for n in range(10)])
    for channel in channels:
        await receive_soon(layer, channel)
        await receive_soon(layer, channel)
    names = channels + [f"asgi__group__g{n}" for n in range(10)]
    expected = collections.Counter(cluster.node_for_key(name).port for name in names)
    for port, clients in _clients(cluster).items():
        new = [c for c in clients if c["id"] not in before[port]]
        # Two sockets per primary (one multiplexed SPUBLISH connection, one subscriber
        # holding every name of its slots), however many channels and concurrent sends.
        assert len(new) == 2, new
        assert sorted(int(c["ssub"]) for c in new) == [0, expected[port]]
        assert all(int(c["sub"]) == 0 and int(c["resp"]) == protocol for c in new)
    stats = await layer.stats()
    assert sum(shard["subscriptions"] for shard in stats["shards"]) == len(names)
    await _close(layer)


# ------------------------------------------------------------------------------ errors


def test_a_cluster_entry_beside_other_hosts_or_with_a_database_is_refused(cluster):
    with pytest.raises(ValueError, match="only entry"):
        RedisPubSubChannelLayer(hosts=[cluster.hosts_entry(), cluster.urls[0]])
    with pytest.raises(ValueError, match="database 0"):
        RedisPubSubChannelLayer(hosts=[{"cluster": [cluster.urls[0] + "/2"]}])
    with pytest.raises(ValueError, match="database 0"):
        RedisPubSubChannelLayer(hosts=[cluster.hosts_entry(db=1)])
    with pytest.raises(ValueError, match="protocol"):
        RedisPubSubChannelLayer(hosts=[cluster.hosts_entry(protocol=4)])


async def test_unreachable_startup_nodes_are_named_and_nothing_is_subscribed(cluster):
    ports = [free_port(), free_port()]
    layer = RedisPubSubChannelLayer(hosts=[{"cluster": [f"redis://127.0.0.1:{port}" for port in ports]}])
    with pytest.raises(ClusterUnreachableError, match=rf"127\.0\.0\.1:{ports[0]}.*127\.0\.0\.1:{ports[1]}"):
        await layer.new_channel()
    with pytest.raises(ClusterUnreachableError):
        await layer.send("somewhere", {"type": "x"})
    with pytest.raises(ClusterUnreachableError):
        await layer.group_send("g", {"type": "x"})
    assert layer.channels == {}  # the failed new_channel left nothing behind
    await _close(layer)


# ------------------------------------------------------------------------------ topology


async def _traffic(cluster, change, protocol: int = 2, channel_count: int = 12, after: int = 150):
    """Publish to channels and a group before, while and after ``change(names)`` runs in a
    thread (``names``: the Redis channel names the traffic goes through).

    Returns the receiving layer's moves and counts of: messages lost among those published
    before the change, in the window until the receiver was subscribed again on every
    owner, and after it; duplicates; refused publishes; and the sender's redirections.
    """
    sender, receiver = _layer(cluster, protocol), _layer(cluster, protocol)
    channels = [await receiver.new_channel() for _ in range(channel_count)]
    for channel in channels[: channel_count // 2]:
        await receiver.group_add("room", channel)
    names = channels + ["asgi__group__room"]
    accepted: dict[str, list[int]] = collections.defaultdict(list)
    #: Per channel: (n, "group" or "direct") in the order received.
    received: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    refused: list[BaseException] = []
    marks = {"changing": -1, "resubscribed": -1}
    resubscribed = asyncio.Event()
    counter = 0

    async def send_all():
        nonlocal counter
        left = after
        while left:
            n = counter
            counter += 1
            target = n % (len(channels) + 1)
            try:
                if target == len(channels):
                    await sender.group_send("room", {"type": "m", "n": n, "via": "group"})
                    for member in channels[: channel_count // 2]:
                        accepted[member].append(n)
                else:
                    await sender.send(channels[target], {"type": "m", "n": n, "via": "direct"})
                    accepted[channels[target]].append(n)
            except (redis.RedisError, OSError) as exc:
                refused.append(exc)
            if resubscribed.is_set():
                left -= 1
            await asyncio.sleep(0.002)
        # Published after the re-subscription, so they arrive.
        for channel in channels:
            await sender.send(channel, {"type": "stop"})

    async def receive_all(channel):
        # Never a receive with a timeout: cancelling one unsubscribes the channel.
        while True:
            message = await receiver.receive(channel)
            if message["type"] == "stop":
                return
            received[channel].append((message["n"], message["via"]))

    receiving = [asyncio.ensure_future(receive_all(c)) for c in channels]
    sending = asyncio.ensure_future(send_all())
    await until(lambda: counter > 50, what="traffic before the change")
    marks["changing"] = counter
    await asyncio.to_thread(change, names)
    # Pub/sub guarantees nothing while the receiver has no subscription on the owner:
    # from here, every name is subscribed where its slot is served (as the servers say),
    # and the sender publishes there.
    await until(
        lambda: all(_shard_subscribers(cluster, name) == 1 for name in names), 15, "re-subscription on every owner"
    )
    await until(lambda: _routes_to_owners(cluster, sender, names), 15, "the sender's map to follow")
    marks["resubscribed"] = counter
    resubscribed.set()
    await sending
    # (The bound only turns a lost stop message into a failure instead of a hang.)
    await asyncio.wait_for(asyncio.gather(*receiving), 30)
    lost = {"before": 0, "window": 0, "after": 0}
    duplicated = 0
    for channel in channels:
        got = [n for n, _ in received[channel]]
        # Each Redis channel's messages in order on each side of the change (a direct and
        # a group message come through different slots, so from different nodes). Across
        # the change one may overtake another: a message published on a node of the
        # shard that the subscriber is not on is relayed to it over the cluster bus.
        for via in ("direct", "group"):
            mine = [n for n, how in received[channel] if how == via]
            for part in ([n for n in mine if n < marks["changing"]], [n for n in mine if n >= marks["resubscribed"]]):
                assert part == sorted(part)
        duplicated += len(got) - len(set(got))
        for n in set(accepted[channel]) - set(got):
            part = "before" if n < marks["changing"] else "after" if n >= marks["resubscribed"] else "window"
            lost[part] += 1
    moves = receiver._get_layer()._cluster.moves
    redirects = sender._get_layer()._cluster.commands.redirects
    # Traffic went through on both sides of the change.
    assert min(len(accepted[c]) for c in channels) > after // (channel_count + 1)
    await _close(sender, receiver)
    return moves, lost, duplicated, refused, redirects


def _migrate(cluster, moved: list):
    def migrate(names):
        # The slots of a few channels and of the group move to another primary.
        for name in names[:3] + names[-1:]:
            slot = cluster.key_slot(name)
            target = next(p for p in cluster.primaries() if p is not cluster.node_for_slot(slot))
            cluster.migrate_slot(slot, target)
            moved.append(slot)

    return migrate


@RESP
async def test_slot_migration_under_traffic(cluster, protocol):
    moved: list[int] = []
    moves, lost, duplicated, refused, redirects = await _traffic(cluster, _migrate(cluster, moved), protocol)
    assert len(moved) == 4 and moves >= 4  # each moved name was subscribed again elsewhere
    assert redirects  # the sender followed MOVED
    assert (lost["before"], lost["after"], duplicated) == (0, 0, 0), lost
    assert not refused, refused  # a MOVED publish did not run, so it was retried


@RESP
async def test_manual_failover_under_traffic(cluster, protocol):
    def failover(names):
        primary = cluster.node_for_key(names[0])
        cluster.failover(cluster.replicas_of(primary)[0])

    moves, lost, duplicated, refused, redirects = await _traffic(cluster, failover, protocol)
    assert moves >= 1  # the old primary gave its channels up; they were subscribed again
    assert (lost["before"], lost["after"], duplicated) == (0, 0, 0), lost
    assert len(refused) <= 5, refused
    assert all("MOVED" not in str(exc) for exc in refused)


async def test_a_killed_primary_is_replaced_and_its_channels_follow(cluster):
    def kill(names):
        assert cluster.kill(cluster.node_for_key(names[0])) is not None

    moves, lost, duplicated, refused, redirects = await _traffic(cluster, kill, channel_count=6, after=60)
    assert moves >= 1
    assert (lost["before"], lost["after"], duplicated) == (0, 0, 0), lost
    # A publish to the dead primary that was never written waited for the promotion; one
    # written just before the kill may have run: it raised instead of claiming delivery.
    assert all(isinstance(exc, redis.ConnectionError) for exc in refused), refused
