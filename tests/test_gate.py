"""The gate's statistics on samples with known answers, and the baseline/gate commands on synthetic run dirs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.baseline import load_baseline, snapshot_dirs
from harness.cli import main
from harness.gate import (GateInputError, bootstrap_change, judge, mann_whitney, metric_samples, parse_fraction,
                          parse_metric, smallest_p)

# ---------------------------------------------------------------- Mann-Whitney U


def test_exact_p_of_complete_separation_is_one_over_binomial():
    # 3 vs 3 with every x below every y: only 1 of C(6,3)=20 orderings is as extreme
    r = mann_whitney([1, 2, 3], [4, 5, 6], "less")
    assert r.method == "exact" and r.u == 0
    assert r.p == pytest.approx(1 / 20)
    assert mann_whitney([1, 2, 3], [4, 5, 6], "greater").p == pytest.approx(1.0)
    assert mann_whitney([1, 2, 3], [4, 5, 6], "two-sided").p == pytest.approx(2 / 20)


def test_exact_distribution_by_enumeration():
    # m=2, n=3: every placement of x among the ranks 0..4 is equally likely; U counts pairs x > y
    from itertools import combinations

    def u_of(xs):
        return sum(1 for a in xs for b in set(range(5)) - set(xs) if a > b)

    placements = list(combinations(range(5), 2))
    for combo in placements:
        x = [float(i) for i in combo]
        y = [float(i) for i in set(range(5)) - set(combo)]
        expected = sum(1 for other in placements if u_of(other) <= u_of(combo)) / len(placements)
        assert mann_whitney(x, y, "less").p == pytest.approx(expected)


@pytest.mark.parametrize("m,n,ties,shift", [(4, 6, False, 0.3), (25, 30, False, 0.5), (25, 30, True, 0.5),
                                            (80, 70, False, 0.2), (8, 8, True, 1.0)])
def test_matches_scipy(m, n, ties, shift):
    from scipy import stats  # a dev dependency (pyproject [dev])
    rng = np.random.default_rng(m * 100 + n)
    x, y = rng.normal(0, 1, m), rng.normal(shift, 1, n)
    if ties:
        x, y = np.round(x), np.round(y)
    for alt in ("less", "greater", "two-sided"):
        ours = mann_whitney(x, y, alt)
        ref = stats.mannwhitneyu(x, y, alternative=alt, method="exact" if ours.method == "exact" else "asymptotic")
        assert ours.u == pytest.approx(ref.statistic)
        assert ours.p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


def test_ties_use_normal_approximation_with_tie_correction():
    x = [1, 1, 1, 2, 2, 2, 2, 3]
    y = [2, 3, 3, 3, 3, 4, 4, 4]
    r = mann_whitney(x, y, "less")
    assert r.method == "normal"
    # by hand: ranks of the pooled 16 values, U = R_x - m(m+1)/2; variance with the tie term
    m = n = 8
    # pairs x > y: (3 > 2) once; ties: four 2s of x with one 2 of y, one 3 of x with four 3s of y
    assert r.u == pytest.approx(1 + 0.5 * 8)
    ties = np.array([3, 5, 5, 3])
    var = m * n / 12 * (17 - (ties ** 3 - ties).sum() / (16 * 15))
    z = (r.u - m * n / 2 + 0.5) / math.sqrt(var)
    assert r.p == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)))
    assert r.p < 0.01


def test_all_values_tied_gives_no_evidence():
    assert mann_whitney([5, 5, 5, 5], [5, 5, 5, 5, 5], "less").p == 1.0


def test_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(7)
    ps = [mann_whitney(rng.normal(size=30), rng.normal(size=30), "less").p for _ in range(400)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09


# ---------------------------------------------------------------- effect size and verdict


def test_bootstrap_interval_covers_the_true_change():
    rng = np.random.default_rng(3)
    base = rng.normal(100, 5, 60)
    now = rng.normal(80, 5, 60)
    lo, hi = bootstrap_change(base, now)
    assert lo < -0.2 < hi and hi < 0  # true change -20%


def test_shifted_throughput_is_a_regression():
    rng = np.random.default_rng(1)
    v = judge("output_tok_s", "multilora", rng.normal(100, 5, 40), rng.normal(85, 5, 40), "lower")
    assert v.status == "regression" and v.failed
    assert v.change == pytest.approx(-0.15, abs=0.03) and v.p < 1e-6


def test_same_distribution_is_not_flagged_over_many_seeds():
    flagged = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        flagged += judge("output_tok_s", "e", rng.normal(100, 8, 30), rng.normal(100, 8, 30), "lower").failed
    assert flagged == 0  # effect-size floor: noise of 8% sd never moves the median 5% with significance here


def test_significant_but_small_change_passes():
    rng = np.random.default_rng(2)
    v = judge("output_tok_s", "e", rng.normal(100, 1, 200), rng.normal(98, 1, 200), "lower", max_regression=0.05)
    assert v.p < 1e-6 and v.status == "pass"


def test_large_but_insignificant_change_is_inconclusive_and_says_what_it_would_take():
    v = judge("output_tok_s", "e", [100, 10, 200, 50, 120], [60, 150, 5, 90, 40], "lower")
    assert v.change < -0.05 and v.p > 0.05 and v.status == "inconclusive" and not v.failed
    # the interval is far wider than the 5% asked: its width is the change this sample can resolve
    assert v.interval[0] < -0.05 and v.detectable == pytest.approx(v.interval[1] - v.interval[0])
    assert v.samples_needed == math.ceil(5 * (v.detectable / 0.05) ** 2)


def test_a_wide_interval_is_inconclusive_and_a_narrow_one_passes():
    rng = np.random.default_rng(7)
    base, now = rng.normal(100, 30, 12), rng.normal(100, 30, 12)  # the "[-48%, +80%]" case: cannot see 5%
    wide = judge("output_tok_s", "e", base, now, "lower", max_regression=0.05)
    assert wide.status == "inconclusive" and wide.detectable > 0.05
    # more samples of the same noise narrow the interval until it rules a 5% regression out
    need = wide.samples_needed
    big = judge("output_tok_s", "e", rng.normal(100, 30, need), rng.normal(100, 30, need), "lower",
                max_regression=0.05)
    assert big.status == "pass" and big.detectable == pytest.approx(0.05, rel=0.25)


def test_latency_direction_and_improvement():
    rng = np.random.default_rng(4)
    slow = judge("ttft_p99", "e", rng.normal(1.0, 0.05, 10), rng.normal(1.3, 0.05, 10), "higher")
    assert slow.status == "regression"
    fast = judge("ttft_p99", "e", rng.normal(1.0, 0.05, 10), rng.normal(0.7, 0.05, 10), "higher")
    assert fast.status == "improved" and not fast.failed
    more = judge("output_tok_s", "e", rng.normal(100, 2, 10), rng.normal(130, 2, 10), "lower")
    assert more.status == "improved"


def test_integer_windows_with_many_ties():
    rng = np.random.default_rng(5)
    base = rng.poisson(40, 30).astype(float)  # tokens per 1 s window: integers, many ties
    v = judge("output_tok_s", "e", base, rng.poisson(30, 30).astype(float), "lower")
    assert v.method == "normal" and v.status == "regression"
    same = rng.poisson(40, 30).astype(float)
    assert judge("output_tok_s", "e", base, same, "lower", max_regression=0.2).status == "pass"
    # 30 windows of ~16% noise cannot rule out a 5% drop: inconclusive, not a silent pass
    assert judge("output_tok_s", "e", base, same, "lower").status == "inconclusive"


def test_tiny_samples_are_unusable():
    assert smallest_p(3, 3) == pytest.approx(0.05)
    with pytest.raises(GateInputError, match="no outcome can reach p < 0.05"):
        judge("output_tok_s", "e", [1, 2, 3], [4, 5, 6], "lower")
    with pytest.raises(GateInputError, match="2 baseline sample"):
        judge("output_tok_s", "e", [1, 2], [4, 5, 6, 7], "lower")
    with pytest.raises(GateInputError, match="1 current sample"):
        judge("output_tok_s", "e", [1, 2, 3, 4], [4, None, math.nan], "lower")


def test_parse_metric_and_fraction():
    assert parse_metric("ratio:output_tok_s:multilora/merged").numerator == "multilora"
    assert parse_metric("ttft_p99").worse_when == "higher"
    for bad, msg in [("ratio:output_tok_s:multilora", "two different engines"),
                     ("ratio:output_tok_s:a/a", "two different engines"), ("gpu_util_mean", "cannot be gated"),
                     ("tokens", "cannot be gated")]:
        with pytest.raises(GateInputError, match=msg):
            parse_metric(bad)
    assert parse_fraction("5%") == pytest.approx(0.05) and parse_fraction("0.1") == pytest.approx(0.1)
    for bad in ("5", "abc", "-1%", "100%"):
        with pytest.raises(GateInputError, match="--max-regression"):
            parse_fraction(bad)


# ---------------------------------------------------------------- synthetic run directories and the commands

METRICS = {"req_s": 2.0, "output_tok_s": 40.0, "goodput": 38.0, "ttft_p99": 0.5, "tpot_p50": 0.02}


def make_run(root: Path, name: str, engine: str, windows: list[float], *, started: str = "2026-01-01T00:00:00",
             model: str = "tiny", gpu: str = "none", valid: bool = True, status: str = "completed",
             trace: str = "request_id,t,adapter,prompt_tokens,output_tokens\n0,0.0,adapter-0000,8,4\n",
             **metrics) -> Path:
    run = root / name
    run.mkdir(parents=True)
    summary = {"workload": "ci-gate", "engine": engine, "model": model, "gpu": gpu, "started_at": started,
               "status": status, "valid": valid, "invalid_reasons": [] if valid else ["client fell behind"],
               "metrics": {**METRICS, "output_tok_s": float(np.mean(windows)), **metrics},
               "windows": {"bin_s": 1.0, "t": list(range(len(windows))), "output_tok_s": list(windows),
                           "req_s": [w / 20 for w in windows], "goodput": list(windows)}}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "status.json").write_text(json.dumps({"status": status, "message": "", "records": 10}))
    (run / "config.json").write_text(json.dumps({"engine": {"engine": engine}}))
    (run / "env.json").write_text(json.dumps({"python": "3.11", "host": "ci"}))
    (run / "trace.csv").write_text(trace)
    return run


def windows(rng, mean, n=20):
    return list(np.round(rng.normal(mean, mean * 0.04, n)))


@pytest.fixture()
def base_runs(tmp_path):
    rng = np.random.default_rng(0)
    return [make_run(tmp_path / "base", "r1-multilora", "multilora", windows(rng, 100)),
            make_run(tmp_path / "base", "r1-merged", "merged", windows(rng, 50))]


def gate(tmp_path, runs, *extra) -> int:
    return main(["gate", "--baseline", "ci", "--baseline-dir", str(tmp_path / "bl"), *map(str, runs), *map(str, extra)])


def test_baseline_save_list_show(tmp_path, base_runs, capsys):
    assert main(["baseline", "save", str(tmp_path / "base"), "--name", "ci", "--dir", str(tmp_path / "bl")]) == 0
    doc = load_baseline("ci", tmp_path / "bl")
    assert doc["workload"] == "ci-gate" and doc["model"] == "tiny" and doc["gpu"] == "none"
    sample = doc["engines"]["multilora"]["metrics"]["output_tok_s"]
    assert len(sample["per_window"]) == 1 and len(sample["per_window"][0]) == 20
    assert sample["per_run"] == [pytest.approx(np.mean(sample["per_window"][0]))]
    assert doc["engines"]["merged"]["runs"][0]["config"] == {"engine": {"engine": "merged"}}
    assert doc["environment"]["host"] == "ci"
    assert main(["baseline", "save", str(base_runs[0]), "--name", "ci", "--dir", str(tmp_path / "bl")]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["baseline", "list", "--dir", str(tmp_path / "bl")]) == 0
    assert "| ci | ci-gate | tiny | none | merged (1), multilora (1) |" in capsys.readouterr().out
    assert main(["baseline", "show", "ci", "--dir", str(tmp_path / "bl")]) == 0
    assert "| output_tok_s | lower |" in capsys.readouterr().out
    assert main(["baseline", "show", "nope", "--dir", str(tmp_path / "bl")]) == 2
    assert "not found (baselines in" in capsys.readouterr().err
    (tmp_path / "bl" / "torn.json").write_text('{"format": ')
    assert main(["baseline", "show", "torn", "--dir", str(tmp_path / "bl")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "bl" / "torn.json").write_text('{"format": "other/9"}')
    assert main(["baseline", "show", "torn", "--dir", str(tmp_path / "bl")]) == 2
    assert "not a baseline of format" in capsys.readouterr().err


def save(tmp_path):
    assert main(["baseline", "save", str(tmp_path / "base"), "--name", "ci", "--dir", str(tmp_path / "bl")]) == 0


def test_gate_pass_regression_and_markdown(tmp_path, base_runs, capsys):
    save(tmp_path)
    capsys.readouterr()
    rng = np.random.default_rng(1)
    same = [make_run(tmp_path / "same", "a", "multilora", windows(rng, 100)),
            make_run(tmp_path / "same", "b", "merged", windows(rng, 50))]
    assert gate(tmp_path, same, "--markdown", tmp_path / "ok.md") == 0
    out = capsys.readouterr().out
    assert "Regression gate: PASS" in out and (tmp_path / "ok.md").read_text() == out
    slow = [make_run(tmp_path / "slow", "a", "multilora", windows(rng, 80)),
            make_run(tmp_path / "slow", "b", "merged", windows(rng, 50))]
    assert gate(tmp_path, slow, "--metric", "output_tok_s", "--metric", "ratio:output_tok_s:multilora/merged") == 1
    out = capsys.readouterr().out
    assert "Regression gate: REGRESSION" in out
    rows = [line for line in out.splitlines() if line.startswith("| output_tok_s")]
    assert len(rows) == 3  # merged, multilora, the ratio
    assert "| output_tok_s | merged |" in rows[0] and rows[0].endswith("| pass |")
    assert "| output_tok_s | multilora |" in rows[1] and rows[1].endswith("| **FAIL** |")
    assert "multilora/merged" in rows[2] and rows[2].endswith("| **FAIL** |")
    # a 20% drop with a 25% threshold passes
    assert gate(tmp_path, slow, "--max-regression", "25%", "--json", tmp_path / "v.json") == 0
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["verdict"] == "pass" and verdict["exit_code"] == 0 and verdict["baseline"]["name"] == "ci"
    (row,) = [m for m in verdict["metrics"] if m["engine"] == "multilora"]
    assert row["change"] == pytest.approx(-0.2, abs=0.04) and row["status"] == "pass" and row["n_now"] == 20
    assert gate(tmp_path, slow, "--json", tmp_path / "v.json") == 1
    assert json.loads((tmp_path / "v.json").read_text())["verdict"] == "regression"


def test_gate_too_noisy_to_see_the_change_is_inconclusive(tmp_path, capsys):
    rng = np.random.default_rng(3)
    noisy = list(np.round(rng.normal(100, 40, 20)))  # 40% noise per window
    make_run(tmp_path / "base", "r1-multilora", "multilora", noisy)
    save(tmp_path)
    now = [make_run(tmp_path / "now", "a", "multilora", list(rng.permutation(noisy)))]  # unchanged, reshuffled
    capsys.readouterr()
    assert gate(tmp_path, now, "--json", tmp_path / "v.json") == 1
    out = capsys.readouterr().out
    assert "Regression gate: INCONCLUSIVE (exit 1)" in out and "**inconclusive**" in out
    verdict = json.loads((tmp_path / "v.json").read_text())
    (row,) = verdict["metrics"]
    assert verdict["verdict"] == "inconclusive" and row["detectable"] > 0.05
    # runs of 20 windows each: how many would resolve the 5% asked, stated in the output
    assert row["runs_needed"] == math.ceil(row["samples_needed"] / 20) and row["runs_needed"] > 1
    assert f"({row['runs_needed']} run(s) of this length) would resolve it" in out
    assert gate(tmp_path, now, "--allow-inconclusive") == 0
    assert gate(tmp_path, now, "--max-regression", "90%") == 0  # a 90% drop it can rule out


def test_ratio_is_machine_independent(tmp_path, base_runs):
    save(tmp_path)
    rng = np.random.default_rng(2)
    # a machine half as fast: both engines halve, the ratio holds, the absolute throughput fails
    slow_box = [make_run(tmp_path / "box", "a", "multilora", windows(rng, 50)),
                make_run(tmp_path / "box", "b", "merged", windows(rng, 25))]
    assert gate(tmp_path, slow_box, "--metric", "ratio:output_tok_s:multilora/merged") == 0
    assert gate(tmp_path, slow_box) == 1
    samples = metric_samples(snapshot_dirs(slow_box), parse_metric("ratio:output_tok_s:multilora/merged"))
    assert len(samples) == 20 and 1.6 < np.median(samples) < 2.4


def test_unusable_inputs_exit_2(tmp_path, base_runs, capsys):
    save(tmp_path)
    rng = np.random.default_rng(3)
    cases = {
        "model": [make_run(tmp_path / "m", "a", "multilora", windows(rng, 100), model="llama3-8b")],
        "GPU": [make_run(tmp_path / "g", "a", "multilora", windows(rng, 100), gpu="NVIDIA H100")],
        "trace": [make_run(tmp_path / "t", "a", "multilora", windows(rng, 100), trace="request_id\n")],
        "marked invalid": [make_run(tmp_path / "i", "a", "multilora", windows(rng, 100), valid=False)],
        "status 'server_died'": [make_run(tmp_path / "d", "a", "multilora", windows(rng, 100), status="server_died")],
        "fewer than the 3 needed": [make_run(tmp_path / "f", "a", "multilora", windows(rng, 100, n=2))],
        "no runs of engine 'peft'": [make_run(tmp_path / "p", "a", "peft", windows(rng, 100))],
        "no such run directory": [tmp_path / "missing"],
    }
    for needle, runs in cases.items():
        md = tmp_path / f"{len(needle)}.md"
        assert gate(tmp_path, runs, "--markdown", md) == 2, needle
        err = capsys.readouterr().err
        assert needle in err, (needle, err)
        assert "UNUSABLE INPUT" in md.read_text()
    torn = make_run(tmp_path / "torn", "a", "multilora", windows(rng, 100))
    (torn / "summary.json").write_text('{"workload": ')
    assert gate(tmp_path, [torn]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert gate(tmp_path, [base_runs[0]], "--metric", "gpu_util_mean") == 2
    assert "cannot be gated" in capsys.readouterr().err
    assert gate(tmp_path, cases["model"], "--json", tmp_path / "u.json") == 2
    unusable = json.loads((tmp_path / "u.json").read_text())
    assert unusable["verdict"] == "unusable" and "model" in unusable["message"]
    capsys.readouterr()
    one = [make_run(tmp_path / "one", "a", "multilora", windows(rng, 100))]
    assert gate(tmp_path, one, "--metric", "ratio:output_tok_s:multilora/merged") == 2
    assert "no runs of engine 'merged'" in capsys.readouterr().err
    assert gate(tmp_path, one, "--max-regression", "5") == 2
    assert "ambiguous" in capsys.readouterr().err


def test_per_run_metrics_need_repeated_runs(tmp_path, capsys):
    rng = np.random.default_rng(4)
    for i in range(4):
        make_run(tmp_path / "base", f"r{i}", "multilora", windows(rng, 100), started=f"2026-01-01T00:0{i}:00",
                 ttft_p99=0.50 + 0.01 * i)
    save(tmp_path)
    now = [make_run(tmp_path / "now", f"r{i}", "multilora", windows(rng, 100), started=f"2026-01-02T00:0{i}:00",
                    ttft_p99=0.80 + 0.01 * i) for i in range(4)]
    assert gate(tmp_path, now, "--metric", "ttft_p99") == 1
    out = capsys.readouterr().out
    assert "| ttft_p99 | multilora | higher | 0.515 (4) | 0.815 (4) |" in out
    assert gate(tmp_path, now[:2], "--metric", "ttft_p99") == 2
    assert "fewer than the 3 needed" in capsys.readouterr().err


def test_github_actions_example_uses_valid_gate_commands():
    import shlex

    import yaml

    from harness.cli import build_parser

    doc = yaml.safe_load((Path(__file__).parents[1] / "docs" / "github-actions-gpu.yml").read_text())
    env = doc["env"]
    commands = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").replace("\\\n", " ").splitlines():
                if ".venv/bin/harness " in line:
                    line = line.split(">>")[0]
                    for key, value in env.items():
                        line = line.replace(f'"${key}"', value)
                    commands.append(shlex.split(line.split(".venv/bin/harness", 1)[1]))
    assert sorted(c[0] for c in commands) == ["baseline", "baseline", "gate", "run", "run"]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func)
    gate_args = parser.parse_args(next(c for c in commands if c[0] == "gate"))
    assert [parse_metric(m).metric for m in gate_args.metric] == ["tpot_p50", "ttft_p99", "goodput"]


def test_ci_gate_script_refuses_unknown_arguments():
    import subprocess

    script = Path(__file__).parents[1] / "scripts" / "ci_gate.sh"
    done = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "use no argument to gate or --update" in done.stderr


def test_mixed_run_sets_are_refused(tmp_path, base_runs, capsys):
    rng = np.random.default_rng(6)
    other = make_run(tmp_path / "x", "a", "multilora", windows(rng, 100), model="llama3-8b")
    assert main(["baseline", "save", str(base_runs[0]), str(other), "--name", "mix", "--dir", str(tmp_path / "bl")]) == 2
    assert "runs disagree on model" in capsys.readouterr().err
    save(tmp_path)
    uneven = [make_run(tmp_path / "u", "a", "multilora", windows(rng, 100), started="2026-01-02T00:00:00"),
              make_run(tmp_path / "u", "b", "multilora", windows(rng, 100), started="2026-01-02T00:01:00"),
              make_run(tmp_path / "u", "c", "merged", windows(rng, 50))]
    assert gate(tmp_path, uneven, "--metric", "ratio:output_tok_s:multilora/merged") == 2
    assert "2 run(s) of multilora but 1 of merged" in capsys.readouterr().err
