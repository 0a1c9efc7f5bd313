"""fleet_compare: the single-replica run and the fleet runs of a folder found, the replica model fitted from the
first, each fleet simulated on its own trace; server counters per replica; mixed steps read from the run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.simulate.fleet_compare import main
from harness.simulate.model import ServiceModel, fit_run
from harness.simulate.samples import counter_by_replica
from tests.sim_runs import emulate, loads_samples, poisson_trace, write_run

TRUTH = ServiceModel(step_s=0.008, per_seq_s=0.0005, per_adapter_s=0.0015, prefill_s=0.030,
                     per_prompt_token_s=0.0002, per_prefill_seq_s=0.006)
SINGLE = {"name": "multilora", "kind": "inprocess", "options": {}, "label": "multilora"}


def arrivals(trace: pd.DataFrame) -> list[tuple]:
    return list(zip(trace["t"], trace["adapter"], trace["prompt_tokens"], trace["output_tokens"],
                    trace["request_id"]))


def single_run(root, server: pd.DataFrame | None = None, engine: dict = SINGLE):
    trace = poisson_trace(4.0, 40.0, adapters=4, seed=1)
    server = loads_samples({"": [2.0, 4.0]}, labelled=False) if server is None else server
    return write_run(root, "20261129-100000-bursty30-multilora", engine, trace, emulate(TRUTH, arrivals(trace)),
                     server, warmup_s=5.0, duration_s=30.0)


def fleet_run(root, routing: str = "round_robin"):
    """Two emulated replicas, requests in turn: the fleet a round-robin router would make."""
    trace = poisson_trace(8.0, 40.0, adapters=4, seed=2)
    parts = [emulate(TRUTH, arrivals(trace[trace["request_id"] % 2 == j])) for j in (0, 1)]
    server = loads_samples({"r0": [0.0, 1.0, 4.0], "r1": [0.0, 3.0, 4.0]})
    engine = {"name": f"fleet-{routing}", "kind": "external", "url": "http://127.0.0.1:8000",
              "label": f"fleet-{routing}"}
    return write_run(root, f"20261129-100100-bursty30-fleet-{routing}", engine, trace, pd.concat(parts),
                     server, warmup_s=5.0, duration_s=30.0)


def test_counters_per_replica_from_long_and_wide_samples():
    long = loads_samples({"a": [1.0, 5.0], "b": [0.0, 2.0]})
    assert counter_by_replica(long, "lora_fleet_adapter_loads") == {"a": (1.0, 5.0), "b": (0.0, 2.0)}
    wide = pd.DataFrame({"t": [0.0, 1.0], "lora_fleet_adapter_loads": [3.0, 7.0]})
    assert counter_by_replica(wide, "lora_fleet_adapter_loads") == {"": (3.0, 7.0)}
    assert counter_by_replica(long, "lora_fleet_steps") == {}


@pytest.mark.parametrize("extra, counter, gpu, mixed", [
    ({}, False, None, False),  # an engine from before mixed steps exports no decode-token counter: prefill-first
    ({}, True, None, True),  # the engine's default on the CPU since mixed steps
    ({"mixed_steps": False}, True, None, False),
    ({}, True, "NVIDIA H200", False),  # ... and on CUDA it steps prefill-first unless told
    ({"mixed_steps": True}, True, "NVIDIA H200", True),
])
def test_fit_run_reads_the_step_kind_from_the_engine_config_and_counters(tmp_path, extra, counter, gpu, mixed):
    server = loads_samples({"": [2.0, 4.0]}, labelled=False)
    if counter:
        server = pd.concat([server, server.assign(metric="lora_fleet_decode_tokens")])
    run = single_run(tmp_path, server, {**SINGLE, "options": {"extra": extra}})
    summary = Path(run) / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "gpu": gpu}))
    assert fit_run(run).mixed_steps is mixed


@pytest.mark.parametrize("said, gpu, mixed, budget", [
    ((1.0, 512.0), "NVIDIA H200", True, 512),  # what the server said wins over the device's old default
    ((0.0, 2048.0), None, False, 2048),  # ... and over the CPU's
])
def test_fit_run_takes_the_step_kind_the_server_said(tmp_path, said, gpu, mixed, budget):
    server = loads_samples({"": [2.0, 4.0]}, labelled=False)
    gauges = [server.assign(metric=f"lora_fleet_{m}", value=v) for m, v in zip(("mixed_steps", "step_tokens"), said)]
    counter = server.assign(metric="lora_fleet_decode_tokens")
    run = single_run(tmp_path, pd.concat([server, counter, *gauges]), SINGLE)
    summary = Path(run) / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "gpu": gpu}))
    model = fit_run(run)
    assert (model.mixed_steps, model.step_tokens) == (mixed, budget)


def test_fleet_compare_fits_the_single_run_and_simulates_each_fleet_run(tmp_path, capsys):
    single_run(tmp_path)
    fleet_run(tmp_path)
    out = tmp_path / "compare.json"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "routing round_robin, 2 replicas (from server samples)" in text and "simulated affinity" in text
    data = json.loads(out.read_text())
    assert data["single"].endswith("bursty30-multilora")
    (row,) = data["fleets"]
    assert row["policy"] == "round_robin" and row["replicas"] == 2
    assert row["measured"]["adapter_loads"] == [4, 4]  # each replica's counter, last scrape minus first
    sim = row["simulated"]["round_robin"]
    # the fleet is two replicas of the engine the single run measured: the fitted model predicts it
    assert sim["output_tok_s"] == pytest.approx(row["measured"]["output_tok_s"], rel=0.03)
    assert sim["ttft_p50"] == pytest.approx(row["measured"]["ttft_p50"], rel=0.15)
    assert sim["tpot_p50"] == pytest.approx(row["measured"]["tpot_p50"], rel=0.15)
    assert row["error"]["output_tok_s"] == pytest.approx(sim["output_tok_s"] / row["measured"]["output_tok_s"] - 1)
    assert set(row["simulated"]) == {"round_robin", "affinity"}


def test_a_folder_without_a_fleet_or_a_single_run_is_one_line_and_exit_2(tmp_path, capsys):
    single_run(tmp_path)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no fleet run" in err and err.count("\n") == 1
    other = tmp_path / "only-fleet"
    fleet_run(other)
    assert main([str(other)]) == 2
    assert "no single-replica" in capsys.readouterr().err


def test_pace_comes_from_the_counters_inside_the_window():
    import pandas as pd

    from harness.simulate.samples import pace_by_replica

    rows = []
    for t in range(-2, 13):  # scrapes each second; the measured window is [0, 10]
        for replica, ms in (("a", 20.0), ("b", 50.0)):
            steps = 1000.0 * max(t, 0) / ms if t <= 10 else 1e9  # a wild value outside the window is ignored
            rows += [(float(t), "lora_fleet_steps", f'replica="{replica}"', steps),
                     (float(t), "lora_fleet_tokens_generated", f'replica="{replica}"', 100.0 * steps)]
    pace = pace_by_replica(pd.DataFrame(rows, columns=["t", "metric", "labels", "value"]), 0.0, 10.0)
    assert pace["a"]["ms_per_step"] == pytest.approx(20.0) and pace["b"]["ms_per_step"] == pytest.approx(50.0)
    assert pace["a"]["tok_s"] == pytest.approx(100.0 * 50) and pace["b"]["tok_s"] == pytest.approx(100.0 * 20)
    assert pace_by_replica(None, 0.0, 10.0) == {}
