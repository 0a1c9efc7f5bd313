"""The planner's arithmetic on known inputs: adapters per GPU, GPUs, $/1M tokens, shared vs dedicated."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures_runs import make_sweep
from harness.cli import main

from harness.planner import (GPU_PRICES, Curve, adapters_per_gpu, gpu_price, plan_engine, shared_vs_dedicated,
                             trace_peaks)

POINTS = [
    {"n": 100, "lambda_star": 4.0, "goodput_tok_s": 400.0},
    {"n": 1, "lambda_star": 10.0, "goodput_tok_s": 1000.0},
    {"n": 10, "lambda_star": 8.0, "goodput_tok_s": 800.0},
]


def curve():
    return Curve.from_points("multilora", POINTS)


def test_interpolation_is_linear_between_points_and_never_extrapolates():
    c = curve()
    assert c.n == (1, 10, 100)
    assert c.lambda_at(55) == pytest.approx(6.0)
    assert c.lambda_at(1) == 10.0 and c.lambda_at(100) == 4.0
    assert c.lambda_at(101) is None
    assert c.goodput_per_request(40) == pytest.approx(100.0)


def test_adapters_per_gpu_solves_the_crossing():
    # between N=10 and N=100: 8 - 4 (N-10)/90 = 0.05 N  ->  N = 89.41
    assert adapters_per_gpu(curve(), 0.05) == 89
    # rate 1.0: 10 >= 1*1 ... 8 >= 8 at N=8? λ(8) = 10 - 2*7/9 = 8.44 >= 8; λ(9) = 8.22 < 9
    assert adapters_per_gpu(curve(), 1.0) == 8
    assert adapters_per_gpu(curve(), 20.0) == 0


def test_plan_known_numbers():
    p = plan_engine(curve(), adapters=500, rate_per_adapter=0.05, usd_per_gpu_hour=2.5)
    assert p.total_rate == pytest.approx(25.0)
    assert p.adapters_per_gpu == 89
    assert p.per_gpu_capacity == pytest.approx(4.45)
    assert p.gpus == 6  # ceil(25 / 4.45) = ceil(5.62)
    assert p.goodput_tok_s == pytest.approx(2500.0)  # 25 req/s x 100 tokens per request
    assert p.usd_per_hour == pytest.approx(15.0)
    assert p.usd_per_m_tokens == pytest.approx(1e6 * (2.5 * 6 / 3600) / 2500)
    assert not p.limited_by_curve and p.note == ""


def test_plan_limited_by_measured_range_and_infeasible():
    p = plan_engine(curve(), adapters=500, rate_per_adapter=0.01, usd_per_gpu_hour=1.0)
    assert p.adapters_per_gpu == 100 and p.limited_by_curve and p.gpus == 5
    assert "at least 100" in p.note
    q = plan_engine(curve(), adapters=3, rate_per_adapter=20.0, usd_per_gpu_hour=1.0)
    assert q.gpus is None and q.usd_per_m_tokens is None and "more than one GPU" in q.note


def test_exact_division_does_not_add_a_gpu():
    c = Curve.from_points("x", [{"n": 1, "lambda_star": 2.0, "goodput_tok_s": 20.0},
                                {"n": 10, "lambda_star": 2.0, "goodput_tok_s": 20.0}])
    p = plan_engine(c, adapters=30, rate_per_adapter=0.2, usd_per_gpu_hour=1.0)
    assert p.adapters_per_gpu == 10 and p.gpus == 3


def test_gpu_prices_defaults_and_overrides():
    assert set(GPU_PRICES) == {"h100", "h200", "a100-80gb", "l40s", "a10g"}
    assert gpu_price("H100") == GPU_PRICES["h100"]
    assert gpu_price("h100", 3.1) == 3.1
    with pytest.raises(ValueError, match="unknown type 'b200'"):
        gpu_price("b200")
    with pytest.raises(ValueError, match="must be > 0"):
        gpu_price("h100", -1)


def test_trace_peaks_and_shared_vs_dedicated():
    # adapter a bursts in the first 10 s, b in the next 10 s: aggregate peak 1/s, each adapter's peak 1/s
    trace = pd.DataFrame({"t": [float(i) for i in range(20)], "adapter": ["a"] * 10 + ["b"] * 10})
    pk = trace_peaks(trace, window_s=10.0, adapters=["a", "b", "c"])
    assert pk.aggregate_peak == pytest.approx(1.0)
    assert pk.per_adapter_peak == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert pk.sum_of_peaks == pytest.approx(2.0)
    pk2 = trace_peaks(trace, window_s=10.0)
    out = shared_vs_dedicated(curve(), dedicated_lambda1=0.5, peaks=pk2, usd_per_gpu_hour=2.0)
    assert out["dedicated_gpus_whole"] == 4 and out["dedicated_gpus_shares"] == 4
    # shared: 0.5 req/s per adapter at the peak -> 15 adapters per GPU -> 1 GPU for 2 adapters
    assert out["shared_adapters_per_gpu"] == 15 and out["shared_gpus"] == 1
    assert out["peak_ratio"] == pytest.approx(2.0)
    assert out["usd_per_hour_dedicated_whole"] == 8.0 and out["usd_per_hour_shared"] == 2.0
    assert "note" not in out
    # a curve measured only up to N=2 caps adapters per GPU: the shared figure is then an upper bound, said so
    short = Curve.from_points("short", [{"n": 1, "lambda_star": 10.0}, {"n": 2, "lambda_star": 9.0}])
    trace3 = pd.DataFrame({"t": [0.0, 1.0, 2.0], "adapter": ["a", "b", "c"]})
    capped = shared_vs_dedicated(short, 1.0, trace_peaks(trace3, 10.0), 1.0)
    assert capped["shared_adapters_per_gpu"] == 2 and capped["shared_gpus"] == 2
    assert "upper bound" in capped["note"] and "N=2" in capped["note"]


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="no points"):
        Curve.from_points("e", [])
    with pytest.raises(ValueError, match="distinct"):
        Curve.from_points("e", [{"n": 1, "lambda_star": 1}, {"n": 1, "lambda_star": 2}])
    with pytest.raises(ValueError, match="rate per adapter"):
        adapters_per_gpu(curve(), 0)
    with pytest.raises(ValueError, match="missing columns"):
        trace_peaks(pd.DataFrame({"t": [1.0]}))
    with pytest.raises(ValueError, match="adapters: 0"):
        plan_engine(curve(), 0, 0.1, 1.0)
    assert math.isfinite(trace_peaks(pd.DataFrame({"t": [0.5], "adapter": ["a"]}), 1.0).aggregate_peak)


def test_plan_command_prints_formulas_numbers_and_json(tmp_path, capsys):
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml").read_text())
    sweep = make_sweep(tmp_path, spec=spec)
    out = tmp_path / "plan.json"
    assert main(["plan", "--sweep", str(sweep), "--adapters", "500", "--rate-per-adapter", "0.05",
                 "--json", str(out)]) == 0  # priced as the GPU it was measured on: an H100
    text = capsys.readouterr().out
    assert "$/1M output tokens = 1e6 x ($/GPU-hour x GPUs / 3600) / goodput tokens/s" in text
    plan = json.loads(out.read_text())
    assert plan["gpu"] == "h100" and plan["extrapolation"] == ""
    payload = json.loads((sweep / "capacity.json").read_text())
    want = plan_engine(Curve.from_points("multilora", payload["curves"]["multilora"]), 500, 0.05, GPU_PRICES["h100"])
    got = next(p for p in plan["plans"] if p["engine"] == "multilora")
    assert got["gpus"] == want.gpus and got["usd_per_m_tokens"] == pytest.approx(want.usd_per_m_tokens)
    assert f"{want.usd_per_m_tokens:.3f}" in text
    assert {c["engine"] for c in plan["comparison"]} == {"multilora", "merged"}
    assert "summed over adapters" in text
    assert main(["plan", "--sweep", str(sweep), "--adapters", "5", "--rate-per-adapter", "1", "--gpu", "b200"]) == 2
    assert "unknown type 'b200'" in capsys.readouterr().err
    assert main(["plan", "--sweep", str(tmp_path / "none"), "--adapters", "5", "--rate-per-adapter", "1"]) == 2
    assert "no capacity.json" in capsys.readouterr().err


def test_plan_merges_sweeps_per_engine_and_n(tmp_path, capsys):
    from harness.commands.plan import merge_capacity
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml").read_text())
    shared = make_sweep(tmp_path, engines=("multilora",), spec=spec, name="shared")
    dedicated = make_sweep(tmp_path, engines=("multilora", "merged"), spec=spec, name="dedicated")
    payload = json.loads((dedicated / "capacity.json").read_text())  # this sweep measured N=1 only, higher
    for engine in payload["curves"]:
        payload["curves"][engine] = [dict(payload["curves"][engine][0], lambda_star=50.0)]
    (dedicated / "capacity.json").write_text(json.dumps(payload))
    merged, provenance = merge_capacity([str(shared), str(dedicated)])
    assert provenance["merged"][0]["machine"] == "NVIDIA H100 80GB HBM3"
    assert [p["n"] for p in merged["curves"]["multilora"]] == [1, 10, 30, 100]
    assert merged["curves"]["multilora"][0]["lambda_star"] == 50.0  # the later sweep's N=1 point wins
    assert [p["n"] for p in merged["curves"]["merged"]] == [1]
    out = tmp_path / "plan.json"
    assert main(["plan", "--sweep", str(shared), str(dedicated), "--adapters", "30", "--rate-per-adapter", "0.1",
                 "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    row = next(c for c in plan["comparison"] if c["engine"] == "multilora")
    assert row["dedicated_engine"] == "merged" and row["dedicated_lambda1"] == 50.0  # from the second sweep
    other = json.loads((shared / "capacity.json").read_text())
    other["workload"] = "steady-poisson"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["plan", "--sweep", str(shared), str(tmp_path / "other.json"), "--adapters", "5",
                 "--rate-per-adapter", "1"]) == 2
    assert "different workloads" in capsys.readouterr().err


def test_plan_draws_the_curves_and_the_demand_line(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    out = tmp_path / "fig" / "capacity.png"
    args = ["plan", "--sweep", str(sweep), "--adapters", "50", "--rate-per-adapter", "0.1", "--png", str(out)]
    try:
        import kaleido  # noqa: F401
    except ModuleNotFoundError:
        assert main(args) == 2
        captured = capsys.readouterr()
        assert "kaleido" in captured.err and "adapters/GPU" in captured.out  # the plan is printed all the same
    else:
        assert main(args) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from reports import data, views
    fig = views.capacity(json.loads((sweep / "capacity.json").read_text()), 0.1)[0]
    demand = next(t for t in fig.data if t.name.startswith("demand"))
    assert demand.y[-1] == pytest.approx(demand.x[-1] * 0.1)
    assert set(data.capacity_points(json.loads((sweep / "capacity.json").read_text()))["engine"]) == {
        "multilora", "merged"}


def _plan(sweep, *extra):
    return main(["plan", "--sweep", str(sweep), "--adapters", "500", "--rate-per-adapter", "0.05", *extra])


def test_plan_says_what_it_was_measured_on_and_how_each_lambda_is_known(tmp_path, capsys):
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml").read_text())
    sweep = make_sweep(tmp_path, spec=spec)
    payload = json.loads((sweep / "capacity.json").read_text())
    payload["curves"]["merged"][0].update(bound="lower", upper=None)  # found while bracketing: a lower bound
    (sweep / "capacity.json").write_text(json.dumps(payload))
    assert _plan(sweep) == 0
    text = capsys.readouterr().out
    assert "merged: NVIDIA H100 80GB HBM3 (host box, 16 CPU cores), model llama3-8b, workload bursty30" in text
    lam = payload["curves"]["merged"][0]["lambda_star"]
    assert f"N=1 >= {lam:.4g}" in text  # the lower bound is printed as one, not as a plain number
    pt = payload["curves"]["multilora"][1]
    assert f"N=10 [{pt['lambda_star']:.4g}, {pt['upper']:.4g}]" in text
    assert "lambda* at N=1 is a lower bound" in text


def test_plan_refuses_another_gpu_or_a_cpu_sweep_unless_allowed(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert _plan(sweep, "--gpu", "a100-80gb") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpu a100-80gb" in err and "--allow-other-gpu" in err
    assert _plan(sweep, "--gpu", "a100-80gb", "--allow-other-gpu") == 0
    out = capsys.readouterr().out
    assert "EXTRAPOLATION: priced as a100-80gb from curves measured on NVIDIA H100 80GB HBM3" in out
    cpu = make_sweep(tmp_path, gpu=None, model="tiny", name="cpu-sweep")
    assert _plan(cpu) == 2 and "measured on CPU only, which has no default price" in capsys.readouterr().err
    assert _plan(cpu, "--gpu", "h100") == 2
    assert "measured on CPU only" in capsys.readouterr().err
    assert _plan(cpu, "--gpu", "h100", "--allow-other-gpu") == 0
    assert "EXTRAPOLATION: priced as h100 from curves measured on CPU only" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value,message", [
    ("--rate-per-adapter", "-1", "--rate-per-adapter: -1 must be > 0"),
    ("--adapters", "0", "--adapters: 0 must be >= 1"),
    ("--peak-window", "0", "--peak-window: 0 must be > 0"),
    ("--gpu-price", "-2", "--gpu-price: -2 must be > 0"),
])
def test_plan_errors_name_the_flag_as_typed(tmp_path, capsys, flag, value, message):
    sweep = make_sweep(tmp_path)
    args = {"--adapters": "500", "--rate-per-adapter": "0.05", flag: value}
    assert main(["plan", "--sweep", str(sweep), *[x for kv in args.items() for x in kv]]) == 2
    assert capsys.readouterr().err.strip() == f"harness plan: error: {message}"


def test_plan_counts_agree_between_tables_and_shares_are_explained(tmp_path, capsys):
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml").read_text())
    sweep = make_sweep(tmp_path, spec=spec)
    out = tmp_path / "plan.json"
    assert _plan(sweep, "--json", str(out), "--trace-duration", "60") == 0
    text = capsys.readouterr().out
    plan = json.loads(out.read_text())
    for row in plan["comparison"]:
        assert row["adapters"] == 500  # every planned adapter is counted, also those the trace left silent
    assert plan["peaks"]["adapters_without_requests"] > 0
    assert f"{plan['peaks']['adapters_without_requests']} of 500 adapters sent no request" in text
    assert "A share is the fraction of one GPU an adapter's peak needs" in text
    assert "sizes for the mean rate" in text
    row = next(c for c in plan["comparison"] if c["engine"] == "multilora")
    assert f"needs {row['shared_gpus']} GPU(s)" in text
    assert f"needs {row['dedicated_gpus_whole']} with a whole GPU each" in text
