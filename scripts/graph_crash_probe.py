"""Does the tiny engine, with CUDA graphs, serve after other kernels ran in its process? Each probe runs in a child
process (an illegal address ends a CUDA context): a prelude, then scripts/pdl_bisect.py's engine (start-up prefills,
graphs, PDL off) serving its requests. Run 13 (docs/performance.md) found with it that a graph replay hit an illegal
address whenever a bfloat16 add + RMSNorm or expand by rows had run first and the LoRA side stream was on; graphs in
pools of their own, or (the fix, engines/multilora/cuda_graphs.py) one capture stream for every graph, removed it.

    python scripts/graph_crash_probe.py [--probes norm_only,rows_graph+own_pools,...] [--repeat N]

A probe is PRELUDE or PRELUDE+VARIANT (variants joined by &).
Preludes: none; rows_graph (tests/test_kernels_pdl.py's rows_pair_graphs, PDL off); rows_eager (the same kernels,
  no graph); shrink_only, expand_only, norm_only (one kernel of rows_eager); other_graph (a graph of torch ops only).
Variants: no_graph_engine (the engine without graphs); no_side_stream (extra lora_stream false); x:KEY=JSON (one
  more engine extra, e.g. x:overlap=false); meta_sync (every LoRAMeta.prepare waits for the device);
  fresh_stage (each prepare stages in new pinned memory); own_pools (each graph in a pool of its own);
  sync_replay (the host waits for each replay).
Prints one line per probe and run: ok, or the stage the child reached, its error and innermost frames."""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sibling(name: str):
    """A script beside this one, loaded as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_BISECT = _sibling("pdl_bisect")  # its child's failure line and its adapters
failure_line = _BISECT.failure_line

PRELUDES = {
    "none": "",
    "rows_graph": "from tests.test_kernels_pdl import rows_pair_graphs\nrows_pair_graphs((False,))",
    "rows_eager": "from tests.test_kernels_pdl import rows_pair_graphs\nrows_pair_graphs((False,), graph=False)",
    "shrink_only": "_inputs()\nlora_shrink_rows(x, a, meta, scales, ranks, torch.zeros(3, 64, 16, device=dev))",
    "expand_only": "_inputs()\nlora_expand_rows(torch.randn(3, 64, 16, device=dev), b, meta, ranks, offs, y0.clone())",
    "norm_only": "_inputs()\nFusedOps.add_rms_norm(y0[:, :4096].contiguous(), x.clone(), x[0].clone(), 1e-5)",
    "other_graph": """
dev = torch.device("cuda")
x = torch.randn(64, 4096, device=dev, dtype=torch.bfloat16)
w = torch.randn(4096, 6144, device=dev, dtype=torch.bfloat16)
def step():
    buf = torch.zeros(4, 3, 64, 16, device=dev)
    return (x @ w).float().sum() + buf.sum()
step()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    out = step()
g.replay(); torch.cuda.synchronize(); del g, out""",
}
PATCHES = {
    "meta_sync": """
from kernels.meta import LoRAMeta
_prep = LoRAMeta.prepare
def prepare(self, *a, **k):
    out = _prep(self, *a, **k)
    if self.device.type == "cuda":
        torch.cuda.synchronize()
    return out
LoRAMeta.prepare = prepare""",
    "fresh_stage": """
from kernels.meta import LoRAMeta
_prep = LoRAMeta.prepare
def prepare(self, *a, **k):
    self._hosts = [torch.zeros_like(h).pin_memory() for h in self._hosts]
    self._hosts_np = [h.numpy() for h in self._hosts]
    return _prep(self, *a, **k)
LoRAMeta.prepare = prepare""",
}
INPUTS = """
def _inputs():  # tests/test_kernels_pdl.py's rows_pair_graphs inputs: 64 tokens of llama3-8b's q,k,v in bfloat16
    global dev, x, a, b, scales, ranks, offs, y0, meta, lora_shrink_rows, lora_expand_rows, FusedOps
    from kernels.fused_ops import FusedOps
    from kernels.lora_expand_rows import lora_expand_rows
    from kernels.lora_shrink_rows import lora_shrink_rows
    from tests.test_kernels_pdl import rows_pair_inputs
    dev = torch.device("cuda")
    x, a, b, scales, ranks, offs, y0, meta = rows_pair_inputs(dev)
"""
PATCHES["own_pools"] = """
from engines.multilora.cuda_graphs import DecodeGraphs
_cap = DecodeGraphs.capture
def capture(self, *a, **k):
    out = _cap(self, *a, **k)
    self.pool = None  # the next graph captures into a pool of its own
    return out
DecodeGraphs.capture = capture"""
PATCHES["sync_replay"] = """
from engines.multilora.cuda_graphs import DecodeGraphs
_run = DecodeGraphs.run
def run(self, *a, **k):
    out = _run(self, *a, **k)
    torch.cuda.synchronize()
    return out
DecodeGraphs.run = run"""
CHILD = """
import sys
import torch
sys.path.insert(0, {root!r})
""" + INPUTS + """
from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import serve
{prelude}
torch.cuda.synchronize()
print("stage: prelude done", flush=True)
{patch}
eng = create_engine(EngineConfig(model="tiny", device="cuda", dtype="float32", adapters={adapters!r},
                                 num_kv_blocks=512, extra={{"pdl": False, "capture_graphs": {graphs},
                                                            "warmup": True{more}}}))
print("stage: engine built", flush=True)
toks, _ = serve(eng)
eng.close()
torch.cuda.synchronize()
print("stage: served", flush=True)
"""


def child_code(name: str, adapters: str) -> str:
    """The child program of probe `name` (PRELUDE or PRELUDE+VARIANT, variants joined by &) over the adapters in
    the folder `adapters`."""
    prelude, _, rest = name.partition("+")
    if prelude not in PRELUDES:
        raise ValueError(f"unknown prelude {prelude!r} in {name!r}; known: {', '.join(PRELUDES)}")
    graphs, patches, more = True, [], ""
    for variant in filter(None, rest.split("&")):
        if variant == "no_graph_engine":
            graphs = False
        elif variant == "no_side_stream":
            more += ', "lora_stream": False'
        elif variant.startswith("x:"):  # x:key=json: one more engine extra
            key, _, value = variant[2:].partition("=")
            try:
                more += f", {key!r}: {json.loads(value)!r}"
            except json.JSONDecodeError as e:
                raise ValueError(f"{variant}: the value must be JSON ({e})") from None
        elif variant in PATCHES:
            patches.append(PATCHES[variant])
        else:
            raise ValueError(f"unknown variant {variant!r} in {name!r}; known: no_graph_engine, no_side_stream, "
                             f"x:KEY=JSON, {', '.join(PATCHES)}")
    return CHILD.format(root=str(ROOT), prelude=PRELUDES[prelude], patch="\n".join(patches), adapters=adapters,
                        graphs=graphs, more=more)


def probe(name: str, adapters: str) -> str:
    """ok, or where the child of probe `name` failed (scripts/pdl_bisect.py's failure_line)."""
    code = child_code(name, adapters)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    return "ok" if out.returncode == 0 else "FAILED " + failure_line(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", default="none,norm_only,expand_only,rows_graph,rows_eager,norm_only+own_pools",
                    help="comma-separated probes, PRELUDE[+VARIANT[&VARIANT...]] (the module's docstring lists them)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    names = a.probes.split(",")
    for name in names:  # every name checked before any child runs
        try:
            child_code(name, "")
        except ValueError as e:
            print(f"graph_crash_probe: --probes: {e}", file=sys.stderr)
            return 2
    root = _BISECT.tiny_adapters("graph-probe-")
    for name in names:
        for i in range(a.repeat):
            print(f"{name:28s} run {i}: {probe(name, str(root))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
