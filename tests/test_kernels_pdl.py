"""Programmatic dependent launch (kernels/pdl.py): where it applies, how it is switched, and the rules every kernel
launched with it keeps, read off the PTX that Triton compiles for sm_90 on a machine without a GPU (no store before
griddepcontrol.wait, the weights' loads issued before it); on a Hopper GPU the kernels give the same results under a
CUDA graph with it as without."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels.pdl as pdl
from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import adapter_dir  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.fixture
def restore_pdl():
    was = pdl.max_tokens()
    yield
    pdl.set_max_tokens(was)


def test_pdl_is_never_used_off_a_compiled_gpu_kernel(monkeypatch, restore_pdl):
    pdl.set_max_tokens(pdl.MAX_TOKENS)
    assert not pdl.use(torch.device("cpu"), 1)
    assert pdl.in_effect(torch.device("cpu")) == 0 and pdl.describe(torch.device("cpu")) == "off"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # interpreted kernels have no launch options
    assert not pdl.supported(torch.device("cuda", 0))
    assert pdl.launch_options(False) == {"USE_GDC": False}  # the interpreter is given no launch_pdl keyword
    assert pdl.launch_options(True) == {"USE_GDC": True, "launch_pdl": True}


ENV_CHILD = """
import importlib, json, os
import kernels.pdl as p
seen = {}
for value in ("0", "off", "1", "on", "", "all", "16"):
    os.environ[p.ENV] = value
    seen[value] = importlib.reload(p).max_tokens()
os.environ[p.ENV] = "sometimes"
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    seen["bad"] = [importlib.reload(p).max_tokens(), [str(w.message) for w in caught]]
print(json.dumps({"seen": seen, "default": p.DEFAULT, "max": p.MAX_TOKENS, "all": p.ALL}))
"""


def test_the_environment_asks_for_it_or_not():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", ENV_CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["default"] is pdl.DEFAULT and got["max"] == pdl.MAX_TOKENS == 64
    on, bad = got["max"], got["seen"].pop("bad")
    assert got["seen"] == {"0": 0, "off": 0, "1": on, "on": on, "": on if pdl.DEFAULT else 0, "all": got["all"],
                           "16": 16}
    assert bad[0] == on and any("LORA_FLEET_PDL='sometimes' is not on, off, all or a token count" in m
                                and "(the default)" in m for m in bad[1])  # warned, and the default kept


def test_calls_of_more_tokens_than_the_switch_allows_launch_plainly(monkeypatch, restore_pdl):
    monkeypatch.setattr(pdl, "supported", lambda device: True)  # as on a Hopper GPU
    gpu = torch.device("cuda", 0)
    pdl.set_max_tokens(pdl.MAX_TOKENS)  # the default rule
    assert [pdl.use(gpu, t) for t in (0, 1, 64, 65, 256)] == [False, True, True, False, False]
    assert pdl.describe(gpu) == "on for calls of up to 64 tokens"
    pdl.set_max_tokens(pdl.ALL)
    assert pdl.use(gpu, 4096) and pdl.describe(gpu) == "on for every call"
    pdl.set_max_tokens(0)
    assert not pdl.use(gpu, 1) and pdl.in_effect(gpu) == 0
    with pytest.raises(ValueError, match="set_max_tokens: -1 must be >= 0"):
        pdl.set_max_tokens(-1)
    assert pdl.max_tokens() == 0  # refused: the setting is unchanged


def test_the_engine_extra_sets_it_for_the_process_and_refuses_nonsense(restore_pdl):
    for value, want in ((True, pdl.ALL), (False, 0), (32, 32)):
        eng = create_engine(EngineConfig(model="tiny", device="cpu", extra={"pdl": value}))
        assert pdl.max_tokens() == want
        eng.close()
    pdl.set_max_tokens(8)
    create_engine(EngineConfig(model="tiny", device="cpu", extra={"pdl": "auto"})).close()
    assert pdl.max_tokens() == 8  # auto keeps the process's setting (LORA_FLEET_PDL or the default)
    with pytest.raises(ValueError, match=r"extra\.pdl='maybe' must be true, false or a token count >= 1, or auto"):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={"pdl": "maybe"}))


CHILD = """
import json
from kernels.aot import check
cases = ["decode-64x64-r16-qkv", "fused-ops-llama3-8b", "decode-attn-b16-ctx2048"]
print(json.dumps({"on": check(cases, arch=90, pdl=True, ptx=True), "off": check(cases, arch=90, pdl=False, ptx=True)}))
"""
PDL_KERNELS = {"_shrink_kernel", "_expand_kernel", "_shrink_rows_kernel", "_expand_rows_kernel", "_add_rms_norm_kernel",
               "_add_rms_norm_joint_kernel", "_rope_cache_kernel", "_silu_mul_kernel", "_attn_split_kernel",
               "_attn_reduce_kernel"}


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend compiles sm_90 code")
    from tests.test_kernels_aot import compile_in_child

    return compile_in_child(CHILD)


def _lines(ptx: str) -> list[str]:
    return [line.strip() for line in ptx.splitlines()]


def _first(lines: list[str], pattern: str) -> int:
    return next((i for i, line in enumerate(lines) if re.search(pattern, line)), -1)


def _count(lines: list[str], pattern: str, lo: int = 0, hi: int | None = None) -> int:
    return sum(bool(re.search(pattern, line)) for line in lines[lo:hi])


LOAD, STORE = r"\bld\.global", r"\bst\.global|\bred\.|\batom\."


def test_every_kernel_launched_with_pdl_waits_before_it_stores_and_lets_the_next_start(compiled):
    rows = [r for r in compiled["on"] if r["constants"].get("USE_GDC")]
    assert {r["kernel"] for r in rows} == PDL_KERNELS
    for r in rows:
        assert r["ok"] and r["constants"]["launch_pdl"] is True, r["kernel"]
        lines = _lines(r["ptx"])
        wait, trigger = _first(lines, r"griddepcontrol\.wait"), _first(lines, r"griddepcontrol\.launch_dependents")
        assert 0 <= trigger < wait, r["kernel"]  # the next kernel may start as soon as this one is resident
        assert _count(lines, STORE, 0, wait) == 0, f"{r['kernel']} stores before its wait"
        assert _count(lines, STORE, wait) > 0 and _count(lines, LOAD, wait) > 0, r["kernel"]


def test_the_lora_kernels_issue_their_weights_loads_before_the_wait(compiled):
    for r in compiled["on"]:
        if r["kernel"] in ("_shrink_rows_kernel", "_expand_rows_kernel"):
            lines = _lines(r["ptx"])
            wait = _first(lines, r"griddepcontrol\.wait")
            before, after = _count(lines, LOAD, 0, wait), _count(lines, LOAD, wait)
            # the metadata (slice offsets, slots, tokens, ranks, scales) takes at most 16 load instructions here;
            # the rest before the wait are the first chunk of A (shrink) or B (expand). Measured: 68 and 60 loads
            # before the wait with Triton 3.9, 42 for the expand with the H200 machine's 3.6
            assert before >= 32, (r["kernel"], before, after)


def test_without_pdl_the_kernels_carry_no_grid_dependency_control(compiled):
    names = {r["kernel"] for r in compiled["off"]}
    assert PDL_KERNELS <= names
    for r in compiled["off"]:
        assert r["ok"] and "griddepcontrol" not in r["ptx"] and "launch_pdl" not in r["constants"], r["kernel"]


def rows_pair_inputs(dev=None):
    """(x, a, b, scales, ranks, slice offsets, y0, meta) of 64 tokens over 8 slots of llama3-8b's q,k,v in bfloat16,
    on the GPU (rows_pair_graphs's, and scripts/graph_crash_probe.py's preludes)."""
    from kernels.meta import LoRAMeta
    from tests.test_kernels_lora import make_inputs, rand_slots

    dev = dev or torch.device("cuda")
    inputs = (t.to(dev) for t in make_inputs(4096, [4096, 1024, 1024], [16, 8, 4, 16, 12, 16, 8, 16], 64,
                                             torch.bfloat16, 3))
    return (*inputs, LoRAMeta(64, 8, device=dev).prepare(rand_slots(64, 8, 1)))


def rows_pair_graphs(modes=(False, True), graph: bool = True) -> dict:
    """{pdl: [y, norm]}: the rows pair then add + RMSNorm at 64 tokens (llama3-8b's q,k,v), captured in a CUDA graph
    with PDL off or on for each of `modes`, replayed once (the GPU test below; scripts/pdl_bisect.py runs it first).
    graph=False: launched plainly, no capture (scripts/graph_crash_probe.py)."""
    from kernels.fused_ops import FusedOps
    from kernels.lora_expand_rows import lora_expand_rows
    from kernels.lora_shrink_rows import lora_shrink_rows

    dev = torch.device("cuda")
    x, a, b, scales, ranks, offs, y0, meta = rows_pair_inputs(dev)
    w = torch.randn(4096, device=dev, dtype=torch.bfloat16)

    def step(on: bool):
        buf = torch.zeros(3, 64, 16, device=dev)
        y = y0.clone()
        got = lora_shrink_rows(x, a, meta, scales, ranks, buf, pdl=on)
        lora_expand_rows(got, b, meta, ranks, offs, y, pdl=on)
        return y, FusedOps.add_rms_norm(y[:, :4096].contiguous(), x.clone(), w, 1e-5)[0]

    results = {}
    for on in modes:
        pdl_was = pdl.max_tokens()
        pdl.set_max_tokens(pdl.MAX_TOKENS if on else 0)  # the fused ops follow the process switch (64 tokens)
        try:
            out = step(on)  # compile outside the capture
            if not graph:
                torch.cuda.synchronize()
                results[on] = [t.clone() for t in out]
                continue
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = step(on)
            g.replay()
            torch.cuda.synchronize()
            results[on] = [t.clone() for t in out]
        finally:
            pdl.set_max_tokens(pdl_was)
    return results


@pytest.mark.skipif(not HOPPER, reason="programmatic dependent launch needs a GPU of compute capability >= 9.0")
def test_on_a_hopper_gpu_the_rows_pair_and_fused_ops_under_a_graph_match_plain_launches():
    results = rows_pair_graphs()
    for plain, dependent in zip(results[False], results[True]):
        assert torch.equal(plain, dependent)  # same arithmetic, same order: bit for bit


def _bisect():
    spec = importlib.util.spec_from_file_location("pdl_bisect", ROOT / "scripts" / "pdl_bisect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not HOPPER, reason="programmatic dependent launch needs a GPU of compute capability >= 9.0")
def test_on_a_hopper_gpu_the_engine_serves_the_same_tokens_with_pdl(adapter_dir):  # noqa: F811
    """Each engine in a process of its own, as a server runs it (start-up prefills, then the requests), eager and
    with CUDA graphs: PDL on for every kernel that takes it gives the tokens of plain launches."""
    bisect = _bisect()
    for graphs in (False, True):
        status, want = bisect.run((), graphs, str(adapter_dir), [False], warmup=True)
        assert status == "ok", status
        status, got = bisect.run(bisect.FAMILIES["all"], graphs, str(adapter_dir), [True], warmup=True)
        assert status == "ok" and got == want, (graphs, status)


@pytest.mark.skipif(not HOPPER, reason="programmatic dependent launch needs a GPU of compute capability >= 9.0")
def test_on_a_hopper_gpu_pdl_serves_after_the_rows_pair_graph_test_in_one_process(adapter_dir):  # noqa: F811
    """The order that failed in run 12 (the graph test above, a PDL-off engine, then PDL on), in one process. The
    fault was not PDL's: a PDL-off engine failed the same way, and it went once DecodeGraphs captured on one stream
    of its own (docs/performance.md, run 13; tests/test_engine_graph_capture.py)."""
    bisect = _bisect()
    status, want = bisect.run((), True, str(adapter_dir), [False], warmup=True)
    assert status == "ok", status
    status, got = bisect.run(bisect.FAMILIES["all"], True, str(adapter_dir), [False, True], warmup=True,
                             first_test=True)
    assert status == "ok" and got == want, status
