"""bench/report.py and run.py's reporting, on stored results only (no Redis, nothing timed).

    pytest bench/test_report.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import report as rp
import run

README = Path(__file__).resolve().parent.parent / "README.rst"


def layer_result(rate: float, rates: list[float] | None = None, at: str = "2026-01-01T00:00:00") -> dict:
    return {"rate": rate, "rates": rates or [rate], "measured_at": at}


def measured(results: dict, memory: dict | None = None, at: str = "2026-01-01T00:00:00") -> dict:
    """A run's results in the shape run.measure() returns."""
    data = rp.empty()
    data["machine"] = {"cpu": "test cpu", "cores": 2, "date": at}
    data["results"] = results
    settings = {"repeat": 5, "duration_s": 1.2, "memory_channels": 100}
    for workload, by_layer in results.items():
        data["measured"][workload] = {"at": at, "settings": settings, "layers": sorted(by_layer)}
    if memory:
        data["memory"] = memory
        data["measured"]["memory"] = {"at": at, "settings": settings, "layers": sorted(memory)}
    return data


def row(core: float, pubsub: float, cr_pubsub: float, cr_core: float) -> dict:
    return {rp.OURS_CORE: layer_result(core), rp.OURS_PUBSUB: layer_result(pubsub),
            rp.CR_PUBSUB: layer_result(cr_pubsub), rp.CR_CORE: layer_result(cr_core)}


def churn(layer: str) -> dict:
    return {"layer": layer, "channels": 100, "seconds": 1.0, "samples_mb": [[0, 30.0], [50, 31.0], [100, 31.0]],
            "start_mb": 30.0, "end_mb": 31.0, "growth_second_half_mb": 0.0}


def test_a_subset_run_replaces_only_its_workloads():
    first = measured({"roundtrip": row(900, 2000, 700, 100), "stream": row(4000, 9000, 700, 100)},
                     at="2026-01-01T00:00:00")
    second = measured({}, memory={rp.OURS_CORE: churn(rp.OURS_CORE)}, at="2026-01-02T00:00:00")
    third = measured({"stream": row(5000, 9500, 800, 110)}, at="2026-01-03T00:00:00")

    merged = rp.merge(rp.merge(rp.merge(rp.empty(), first), second), third)

    assert set(merged["results"]) == {"roundtrip", "stream"}
    assert merged["results"]["roundtrip"][rp.OURS_CORE]["rate"] == 900
    assert merged["results"]["stream"][rp.OURS_CORE]["rate"] == 5000
    assert merged["memory"][rp.OURS_CORE]["end_mb"] == 31.0
    assert {w: m["at"][:10] for w, m in merged["measured"].items()} == {
        "roundtrip": "2026-01-01", "stream": "2026-01-03", "memory": "2026-01-02"}


def test_a_run_of_some_layers_keeps_the_other_layers():
    old = measured({"stream": row(4000, 9000, 700, 100)})
    new = measured({"stream": {rp.OURS_CORE: layer_result(6000, at="2026-02-01T00:00:00")}},
                   at="2026-02-01T00:00:00")

    merged = rp.merge(old, new)

    stream = merged["results"]["stream"]
    assert stream[rp.OURS_CORE]["rate"] == 6000
    assert stream[rp.OURS_CORE]["measured_at"].startswith("2026-02-01")
    assert stream[rp.CR_CORE]["rate"] == 100
    assert stream[rp.CR_CORE]["measured_at"].startswith("2026-01-01")


def test_a_file_from_before_merging_is_read_with_its_date(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({
        "machine": {"cpu": "old cpu", "date": "2025-05-05T05:05:05"},
        "settings": {"repeat": 3, "duration_s": 2.0},
        "results": {"stream": row(4000, 9000, 700, 100)},
        "memory": {rp.CR_CORE: churn(rp.CR_CORE)},
    }))

    data, warning = rp.load(str(path))

    assert warning is None
    assert data["format"] == rp.FORMAT
    assert data["results"]["stream"][rp.CR_CORE]["measured_at"] == "2025-05-05T05:05:05"
    assert data["measured"]["stream"]["settings"]["repeat"] == 3
    assert data["measured"]["memory"]["at"] == "2025-05-05T05:05:05"


def test_an_unreadable_file_is_moved_aside_not_overwritten(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")

    data, warning = rp.load(str(path))

    assert data == rp.empty()
    assert "could not be read" in warning
    assert not path.exists()
    [aside] = tmp_path.iterdir()
    assert aside.read_text() == "{not json"


def test_checks_name_what_was_missed():
    results = {"roundtrip": row(900, 1500, 1000, 100),  # pub/sub 1.5x of 2x; core below cr pubsub
               "stream": row(4000, 9000, 700, 100)}     # 40x of 30x, pub/sub 12.9x

    assert rp.missed(results, ["stream"]) == []
    assert rp.missed(results, ["roundtrip"]) == [
        "roundtrip: this core >= channels_redis pubsub MISSED (got 0.90x)",
        "roundtrip: this pubsub >= 2x channels_redis pubsub MISSED (got 1.50x)",
    ]
    body, _ = rp.rows(results, ["roundtrip", "stream"])
    assert [r[-1] for r in body] == ["MISSED: core vs cr pubsub, pubsub", "met"]


def test_a_failed_layer_is_a_miss_and_a_silent_anchor_a_footnote():
    results = {"stream": {**row(4000, 9000, 700, 100), rp.OURS_PUBSUB: {"error": "RuntimeError: boom", "rate": None}},
               "stream_sharded": row(5000, 9000, 700, 0)}

    assert rp.missed(results, ["stream"]) == ["stream: ours-pubsub ran MISSED"]
    assert rp.missed(results, ["stream_sharded"]) == []
    table = rp.rst_table(results, ["stream", "stream_sharded"])
    assert "ERR" in table
    assert "0 [1]_" in table
    assert ".. [1] ``channels_redis`` sends a direct message" in table


@pytest.mark.parametrize(("value", "text"), [
    (9383.2, "9,380"), (21049, "21,000"), (971.4, "971"), (199_432, "199,000"), (0, "0"), (None, rp.DASH),
])
def test_rates_have_three_significant_figures(value, text):
    assert rp.fmt_rate(value) == text


def stored(tmp_path, results: dict) -> str:
    out = tmp_path / "bench-results"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(measured(results)))
    return str(out)


def test_a_missed_target_exits_1_and_report_only_exits_0(tmp_path, capsys):
    out = stored(tmp_path, {"stream": row(2000, 9000, 700, 100)})  # 20x of 30x

    assert run.main(["--render-only", "--out", out]) == 1
    assert "stream: this core >= 30x channels_redis core MISSED (got 20.00x)" in capsys.readouterr().out
    assert run.main(["--render-only", "--report-only", "--out", out]) == 0


def test_met_targets_exit_0_and_write_table_and_chart(tmp_path):
    out = stored(tmp_path, {"stream": row(4000, 9000, 700, 100)})

    assert run.main(["--render-only", "--out", out]) == 0
    table = Path(out, "table.rst").read_text()
    assert "stream" in table and "40.0x (30x)" in table
    assert os.path.getsize(Path(out, "results.png")) > 0


def test_the_chart_of_a_memory_only_run_is_not_empty(tmp_path):
    data = measured({}, memory={rp.OURS_CORE: churn(rp.OURS_CORE), rp.CR_CORE: churn(rp.CR_CORE)})

    assert rp.chart(data, str(tmp_path / "m.png"))
    assert os.path.getsize(tmp_path / "m.png") > 0
    assert not rp.chart(rp.empty(), str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def header_cells(table: str) -> list[str]:
    """The column labels of an RST simple table, multi-line labels joined by a space."""
    lines = table.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)*", line)]
    spans = [m.span() for m in re.finditer(r"=+", lines[rules[0]])]
    head = lines[rules[0] + 1: rules[1]]
    return [" ".join(filter(None, (line[a:b + 2].strip() for line in head))) for a, b in spans]


def test_readme_table_has_the_printed_columns():
    readme = README.read_text()
    start, end = rp.readme_block(readme)
    printed = rp.rst_table({"stream": row(4000, 9000, 700, 100)})

    assert header_cells(readme[start:end]) == header_cells(printed) == [" ".join(h) for h in rp.HEADER]


def test_readme_copy_replaces_only_the_block():
    readme = f"before\n\n{rp.README_START}\n\nold table\n\n{rp.README_END}\n\nafter\n"

    updated = rp.put_in_readme(readme, "new table\n")

    assert updated == f"before\n\n{rp.README_START}\n\nnew table\n\n{rp.README_END}\n\nafter\n"
    with pytest.raises(ValueError):
        rp.put_in_readme("no markers", "x")
