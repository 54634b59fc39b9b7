"""Sync callers: ``async_to_sync(layer.send)`` per call, as a WSGI view or Celery task does it.

    python bench/sync_callers.py [--calls 300] [--runs 3]

For both layers, over plain TCP and over TLS (self-signed RSA 2048, loopback), it prints
calls per second and the connections the server saw opened, once with the sync bridge
(sync_bridge.py) and once without it ("before": the per-call-loop check is switched off,
so every call opens its own connection, as the layers did before the bridge), next to the
``async_to_sync`` of a coroutine that does nothing (the floor). Best of ``--runs``.
Private Redis servers are started on free loopback ports.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
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


def _measure(server: RedisServer, make: Callable[[], Any], calls: int, runs: int) -> tuple[float, int]:
    best = 0.0
    opened = 0
    for _ in range(runs):
        layer = make()
        send = async_to_sync(layer.send)
        before = server.client().info("stats")["total_connections_received"]
        started = time.perf_counter()
        for n in range(calls):
            send("bench.sync", {"type": "bench", "n": n})
        elapsed = time.perf_counter() - started
        opened = server.client().info("stats")["total_connections_received"] - before
        best = max(best, calls / elapsed)
        closer = layer.close_pools if hasattr(type(layer), "close_pools") else layer.close
        async_to_sync(closer)()
        server.flushall()
    return best, opened


def _floor(calls: int, runs: int) -> float:
    async def nothing() -> None:
        return None

    call = async_to_sync(nothing)
    best = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = max(best, calls / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        plain = RedisServer()
        tls = RedisServer(tls=_self_signed(directory))
        try:
            tls_host = {"address": tls.url, "ssl_cert_reqs": "none"}
            print(f"async_to_sync no-op floor: {_floor(args.calls, args.runs):,.0f} calls/s")
            print(f"{args.calls} x async_to_sync(layer.send), best of {args.runs}:")
            print(f"{'layer':8} {'transport':9} {'before calls/s':>15} {'opened':>7} {'after calls/s':>14} {'opened':>7}")
            for label, cls in (("core", channels_redis_fast.core.RedisChannelLayer),
                               ("pubsub", channels_redis_fast.pubsub.RedisPubSubChannelLayer)):
                for transport, server, host in (("tcp", plain, plain.url), ("tls", tls, tls_host)):
                    def make(cls: Any = cls, host: Any = host) -> Any:
                        return cls(hosts=[host], capacity=args.calls * 2)

                    row = []
                    for enabled in (False, True):
                        _bridge(enabled)
                        row += _measure(server, make, args.calls, args.runs)
                    print(f"{label:8} {transport:9} {row[0]:15,.0f} {row[1]:7} {row[2]:14,.0f} {row[3]:7}")
        finally:
            _bridge(True)
            plain.close()
            tls.close()


if __name__ == "__main__":
    main()
