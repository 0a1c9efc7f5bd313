"""The gate end to end on the CPU with the real engines: a slower multilora is caught, a re-run is not flagged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
RATIO = "ratio:served_tok_s:multilora/merged"  # as scripts/ci_gate.sh
MAX_REGRESSION = "25%"  # as scripts/ci_gate.sh
WINDOWS = 8  # measured seconds per run: 8 one-second windows a side; all 8 below all 8 gives p = 1/12870
# multilora with every step SLOWDOWN (4) times as long (tests/gate_slow_engine.py): about -75% tokens/s on any
# machine, paired with a merged run right after it, so the ratio's change stays far beyond the 25% threshold.
# No warm-up and outputs of 48-80 tokens: the slowed engine must complete measured requests within the window, or
# its run is invalid, on a busy machine too. The offered load stays about twice what the engines serve: at 48 req/s
# (3,072 tok/s) a CI box served 2,471 tok/s (2026-11-30), too near the offered load for a run to be saturated.
RATE = 80.0
SETS = ["duration_s=" + str(WINDOWS), "warmup_s=0", "traffic.output_tokens={kind: uniform, low: 48, high: 80}",
        f"traffic.rate={RATE}"]
_OPTIONS = yaml.safe_load((REPO / "workloads/ci-gate.yaml").read_text())["engine_options"]["multilora"]
SLOW = json.dumps({"name": "tests.gate_slow_engine:SlowMultiLoRA", "label": "multilora", "options": _OPTIONS})

pytestmark = pytest.mark.e2e


def run_engines(runs_dir: Path, *engines: str, timeout_s: float = 240.0) -> set[Path]:
    """One `harness run` of the CI workload over the engines in order, one CPU thread, as scripts/ci_gate.sh."""
    before = {p for p in runs_dir.iterdir() if p.is_dir()} if runs_dir.is_dir() else set()
    cmd = [sys.executable, "-m", "harness", "run", "workloads/ci-gate.yaml", "--runs-dir", str(runs_dir),
           "--no-progress"] + [arg for item in SETS for arg in ("--set", item)]
    for engine in engines:
        cmd += ["--engine", engine]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        log = proc.communicate(timeout=timeout_s)[0]
    finally:
        if proc.poll() is None:  # a hung run: interrupt it so that it stops its server, then kill it
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log[-3000:]
    new = {p for p in runs_dir.iterdir() if p.is_dir()} - before  # beside them: this invocation's results.csv
    assert len(new) == len(engines), log[-3000:]
    return new


def run_pair(runs_dir: Path, multilora: str = "multilora") -> list[Path]:
    """[the multilora run, the merged run] of one `harness run` (run directories end with the engine's label)."""
    new = run_engines(runs_dir, multilora, "merged")
    return [next(p for p in new if p.name.endswith("-" + label)) for label in ("multilora", "merged")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A baseline pair, a second pair of the same code, and a pair whose multilora steps take 4 times as long."""
    root = tmp_path_factory.mktemp("gate-e2e")
    out = {"base": run_pair(root / "base"), "same": run_pair(root / "same"), "slow": run_pair(root / "slow", SLOW)}
    assert main(["baseline", "save", str(root / "base"), "--name", "e2e", "--dir", str(root / "bl")]) == 0
    return root, out


def gate(root: Path, run_dirs, *metrics: str, baseline: str = "e2e") -> tuple[int, str]:
    md = root / "gate.md"
    argv = ["gate", "--baseline", baseline, "--baseline-dir", str(root / "bl"), *map(str, run_dirs),
            "--max-regression", MAX_REGRESSION, "--markdown", str(md)]
    for m in metrics:
        argv += ["--metric", m]
    code = main(argv)
    return code, md.read_text()


def test_runs_are_valid_and_saturated(runs):
    _, out = runs
    for run_dir in {d for pair in out.values() for d in pair}:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["valid"], summary["invalid_reasons"]
        # saturated: the engine serves well below the offered RATE req/s x 64 tokens
        assert summary["metrics"]["output_tok_s"] < 0.8 * RATE * 64
        # the windows tile the measured span, which an overloaded server stretches past duration_s
        assert len(summary["windows"]["served_tok_s"]) == int(summary["measured_s"]) >= WINDOWS


def test_same_code_is_not_flagged(runs):
    root, out = runs
    code, md = gate(root, out["same"], RATIO)
    if code == 1:  # not shown: both sides again, fresh and three pairs each, as the gate asks for more samples
        # (CI, 2026-11-30, on a 2-core box shared with other jobs: the same code read -21%, then -23% against the
        # same baseline pair, which had itself run beside other work; another time one pair a side resolved only
        # 36% where 25% is asked, and the gate said about 3 runs a side would do)
        for _ in range(3):
            run_pair(root / "base-again")
        assert main(["baseline", "save", str(root / "base-again"), "--name", "e2e-again", "--dir",
                     str(root / "bl")]) == 0
        confirm = [d for _ in range(3) for d in run_pair(root / "confirm")]
        code, md = gate(root, confirm, RATIO, baseline="e2e-again")
    assert code == 0, md
    assert "Regression gate: PASS" in md and "| served_tok_s ratio | multilora/merged |" in md


def test_a_slower_multilora_is_caught_as_a_regression(runs):
    root, out = runs
    code, md = gate(root, out["slow"], RATIO, "output_tok_s")
    assert code == 1, md
    rows = {line.split("|")[2].strip(): line for line in md.splitlines()
            if line.startswith(("| output_tok_s", "| served_tok_s"))}
    assert rows["multilora/merged"].endswith("| **FAIL** |")
    assert rows["multilora"].endswith("| **FAIL** |")
    change = float(rows["multilora/merged"].split("|")[6].strip().rstrip("%"))
    assert change < -50, md


def test_a_run_set_missing_an_engine_is_unusable(runs):
    root, out = runs
    merged_only = [d for d in out["same"] if d.name.endswith("-merged")]
    code, md = gate(root, merged_only, RATIO)
    assert code == 2 and "no runs of engine 'multilora'" in md
