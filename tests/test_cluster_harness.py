"""The RedisCluster test harness keeps its promises (checked against the servers themselves)."""

from __future__ import annotations

import pytest
import redis

from channels_redis_fast.testing import RESERVED_PORTS, RedisCluster
from channels_redis_fast.testing.server_process import _LIVE


def _role(node) -> str:
    return node.client().info("replication")["role"]


def _owner_port(node, slot: int) -> int:
    """The port ``node`` names for ``slot`` in its CLUSTER SLOTS reply."""
    for start, end, primary, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    raise AssertionError(f"{node!r} reports no owner for slot {slot}")


def test_every_slot_is_served_by_three_primaries_with_a_replica_each(cluster):
    primaries = cluster.primaries()
    assert len(primaries) == 3 and len(cluster.replicas()) == 3
    for node in cluster.nodes:
        ranges = node.client().execute_command("CLUSTER", "SLOTS")
        assert sum(end - start + 1 for start, end, *_ in ranges) == 16384
        assert {int(primary[1]) for _, _, primary, *_ in ranges} == {p.port for p in primaries}
        # (CLUSTER SLOTS lists a replica only once it has reported a non-zero replication
        # offset, which an idle new cluster may not have yet: replicas are checked below.)
    for primary in primaries:
        assert _role(primary) == "master"
        assert [_role(r) for r in cluster.replicas_of(primary)] == ["slave"]


def test_replicas_have_finished_their_first_sync(cluster):
    for replica in cluster.replicas():
        info = replica.client().info("replication")
        assert info["master_link_status"] == "up"
        assert info["master_sync_in_progress"] == 0
    # ...and they follow writes: WAIT returns once the one replica acknowledged.
    primary = cluster.node_for_key("harness-key")
    primary.client().set("harness-key", b"v")
    assert primary.client().execute_command("WAIT", 1, 5000) == 1


def test_node_for_key_is_where_the_server_sends_the_key(cluster):
    for key in ("a", "b", "{user1}.x", "asgi:specific.abc!def"):
        owner = cluster.node_for_key(key)
        owner.client().set(key, b"1")  # the owner accepts it
        other = next(p for p in cluster.primaries() if p is not owner)
        # MovedError (the code dropped from its text), or in redis-py 5.0 a ResponseError.
        moved = rf"^(MOVED )?{cluster.key_slot(key)} 127.0.0.1:{owner.port}$"
        with pytest.raises(redis.exceptions.ResponseError, match=moved):
            other.client().set(key, b"1")


def test_failover_swaps_roles_as_every_node_sees_them(cluster):
    replica = cluster.replicas()[0]
    old_primary = next(p for p in cluster.primaries() if replica in cluster.replicas_of(p))
    slot = next(v.slots[0][0] for v in cluster.view() if v.node_id == old_primary.node_id)
    cluster.failover(replica)
    assert _role(replica) == "master" and _role(old_primary) == "slave"
    assert cluster.replicas_of(replica) == [old_primary]
    assert {_owner_port(node, slot) for node in cluster.nodes} == {replica.port}
    # The demoted primary has synced from its new primary, so a second failover can follow.
    assert old_primary.client().info("replication")["master_link_status"] == "up"


def test_migrate_slot_moves_the_slot_and_its_keys(cluster):
    slot = cluster.key_slot("{moving}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    source.client().mset({f"{{moving}}.{i}": i for i in range(250)})
    assert cluster.migrate_slot(slot, target, batch=100) is source
    assert cluster.node_for_slot(slot) is target
    assert {_owner_port(node, slot) for node in cluster.nodes} == {target.port}
    assert target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 250
    assert source.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert target.client().get("{moving}.249") == b"249"


def test_half_done_migration_answers_ask_for_moved_keys(cluster):
    slot = cluster.key_slot("{half}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    source.client().mset({f"{{half}}.{i}": i for i in range(10)})
    assert cluster.begin_migration(slot, target) is source
    assert cluster.move_keys(slot, source, target, batch=3, limit=4) == 4
    assert source.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 6
    moved = target.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
    with pytest.raises(redis.exceptions.ResponseError, match=rf"^(ASK )?{slot} 127.0.0.1:{target.port}$"):
        source.client().get(moved[0])
    cluster.finish_migration(slot, source, target)
    assert target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 10


def test_reset_finishes_a_migration_a_test_left_open(cluster):
    slot = cluster.key_slot("{left-open}")
    source = cluster.node_for_slot(slot)
    target = next(p for p in cluster.primaries() if p is not source)
    source.client().set("{left-open}", b"1")
    cluster.begin_migration(slot, target)
    cluster.reset()
    assert cluster.node_for_slot(slot) is target
    assert "->-" not in source.view_text() and "-<-" not in target.view_text()
    assert target.client().dbsize() == 0  # flushed

def test_kill_promotes_the_replica_and_restart_rejoins_as_replica(cluster):
    victim = cluster.primaries()[0]
    (replica,) = cluster.replicas_of(victim)
    assert cluster.kill(victim) is replica
    assert not victim.running
    assert _role(replica) == "master"
    assert victim not in cluster.primaries() and len(cluster.primaries()) == 3
    cluster.restart(victim)
    assert _role(victim) == "slave"
    assert cluster.replicas_of(replica) == [victim]


def test_flushall_empties_every_primary(cluster):
    for primary in cluster.primaries():
        key = next(f"k{i}" for i in range(1000) if cluster.node_for_key(f"k{i}") is primary)
        primary.client().set(key, b"1")
    assert sum(p.client().dbsize() for p in cluster.primaries()) == 3
    cluster.flushall()
    assert sum(p.client().dbsize() for p in cluster.primaries()) == 0


def test_no_reserved_port_and_every_node_is_tracked_for_exit(cluster):
    assert len(set(cluster.ports)) == 12
    assert not set(cluster.ports) & RESERVED_PORTS
    for node in cluster.nodes:
        bus_ports = {int(line.split()[1].split("@")[1].split(",")[0]) for line in node.view_text().splitlines()}
        assert bus_ports == {n.bus_port for n in cluster.nodes}
        assert node in _LIVE  # stopped by stop_all() at interpreter exit
    assert cluster.hosts_entry(password=None) == {"cluster": cluster.urls, "password": None}


def test_fewer_than_three_primaries_is_refused():
    with pytest.raises(ValueError, match="at least 3 primaries"):
        RedisCluster(primaries=2, start=False)
