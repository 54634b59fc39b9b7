"""Shared fixtures: real, private Redis servers on free loopback ports (never 6379/26379).

Session fixtures start servers once; the function fixtures hand out their URLs after a
FLUSHALL so tests never see each other's keys.  Nothing here mocks Redis.  When
redis-server is missing the fixtures fail (they never skip) and say how to install it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import channels_redis_fast
from channels_redis_fast.speedups import NO_EXTENSIONS
from channels_redis_fast.testing import (
    INSTALL_HINT,
    RedisNotInstalled,
    RedisServer,
    SentinelServer,
    stop_all,
)

SENTINEL_MASTER_NAME = "mymaster"
SENTINEL_PASSWORD = "crf-sentinel-pw"
SHARD_COUNT = 3

_REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    binary = shutil.which("redis-server")
    if binary:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    else:
        version = f"redis-server NOT FOUND. {INSTALL_HINT}"
    return [
        f"channels_redis_fast {channels_redis_fast.__version__}: "
        f"IMPLEMENTATION={channels_redis_fast.IMPLEMENTATION} from {Path(channels_redis_fast.__file__).parent}",
        f"redis: {version}",
    ]


def pytest_sessionstart(session):
    # `make test` sets this: the suite must exercise the installed package, not the source tree.
    if os.environ.get("CHANNELS_REDIS_FAST_TEST_INSTALLED"):
        package_dir = Path(channels_redis_fast.__file__).resolve().parent
        if package_dir == (_REPO_ROOT / "channels_redis_fast").resolve():
            raise pytest.UsageError(
                f"channels_redis_fast was imported from the source tree ({package_dir}), "
                "not from the installed package; run the venv's `pytest` from the repo root."
            )


def pytest_sessionfinish(session, exitstatus):
    stop_all()


def _start(factory, *args, **kwargs):
    try:
        return factory(*args, **kwargs)
    except RedisNotInstalled as exc:
        pytest.fail(f"Cannot run the Redis tests: {exc}", pytrace=False)


# ---------------------------------------------------------------------------- session-scoped


@pytest.fixture(
    params=[
        "channels_redis_fast._speedups_py",
        pytest.param(
            "channels_redis_fast._speedups",
            marks=pytest.mark.skipif(NO_EXTENSIONS, reason="pure-Python build"),
        ),
    ],
    ids=["pure", "compiled"],
)
def impl(request):
    """Each implementation of the hot paths in turn: the pure twin, then the compiled one."""
    return importlib.import_module(request.param)


@pytest.fixture(scope="session")
def redis_server():
    """One private RedisServer for the whole session."""
    server = _start(RedisServer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_shards():
    """Three private RedisServers, for sharding tests."""
    servers = []
    try:
        for _ in range(SHARD_COUNT):
            servers.append(_start(RedisServer))
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def sentinel():
    """A private master plus a Sentinel (with a password) watching it as "mymaster".

    Useful attributes: ``sentinel.address`` (host, port), ``sentinel.name``,
    ``sentinel.sentinel_kwargs``, ``sentinel.hosts_entry()`` (a layer ``hosts`` entry) and
    ``sentinel.master_server`` (the RedisServer).
    """
    master = _start(RedisServer)
    try:
        server = _start(SentinelServer, master, name=SENTINEL_MASTER_NAME, password=SENTINEL_PASSWORD)
    except BaseException:
        master.close()
        raise
    server.master_server = master
    yield server
    server.close()
    master.close()


# --------------------------------------------------------------------------- function-scoped


@pytest.fixture
def redis_url(redis_server):
    """URL of the session server, flushed before the test."""
    if not redis_server.running:  # a test stopped it: bring it back for the next ones
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def shard_urls(redis_shards):
    """URLs of the three shard servers, all flushed before the test."""
    for server in redis_shards:
        if not server.running:
            server.start()
        server.flushall()
    return [server.url for server in redis_shards]


@pytest.fixture
def sentinel_hosts(sentinel):
    """``hosts`` list for a layer that goes through the session Sentinel (master flushed)."""
    sentinel.master_server.flushall()
    return [sentinel.hosts_entry()]


@pytest.fixture
def fresh_redis():
    """A private server for this test only: restart it, kill it, break it."""
    server = _start(RedisServer)
    yield server
    server.close()


@pytest.fixture
def failover_set():
    """A private master, its replica and a Sentinel that knows both: fail the master over."""
    master = _start(RedisServer)
    replica = sentinel = None
    try:
        replica = _start(RedisServer, replicaof=(master.host, master.port))
        sentinel = _start(SentinelServer, master, name="crf-failover")
        sentinel.wait_for_replicas(1)
        yield master, replica, sentinel
    finally:
        for server in (sentinel, replica, master):
            if server is not None:
                server.close()
