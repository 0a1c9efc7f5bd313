"""Which kernel family, launched with PDL (kernels/pdl.py), changes what the engine serves? Serves the tiny model's
requests over four adapters (tests/test_engine_lora_fold.py's) with PDL off, then, each in a child process (an
illegal address ends a CUDA context), with PDL on for one family of kernels at a time, eager and with graphs.

    python scripts/pdl_bisect.py [--families all,lora_rows,...,none] [--graphs 0,1] [--warmup] [--after-off]
                                 [--after-kernel-test off|on|off,on] [--blocking]

Prints one line per (family, graphs): same tokens, different tokens, or the child's error with the stage it reached
(the kernel test, engine i) and the innermost frames of its traceback. Family `none`: PDL on for no kernel, so the
engines serve without it (does a failure need PDL at all?)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # the modules whose kernels each family launches
    "lora_rows": ("kernels.lora_shrink_rows", "kernels.lora_expand_rows"),
    "lora_segments": ("kernels.lora_shrink", "kernels.lora_expand"),
    "fused_ops": ("kernels.fused_ops",),
    "attention": ("kernels.paged_attention",),
}
FAMILIES["all"] = tuple(m for v in FAMILIES.values() for m in v)
FAMILIES["none"] = ()
CHILD = """
import importlib, json, sys, types
import torch
sys.path.insert(0, {root!r})
from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import serve
import kernels.pdl as real
real.set_max_tokens(real.ALL)
off = types.SimpleNamespace(use=lambda device, tokens: False, launch_options=real.launch_options)
for name in {others!r}:
    mod = importlib.import_module(name)
    setattr(mod, "pdl" if hasattr(mod, "pdl") else "pdl_switch", off)
if {first_test}:  # the GPU kernel test that ran before the failing engine test in pytest, PDL off/on as asked
    from tests.test_kernels_pdl import rows_pair_graphs
    rows_pair_graphs({first_modes!r})
    print("stage: kernel test done", flush=True)
for i, on in enumerate({sequence!r}):  # engines one after another in this process
    print(f"stage: engine {{i}} (pdl {{on}})", flush=True)
    eng = create_engine(EngineConfig(model="tiny", device="cuda", dtype="float32", adapters={adapters!r},
                                     num_kv_blocks=512, extra={{"pdl": on, "capture_graphs": {graphs},
                                                                "warmup": {warmup}}}))
    toks, _ = serve(eng)
    eng.close()
    torch.cuda.synchronize()
print(json.dumps(toks))
"""


def run(mods, graphs: bool, adapters: str, sequence: list[bool], warmup: bool = False,
        first_test: bool = False, first_modes: tuple[bool, ...] = (False, True),
        blocking: bool = False) -> tuple[str, dict | None]:
    """(status, tokens) of one child: PDL available to the kernel modules `mods` only, engines with PDL as in
    `sequence` one after another; status "ok", or the stage the child reached, its last error line and the
    innermost frames of its traceback (tokens None then). blocking: CUDA_LAUNCH_BLOCKING=1 in the child."""
    others = [m for m in FAMILIES["all"] if m not in mods]
    code = CHILD.format(root=str(ROOT), others=others, adapters=adapters, sequence=sequence, graphs=graphs,
                        warmup=warmup, first_test=first_test, first_modes=tuple(first_modes))
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1") if blocking else None
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    if out.returncode:
        return failure_line(out), None
    return "ok", json.loads(out.stdout.strip().splitlines()[-1])


def tiny_adapters(prefix: str) -> Path:
    """A new temporary folder with tests/test_engine_lora_fold.py's four adapters of the tiny model (ranks 4, 8, 16 on
    q, k, v, o and down), which the children serve."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engines.adapters.synth import make_adapters
    from engines.model.config import ModelArgs
    root = Path(tempfile.mkdtemp(prefix=prefix))
    make_adapters(ModelArgs.from_name("tiny"), 4, [4, 8, 16], ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                  root, dtype=torch.float32)
    return root


def failure_line(out: subprocess.CompletedProcess) -> str:
    """A failed child in one line: the last stage it printed ("stage: ..." on stdout), its last error line, and the
    innermost three frames of its traceback."""
    stages = [line[7:] for line in out.stdout.splitlines() if line.startswith("stage: ")]
    lines = out.stderr.splitlines()
    err = [line for line in lines if ("Error" in line or "error" in line) and not line.startswith("frame #")]
    frames = [line.strip() for line in lines if line.lstrip().startswith("File ")][-3:]
    what = (err[-1] if err else out.stderr[-300:]).strip()[:300]
    return f"after {stages[-1] if stages else 'start'}: {what} | " + " <- ".join(reversed(frames))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="all,lora_rows,lora_segments,fused_ops,attention")
    ap.add_argument("--graphs", default="0,1")
    ap.add_argument("--warmup", action="store_true", help="the engine's start-up prefills of every length too")
    ap.add_argument("--after-off", action="store_true", help="each child serves with PDL off first, then on")
    ap.add_argument("--after-kernel-test", default=None, choices=("off", "on", "off,on"),
                    help="each child first captures tests/test_kernels_pdl.py's rows pair graph with PDL off, on, or "
                         "both (the GPU test's order), then serves")
    ap.add_argument("--blocking", action="store_true", help="CUDA_LAUNCH_BLOCKING=1 in the children: the error "
                    "surfaces at the launch that made it")
    a = ap.parse_args()
    root = tiny_adapters("pdl-bisect-")
    for graphs in (g == "1" for g in a.graphs.split(",")):
        status, want = run((), graphs, str(root), [False], a.warmup, blocking=a.blocking)
        print(f"graphs={graphs} PDL off: {status}", flush=True)
        for fam in a.families.split(","):
            status, got = run(FAMILIES[fam], graphs, str(root), [False, True] if a.after_off else [True], a.warmup,
                              a.after_kernel_test is not None,
                              tuple(m == "on" for m in (a.after_kernel_test or "").split(",") if m), a.blocking)
            verdict = status if got is None else ("same tokens" if got == want else "DIFFERENT tokens")
            print(f"graphs={graphs} PDL on for {fam:14s}: {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
