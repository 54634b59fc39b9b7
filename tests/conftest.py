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
import sys
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _drop_source_tree_from_path() -> None:
    # `python -m pytest` (and some IDE runners) put the working directory first on
    # sys.path, which would import the checkout's channels_redis_fast (never compiled
    # in place) instead of the installed one: the suite always tests what pip installed.
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _REPO_ROOT]


_drop_source_tree_from_path()
try:
    import channels_redis_fast
except ImportError as exc:  # pragma: no cover - a setup error, reported plainly
    raise pytest.UsageError(
        f"channels_redis_fast is not installed in {sys.prefix} ({exc}); "
        "run `make test` once, or `pip install '.[tests]'`"
    ) from exc
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


# ------------------------------------------------------------------------------- helpers


async def until(predicate, timeout: float = 5.0, what: str = "the condition"):
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    For waiting on a state another connection brings about (a subscriber socket, a
    server); the bound only turns a hang into a failure, it never decides a result.
    """
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
