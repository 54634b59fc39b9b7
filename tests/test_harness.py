"""Tests of the Redis/Sentinel harness itself (channels_redis_fast.testing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from redis.backoff import NoBackoff
from redis.retry import Retry

from channels_redis_fast.testing import (
    RESERVED_PORTS,
    RedisNotInstalled,
    RedisServer,
    SentinelServer,
    ServerError,
    find_executable,
)

NO_RETRY = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 1}


def test_session_server_answers_on_private_port(redis_server, redis_url):
    assert redis_server.port not in RESERVED_PORTS
    assert redis_server.host == "127.0.0.1"
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        # No persistence: nothing to save, nothing to load.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_redis_url_is_flushed_between_tests_part1(redis_url):
    redis.Redis.from_url(redis_url).set("harness:leftover", b"1")


def test_redis_url_is_flushed_between_tests_part2(redis_url):
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_shards_are_distinct_servers(shard_urls, redis_shards):
    assert len(shard_urls) == 3
    ports = {server.port for server in redis_shards}
    assert len(ports) == 3 and not ports & RESERVED_PORTS
    for url in shard_urls:
        assert redis.Redis.from_url(url).ping()


def test_restart_keeps_the_port_and_loses_the_data(fresh_redis):
    port = fresh_redis.port
    fresh_redis.client().set("k", "v")
    fresh_redis.restart()
    assert fresh_redis.port == port
    assert fresh_redis.client().ping()
    assert fresh_redis.client().get("k") is None


def test_kill_then_start_on_the_same_port(fresh_redis):
    port = fresh_redis.port
    pid = fresh_redis.pid
    fresh_redis.kill()
    assert not fresh_redis.running
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=fresh_redis.host, port=port, **NO_RETRY).ping()
    fresh_redis.start()
    assert fresh_redis.port == port and fresh_redis.pid != pid
    assert fresh_redis.client().ping()


def test_password_and_unix_socket():
    with RedisServer(password="s3cret", unixsocket=True) as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=server.host, port=server.port, **NO_RETRY).ping()
        assert redis.Redis.from_url(server.url).ping()
        assert os.path.exists(server.unix_path)
        assert redis.Redis(unix_socket_path=server.unix_path, password="s3cret").ping()
    assert not server.running
    assert not os.path.exists(server.dir)


def test_start_failure_reports_the_log():
    with pytest.raises(ServerError, match="no-such-directive"):
        RedisServer(extra_args=["--no-such-directive", "1"])


def test_sentinel_reports_the_master(sentinel):
    master = sentinel.master_server
    assert sentinel.port not in RESERVED_PORTS
    assert sentinel.get_master_addr() == (master.host, master.port)
    # The sentinel itself wants its password, as in channels_redis's own suite.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=sentinel.host, port=sentinel.port, **NO_RETRY).ping()
    client = redis.Redis(host=sentinel.host, port=sentinel.port, **sentinel.sentinel_kwargs)
    reply = client.execute_command("SENTINEL", "get-master-addr-by-name", sentinel.name)
    assert [x.decode() if isinstance(x, bytes) else x for x in reply] == [master.host, str(master.port)]


def test_sentinel_hosts_entry_reaches_the_master(sentinel, sentinel_hosts):
    entry = sentinel_hosts[0]
    assert entry["master_name"] == "mymaster"
    from redis.sentinel import Sentinel

    master = Sentinel(entry["sentinels"], sentinel_kwargs=entry["sentinel_kwargs"]).master_for(entry["master_name"])
    master.set("through-sentinel", 1)
    assert sentinel.master_server.client().get("through-sentinel") == b"1"


def test_server_variable_chooses_the_binary_of_servers_and_sentinels(monkeypatch, tmp_path):
    # A link under another name stands for another build (Redis 6.2, Valkey): the server and
    # a sentinel watching it both run it, not what PATH holds.
    link = tmp_path / "another-redis-server"
    link.symlink_to(find_executable("redis-server"))
    monkeypatch.setenv("CHANNELS_REDIS_FAST_REDIS_SERVER", str(link))
    monkeypatch.delenv("CHANNELS_REDIS_FAST_REDIS_SENTINEL", raising=False)
    with RedisServer() as master, SentinelServer(master) as sentinel:
        assert master.process.args[0] == str(link)
        assert sentinel.process.args[0] == str(link)
        assert sentinel.process.args[-1] == "--sentinel"
        assert sentinel.get_master_addr() == (master.host, master.port)


def test_a_binary_variable_naming_no_executable_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("CHANNELS_REDIS_FAST_REDIS_SERVER", str(tmp_path / "no-such-server"))
    with pytest.raises(RedisNotInstalled, match="CHANNELS_REDIS_FAST_REDIS_SERVER="):
        RedisServer()


@pytest.mark.slow
def test_replica_failover():
    master = RedisServer()
    replica = RedisServer(replicaof=(master.host, master.port))
    with master, replica, SentinelServer(master, name="failover-test") as sentinel:
        master.client().set("before", "failover")
        replica.wait_for_role("slave")
        sentinel.wait_for_replicas(1)
        master.kill()
        sentinel.wait_for_master((replica.host, replica.port), timeout=30)
        replica.wait_for_role("master")
        assert replica.client().get("before") == b"failover"
        replica.client().set("after", "failover")


def test_no_stray_processes_after_a_crashed_owner(tmp_path):
    # A child interpreter starts a server and dies by SIGKILL: the server must die too.
    script = (
        "import os, signal, sys\n"
        "from channels_redis_fast.testing import RedisServer\n"
        "s = RedisServer()\n"
        "print(s.pid, s.port, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    # Its temp dir cannot be removed by a dead owner: keep it under pytest's tmp_path.
    env = dict(os.environ, TMPDIR=str(tmp_path))
    # cwd=tmp_path: "python -c" puts the cwd on sys.path, and the repo root holds the sources.
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert out.stdout.strip(), f"child failed: {out.stderr}"
    pid, port = (int(x) for x in out.stdout.split())

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie until its new parent reaps it counts as gone once /proc says so
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split()[2] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail(f"redis-server {pid} on port {port} outlived its owner")
    # The dead owner's temp dir is swept by the next harness run that starts a server.
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("crf-redis-")]
    assert len(leftovers) == 1
    subprocess.run(
        [sys.executable, "-c", "from channels_redis_fast.testing import RedisServer; RedisServer().close()"],
        check=True, timeout=30, env=env, cwd=tmp_path,
    )
    assert not any(p.name.startswith("crf-redis-") for p in tmp_path.iterdir())
