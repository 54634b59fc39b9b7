"""The `cluster` host entry: checked before anything is written; options reach every node."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio

from channels_redis_fast.cluster_config import (
    ClusterConfig,
    ClusterModeRequiredError,
    cluster_config,
    cluster_mode_error,
    is_cluster_node,
    load_slot_map,
)
from channels_redis_fast.cluster_slots import ClusterUnreachableError, NotAClusterError, key_slot
from channels_redis_fast.testing import RedisCluster, free_port
from conftest import skip_before_redis

PASSWORD = "crf-cluster-pw"


@pytest.fixture(scope="module")
def password_cluster(certs):
    """This module's cluster, set up as managed services run theirs: TLS only (client,
    replication and bus links) and a password, so options must reach every node."""
    skip_before_redis((7, 0), "Redis Cluster support (CLUSTER SHARDS)")
    cluster = RedisCluster(password=PASSWORD, tls={**certs, "auth_clients": "no"})
    yield cluster
    cluster.close()


def _bare_urls(cluster) -> list[str]:
    """The nodes' URLs without the password the harness puts in them."""
    return [f"rediss://{node.host}:{node.port}" for node in cluster.nodes]


# --------------------------------------------------------------------------- recognising


def test_hosts_without_a_cluster_entry_are_left_to_decode_hosts():
    for hosts in (None, [], ["redis://h:1"], [("h", 1)], [{"address": "redis://h:1"}], [{"sentinels": [("h", 1)]}]):
        assert cluster_config(hosts) is None


def test_a_cluster_entry_gives_its_startup_nodes_and_shared_options():
    config = cluster_config([{"cluster": ["rediss://a:1"], "password": "pw", "ssl_cert_reqs": "none"}])
    assert config == ClusterConfig(("rediss://a:1",), {"password": "pw", "ssl_cert_reqs": "none"})
    assert cluster_config([{"cluster": "rediss://config.example:6379"}]).startup == ("rediss://config.example:6379",)
    assert cluster_config(({"cluster": ("redis://a:1", "redis://b:2")},)).startup == ("redis://a:1", "redis://b:2")
    assert cluster_config([{"cluster": ["redis://:secret@a:1"]}]).describe() == "cluster:[redis://***@a:1]"


@pytest.mark.parametrize(
    "hosts, message",
    [
        ([{"cluster": ["redis://a:1"]}, "redis://b:2"], "must be the only entry in hosts"),
        ([{"cluster": ["redis://a:1"]}, {"cluster": ["redis://b:2"]}], "must be the only entry"),
        ([{"cluster": []}], "at least one startup node"),
        ([{"cluster": ""}], "must be a redis:// or rediss:// URL"),
        ([{"cluster": None}], "takes a URL or a list of URLs"),
        ([{"cluster": {"a": 1}}], "takes a URL or a list of URLs"),
        ([{"cluster": [("a", 1)]}], "URL strings"),
        ([{"cluster": ["unix:///tmp/redis.sock"]}], "redis:// or rediss:// URL"),
        ([{"cluster": ["a:6379"]}], "redis:// or rediss:// URL"),
        ([{"cluster": ["redis://"]}], "has no host"),
        ([{"cluster": ["redis://a:notaport"]}], "redis://a:notaport"),
        ([{"cluster": ["redis://a:1/2"]}], "database 0 only; 'redis://a:1/2' \\(path /2\\)"),
        ([{"cluster": ["redis://a:1", "redis://b:1?db=3"]}], "database 0 only.*db=3"),
        ([{"cluster": ["redis://a:1"], "db": 1}], "database 0 only; the option db=1"),
        ([{"cluster": ["redis://a:1", "rediss://b:1"]}], "mix redis:// and rediss://"),
        ([{"cluster": ["redis://a:1"], "address": "redis://b:2"}], "remove address"),
        ([{"cluster": ["redis://a:1"], "sentinels": [("s", 1)], "master_name": "m"}], "remove sentinels, master_name"),
        ([{"cluster": ["redis://a:1"], "protocol": 4}], "protocol must be 2"),
    ],
)
def test_bad_cluster_entries_are_refused_before_connecting(hosts, message):
    with pytest.raises(ValueError, match=message):
        cluster_config(hosts)


def test_db_zero_is_accepted():
    assert cluster_config([{"cluster": ["redis://a:1/0?db=0"], "db": 0}]).options == {"db": 0}


def test_error_messages_keep_passwords_out():
    with pytest.raises(ValueError) as info:
        cluster_config([{"cluster": ["redis://:hunter2@a:1/5"]}])
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


# --------------------------------------------------------------------------- reaching it


async def test_options_reach_every_node_found_later(password_cluster):
    config = cluster_config(
        [{"cluster": _bare_urls(password_cluster)[4:5], "password": PASSWORD, **password_cluster.ssl_kwargs}]
    )
    slot_map = await load_slot_map(config)
    assert slot_map.covers_all
    nodes = list(slot_map.primaries) + [r for p in slot_map.primaries for r in slot_map.replicas_of(p)]
    assert len(nodes) == 6
    for node in nodes:
        pool = redis.asyncio.ConnectionPool(**config.node_kwargs(node))
        client = redis.asyncio.Redis(connection_pool=pool)
        try:
            tls_port = await client.config_get("tls-port")
        finally:
            await client.aclose()
            await pool.disconnect()
        assert tls_port == {"tls-port": str(node.port)}  # that node, over TLS, authenticated


async def test_wrong_or_missing_password_names_every_startup_node(password_cluster):
    for options in ({}, {"password": "wrong"}):
        config = cluster_config([{"cluster": _bare_urls(password_cluster)[:3], **password_cluster.ssl_kwargs, **options}])
        with pytest.raises(ClusterUnreachableError) as info:
            await load_slot_map(config)
        assert all(f"127.0.0.1:{node.port}" in str(info.value) for node in password_cluster.nodes[:3])
        assert "Authentication" in str(info.value) or "NOAUTH" in str(info.value)


async def test_unreachable_startup_nodes_are_named():
    ports = [free_port(), free_port()]
    config = cluster_config([{"cluster": [f"redis://127.0.0.1:{port}" for port in ports]}])
    with pytest.raises(ClusterUnreachableError, match=rf"tried 2: redis://127.0.0.1:{ports[0]} .*redis://127.0.0.1:{ports[1]} "):
        await load_slot_map(config)


async def test_a_plain_server_as_startup_node_is_named(redis_server):
    config = cluster_config([{"cluster": [redis_server.url]}])
    with pytest.raises(NotAClusterError, match=f"127.0.0.1:{redis_server.port} is not a Redis Cluster node"):
        await load_slot_map(config)


async def test_is_cluster_node(password_cluster, redis_server):
    assert await is_cluster_node(_bare_urls(password_cluster)[0], {"password": PASSWORD, **password_cluster.ssl_kwargs})
    assert not await is_cluster_node(redis_server.url)


# --------------------------------------------------------------------------- a plain host on a cluster


async def test_a_moved_reply_to_a_plain_host_names_the_cluster_option(password_cluster):
    node = password_cluster.nodes[0]
    key = next(f"asgi:{i}" for i in range(1000) if password_cluster.node_for_key(f"asgi:{i}").port != node.port)
    client = redis.asyncio.Redis(host=node.host, port=node.port, password=PASSWORD, **password_cluster.ssl_kwargs)
    try:
        # MovedError, or in redis-py 5.0 (no MOVED in its reply table) a plain ResponseError.
        with pytest.raises(redis.exceptions.ResponseError) as info:
            await client.zadd(key, {b"message": 1})
    finally:
        await client.aclose()
    error = cluster_mode_error(info.value, f"rediss://{node.host}:{node.port}")
    assert isinstance(error, ClusterModeRequiredError) and isinstance(error, redis.ResponseError)
    assert f"MOVED {key_slot(key)} 127.0.0.1:" in str(error)
    assert f'hosts=[{{"cluster": ["rediss://127.0.0.1:{node.port}"]}}]' in str(error)
    assert error.__cause__ is info.value
    # The same text as the server sent it (as the layer's own connections report it):
    assert cluster_mode_error(redis.ResponseError(f"MOVED 5 127.0.0.1:{node.port}"), "127.0.0.1:1") is not None


def test_other_errors_are_not_cluster_errors():
    assert cluster_mode_error(redis.ResponseError("ERR unknown command"), "h:1") is None
    assert cluster_mode_error(redis.ConnectionError("refused"), "h:1") is None
    down = cluster_mode_error(redis.exceptions.ClusterDownError("The cluster is down"), "h:1")
    assert down is not None and "CLUSTERDOWN The cluster is down" in str(down)


async def test_ssl_option_with_redis_urls_means_tls(password_cluster):
    urls = [url.replace("rediss://", "redis://") for url in _bare_urls(password_cluster)]
    options = {"password": PASSWORD, **password_cluster.ssl_kwargs}
    assert options.pop("ssl") is True
    with pytest.raises(ValueError, match="ssl_ca_certs, ssl_cert_reqs.* only apply to TLS: use rediss://"):
        cluster_config([{"cluster": urls[:1], **options}])
    slot_map = await load_slot_map(cluster_config([{"cluster": urls[:1], "ssl": True, **options}]))
    assert sorted(node.port for node in slot_map.primaries) == sorted(p.port for p in password_cluster.primaries())
