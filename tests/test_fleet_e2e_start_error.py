"""A fleet whose replicas' engines cannot start says why: the engine's own error, through Ray's deployment status."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def test_a_replica_engine_that_fails_at_start_is_reported_with_its_reason():
    bad = json.dumps({"extra": {"fused_lora": "sometimes"}, "cuda_graphs": False})  # refused by the engine itself
    proc = subprocess.run([sys.executable, "-m", "harness", "serve", "--replicas", "1", "--engine", "multilora",
                           "--model", "tiny", "--port", "0", "--engine-config", bad],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if "the fleet did not start" in x)
    assert "EngineReplica" in line and "fused_lora='sometimes'" in line, line
    assert "READY" not in proc.stdout
