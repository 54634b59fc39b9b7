"""``python -m channels_redis_fast check`` on a Redis Cluster entry, run as operators run it:
the installed package in a subprocess, its ``--json`` report and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from channels_redis_fast.testing import LOOPBACK, free_port


def _report(*args: str, env: dict | None = None) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "channels_redis_fast", "check", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=tempfile.gettempdir(),  # import the installed package, not the checkout
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _kinds(findings: list[dict]) -> list[str]:
    return [finding["kind"] for finding in findings]


def test_a_healthy_cluster_lists_its_primaries_and_full_slot_coverage(cluster):
    status, report = _report("--cluster", cluster.primaries()[1].url)
    assert status == 0, report
    found = report["cluster"]
    assert found["status"] == "ok" and found["findings"] == []
    assert found["covered"] == 16384 and found["uncovered"] == []
    primaries = cluster.primaries()
    assert [p["address"] for p in found["primaries"]] == [f"{LOOPBACK}:{node.port}" for node in primaries]
    assert sum(p["slot_count"] for p in found["primaries"]) == 16384
    for entry, node in zip(found["primaries"], primaries):
        assert entry["state"] == "ok"
        assert entry["replicas"] == [f"{LOOPBACK}:{r.port}" for r in cluster.replicas_of(node)]
    # Then every primary is checked as a shard, in cluster mode.
    assert [shard["host"] for shard in report["shards"]] == [f"{LOOPBACK}:{node.port}" for node in primaries]
    assert {shard["mode"] for shard in report["shards"]} == {"cluster"}
    assert {shard["status"] for shard in report["shards"]} == {"ok"}


def test_unreachable_startup_nodes_are_named(cluster):
    dead = [f"redis://{LOOPBACK}:{free_port()}" for _ in range(2)]
    status, report = _report("--cluster", ",".join(dead))
    assert status == 1
    found = report["cluster"]
    assert [node["reachable"] for node in found["startup"]] == [False, False]
    assert _kinds(found["findings"]) == ["unreachable"]
    for url in dead:
        assert url in found["findings"][0]["message"]
    assert report["shards"] == []

    # One dead startup node beside a live one: a warning naming it (the layer uses the other).
    status, report = _report("--cluster", dead[0], "--cluster", cluster.urls[0])
    assert status == 0
    (finding,) = report["cluster"]["findings"]
    assert finding["level"] == "warning" and dead[0] in finding["message"]
    assert len(report["shards"]) == 3
    status, _ = _report("--cluster", f"{dead[0]},{cluster.urls[0]}", "--strict")
    assert status == 3


def test_uncovered_slots_and_a_node_that_says_the_cluster_is_down(cluster):
    node = cluster.primaries()[0]
    first, _ = next(v.slots[0] for v in node.view() if v.node_id == node.node_id)
    node.client().execute_command("CLUSTER", "DELSLOTSRANGE", first, first + 99)
    try:
        status, report = _report("--cluster", node.url)
    finally:
        node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, first + 99)
        cluster.wait_settled()
    assert status == 1
    found = report["cluster"]
    assert found["status"] == "error"
    assert found["uncovered"] == [[first, first + 99]] and found["covered"] == 16384 - 100
    assert sorted(_kinds(found["findings"])) == ["cluster", "slots"]
    down = next(f for f in found["findings"] if f["kind"] == "cluster")
    assert f"{LOOPBACK}:{node.port}" in down["message"] and "cluster_state:fail" in down["message"]


def test_a_plain_host_entry_at_a_cluster_node_names_the_cluster_option(cluster):
    status, report = _report("--hosts", cluster.urls[0])
    assert status == 1
    (shard,) = report["shards"]
    (finding,) = shard["findings"]
    assert finding["kind"] == "mode" and '"cluster"' in finding["message"]
    assert "cluster" not in report


def test_a_cluster_entry_at_a_plain_server_says_it_is_no_cluster(redis_url):
    status, report = _report("--cluster", redis_url)
    assert status == 1
    (finding,) = report["cluster"]["findings"]
    assert finding["level"] == "error" and "not a Redis Cluster node" in finding["message"]
    assert report["shards"] == []


def test_a_cluster_entry_in_django_settings(cluster, tmp_path):
    layers = {"default": {"BACKEND": "channels_redis_fast.core.RedisChannelLayer",
                          "CONFIG": {"hosts": [cluster.hosts_entry()], "prefix": "{fromsettings}"}}}
    (tmp_path / "crf_cluster_settings.py").write_text(f"CHANNEL_LAYERS = {layers!r}\n")
    status, report = _report("--settings", "crf_cluster_settings", env={"PYTHONPATH": str(tmp_path)})
    assert status == 0, report
    assert report["layer"]["prefix"] == "{fromsettings}"
    assert report["cluster"]["covered"] == 16384 and len(report["shards"]) == 3


def test_the_pubsub_layer_is_checked_for_sharded_pubsub(cluster):
    # Its probe channel lives on one node: the others answer MOVED, which still says the
    # command is known and allowed.
    status, report = _report("--cluster", cluster.primaries()[0].url, "--backend", "pubsub")
    assert status == 0, report
    assert len(report["shards"]) == len(cluster.primaries())
    for shard in report["shards"]:
        assert shard["status"] == "ok", shard
        assert shard["permitted"] == ["SPUBLISH", "SSUBSCRIBE", "SUNSUBSCRIBE"]
