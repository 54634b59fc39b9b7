"""TLS: rediss:// URLs, client certificates and sentinel-discovered TLS masters, for both layers.

The certificates are made here (a CA, a server cert for 127.0.0.1/localhost, a client cert).
A redis-server built without TLS makes these tests fail with that message; they never skip.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing import RedisServer, SentinelServer


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


@pytest.fixture(scope="module")
def mtls_server(certs):
    """Requires a client certificate signed by the CA."""
    server = RedisServer(tls={**certs, "auth_clients": "yes"})
    yield server
    server.close()


async def _core_round_trip(hosts: list) -> None:
    layer = RedisChannelLayer(hosts=hosts)
    try:
        await layer.send("tls.work", {"type": "tls.hello", "n": 1})
        assert await asyncio.wait_for(layer.receive("tls.work"), 5) == {"type": "tls.hello", "n": 1}
        channel = await layer.new_channel()
        await layer.group_add("tlsgroup", channel)
        await layer.group_send("tlsgroup", {"type": "tls.group"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "tls.group"
        await layer.flush()
    finally:
        await layer.close_pools()


async def _pubsub_round_trip(hosts: list) -> None:
    layer = RedisPubSubChannelLayer(hosts=hosts)
    try:
        channel = await layer.new_channel()
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.2)  # let the subscription land
        await layer.send(channel, {"type": "tls.pubsub"})
        assert (await asyncio.wait_for(receiving, 5))["type"] == "tls.pubsub"
        await layer.group_add("tlsps", channel)
        await layer.group_send("tlsps", {"type": "tls.pubsub.group"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "tls.pubsub.group"
    finally:
        await layer.flush()
        await layer.close()


def test_server_is_tls_only(tls_server):
    assert tls_server.url.startswith("rediss://127.0.0.1:")
    # `port 0`: nothing answers in plain text.
    with open(tls_server.conffile) as fh:
        config = fh.read()
    assert "port 0\n" in config and f"tls-port {tls_server.port}" in config
    import redis

    plain = redis.Redis(host=tls_server.host, port=tls_server.port, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


@pytest.mark.asyncio
async def test_rediss_url_core_and_pubsub(tls_server, certs):
    host = {"address": tls_server.url, "ssl_cert_reqs": "required", "ssl_ca_certs": certs["ca_file"]}
    await _core_round_trip([host])
    await _pubsub_round_trip([host])


@pytest.mark.asyncio
async def test_self_signed_accepted_with_cert_reqs_none(tls_server):
    # The documented Heroku-style setting: encrypt, but do not verify the server.
    await _core_round_trip([{"address": tls_server.url, "ssl_cert_reqs": None}])


@pytest.mark.asyncio
async def test_unverified_server_is_refused(tls_server):
    layer = RedisChannelLayer(hosts=[{"address": tls_server.url, "ssl_cert_reqs": "required"}])
    try:
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(layer.send("tls.x", {"type": "x"}), 10)
        assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower()
    finally:
        await layer.close_pools()


@pytest.mark.asyncio
async def test_client_certificate_required(mtls_server, certs):
    with open(mtls_server.conffile) as fh:
        assert "tls-auth-clients yes" in fh.read()
    host = {
        "address": mtls_server.url,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": certs["ca_file"],
        "ssl_certfile": certs["client_cert_file"],
        "ssl_keyfile": certs["client_key_file"],
    }
    await _core_round_trip([host])
    await _pubsub_round_trip([host])
    # Without the client certificate the server hangs up during the handshake.
    layer = RedisChannelLayer(
        hosts=[{"address": mtls_server.url, "ssl_cert_reqs": "required", "ssl_ca_certs": certs["ca_file"]}]
    )
    try:
        with pytest.raises(Exception):
            await asyncio.wait_for(layer.send("tls.nocert", {"type": "x"}), 10)
    finally:
        await layer.close_pools()


@pytest.mark.asyncio
async def test_sentinel_with_tls_master(tls_server, certs):
    sentinel = SentinelServer(tls_server, name="tlsmaster")
    try:
        assert sentinel.get_master_addr() == (tls_server.host, tls_server.port)
        host = sentinel.hosts_entry(
            ssl=True,
            ssl_cert_reqs="required",
            ssl_ca_certs=certs["ca_file"],
            ssl_certfile=certs["client_cert_file"],
            ssl_keyfile=certs["client_key_file"],
        )
        await _core_round_trip([host])
        await _pubsub_round_trip([host])
    finally:
        sentinel.close()
