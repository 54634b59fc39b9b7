"""TLS: rediss:// URLs, client certificates and sentinel-discovered TLS masters, for both layers.

The certificates and the TLS server come from conftest.py (``certs``, ``tls_server``). A
redis-server built without TLS makes these tests fail with that message; they never skip.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
import redis.exceptions

from channels_redis_fast.core import RedisChannelLayer
from channels_redis_fast.pubsub import RedisPubSubChannelLayer
from channels_redis_fast.testing import RedisServer, SentinelServer


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
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            await asyncio.wait_for(layer.send("tls.x", {"type": "x"}), 10)
        # The refusal itself, not its wording (redis-py before 5.0.8 drops the reason from
        # the message): the handshake failed on verifying the certificate.
        assert any(isinstance(error, ssl.SSLCertVerificationError) for error in _chain(info.value)), info.value
    finally:
        await layer.close_pools()


def _chain(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


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
