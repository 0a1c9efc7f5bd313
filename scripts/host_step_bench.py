"""The host's part of a graphed step: build its input tensors (ModelRunner.host_rows) and group its tokens by adapter
(LoRAMeta.prepare), per decode batch and prompt tokens; a table and JSON.

    python3 scripts/host_step_bench.py [--points 1,64,256,256+256] [--context 512] [--json out.json]

A synced step costs this host time plus the GPU's; an overlapped step (the CUDA default) hides it while it is shorter
than the GPU's part (docs/performance.md: synced against pipelined). The work is plain CPU work, the same with or
without a GPU, so this runs anywhere on the tiny preset; a GPU machine's CPU gives that machine's figure. Each row
is the median of --iters runs."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.config import EngineConfig  # noqa: E402
from engines.multilora.engine import MultiLoRAEngine  # noqa: E402
from engines.profile import decoding_seqs  # noqa: E402
from engines.profile_mixed import _prompts  # noqa: E402


def parse_points(text: str) -> list[tuple[int, int]]:
    """"B+P,..." -> [(decodes, prompt tokens)]."""
    out = []
    for part in text.split(","):
        b, _, p = part.partition("+")
        try:
            out.append((int(b), int(p or 0)))
        except ValueError:
            raise SystemExit(f"host_step_bench: --points {part!r}: give BATCH or BATCH+PROMPT_TOKENS") from None
    return out


def cpu_name() -> str:
    """The CPU's model name where /proc/cpuinfo has it, else what platform says."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _median_us(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="1,64,256,256+256", help="BATCH[+PROMPT_TOKENS],...")
    ap.add_argument("--context", type=int, default=512, help="cached tokens of each decoding sequence")
    ap.add_argument("--adapters", type=int, default=64, help="distinct adapters the rows spread over")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    points = parse_points(args.points)
    batch = max(b for b, _ in points)
    blocks = batch * (args.context // 16 + 2) + sum(p for _, p in points) // 16 + 64
    eng = MultiLoRAEngine(EngineConfig(model="tiny", device="cpu", max_num_seqs=batch, num_kv_blocks=blocks,
                                       max_num_batched_tokens=4096, gpu_slots=args.adapters,
                                       max_loras=args.adapters))
    runner = eng.runner
    seqs = decoding_seqs(eng, batch, args.context, "h")
    rows = []
    print(f"host: {cpu_name()}, torch {torch.__version__}; median of {args.iters}")
    print(f"{'decodes':>7} {'prompt':>6} {'rows':>5} {'host_rows us':>12} {'meta.prepare us':>15} {'total us':>9}")
    for b, p in points:
        prompts = _prompts(eng, p, f"hp{b}-{p}-") if p else []
        lens = [len(s) for s in prompts]
        slots = [i % args.adapters for i in range(b + len(prompts))]
        decode = seqs[:b]
        built = runner.host_rows(decode, prompts, lens, slots)
        t_rows = _median_us(lambda: runner.host_rows(decode, prompts, lens, slots), args.iters)
        t_meta = _median_us(lambda: runner.meta.prepare(built.slots), args.iters)
        n = built.ids.shape[0]
        rows.append(dict(decodes=b, prompt_tokens=p, rows=n, host_rows_us=t_rows, meta_prepare_us=t_meta,
                         total_us=t_rows + t_meta))
        print(f"{b:7d} {p:6d} {n:5d} {t_rows:12.1f} {t_meta:15.1f} {t_rows + t_meta:9.1f}")
        for s in prompts:
            eng.blocks.free(s)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(host=cpu_name(),
                                                   python=platform.python_version(), torch=torch.__version__,
                                                   context=args.context, adapters=args.adapters, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
