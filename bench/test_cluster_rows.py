"""bench/cluster.py's verdict, table and merge, on made-up results (no Redis, nothing timed).

    pytest bench/test_cluster_rows.py
"""

from __future__ import annotations

import cluster as cl
import report as rp


def section(single: float | None, clustered: float | None, error: str | None = None) -> dict:
    row = {"single": {"rate": single}, "cluster": {"rate": clustered}}
    if error:
        row["cluster"] = {"rate": None, "error": error}
    return {"at": "2026-01-01T00:00:00", "topology": "3 primaries, no replicas", "repeat": 5,
            "duration_s": 1.2, "load": [1.0, 1.5], "rows": {"stream": row}}


def test_the_target_is_met_at_and_above_its_ratio():
    assert cl.missed(section(1000, 800)) == []
    assert cl.missed(section(1000, 1200)) == []
    (line,) = cl.missed(section(1000, 790))
    assert "stream" in line and "MISSED" in line and "0.79x" in line


def test_a_failed_side_is_a_miss_and_no_ratio():
    (line,) = cl.missed(section(1000, None, error="ConnectionError: x"))
    assert "failed" in line and "ConnectionError" in line
    table = cl.table(section(1000, None, error="ConnectionError: x"))
    assert "ERR" in table and "MISSED" not in table


def test_the_table_shows_rates_ratio_verdict_and_load():
    table = cl.table(section(12345, 9000))
    assert "12,300" in table and "9,000" in table and "0.73x (0.8x)" in table and "MISSED" in table
    assert "load average 1.0 before, 1.5 after" in table
    assert cl.table(None) == "" and cl.table({}) == ""


def test_merge_keeps_the_cluster_rows_until_measured_again():
    old = rp.merge(rp.empty(), {**rp.empty(), "cluster": section(1000, 900)})
    assert old["cluster"]["rows"]["stream"]["cluster"]["rate"] == 900
    assert rp.merge(old, rp.empty())["cluster"] == old["cluster"]
    assert rp.merge(old, {**rp.empty(), "cluster": section(1000, 700)})["cluster"]["rows"]["stream"]["cluster"]["rate"] == 700


def test_the_verdict_judges_the_median_paired_ratio_when_there_is_one():
    row = section(1000, 700)
    row["rows"]["stream"]["paired"] = 0.85
    assert cl.missed(row) == []
    assert "0.85x (0.8x)" in cl.table(row)
