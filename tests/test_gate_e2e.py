"""The gate end to end on the CPU with the real engines: a per-step delay is caught, a re-run is not flagged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.runner import run_engine
from harness.spec import load_workload

REPO = Path(__file__).resolve().parent.parent
RATIO = "ratio:output_tok_s:multilora/merged"
STEP_DELAY_MS = 5.0  # a step of the tiny model with 2 sequences takes 2-3 ms on a CPU: this at least halves throughput
MAX_REGRESSION = "20%"  # as scripts/ci_gate.sh: two runs of the same code on a shared CPU stay within it

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The CI workload, shortened: a baseline pair, a second pair of the same code, a slowed multilora."""
    root = tmp_path_factory.mktemp("gate-e2e")
    spec = load_workload(REPO / "workloads" / "ci-gate.yaml").with_overrides({"duration_s": 8})
    quiet = {"progress": False, "log": lambda s: None}
    out = {
        "base": [run_engine(spec, e, root / "base", **quiet) for e in ("multilora", "merged")],
        "same": [run_engine(spec, e, root / "same", **quiet) for e in ("multilora", "merged")],
        "slow": [run_engine(spec, {"name": "multilora", "options": {"step_delay_ms": STEP_DELAY_MS}},
                            root / "slow", **quiet)],
    }
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
    for run_dir in [*out["base"], *out["same"], *out["slow"]]:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["valid"], summary["invalid_reasons"]
        # saturated: the engine serves well below the offered 32 req/s x 64 tokens
        assert summary["metrics"]["output_tok_s"] < 0.8 * 32 * 64


def test_same_code_is_not_flagged(runs):
    root, out = runs
    code, md = gate(root, out["same"], RATIO)
    assert code == 0, md
    assert "Regression gate: PASS" in md and "| output_tok_s ratio | multilora/merged |" in md


def test_step_delay_is_caught_as_a_regression(runs):
    root, out = runs
    code, md = gate(root, [out["slow"][0], out["same"][1]], RATIO, "output_tok_s")
    assert code == 1, md
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| output_tok_s")}
    assert rows["multilora/merged"].endswith("| **FAIL** |")
    assert rows["multilora"].endswith("| **FAIL** |")
    assert rows["merged"].endswith("| pass |") or rows["merged"].endswith("| pass (improved) |")
    change = float(rows["multilora/merged"].split("|")[6].strip().rstrip("%"))
    assert change < -30
