"""The graphed engine after other Triton kernels ran in its process (run 13): with a fresh stream per graph capture,
a replay hit an illegal address on the H200 whenever the LoRA side stream was on and a bfloat16 add + RMSNorm or
expand by rows had run before the engine. DecodeGraphs now warms up and captures on one stream of its own.
scripts/graph_crash_probe.py runs each case in a child process (an illegal address ends a CUDA context)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.test_engine_lora_fold import adapter_dir  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
BF16_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _probe_module():
    spec = importlib.util.spec_from_file_location("graph_crash_probe", ROOT / "scripts" / "graph_crash_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_probe_builds_a_child_program():
    """Each prelude and variant the script offers makes a child program that compiles, with the asked-for extra."""
    probe = _probe_module()
    names = list(probe.PRELUDES) + [f"norm_only+{v}" for v in probe.PATCHES] + ["rows_eager+no_side_stream",
                                                                              "norm_only+x:overlap=false"]
    for name in names:
        code = probe.child_code(name, "/adapters")
        compile(code, name, "exec")
        assert "create_engine" in code and "serve(eng)" in code
    assert '"lora_stream": False' in probe.child_code("rows_eager+no_side_stream", "/a")
    assert "'overlap': False" in probe.child_code("norm_only+x:overlap=false", "/a")
    assert '"capture_graphs": False' in probe.child_code("rows_graph+no_graph_engine", "/a")
    with pytest.raises(ValueError, match="unknown prelude 'nope'"):
        probe.child_code("nope", "/a")
    with pytest.raises(ValueError, match="x:overlap=maybe"):
        probe.child_code("none+x:overlap=maybe", "/a")
    assert probe.main(["--probes", "norm_only,nope"]) == 2  # refused before any child runs


@pytest.mark.skipif(not BF16_GPU, reason="needs a CUDA GPU with bfloat16 (the preludes run llama3-8b shapes in it)")
@pytest.mark.parametrize("prelude", ["norm_only", "expand_only", "rows_graph"])
def test_on_a_gpu_the_graphed_engine_serves_after_other_kernels_ran(adapter_dir, prelude):  # noqa: F811
    assert _probe_module().probe(prelude, str(adapter_dir)) == "ok"
