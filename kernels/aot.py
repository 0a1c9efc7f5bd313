"""Compile the Triton kernels for a GPU without one: each case's launches are caught before they run, compiled by
Triton (and its bundled ptxas) for the target, and their shared memory checked against the target's per-block
limit. This finds what the CPU interpreter cannot: a kernel that does not compile for the GPU, or a default
config that asks for more shared memory than a block may have (which Triton refuses at launch).

    python -m kernels.aot [--arch 90] [--gpu "NVIDIA H200"] [--sms 132] [--pdl] [--cases NAME,...] [--json OUT]

Prints a table (kernel, case, config constants, shared memory beside the limit) and exits 1 if any case fails.
The installed Triton compiles: a GPU machine may run another version, so this checks the code, not that build.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

SMEM_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}  # bytes a block may ask for, by SM arch
_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "launch_pdl")


@contextlib.contextmanager
def as_gpu(name: str, sms: int, pdl: bool = False):
    """Configs chosen as on that GPU: its tuned file (kernels/configs/) and its multiprocessor count; pdl: the
    kernels that can are launched with programmatic dependent launch (kernels/pdl.py), as on a Hopper GPU."""
    import kernels.launch as launch
    import kernels.pdl as pdl_switch
    from kernels import lora_expand, lora_fused, lora_shrink, paged_attention

    saved = []
    patches = (("sm_count", lambda device: sms), ("_device_name", lambda device: name),
               ("use", lambda device, tokens: pdl))
    for mod in (launch, lora_shrink, lora_expand, lora_fused, paged_attention, pdl_switch):
        for attr, value in patches:
            if hasattr(mod, attr):
                saved.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, value)
    try:
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


@contextlib.contextmanager
def caught_launches():
    """Within it, `kernel[grid](*args, **kw)` records (kernel, args, kw) in the yielded list instead of running."""
    from triton.runtime.jit import JITFunction

    launches: list = []
    original = JITFunction.__getitem__

    def getitem(self, grid):
        return lambda *args, **kw: launches.append((self, args, dict(kw)))

    JITFunction.__getitem__ = getitem
    try:
        yield launches
    finally:
        JITFunction.__getitem__ = original


def _signature(fn, args, kw) -> tuple[dict, dict]:
    values = dict(zip(fn.arg_names, args))
    values.update(kw)
    sig, consts = {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        v = values[name]
        if param.is_constexpr or v is None:
            sig[name], consts[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + _TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i64" if abs(v) >= 2 ** 31 else "i32"
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(v).__name__} has no Triton type here")
    return sig, consts


def compile_launch(fn, args, kw, arch: int, ptx: bool = False) -> dict:
    """Compile one caught launch for sm_<arch>; its shared memory, cubin size and constants (ptx: and its PTX)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kw = dict(kw)
    options = {k: kw.pop(k) for k in _LAUNCH_OPTIONS if k in kw}
    sig, consts = _signature(fn, args, kw)
    kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                            options=options)
    shown = {fn.arg_names[i[0]]: v for i, v in consts.items() if fn.arg_names[i[0]].isupper()}
    row = {"kernel": fn.__name__, "shared_bytes": int(kernel.metadata.shared), "cubin_bytes": len(kernel.asm["cubin"]),
           "constants": {**shown, **options}}
    if ptx:
        row["ptx"] = kernel.asm["ptx"]
    return row


def _lora_calls(case):
    from kernels.bench import fused_op, lora_ops, rows_pair_op
    from kernels.cases import lora_inputs

    inp = lora_inputs(case, device="cpu")
    _, _, both = lora_ops(inp)
    return [both, fused_op(inp), rows_pair_op(inp)]


def _attention_calls(case):
    from kernels.cases import attention_inputs
    from kernels.paged_attention import paged_decode_attention

    inp = attention_inputs(case, device="cpu")
    return [lambda: paged_decode_attention(inp.q, inp.k_cache, inp.v_cache, inp.block_tables, inp.context_lens,
                                           case.head_dim ** -0.5)]


def _fused_ops_calls(_case=None):
    """The norms, RoPE + cache write and SiLU-mul at llama3-8b's sizes (64 tokens), the first two also as the joint
    path runs them (64 rank-16 slots)."""
    from kernels.fused_ops import FusedOps

    dim, heads, kv_heads, head_dim, inter, t = 4096, 32, 8, 128, 14336, 64  # llama3-8b (kernels sit below engines)
    x, w = torch.randn(t, dim, dtype=torch.bfloat16), torch.ones(dim, dtype=torch.bfloat16)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16)
    cache = torch.zeros(8, 16, kv_heads, head_dim, dtype=torch.bfloat16)
    rope = FusedOps.rope_tables(torch.arange(t), torch.ones(head_dim // 2))
    gu = torch.randn(t, 2 * inter, dtype=torch.bfloat16)

    def joint(n_total: int, slices: int, slots: int = 64, rank: int = 16):  # the joint path's output (JointOut's fields)
        return SimpleNamespace(s=torch.randn(t, slots * slices * rank, dtype=torch.bfloat16),
                               b=torch.randn(slots, n_total, rank, dtype=torch.bfloat16),
                               token_slot=torch.arange(t, dtype=torch.int32) % slots,
                               ranks=torch.full((slots,), rank, dtype=torch.int32), scales=torch.ones(slots),
                               num_slices=slices, max_rank=rank, counters=torch.zeros(t, dtype=torch.int32))
    return [lambda: FusedOps.add_rms_norm(x, x.clone(), w, 1e-5),
            lambda: FusedOps.rope_and_cache(qkv, rope, heads, kv_heads, head_dim, cache, cache.clone(),
                                            torch.arange(t)),
            lambda: FusedOps.add_rms_norm(x, x.clone(), w, 1e-5, delta=joint(dim, 1)),
            lambda: FusedOps.rope_and_cache(qkv, rope, heads, kv_heads, head_dim, cache, cache.clone(),
                                            torch.arange(t), delta=joint(qkv.shape[1], 3)),
            lambda: FusedOps.silu_mul(gu)]


def all_cases() -> dict:
    from kernels.cases import ATTENTION_CASES, LORA_CASES

    cases = {c.name: (_lora_calls, c) for c in LORA_CASES}
    cases.update({c.name: (_attention_calls, c) for c in ATTENTION_CASES})
    cases["fused-ops-llama3-8b"] = (_fused_ops_calls, None)
    return cases


def check(names: list[str], arch: int = 90, gpu: str = "NVIDIA H200", sms: int = 132, pdl: bool = False,
          ptx: bool = False) -> list[dict]:
    """Compile every launch of the named cases for sm_<arch>, configs chosen as on `gpu` with `sms`
    multiprocessors (pdl: with PDL where the kernel takes it); one row per launch (ok, or the error; ptx: the
    PTX too)."""
    cases, rows = all_cases(), []
    limit = SMEM_LIMIT.get(arch, SMEM_LIMIT[90])
    for name in names:
        make, case = cases[name]
        with as_gpu(gpu, sms, pdl), caught_launches() as launches:
            for call in make(case):
                call()
        for fn, args, kw in launches:
            t = time.perf_counter()
            try:
                row = compile_launch(fn, args, kw, arch, ptx)
                row["ok"] = row["shared_bytes"] <= limit
                row["error"] = "" if row["ok"] else f"shared memory {row['shared_bytes']:,} > {limit:,}"
            except Exception as exc:  # the compiler's message is the finding
                row = {"kernel": fn.__name__, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
            rows.append({"case": name, "arch": arch, "limit_bytes": limit,
                         "compile_s": round(time.perf_counter() - t, 2), **row})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="SM architecture to compile for (default 90: H100/H200)")
    p.add_argument("--gpu", default="NVIDIA H200", help="choose configs as on this GPU: its tuned file in "
                   "kernels/configs/ if any, else the defaults (default: %(default)s)")
    p.add_argument("--sms", type=int, default=132, help="its multiprocessors, which size the defaults (default: "
                   "%(default)s, the H100/H200)")
    p.add_argument("--pdl", action="store_true", help="launch with programmatic dependent launch where a kernel "
                   "takes it (kernels/pdl.py), as on a Hopper GPU")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all; --list shows them)")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    cases = all_cases()
    if a.list:
        print("\n".join(cases))
        return 0
    names = a.cases.split(",") if a.cases else list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        print(f"kernels.aot: error: unknown case(s) {unknown}; --list shows them", file=sys.stderr)
        return 2
    rows = check(names, a.arch, a.gpu, a.sms, a.pdl)
    print(f"| case | kernel | shared bytes (limit {rows[0]['limit_bytes']:,}) | constants | result |" if rows else "")
    print("|---|---|---|---|---|")
    for r in rows:
        consts = ", ".join(f"{k}={v}" for k, v in r.get("constants", {}).items())
        print(f"| {r['case']} | {r['kernel']} | {r.get('shared_bytes', '-'):,} | {consts} | "
              f"{'ok' if r['ok'] else 'FAIL: ' + r['error']} |" if "shared_bytes" in r else
              f"| {r['case']} | {r['kernel']} | - | - | FAIL: {r['error']} |")
    import triton
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} launches compile for sm_{a.arch} (Triton {triton.__version__})")
    if a.json:
        a.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
