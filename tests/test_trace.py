"""Traces: byte-for-byte determinism, and rate, cv, popularity shares and on/off bursts within stated tolerances."""
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main as cli_main
from harness.spec import load_workload
from harness.trace import build_trace, read_trace, trace_stats, trace_to_csv, write_trace

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"


def spec_of(traffic, count=1, duration=1000.0, seed=11, **top):
    d = {"name": "t", "seed": seed, "duration_s": duration, "warmup_s": 0, "model": "tiny",
         "adapters": {"count": count}, "traffic": traffic, "engines": ["multilora"]}
    d.update(top)
    return load_workload(d)


def test_same_file_and_seed_give_the_same_bytes(tmp_path):
    spec = load_workload(WORKLOADS / "bursty30.yaml")
    a, b = trace_to_csv(build_trace(spec)), trace_to_csv(build_trace(load_workload(WORKLOADS / "bursty30.yaml")))
    assert a == b and len(a.splitlines()) > 500
    assert trace_to_csv(build_trace(spec.with_overrides({"seed": 1235}))) != a
    # the CLI writes the same bytes, twice
    for name in ("one.csv", "two.csv"):
        assert cli_main(["trace", str(WORKLOADS / "bursty30.yaml"), "--machine", "cuda", "--out",
                         str(tmp_path / name)]) == 0
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes() == a.encode()
    df = read_trace(tmp_path / "one.csv")
    assert list(df.columns) == ["request_id", "t", "adapter", "prompt_tokens", "output_tokens"]
    assert df["t"].is_monotonic_increasing and (df["request_id"] == np.arange(len(df))).all()


def test_trace_cli_prints_statistics(capsys):
    assert cli_main(["trace", str(WORKLOADS / "steady-poisson.yaml"), "--machine", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "rate" in out and "peak-to-mean" in out and "adapter-0000" in out


def test_poisson_rate_and_cv():
    # 1 adapter, 20/s over 1000 s: about 20000 requests; rate within 3%, cv of gaps within 0.05 of 1
    df = build_trace(spec_of({"rate": 20.0, "arrivals": {"kind": "poisson"}}))
    stats = trace_stats(df, spec_of({"rate": 20.0}))
    assert stats["rate"] == pytest.approx(20.0, rel=0.03)
    assert stats["cv"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_cv(cv):
    spec = spec_of({"rate": 10.0, "arrivals": {"kind": "gamma", "cv": cv}}, duration=2000.0)
    stats = trace_stats(build_trace(spec), spec)
    assert stats["rate"] == pytest.approx(10.0, rel=0.06)
    assert stats["cv"] == pytest.approx(cv, rel=0.1)


def test_zipf_shares():
    spec = spec_of({"rate": 40.0, "popularity": {"kind": "zipf", "s": 1.2}}, count=5, duration=500.0)
    stats = trace_stats(build_trace(spec), spec)
    w = 1 / np.arange(1, 6) ** 1.2
    for i, expected in enumerate(w / w.sum()):
        assert stats["per_adapter"][f"adapter-{i:04d}"]["share"] == pytest.approx(expected, abs=0.015)


def test_power_law_matches_slora_sampling():
    # S-LoRA: adapter = int(n * np.random.power(alpha)); our weights are that distribution exactly
    spec = spec_of({"rate": 40.0, "popularity": {"kind": "power", "alpha": 0.3}}, count=10, duration=500.0)
    shares = trace_stats(build_trace(spec), spec)["per_adapter"]
    sampled = np.bincount((np.random.default_rng(0).power(0.3, 400_000) * 10).astype(int), minlength=10) / 400_000
    for i in range(10):
        assert shares[f"adapter-{i:04d}"]["share"] == pytest.approx(sampled[i], abs=0.015)
    assert shares["adapter-0000"]["share"] > 0.45  # alpha < 1 is skewed to the first adapters


def test_explicit_weights_and_base_fraction():
    spec = spec_of({"rate": 40.0, "base_fraction": 0.25, "popularity": {"kind": "weights", "weights": [3, 1]}},
                   count=2, duration=500.0)
    shares = trace_stats(build_trace(spec), spec)["per_adapter"]
    assert shares[""]["share"] == pytest.approx(0.25, abs=0.015)
    assert shares["adapter-0000"]["share"] == pytest.approx(0.5625, abs=0.015)
    assert shares["adapter-0001"]["share"] == pytest.approx(0.1875, abs=0.015)


def test_onoff_bursts_keep_the_mean_and_have_off_periods():
    # one adapter, on 2 s / off 6 s on average, mean 20/s => 80/s while on. Over 2000 s there are about 250 off
    # periods; those longer than 1 s (e^(-1/6) of them) show as gaps > 1 s whose mean is 1 + 6 = 7 s (memoryless).
    spec = spec_of({"rate": 20.0, "arrivals": {"kind": "onoff", "mean_on_s": 2.0, "mean_off_s": 6.0}},
                   duration=2000.0)
    df = build_trace(spec)
    stats = trace_stats(df, spec)
    assert stats["rate"] == pytest.approx(20.0, rel=0.12)
    gaps = np.diff(df["t"].to_numpy())
    long = gaps[gaps > 1.0]
    assert len(long) == pytest.approx(2000 / 8 * np.exp(-1 / 6), rel=0.15)
    assert long.mean() == pytest.approx(7.0, rel=0.15)
    assert stats["peak_to_mean"] > 3.0  # bursty: a Poisson stream at 20/s has peak-to-mean about 1.5


def test_onoff_aggregate_peak_is_far_below_the_sum_of_adapter_peaks():
    spec = load_workload(WORKLOADS / "bursty30.yaml")
    stats = trace_stats(build_trace(spec), spec)
    assert stats["adapters"] == 30
    assert stats["sum_of_adapter_peaks"] > 2 * stats["peak_rate"]
    assert stats["rate"] == pytest.approx(8.0, rel=0.2)


def test_lengths_fixed_uniform_lognormal_file(tmp_path):
    lengths = tmp_path / "lens.txt"
    lengths.write_text("7\n70\n700\n")
    spec = spec_of({"rate": 50.0, "prompt_tokens": {"kind": "uniform", "low": 3, "high": 5},
                    "output_tokens": {"kind": "lognormal", "mean": 100, "sigma": 0.5, "min": 1, "max": 100000}},
                   duration=200.0)
    df = build_trace(spec)
    assert set(df["prompt_tokens"]) == {3, 4, 5}
    assert df["output_tokens"].mean() == pytest.approx(100, rel=0.05)
    spec = spec_of({"rate": 50.0, "prompt_tokens": {"kind": "file", "path": str(lengths)},
                    "output_tokens": {"kind": "fixed", "value": 9}}, duration=20.0)
    df = build_trace(spec)
    assert set(df["prompt_tokens"]) == {7, 70, 700} and set(df["output_tokens"]) == {9}
    spec = spec_of({"rate": 50.0, "prompt_tokens": {"kind": "lognormal", "mean": 100, "sigma": 2, "min": 10,
                                                    "max": 50}}, duration=20.0)
    df = build_trace(spec)
    assert df["prompt_tokens"].between(10, 50).all()


def test_replay_scales_time_and_maps_adapters(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp,adapter,prompt_tokens,output_tokens\n100.0,b,5,6\n101.0,a,7,8\n104.0,b,9,10\n"
                   "300.0,a,1,1\n")
    spec = spec_of({"replay": {"path": str(csv), "time_scale": 0.5}}, count=2, duration=10.0)
    df = build_trace(spec)
    assert df["t"].tolist() == [0.0, 0.5, 2.0]  # the request at 100 s (scaled) is past the horizon
    assert df["adapter"].tolist() == ["adapter-0000", "adapter-0001", "adapter-0000"]
    assert df["prompt_tokens"].tolist() == [5, 7, 9] and df["output_tokens"].tolist() == [6, 8, 10]
    from harness.spec import WorkloadError

    with pytest.raises(WorkloadError, match=r"adapters\.count: the replayed trace names 2 adapters"):
        build_trace(spec_of({"replay": {"path": str(csv)}}, count=1))
    csv.write_text("timestamp,adapter,prompt_tokens\n1,a,2\n")
    with pytest.raises(WorkloadError, match=r"lacks column\(s\) \['output_tokens'\]"):
        build_trace(spec_of({"replay": {"path": str(csv)}}, count=1))
    csv.write_text("timestamp,adapter,prompt_tokens,output_tokens\n1,a,2,0\n")
    with pytest.raises(WorkloadError, match=r"row 2, column output_tokens"):
        build_trace(spec_of({"replay": {"path": str(csv)}}, count=1))


def test_shipped_replay_workload():
    spec = load_workload(WORKLOADS / "replay.yaml")
    df = build_trace(spec)
    assert 110 <= len(df) <= 120 and df["adapter"].nunique() == 6
    assert df["t"].max() < 30  # about 40 s of trace at time_scale 0.5


def test_trace_stats_on_a_known_trace(tmp_path):
    import pandas as pd

    spec = spec_of({"rate": 1.0}, count=2, duration=4.0)
    df = pd.DataFrame({"request_id": range(6), "t": [0.1, 0.2, 0.3, 1.5, 2.5, 3.5],
                       "adapter": ["adapter-0000"] * 3 + ["adapter-0001"] * 3,
                       "prompt_tokens": 1, "output_tokens": 1})
    stats = trace_stats(df, spec)
    assert stats["rate"] == 1.5 and stats["requests"] == 6
    assert stats["per_adapter"]["adapter-0000"]["share"] == 0.5
    assert stats["per_adapter"]["adapter-0000"]["peak_to_mean"] == 4.0  # 3 in one of 4 windows
    assert stats["per_adapter"]["adapter-0001"]["peak_to_mean"] == pytest.approx(4 / 3)
    assert stats["peak_to_mean"] == 2.0 and stats["sum_of_adapter_peaks"] == 4.0
    write_trace(df, tmp_path / "x.csv")
    assert read_trace(tmp_path / "x.csv")["adapter"].tolist() == df["adapter"].tolist()
