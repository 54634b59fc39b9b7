"""Shared fixtures: real, private Redis servers on free loopback ports (never 6379/26379).

Session fixtures start servers once; the function fixtures hand out their URLs after a
FLUSHALL so tests never see each other's keys.  Nothing here mocks Redis.  When
redis-server is missing the fixtures fail (they never skip) and say how to install it.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import importlib.metadata
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
from channels_redis_fast.speedups import NO_EXTENSIONS, env_flag
from channels_redis_fast.testing import (
    INSTALL_HINT,
    RedisCluster,
    RedisNotInstalled,
    RedisServer,
    SentinelServer,
    find_executable,
    server_version,
    stop_all,
)

SENTINEL_MASTER_NAME = "mymaster"
SENTINEL_PASSWORD = "crf-sentinel-pw"
SHARD_COUNT = 3


def pytest_addoption(parser):
    parser.addoption(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop every async test and fixture runs on (default: asyncio's)",
    )


class _UvloopLoops:
    """Registered by ``--loop uvloop``: pytest-asyncio makes every test's loop with uvloop."""

    def pytest_asyncio_loop_factories(self, config, item):
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config):
    if config.getoption("--loop") != "uvloop":
        return
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(f"--loop uvloop: {exc} (pip install uvloop; not on Windows)") from exc
    # An older pytest-asyncio would ignore the hook and run everything on asyncio's loop.
    if not hasattr(config.hook, "pytest_asyncio_loop_factories"):
        raise pytest.UsageError("--loop uvloop needs pytest-asyncio >= 1.4 (its loop factory hook)")
    config.pluginmanager.register(_UvloopLoops(), "crf-uvloop")


def pytest_report_header(config):
    try:
        binary = find_executable("redis-server")
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    except RedisNotInstalled as exc:
        version = f"NOT FOUND: {exc}"
    loop = config.getoption("--loop")
    if loop == "uvloop":
        loop += " " + importlib.metadata.version("uvloop")
    return [
        f"channels_redis_fast {channels_redis_fast.__version__}: "
        f"IMPLEMENTATION={channels_redis_fast.IMPLEMENTATION} from {Path(channels_redis_fast.__file__).parent}",
        f"redis: {version}",
        f"event loop: {loop}",
    ]


def pytest_sessionstart(session):
    # `make test` sets this: the suite must exercise the installed package, not the source tree.
    if env_flag("CHANNELS_REDIS_FAST_TEST_INSTALLED"):
        package_dir = Path(channels_redis_fast.__file__).resolve().parent
        if package_dir == (_REPO_ROOT / "channels_redis_fast").resolve():
            raise pytest.UsageError(
                f"channels_redis_fast was imported from the source tree ({package_dir}), "
                "not from the installed package; run the venv's `pytest` from the repo root."
            )


def pytest_sessionfinish(session, exitstatus):
    stop_all()


def skip_before_redis(version: tuple[int, ...], feature: str) -> None:
    """Skip, saying why, when the server this run uses is older than ``version``."""
    try:
        have = server_version()
    except RedisNotInstalled as exc:
        pytest.fail(f"Cannot run the Redis tests: {exc}", pytrace=False)
    if have < version:
        pytest.skip(
            f"{feature} needs Redis {'.'.join(map(str, version))} or newer; "
            f"this run's {find_executable('redis-server')} is {'.'.join(map(str, have))}"
        )


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


@pytest.fixture(scope="module")
def redis_cluster():
    """A private Redis Cluster (3 primaries + 3 replicas) shared by one test module.

    Tests that fail nodes over, kill them or move slots take ``cluster`` instead, which
    hands it back settled and empty.
    """
    skip_before_redis((7, 0), "Redis Cluster support (CLUSTER SHARDS)")
    cluster = _start(RedisCluster)
    yield cluster
    cluster.close()


# --------------------------------------------------------------------------- function-scoped


@pytest.fixture
def cluster(redis_cluster):
    """The module's cluster with every node running, no migration open, settled, and empty."""
    redis_cluster.reset()
    return redis_cluster


@pytest.fixture
def redis_url(redis_server):
    """URL of the session server, flushed before the test."""
    if not redis_server.running:  # a test stopped it: bring it back for the next ones
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def sync_redis(redis_url):
    """A redis-py client of the session server (flushed for this test)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


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


# ------------------------------------------------------------------------------------ TLS
# The certificates are made here (a CA, a server cert for 127.0.0.1/localhost, a client
# cert). A redis-server built without TLS makes the TLS tests fail with that message.


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, key, cert: x509.Certificate) -> tuple[str, str]:
    key_path = path + ".key"
    cert_path = path + ".crt"
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _issue(ca_key, ca_name, common_name, *, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Python 3.13+ verifies with VERIFY_X509_STRICT, which wants RFC 5280's key
        # identifiers on every certificate in the chain.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory = str(tmp_path_factory.mktemp("tls"))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("crf test CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, _ = _write(os.path.join(directory, "ca"), ca_key, ca_cert)
    server_cert, server_key = _write(
        os.path.join(directory, "server"), *_issue(ca_key, ca_name, "localhost", server=True)
    )
    client_cert, client_key = _write(
        os.path.join(directory, "client"), *_issue(ca_key, ca_name, "crf client", server=False)
    )
    return {
        "ca_file": ca_file,
        "cert_file": server_cert,
        "key_file": server_key,
        "client_cert_file": client_cert,
        "client_key_file": client_key,
    }


@pytest.fixture(scope="module")
def tls_server(certs):
    server = RedisServer(tls={**certs, "auth_clients": "no"})
    yield server
    server.close()

# ------------------------------------------------------------------------------- helpers


async def receive_soon(layer, channel: str, timeout: float = 5.0):
    """``layer.receive(channel)``, failing with TimeoutError after ``timeout`` seconds.

    The bound only turns a lost message into a failure instead of a hung test.
    """
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def nothing_arrives(layer, channel: str, seconds: float = 0.3) -> None:
    """Fail if a message for ``channel`` is received within ``seconds``."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), seconds)


async def until(predicate, timeout: float = 5.0, what: str = "the condition"):
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    For waiting on a state another connection brings about (a subscriber socket, a
    server); the bound only turns a hang into a failure, it never decides a result.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
