"""Sync callers: ``async_to_sync(layer.send)`` per call, as a WSGI view or Celery task does it.

    python bench/sync_callers.py [--calls 300] [--runs 5] [--report-only]

For both layers and channels_redis core, ``send`` and ``group_send`` (a group of one
member), over plain TCP and over TLS (self-signed RSA 2048, loopback): calls per second and
the connections the server accepted (``INFO stats``). Our layers run twice: with the sync
bridge (sync_bridge.py) and "before", with the per-call-loop check switched off, so that
every call opens its own connection as the layers did before the bridge. Beside them, the
``async_to_sync`` of a coroutine that does nothing (the floor), measured between the runs.
Medians of ``--runs``. Then the verdicts against issue 22's targets; a missed one exits with
status 1 unless ``--report-only``. Private Redis servers start on free loopback ports.
channels-nats (the sync target's peer: at least 2x its calls per second) runs over plain TCP
on a private nats-server (bench/peers.py), its connections counted by the server's ``/varz``;
where channels-nats or nats-server is missing its rows are skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import ipaddress
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from asgiref.sync import async_to_sync
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import channels_redis_fast.core
import channels_redis_fast.pubsub
import peers
from channels_redis_fast.testing import RedisServer


def _self_signed(directory: str) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = os.path.join(directory, "s.crt"), os.path.join(directory, "s.key")
    with open(key_file, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(cert_file, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    return {"cert_file": cert_file, "key_file": key_file, "ca_file": cert_file, "auth_clients": "no"}


def _bridge(enabled: bool) -> None:
    # The layers test ``PER_CALL_LOOPS and loop in PER_CALL_LOOPS``: an empty dict of
    # their own makes them take the per-loop path they always took before.
    from channels_redis_fast import sync_bridge

    loops = sync_bridge.PER_CALL_LOOPS if enabled else {}
    channels_redis_fast.core.PER_CALL_LOOPS = loops  # type: ignore[attr-defined]
    channels_redis_fast.pubsub.PER_CALL_LOOPS = loops  # type: ignore[attr-defined]


async def _nothing() -> None:
    return None


def _floor(calls: int) -> float:
    call = async_to_sync(_nothing)
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return calls / (time.perf_counter() - started)


def _close(layer: Any) -> None:
    closer = layer.close_pools if hasattr(type(layer), "close_pools") else layer.close
    async_to_sync(closer)()


def _connections(server: Any) -> int:
    if isinstance(server, peers.NatsServer):
        return server.total_connections()
    return int(server.client().info("stats")["total_connections_received"])


def _once(server: Any, layer: Any, op: str, calls: int) -> tuple[float, int]:
    if op == "send":
        call = async_to_sync(layer.send)
        target = "bench.sync"
    else:
        call = async_to_sync(layer.group_send)
        target = "benchroom"
        if "pubsub" not in type(layer).__module__ and "nats" not in type(layer).__module__:
            # Pub/sub adds only channels of its own process (channels-nats too); a PUBLISH
            # costs the same whether anyone listens.
            async_to_sync(layer.group_add)(target, "bench.member")
    before = _connections(server)
    started = time.perf_counter()
    for n in range(calls):
        call(target, {"type": "bench", "n": n})
    elapsed = time.perf_counter() - started
    opened = _connections(server) - before
    return calls / elapsed, opened


NATS = "channels-nats"
LAYERS = {
    "channels_redis core": ("channels_redis.core", "RedisChannelLayer", None),
    "this core, before": ("channels_redis_fast.core", "RedisChannelLayer", False),
    "this core": ("channels_redis_fast.core", "RedisChannelLayer", True),
    "this pubsub, before": ("channels_redis_fast.pubsub", "RedisPubSubChannelLayer", False),
    "this pubsub": ("channels_redis_fast.pubsub", "RedisPubSubChannelLayer", True),
    NATS: ("channels_nats", "NatsChannelLayer", None),
}


def _measure(label: str, server: RedisServer, host: Any, op: str, calls: int, runs: int,
             floors: list[float]) -> tuple[float, int] | None:
    module, name, bridge = LAYERS[label]
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        return None
    if label == NATS:
        pass  # a nats:// URL as it is
    elif bridge is None:
        # channels_redis 4.3 with redis-py 8 needs socket_timeout None (its issue 422).
        host = {**host, "socket_timeout": None} if isinstance(host, dict) else {"address": host, "socket_timeout": None}
    else:
        _bridge(bridge)
    rates, opened = [], 0
    for _ in range(runs):
        floors.append(_floor(calls))
        layer = cls(servers=[host], capacity=calls * 2) if label == NATS else cls(hosts=[host], capacity=calls * 2)
        try:
            rate, opened = _once(server, layer, op, calls)
        finally:
            _close(layer)
            if label != NATS:
                server.flushall()
        rates.append(rate)
    _bridge(True)
    return statistics.median(rates), opened


def _verdicts(rows: dict, floor: float, calls: int) -> list[tuple[str, bool]]:
    out = []
    for op in ("send", "group_send"):
        for label in ("this core", "this pubsub"):
            rate = rows[(label, op, "tcp")][0]
            out.append((f"{label} {op} tcp: {rate / floor:.2f}x the floor (target 0.7x)", rate >= 0.7 * floor))
            nats = rows.get((NATS, op, "tcp"))
            if nats:
                ratio = rate / nats[0]
                out.append((f"{label} {op} tcp: {ratio:.2f}x channels-nats (target 2x)", ratio >= 2))
            anchor = rows.get(("channels_redis core", op, "tls"))
            if anchor:
                ratio = rows[(label, op, "tls")][0] / anchor[0]
                out.append((f"{label} {op} tls: {ratio:.0f}x channels_redis (target 20x)", ratio >= 20))
    opened = max(v[1] for k, v in rows.items() if k[0] in ("this core", "this pubsub"))
    out.append((f"connections opened by {calls} sync calls on one shard: at most {opened} (target 2 per 1,000)",
                opened <= 2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--report-only", action="store_true", help="exit 0 even if a target is missed")
    args = parser.parse_args()
    rows: dict = {}
    floors: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        plain = RedisServer()
        tls = RedisServer(tls=_self_signed(directory))
        nats_missing = peers.unavailable()
        nats = None if nats_missing else peers.NatsServer(monitor=True)
        if nats_missing:
            print(f"skipped {NATS}: {nats_missing}")
        else:
            print(f"{NATS}: {peers.label(nats.version)}, on a private server at {nats.url}")
        try:
            transports = (("tcp", plain, plain.url), ("tls", tls, {"address": tls.url, "ssl_cert_reqs": "none"}))
            for op in ("send", "group_send"):
                for transport, server, host in transports:
                    for label in LAYERS:
                        where, target = server, host
                        if label == NATS:
                            if nats is None or transport != "tcp":
                                continue  # TLS is a Redis row: channels-nats is compared over plain TCP
                            where, target = nats, nats.url
                        result = _measure(label, where, target, op, args.calls, args.runs, floors)
                        if result is not None:
                            rows[(label, op, transport)] = result
        finally:
            plain.close()
            tls.close()
            if nats is not None:
                nats.close()
    # Medians: other work on a shared machine moves single runs by 2x and more.
    floor = statistics.median(floors)
    print(f"{args.calls} x async_to_sync(...) per row, median of {args.runs}; "
          f"async_to_sync no-op floor {floor:,.0f} calls/s (median of {len(floors)}, one before each run)")
    print(f"{'layer':22} {'call':11} {'transport':9} {'calls/s':>8} {'opened':>7} {'x floor':>8}")
    for (label, op, transport), (rate, opened) in rows.items():
        print(f"{label:22} {op:11} {transport:9} {rate:8,.0f} {opened:7} {rate / floor:8.2f}")
    missed = 0
    for text, met in _verdicts(rows, floor, args.calls):
        print(f"{'met   ' if met else 'MISSED'} {text}")
        missed += not met
    return 1 if missed and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())
