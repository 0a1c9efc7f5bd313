"""The console comparison (120 columns, ms, offered rate and SLOs) and the combined results files."""
import csv
import json
from types import SimpleNamespace

import pytest

from fixtures_runs import make_run
from harness import console
from harness.metrics import summarize
from harness.store import load_run


def spec():
    slo = SimpleNamespace(to_dict=lambda: {"ttft_s": 2.0, "tpot_s": 0.1, "attainment": 0.9})
    return SimpleNamespace(name="bursty30", slo=slo, traffic=SimpleNamespace(mean_rate=8.0), model="tiny",
                           adapters=SimpleNamespace(count=30), duration_s=12.0, warmup_s=2.0)


def test_table_fits_120_columns_in_ms_with_means_and_chosen_percentiles(tmp_path):
    runs = [load_run(make_run(tmp_path, engine="multilora-with-a-long-name", seed=1)),
            load_run(make_run(tmp_path, engine="peft", speed=0.2, seed=2, started_at="2026-11-22T10:05:00+00:00"))]
    rec = runs[1].records
    runs[1].summary.update(summarize(rec, warmup_s=2.0, duration_s=12.0, slo={"ttft_s": 2.0}, max_lag_p99_s=0.05,
                                     percentiles=(1, 25, 75, 95, 99.9)))
    text = console.comparison_table(runs)
    assert max(len(line) for line in text.splitlines()) <= 120
    m = runs[1].summary["metrics"]
    head = next(line for line in text.splitlines() if "latency ms" in line)
    assert head.split()[2:] == ["mean", "sd", "p1", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9"]
    ttft = [line for line in text.splitlines() if line.strip().startswith("TTFT")][1]  # peft's
    assert ttft.split()[1:4] == [f"{m['ttft_mean'] * 1000:.1f}", f"{m['ttft_std'] * 1000:.1f}",
                                 f"{m['ttft_p1'] * 1000:.1f}"]


def test_header_states_offered_rate_and_slo_thresholds(tmp_path):
    run = load_run(make_run(tmp_path))
    text = console.header(spec(), [run])
    offered = run.summary["offered_req_s"]
    assert offered == pytest.approx(run.summary["counts"]["total"] / 12.0, rel=0.3)
    assert f"{offered:.3g} req/s offered" in text
    assert "TTFT <= 2000 ms, TPOT <= 100 ms; attainment target 90%" in text


def test_failed_counts_requests_never_sent_and_results_files_hold_every_run(tmp_path):
    runs = [load_run(make_run(tmp_path / "runs", engine=e, seed=i, started_at=f"2026-11-22T10:0{i}:00+00:00"))
            for i, e in enumerate(["multilora", "merged"])]
    runs[0].summary["counts"].update(not_sent=5)
    c = runs[0].summary["counts"]
    assert console.failed(c) == c["error"] + c["timeout"] + 5
    assert f"{console.failed(c)}/{c['total']}" in console.comparison_table(runs)
    csv_path, json_path = console.write_results(runs, spec(), tmp_path / "runs")
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["engine"] for r in rows] == ["multilora", "merged"]
    assert float(rows[1]["ttft_p99_ms"]) == pytest.approx(runs[1].summary["metrics"]["ttft_p99"] * 1000)
    doc = json.loads(json_path.read_text())
    assert doc["slo"]["ttft_s"] == 2.0 and doc["runs"][0]["failed"] == console.failed(c)
