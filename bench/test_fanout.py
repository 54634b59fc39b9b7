"""The multi-process fan-out rows (bench/fanout.py) as pytest-benchmark tests.

    pytest bench/test_fanout.py --benchmark-only --benchmark-group-by=group
    pytest bench/test_fanout.py --benchmark-only -k "1000x2 and nats"

One group per row, one test per layer. A round starts the receiving processes and the
publisher, warms them up and makes the row's sends (a fifth of ``bench/run.py``'s, times
``E2E_SCALE``), so its time includes starting processes; ``extra_info`` carries what the row
is about: deliveries per second from the first send to the last receive, send-to-receive
p50/p99, and the time of one ``group_send``. Our layers must lose and duplicate nothing; a
peer's losses are recorded in ``extra_info``. channels-nats rows are skipped with the reason
where channels-nats or nats-server is missing.
"""

from __future__ import annotations

import os

import pytest

import channels_redis_fast
import fanout
import peers
import workloads as wl
from channels_redis_fast.testing import RedisServer

SCALE = float(os.environ.get("E2E_SCALE", "1"))
ROUNDS = int(os.environ.get("E2E_ROUNDS", "1"))
OURS = ("ours-core", "ours-pubsub")

_AVAILABLE, _SKIPPED = wl.available_layers()
_AVAILABLE_NAMES = {s.name for s in _AVAILABLE}
_NATS_MISSING = peers.unavailable()


def _skip(layer: str):
    if layer == peers.NAME:
        return [pytest.mark.skip(reason=_NATS_MISSING)] if _NATS_MISSING else []
    if layer not in _AVAILABLE_NAMES:
        return [pytest.mark.skip(reason=f"{layer} not importable: {_SKIPPED.get(layer)}")]
    return []


def _rows():
    for row in fanout.ROWS:
        for layer in fanout.LAYERS:
            yield pytest.param(row, layer, id=f"{row.name}-{layer}", marks=_skip(layer))


def _latency_rows():
    for members, calls, anchor_calls in fanout.LATENCY_ROWS:
        for layer in fanout.LAYERS:
            yield pytest.param(members, calls, anchor_calls, layer, id=f"group_send_{members}-{layer}",
                               marks=_skip(layer))


@pytest.fixture(scope="module")
def servers():
    redis = RedisServer()
    nats = None if _NATS_MISSING else peers.NatsServer()
    yield redis, nats
    redis.close()
    if nats is not None:
        nats.close()


def _config(servers) -> dict:
    redis, nats = servers
    return {"redis_url": redis.url, "nats_url": nats.url if nats else "",
            "nats_version": nats.version if nats else "?", "loop": os.environ.get("BENCH_LOOP", "asyncio")}


def _record(benchmark, group: str, layer: str, results: list[dict], **info) -> None:
    assert all(not r.get("error") for r in results), [r.get("error") for r in results]
    best = max(results, key=lambda r: r["rate"])
    benchmark.extra_info.update(
        layer=layer, implementation=channels_redis_fast.IMPLEMENTATION, **info,
        deliveries_per_s_best=round(best["rate"], 1),
        latency_p50_ms=round(best["latency"]["p50_ms"], 3), latency_p99_ms=round(best["latency"]["p99_ms"], 3),
        group_send_p50_ms=round(best["group_send"]["p50_ms"], 4),
        group_send_p99_ms=round(best["group_send"]["p99_ms"], 4),
        lost=sum(r["lost"] for r in results), duplicated=sum(r["duplicated"] for r in results),
    )
    if layer in OURS:
        assert sum(r["lost"] for r in results) == 0
        assert sum(r["duplicated"] for r in results) == 0


@pytest.mark.parametrize("row,layer", list(_rows()))
def test_fanout(benchmark, servers, row, layer):
    sends = max(5, int((row.anchor_sends if layer == wl.ANCHOR else row.sends) * SCALE / 5))
    config, results = _config(servers), []

    def one_round():
        servers[0].flushall()
        results.append(fanout.run_row(layer, row.members, row.processes, sends, row.gap_s, config))

    benchmark.group = row.name
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    _record(benchmark, row.name, layer, results, members=row.members, processes=row.processes, sends=sends,
            gap_ms=row.gap_s * 1e3)


@pytest.mark.parametrize("members,calls,anchor_calls,layer", list(_latency_rows()))
def test_group_send_latency(benchmark, servers, members, calls, anchor_calls, layer):
    count = max(5, int((anchor_calls if layer == wl.ANCHOR else calls) * SCALE / 5))
    config, results = _config(servers), []

    def one_round():
        servers[0].flushall()
        results.append(fanout.run_row(layer, members, 1, count, 0.0, config, lockstep=True))

    benchmark.group = fanout.LATENCY
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    _record(benchmark, fanout.LATENCY, layer, results, members=members, calls=count)


def _result(rate: float, p99: float, lost: int = 0) -> dict:
    return {"rate": rate, "latency": {"p50_ms": p99 / 2, "p99_ms": p99}, "lost": lost, "duplicated": 0,
            "lost_all_runs": lost, "duplicated_all_runs": 0, "sends": 10}


def _verdicts(results: dict, workload: str) -> dict[str, bool]:
    return {c["short"]: c["met"] for c in fanout.checks(results, workload)}


def test_gap0_targets_are_ratios_to_channels_nats():
    results = {"fanout_1000x2": {"ours-core": _result(210, 5), "ours-pubsub": _result(290, 5),
                                 "nats": _result(100, 6), "cr-core": _result(10, 50)}}

    assert _verdicts(results, "fanout_1000x2") == {"core vs nats": True, "core p99": True,
                                                   "pubsub vs nats": False, "pubsub p99": True}


def test_paced_row_wants_at_least_the_peers_rate_and_p99_and_nothing_lost():
    results = {"fanout_1000x2_gap10": {"ours-core": _result(99, 5), "ours-pubsub": _result(100, 7, lost=1),
                                       "nats": _result(100, 6)}}

    assert _verdicts(results, "fanout_1000x2_gap10") == {"core vs nats": False, "core p99": True,
                                                         "ours-pubsub lost": False, "pubsub vs nats": True,
                                                         "pubsub p99": False}


def test_group_send_time_is_judged_against_a_third_of_channels_redis():
    def sizes(*p50s):
        return {"rate": None, "by_members": {str(m): {"p50_ms": p, "p99_ms": p * 2, "lost": 0, "duplicated": 0}
                                             for m, p in zip((100, 1000, 5000), p50s)}}

    results = {fanout.LATENCY: {"cr-core": sizes(1.0, 3.0, 6.0), "ours-core": sizes(0.5, 0.9, 2.5)}}

    assert _verdicts(results, fanout.LATENCY) == {"group_send 1000": True, "group_send 5000": False}
    assert fanout.checks({}, "unrelated") == []
