"""``python -m channels_redis_fast check`` against real servers, run as operators run it.

Each case runs the installed package in a subprocess whose working directory is outside
the checkout, and reads its text report, its ``--json`` report and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import channels_redis_fast
from channels_redis_fast.testing import LOOPBACK, RedisServer, free_port

PASSWORD = "crf-check-password"
README = Path(__file__).resolve().parent.parent / "README.rst"


def _check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "channels_redis_fast", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=tempfile.gettempdir(),  # import the installed package, not the checkout
    )


def _report(*args: str, env: dict | None = None) -> tuple[int, dict]:
    result = _check(*args, "--json", env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _findings(shard: dict, kind: str) -> list[dict]:
    return [finding for finding in shard["findings"] if finding["kind"] == kind]


def _user_url(server: RedisServer, user: str, password: str = PASSWORD) -> str:
    return f"redis://{user}:{password}@{server.host}:{server.port}"


@pytest.fixture(scope="module")
def acl_server():
    """A server with users that each lack something the layers need."""
    server = RedisServer()
    admin = server.client()
    users = {
        "no-bzpopmin": "~* &* +@all -bzpopmin",
        "no-unblock": "~* &* +@all -client|id -client|unblock",
        "other-keys": "~other* &* +@all",
        "no-publish": "~* &* +@all -publish",
    }
    for name, rule in users.items():
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule.split())
    yield server
    server.close()


@pytest.fixture(scope="module")
def password_server():
    server = RedisServer(password=PASSWORD)
    yield server
    server.close()


# ------------------------------------------------------------------------- unreachable


def test_refused_port_is_an_error():
    url = f"redis://{LOOPBACK}:{free_port()}"
    result = _check("--hosts", url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[ERROR]" in result.stdout and "connection refused" in result.stdout
    assert "reachable          no" in result.stdout

    status, report = _report("--hosts", url)
    assert status == 1 and report["exit_status"] == 1
    (shard,) = report["shards"]
    assert shard["status"] == "error" and shard["reachable"] is False
    assert [finding["kind"] for finding in shard["findings"]] == ["refused"]


def test_one_bad_shard_of_two_fails_the_check(redis_url):
    status, report = _report("--hosts", redis_url, "--hosts", f"redis://{LOOPBACK}:{free_port()}")
    assert status == 1
    assert [shard["status"] for shard in report["shards"]] == ["ok", "error"]


def test_wrong_password_says_authentication(password_server):
    wrong = f"redis://:not-{PASSWORD}@{password_server.host}:{password_server.port}"
    result = _check("--hosts", wrong)
    assert result.returncode == 1
    assert "authentication failed" in result.stdout
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr

    for url in (wrong, f"redis://{password_server.host}:{password_server.port}"):  # and none at all
        status, report = _report("--hosts", url)
        (shard,) = report["shards"]
        assert status == 1 and shard["reachable"] is False
        assert [finding["kind"] for finding in shard["findings"]] == ["auth"]

    status, report = _report("--hosts", password_server.url)
    assert status == 0 and report["shards"][0]["status"] == "ok"


def test_untrusted_certificate_is_a_tls_error(tls_server, certs):
    # The server's certificate is signed by the tests' own CA, which the client was not given.
    status, report = _report("--hosts", tls_server.url)
    (shard,) = report["shards"]
    assert status == 1 and shard["reachable"] is False
    assert [finding["kind"] for finding in shard["findings"]] == ["tls"]
    assert "TLS failed" in shard["findings"][0]["message"]
    assert "certificate verify failed" in shard["findings"][0]["message"]

    trusted = {"address": tls_server.url, "ssl_ca_certs": certs["ca_file"]}
    status, report = _report("--hosts", json.dumps(trusted))
    assert status == 0 and report["shards"][0]["status"] == "ok"


# -------------------------------------------------------------------------------- ACL


def test_missing_command_is_named(acl_server):
    result = _check("--hosts", _user_url(acl_server, "no-bzpopmin"))
    assert result.returncode == 1
    error_lines = [line for line in result.stdout.splitlines() if line.strip().startswith("ERROR")]
    assert len(error_lines) == 1 and "BZPOPMIN" in error_lines[0] and "+bzpopmin" in error_lines[0]

    status, report = _report("--hosts", _user_url(acl_server, "no-bzpopmin"))
    (shard,) = report["shards"]
    (finding,) = _findings(shard, "acl")
    assert finding["level"] == "error" and "BZPOPMIN" in finding["message"]
    assert "BZPOPMIN" not in shard["permitted"] and "ZPOPMIN" in shard["permitted"]


def test_missing_optional_command_is_a_warning(acl_server):
    status, report = _report("--hosts", _user_url(acl_server, "no-unblock"))
    (shard,) = report["shards"]
    assert status == 0 and shard["status"] == "warning"
    acl = _findings(shard, "acl")
    assert [f["level"] for f in acl] == ["warning", "warning"]
    assert "may not run CLIENT ID" in acl[0]["message"] and "brpop_timeout" in acl[0]["message"]
    assert "may not run CLIENT UNBLOCK" in acl[1]["message"]
    assert {"CLIENT ID", "CLIENT UNBLOCK"}.isdisjoint(shard["permitted"])
    assert _check("--hosts", _user_url(acl_server, "no-unblock"), "--strict").returncode == 3


def test_keys_outside_the_users_patterns(acl_server):
    status, report = _report("--hosts", _user_url(acl_server, "other-keys"))
    (shard,) = report["shards"]
    (finding,) = _findings(shard, "acl")
    assert status == 1 and finding["level"] == "error"
    assert "~asgi*" in finding["message"] and "BZPOPMIN" in finding["message"]
    # A prefix the user may use passes.
    status, report = _report("--hosts", _user_url(acl_server, "other-keys"), "--prefix", "other")
    assert status == 0 and report["shards"][0]["status"] == "ok"


def test_pubsub_layer_needs_publish(acl_server):
    url = _user_url(acl_server, "no-publish")
    status, report = _report("--hosts", url, "--backend", "pubsub")
    (shard,) = report["shards"]
    (finding,) = _findings(shard, "acl")
    assert status == 1 and "PUBLISH" in finding["message"]
    assert shard["permitted"] == ["SUBSCRIBE", "UNSUBSCRIBE"]
    # The core layer does not publish: the same user is fine for it.
    assert _report("--hosts", url)[0] == 0


def test_readme_acl_rules_pass(acl_server):
    """The least-privilege users README.rst documents are enough for `check`."""
    rules = re.findall(r"ACL SETUSER (\S+) on >PASSWORD (.+)", README.read_text())
    assert len(rules) == 2, rules
    admin = acl_server.client()
    for name, rule in rules:
        admin.execute_command("ACL", "SETUSER", f"readme-{name}", "reset", "on", f">{PASSWORD}", *rule.split())
    core_user, pubsub_user = (f"readme-{name}" for name, _ in rules)

    status, report = _report("--hosts", _user_url(acl_server, core_user))
    (shard,) = report["shards"]
    assert status == 0, shard
    assert not _findings(shard, "acl")
    assert len(shard["permitted"]) == 15
    # The rule does not allow INFO: the report says what it could not learn.
    (info,) = _findings(shard, "info")
    assert info["level"] == "warning" and "maxmemory-policy" in info["message"]

    status, report = _report("--hosts", _user_url(acl_server, pubsub_user), "--backend", "pubsub")
    assert status == 0 and report["shards"][0]["permitted"] == ["PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE"]


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lfu"])
def test_evicting_policy_is_a_warning_naming_the_data(fresh_redis, policy):
    fresh_redis.client().config_set("maxmemory", 64 * 1024 * 1024)
    fresh_redis.client().config_set("maxmemory-policy", policy)
    result = _check("--hosts", fresh_redis.url)
    assert result.returncode == 0, result.stdout
    (warning,) = [line for line in result.stdout.splitlines() if line.strip().startswith("WARNING")]
    assert policy in warning and "queued messages and group memberships" in warning
    assert "noeviction" in warning
    if policy.startswith("volatile-"):
        assert "every key the layer writes has a TTL" in warning

    status, report = _report("--hosts", fresh_redis.url)
    (shard,) = report["shards"]
    assert shard["maxmemory"] == 64 * 1024 * 1024 and shard["maxmemory_policy"] == policy
    assert [f["kind"] for f in shard["findings"]] == ["eviction"]
    assert _check("--hosts", fresh_redis.url, "--strict").returncode == 3
    # The pub/sub layer keeps nothing in Redis that could be evicted.
    status, report = _report("--hosts", fresh_redis.url, "--backend", "pubsub")
    assert status == 0 and report["shards"][0]["findings"] == []


# ---------------------------------------------------------------------------- healthy


def test_healthy_server_report(redis_server, redis_url):
    config = {"capacity": 7, "expiry": 11, "group_expiry": 99, "channel_capacity": {"http.*": 3}}
    args = ("--hosts", redis_url, "--prefix", "chk", "--config", json.dumps(config))
    result = _check(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    version = redis_server.client().info("server")["redis_version"]
    out = result.stdout
    assert f"redis {version}" in out
    assert re.search(r"mode +standalone", out)
    assert re.search(r"round trip +\d+\.\d\d ms", out)
    assert re.search(r"maxmemory-policy +noeviction", out)
    for name, value in (("capacity", "7"), ("expiry", "11"), ("group_expiry", "99"), ("prefix", "chk")):
        assert re.search(rf"^  {name} +{value}$", out, re.M), name
    assert re.search(rf"^  implementation +{channels_redis_fast.IMPLEMENTATION}$", out, re.M)
    assert "RedisChannelLayer" in out and "WARNING" not in out and "ERROR" not in out
    assert "1 shard(s): 1 ok, 0 with warnings, 0 with errors" in out

    status, report = _report(*args)
    (shard,) = report["shards"]
    assert status == 0 and shard["status"] == "ok" and shard["findings"] == []
    assert shard["server"] == "redis" and shard["version"] == version and shard["mode"] == "standalone"
    assert shard["rtt_ms"] > 0
    assert report["layer"]["channel_capacity"] == {"http.*": 3}
    assert report["layer"]["backend"] == "channels_redis_fast.core.RedisChannelLayer"
    assert redis_server.client().keys("*") == []  # the probes wrote nothing


def test_sentinel_entry(sentinel, sentinel_hosts):
    status, report = _report("--hosts", json.dumps(sentinel_hosts[0]))
    (shard,) = report["shards"]
    assert status == 0, shard
    assert shard["mode"] == "sentinel" and shard["host"] == f"sentinel:{sentinel.name}"
    master = sentinel.master_server
    assert shard["master"] == f"{master.host}:{master.port}"


def test_sentinel_without_the_master_name(sentinel, sentinel_hosts):
    entry = {**sentinel_hosts[0], "master_name": "nosuchmaster"}
    status, report = _report("--hosts", json.dumps(entry))
    (shard,) = report["shards"]
    assert status == 1 and shard["reachable"] is False
    assert [f["kind"] for f in shard["findings"]] == ["sentinel"]
    assert "nosuchmaster" in shard["findings"][0]["message"]


# --------------------------------------------------------------------------- settings


def _settings(tmp_path: Path, module: str, layers: dict) -> dict:
    (tmp_path / f"{module}.py").write_text(f"CHANNEL_LAYERS = {layers!r}\n")
    return {"PYTHONPATH": str(tmp_path)}


def test_django_settings(tmp_path, redis_url):
    env = _settings(
        tmp_path,
        "crf_check_settings",
        {
            "default": {
                "BACKEND": "channels_redis_fast.core.RedisChannelLayer",
                "CONFIG": {"hosts": [redis_url], "prefix": "fromsettings", "capacity": 42},
            },
            "live": {
                "BACKEND": "channels_redis_fast.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [redis_url, f"redis://{LOOPBACK}:{free_port()}"]},
            },
        },
    )
    result = _check("--settings", "crf_check_settings", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crf_check_settings CHANNEL_LAYERS['default']" in result.stdout
    assert re.search(r"^  capacity +42$", result.stdout, re.M)
    assert re.search(r"^  prefix +fromsettings$", result.stdout, re.M)

    status, report = _report("--settings", "crf_check_settings", "--layer", "live", env=env)
    assert status == 1
    assert report["layer"]["backend"] == "channels_redis_fast.pubsub.RedisPubSubChannelLayer"
    assert [shard["status"] for shard in report["shards"]] == ["ok", "error"]

    # DJANGO_SETTINGS_MODULE is the default source, as for manage.py.
    status, report = _report(env={**env, "DJANGO_SETTINGS_MODULE": "crf_check_settings"})
    assert status == 0 and report["layer"]["prefix"] == "fromsettings"


def test_unusable_configuration_exits_2(tmp_path, redis_url):
    env = _settings(
        tmp_path,
        "crf_check_other",
        {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    )
    result = _check("--settings", "crf_check_other", env=env)
    assert result.returncode == 2 and "not a channels_redis_fast layer" in result.stderr
    result = _check("--settings", "crf_check_other", "--layer", "nope", env=env)
    assert result.returncode == 2 and "no layer 'nope'" in result.stderr and "'default'" in result.stderr
    result = _check("--settings", "crf_check_missing_module")
    assert result.returncode == 2 and "crf_check_missing_module" in result.stderr
    result = _check("--hosts", redis_url, "--config", '{"capacity": 1, "no_such_option": 2}')
    assert result.returncode == 2 and "no_such_option" in result.stderr
    result = _check(env={"DJANGO_SETTINGS_MODULE": ""})
    assert result.returncode == 2 and "--hosts" in result.stderr
