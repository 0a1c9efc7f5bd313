"""The built-in engine in-process under a standing backlog, with mixed steps, separate prefill steps and prompts as rows.

Usage: python scripts/mixed_steps_bench.py [--model tiny] [--device cpu] [--steps 300] [--json OUT]

The queue never runs dry: before each step, requests (30 adapters, 16-token prompts as in the cpu: section
of workloads/saturate.yaml, 4-12 output tokens so that sequences do not finish in lockstep) are added until
max_num_seqs + 64 are in flight. Each mode serves
the same request stream for the same number of steps. Tokens per CPU second (this process's CPU time) is
the figure a busy shared machine disturbs least; wall-clock tokens/s is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = {"separate": {"mixed_steps": False}, "mixed": {}, "mixed-rows": {"mixed_graphs": True}}


def bench(mode: str, extra: dict, model: str, device: str, steps: int, adapters: str) -> dict:
    from engines.base import Request, SamplingParams
    from engines.config import EngineConfig
    from engines.registry import create_engine
    eng = create_engine(EngineConfig(model=model, device=device, adapters=adapters, extra=extra))
    names = sorted(eng.adapters())
    g = torch.Generator().manual_seed(0)
    vocab = eng.vocab_size
    in_flight, n, out = set(), 0, 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        while len(in_flight) < eng.config.max_num_seqs + 64:
            rid = f"r{n}"
            eng.add_request(Request(rid, torch.randint(0, vocab, (16,), generator=g).tolist(), names[n % len(names)],
                                    SamplingParams(max_tokens=4 + n % 9, ignore_eos=True)))
            in_flight.add(rid)
            n += 1
        for o in eng.step():
            out += len(o.new_token_ids)
            if o.finished:
                in_flight.discard(o.request_id)
    if device == "cuda":
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    st = eng.stats()
    eng.close()
    return dict(mode=mode, steps=steps, tokens=out, decode_per_step=st["decode_tokens"] / st["steps"],
                cpu_s=cpu, wall_s=wall, tok_per_cpu_s=out / cpu, wall_tok_s=out / wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/mixed_steps_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    from engines.adapters.synth import make_adapters
    from engines.model.config import ModelArgs
    with tempfile.TemporaryDirectory() as d:
        make_adapters(ModelArgs.from_name(a.model), 30, [8], ["q_proj", "k_proj", "v_proj", "o_proj"], d,
                      dtype=torch.float32)
        rows = [bench(m, extra, a.model, a.device, a.steps, d) for m, extra in MODES.items()]
    print("| mode | steps | tokens | decode seqs / step | CPU s | tokens / CPU s | wall tok/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['steps']} | {r['tokens']} | {r['decode_per_step']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['tok_per_cpu_s']:,.0f} | {r['wall_tok_s']:,.0f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
