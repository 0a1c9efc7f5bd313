"""The gate end to end on the CPU with the real engines: a per-step delay is caught, a re-run is not flagged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
RATIO = "ratio:output_tok_s:multilora/merged"
STEP_DELAY_MS = 5.0  # a step of the tiny model with 8 sequences takes about 4 ms on a CPU: this halves throughput
MAX_REGRESSION = "25%"  # as scripts/ci_gate.sh
SLOW = json.dumps({"name": "multilora", "options": {"step_delay_ms": STEP_DELAY_MS}})

pytestmark = pytest.mark.slow


def run_one(runs_dir: Path, engine: str, timeout_s: float = 150.0) -> Path:
    """One `harness run` of the CI workload with an 8 s window, one CPU thread, as scripts/ci_gate.sh runs it."""
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "workloads/ci-gate.yaml", "--engine", engine,
                             "--runs-dir", str(runs_dir), "--set", "duration_s=8", "--no-progress"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
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
    assert proc.returncode == 0, log[-2000:]
    (new,) = set(runs_dir.iterdir()) - before
    return new


def run_pair(runs_dir: Path, multilora: str = "multilora") -> list[Path]:
    return [run_one(runs_dir, multilora), run_one(runs_dir, "merged")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A baseline pair, a second pair of the same code, and a multilora that sleeps in every step."""
    root = tmp_path_factory.mktemp("gate-e2e")
    out = {"base": run_pair(root / "base"), "same": run_pair(root / "same")}
    out["slow"] = [run_one(root / "slow", SLOW), out["same"][1]]
    assert main(["baseline", "save", str(root / "base"), "--name", "e2e", "--dir", str(root / "bl")]) == 0
    return root, out


def gate(root: Path, run_dirs, *metrics: str) -> tuple[int, str]:
    md = root / "gate.md"
    argv = ["gate", "--baseline", "e2e", "--baseline-dir", str(root / "bl"), *map(str, run_dirs),
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
        # saturated: the engine serves well below the offered 48 req/s x 128 tokens
        assert summary["metrics"]["output_tok_s"] < 0.8 * 48 * 128
        assert len(summary["windows"]["output_tok_s"]) == 8


def test_same_code_is_not_flagged(runs):
    root, out = runs
    code, md = gate(root, out["same"], RATIO)
    if code == 1:  # as scripts/ci_gate.sh: a regression must show again on a fresh pair (a busy neighbour is not one)
        code, md = gate(root, run_pair(root / "confirm"), RATIO)
    assert code == 0, md
    assert "Regression gate: PASS" in md and "| output_tok_s ratio | multilora/merged |" in md


def test_step_delay_is_caught_as_a_regression(runs):
    root, out = runs
    code, md = gate(root, out["slow"], RATIO, "output_tok_s")
    assert code == 1, md
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| output_tok_s")}
    assert rows["multilora/merged"].endswith("| **FAIL** |")
    assert rows["multilora"].endswith("| **FAIL** |")
    change = float(rows["multilora/merged"].split("|")[6].strip().rstrip("%"))
    assert change < -30, md


def test_a_run_set_missing_an_engine_is_unusable(runs):
    root, out = runs
    merged_only = [d for d in out["same"] if d.name.endswith("-merged")]
    code, md = gate(root, merged_only, RATIO)
    assert code == 2 and "no runs of engine 'multilora'" in md
