"""End-to-end workloads as pytest-benchmark tests: one group per workload, one row per layer.

    pytest bench/test_e2e.py --benchmark-only --benchmark-group-by=group
    pytest bench/test_e2e.py --benchmark-only --benchmark-json=e2e.json -k "stream and not sharded"

A round delivers a fixed number of messages (the same for every layer of a workload, so
the times compare directly); ``extra_info`` carries deliveries/s and latency. Rows whose
layer is missing (our pub/sub layer before it lands) are skipped. ``E2E_SCALE=4`` makes
every round four times bigger. ``bench/run.py`` is the time-boxed comparison with ratios.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import channels_redis_fast
import workloads as wl
from channels_redis_fast.testing import RedisServer

SCALE = float(os.environ.get("E2E_SCALE", "1"))
ROUNDS = int(os.environ.get("E2E_ROUNDS", "3"))

# Messages per round: small enough that channels_redis core finishes a round in seconds.
COUNTS = {
    "roundtrip": 300,
    "stream": 600,
    "many_consumers": 200,
    "group_fanout": 20,  # group_sends, 500 deliveries each
    "worker_queue": 300,
    "stream_encrypted": 600,
    "stream_sharded": 600,
    "group_sharded": 20,
    "latency": 600,
}

_AVAILABLE, _SKIPPED = wl.available_layers()
_AVAILABLE_NAMES = {s.name for s in _AVAILABLE}


def _params():
    for name, cls in wl.WORKLOADS.items():
        for spec in wl.ALL_LAYERS:
            marks = []
            if spec.name not in _AVAILABLE_NAMES:
                marks.append(pytest.mark.skip(reason=f"{spec.name} not importable: {_SKIPPED.get(spec.name)}"))
            elif spec.kind == "pubsub" and not cls.pubsub_ok:
                marks.append(pytest.mark.skip(reason=f"{name} does not apply to pub/sub"))
            yield pytest.param(name, spec, id=f"{name}-{spec.name}", marks=marks)


@pytest.fixture(scope="module")
def servers():
    started = [RedisServer() for _ in range(max(cls.shards for cls in wl.WORKLOADS.values()))]
    yield started
    for server in started:
        server.close()


@pytest.mark.parametrize("name,spec", list(_params()))
def test_e2e(benchmark, servers, name, spec):
    cls = wl.WORKLOADS[name]
    count = max(1, int(COUNTS[name] * SCALE))
    for server in servers:
        server.flushall()
    loop = asyncio.new_event_loop()
    workload = cls(spec, [s.url for s in servers])
    results = []

    def one_round():
        results.append(loop.run_until_complete(wl.run_counted(workload, count)))

    try:
        loop.run_until_complete(asyncio.wait_for(workload.setup(), 60))
        # Warm-up outside the timings: connections, scripts, subscriptions.
        loop.run_until_complete(wl.run_counted(workload, max(1, count // 4)))
        benchmark.group = name
        benchmark.extra_info.update(
            layer=spec.name,
            messages_per_round=count,
            deliveries_per_round=count * cls.fanout,
            implementation=channels_redis_fast.IMPLEMENTATION,
        )
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    finally:
        loop.run_until_complete(workload.teardown())
        loop.close()
    best = max(results, key=lambda r: r["rate"])
    benchmark.extra_info["deliveries_per_s_best"] = round(best["rate"], 1)
    if best["latency"]:
        benchmark.extra_info["latency_p50_ms"] = round(best["latency"]["p50_ms"], 3)
        benchmark.extra_info["latency_p99_ms"] = round(best["latency"]["p99_ms"], 3)
    assert all(r["lost"] == 0 for r in results)
