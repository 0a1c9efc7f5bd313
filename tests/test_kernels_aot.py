"""The Triton kernels compile for the H100/H200 (sm_90) on a machine without a GPU, and a config that asks for more
shared memory than a block may have is reported as such (kernels/aot.py). Run in a child Python without
TRITON_INTERPRET, which the suite sets (interpreted kernels are not compiled)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend compiles sm_90 code")

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json
from kernels.aot import SMEM_LIMIT, caught_launches, check, compile_launch
from kernels.cases import LORA_CASES, lora_inputs
from kernels.launch import ExpandConfig, ExpandRowsConfig, ShrinkConfig
from kernels.lora_expand import lora_expand
from kernels.lora_expand_rows import lora_expand_rows
from kernels.lora_shrink import lora_shrink

rows = check(["decode-64x64-r16-qkv"], arch=90)
case = next(c for c in LORA_CASES if c.name == "decode-64x64-r16-qkv")
inp = lora_inputs(case, device="cpu")
huge = ShrinkConfig(block_m=64, block_r=16, block_k=2048, split_k=1, num_warps=8, num_stages=4)
with caught_launches() as launches:
    lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=huge)
looping = [ShrinkConfig(block_m=16, block_r=16, block_k=256, split_k=4, num_warps=4, num_stages=3, m_programs=32),
           ExpandConfig(block_m=16, block_n=128, block_r=16, n_steps=2, num_warps=4, num_stages=2, m_programs=32)]
with caught_launches() as loops:
    lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=looping[0])
    lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y, config=looping[1])
    for cfg, overwrite in ((ExpandRowsConfig(late_rank=True), False), (ExpandRowsConfig(block_m=2), True),
                           (ExpandRowsConfig(block_m=2, late_rank=True), True)):
        lora_expand_rows(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y, config=cfg,
                         overwrite=overwrite)
print(json.dumps({"rows": rows, "launches": len(launches), "huge": compile_launch(*launches[0], arch=90),
                  "limit": SMEM_LIMIT[90], "loops": [compile_launch(*launch, arch=90) for launch in loops]}))
"""


def compile_in_child(code: str) -> dict:
    """Run `code` in a child Python without TRITON_INTERPRET (so Triton compiles); the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    return compile_in_child(CHILD)


def test_the_decode_step_kernels_compile_for_sm90_within_its_shared_memory(compiled):
    rows = compiled["rows"]
    assert {r["kernel"] for r in rows} == {"_shrink_kernel", "_expand_kernel", "_fused_kernel", "_shrink_rows_kernel",
                                          "_expand_rows_kernel"}
    for r in rows:
        assert r["ok"], r
        assert 0 < r["shared_bytes"] <= compiled["limit"] and r["cubin_bytes"] > 0


def test_the_segment_kernels_that_loop_over_the_real_tiles_compile_for_sm90(compiled):
    loops = compiled["loops"]  # m_programs > 0: LOOP_M, the split-K semaphores inside the loop for the shrink
    assert [r["kernel"] for r in loops] == ["_shrink_kernel", "_expand_kernel"] + ["_expand_rows_kernel"] * 3
    for r in loops[:2]:
        assert r["constants"]["LOOP_M"] is True and 0 < r["shared_bytes"] <= compiled["limit"], r
    # the expand by rows with loads that do not wait for the rank, and writing y instead of adding to it
    assert [(r["constants"]["LATE_RANK"], r["constants"]["OVERWRITE"]) for r in loops[2:]] == \
        [(True, False), (False, True), (True, True)]
    assert all(r["shared_bytes"] <= compiled["limit"] for r in loops[2:])


def test_a_config_past_the_shared_memory_limit_is_reported(compiled):
    assert compiled["launches"] == 1  # the launch was caught, not run
    assert compiled["huge"]["shared_bytes"] > compiled["limit"], compiled["huge"]
