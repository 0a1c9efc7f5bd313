"""Where a decode step's GPU time goes: kernel time by kind (base matmuls, attention, LoRA shrink/expand, fused
norm/RoPE ops, the rest) for decode batches over adapters, from the torch profiler, beside each kind's byte floor.

    python3 scripts/step_breakdown.py --points 1x0,1x1,64x0,64x64,256x0,256x256 [--json out.json]
    python3 scripts/step_breakdown.py --points 256x30,256x30+256   # + P: the mixed step, P prompt tokens as rows

A point BxD+P is a step that decodes B sequences over D adapters and prefills P prompt tokens (prompts of 128
tokens, each over the next adapter), as a saturated server's graphed mixed steps run (engines/profile_mixed.py).

Kernels are traced inside the CUDA-graph replays the engine runs (as `harness profile` times them); per step
= the kind's kernel time over the traced steps / steps; x floor = that over the larger of the kind's byte and FLOP
floors. Kinds overlap on the side stream, so their sum can exceed
the step's wall time. Meant for a GPU; on a CPU it runs the tiny preset as a smoke run (its CPU ops nest, so kinds double-count)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.profile_mixed import _prompts  # noqa: E402
from engines.profile import (JOINT, ROWS, SEGMENTS, ProfileConfig, _engine, _load_all, adapter_bytes,  # noqa: E402
                             decoding_seqs, fast_adapters, measure_bandwidth, measure_matmul, weight_bytes_per_step)

KINDS = [  # (kind, pattern over the kernel's name), first match wins
    ("lora_shrink", r"shrink"), ("lora_expand", r"expand"), ("lora_fused", r"fused_lora|_fused_kernel"),
    ("attention", r"attention|attn|paged"), ("norm_rope", r"rms|rope|norm|add_"),
    ("matmul", r"gemm|sm90|cutlass|nvjet|xmma|matmul|splitk"), ("sampling", r"softmax|argmax|exponential|max"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, pat in KINDS if re.search(pat, low)), "other")


def parse_points(text: str) -> list[tuple[int, int, int]]:
    """"BxD+P,..." -> [(decodes, adapters, prompt tokens)]; D and P default to 0."""
    out = []
    for part in text.split(","):
        head, _, p = part.partition("+")
        b, _, d = head.partition("x")
        try:
            out.append((int(b), int(d or 0), int(p or 0)))
        except ValueError:
            raise SystemExit(f"step_breakdown: --points {part!r}: give BATCHxADAPTERS or BATCHxADAPTERS+PROMPT_TOKENS")
    return out


def floors(a, cfg, elem: int, w_bytes: float, a_bytes: float, b_bytes: float, b: int, d: int, prompts: list[int]):
    """({kind: bytes read once}, {kind: FLOPs}) of a step that decodes b sequences (cfg.context cached) over d
    adapters and prefills prompts of the given lengths (rows with adapters, each through its own prefix)."""
    p = sum(prompts)
    kv = (b * (cfg.context + 1) + p) * a.kv_bytes_per_token(elem)
    lora_rows = (b + p) if d else 0
    attn = 4 * a.n_heads * a.head_dim * a.n_layers * (b * (cfg.context + 1) + sum(n * (n + 1) // 2 for n in prompts))
    return ({"matmul": w_bytes, "attention": kv, "lora_shrink": d * a_bytes, "lora_expand": d * b_bytes},
            {"matmul": 2 * (b + p) * w_bytes / elem, "lora_shrink": 2 * lora_rows * a_bytes / elem,
             "lora_expand": 2 * lora_rows * b_bytes / elem,  # each token through its adapter's A, then B
             "attention": attn})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="preset (default llama3-8b on a GPU, tiny on a CPU)")
    ap.add_argument("--points", default="1x0,1x1,64x0,64x64,256x0,256x256", help="BATCHxADAPTERS,...")
    ap.add_argument("--steps", type=int, default=10, help="traced steps per point")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--json", default=None)
    ap.add_argument("--slots", type=int, default=None,
                    help="adapter slots on the device (default: the points' most adapters); the segment kernels' grids "
                         "follow it, so give a server's (64 by default) to trace the steps that server runs")
    way = ap.add_mutually_exclusive_group()
    way.add_argument("--expand-rows", action="store_true",
                     help="expand by rows at every step (the profile's --fused-lora rows)")
    way.add_argument("--expand-segments", action="store_true",
                     help="expand by segments at every step (--fused-lora segments; before run 9, the default)")
    way.add_argument("--joint", action="store_true",
                     help="the joint path where its rule allows (the profile's --fused-lora joint)")
    ap.add_argument("--names", type=int, default=0, metavar="N",
                    help="also print each point's N kernels that took the most time, by name")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    points = parse_points(args.points)
    # off: the engine's choice
    expand = ROWS if args.expand_rows else SEGMENTS if args.expand_segments else JOINT if args.joint else "off"
    cfg = ProfileConfig(model=args.model or ("llama3-8b" if cuda else "tiny"), context=args.context,
                        batches=tuple(sorted({b for b, _, _ in points})), adapters=(0,),
                        fused_lora=(expand,))  # the graphs are captured at start
    n_ad = max(d for _, d, _ in points)
    if args.slots is not None and args.slots < max(n_ad, 1):
        ap.error(f"--slots {args.slots}: the points need {n_ad} adapters on the device at once")
    eng = _engine(cfg, args.slots or max(n_ad, 1), cfg.rank, max(cfg.batches))
    a = eng.model.args
    elem = torch.empty((), dtype=eng.dtype).element_size()
    names = []
    if n_ad:
        make = fast_adapters(a, cfg.rank, cfg.targets, eng.dtype)
        for i in range(n_ad):
            names.append(f"fast-{i}")
            eng.register_adapter_loader(names[-1], make(i))
        _load_all(eng, names)
    bw, flops = measure_bandwidth(eng.device), measure_matmul(eng.device, eng.dtype)
    w_bytes, ad_bytes = weight_bytes_per_step(eng.model), adapter_bytes(a, cfg.rank, cfg.targets, elem)
    shapes = a.module_shapes()
    a_bytes = a.n_layers * sum(cfg.rank * shapes[m][0] for m in cfg.targets) * elem  # what the shrink reads
    b_bytes = ad_bytes - a_bytes  # what the expand reads
    seqs = decoding_seqs(eng, max(cfg.batches), cfg.context, "b")
    activity = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    rows = []
    print(f"copy {bw / 1e9:.0f} GB/s, matrix {flops / 1e12:.0f} TFLOP/s; floors per kind: bytes once at the copy rate "
          "(weights, KV, the adapters' A for the shrink and B for the expand), FLOPs at the matrix rate")
    print(f"{'batch':>5} {'adapters':>8} {'prompt':>6} {'kind':<12} {'us/step':>9} {'kernels':>7} {'byte floor':>11} "
          f"{'FLOP floor':>11} {'x floor':>8}")
    for b, d, p in points:
        batch = seqs[:b]
        prompts = _prompts(eng, p, f"bd{b}-{d}-{p}-") if p else []
        slots = [eng.pool.slot(names[i % d]) if d else -1 for i in range(b + len(prompts))]

        def step():
            eng.runner.step(batch, prompts, slots).argmax(-1)
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=activity) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
        by_kind: dict[str, list[float]] = {}
        by_name: dict[str, list[float]] = {}
        for ev in prof.events():
            dev = getattr(ev, "device_type", None)
            if cuda and dev != torch.autograd.DeviceType.CUDA:
                continue
            us = (ev.device_time if cuda else ev.cpu_time)  # microseconds
            for key, table in ((kind_of(ev.name), by_kind), (ev.name, by_name)):
                table.setdefault(key, [0.0, 0])
                table[key][0] += us
                table[key][1] += 1
        byte_floor, flop = floors(a, cfg, elem, w_bytes, a_bytes, b_bytes, b, d, [len(s) for s in prompts])
        total = sum(v[0] for v in by_kind.values()) / args.steps
        for k, (us, n) in sorted(by_kind.items(), key=lambda kv_: -kv_[1][0]):
            per = us / args.steps
            fb = byte_floor[k] / bw * 1e6 if k in byte_floor else None
            ff = flop[k] / flops * 1e6 if k in flop else None
            bound = max(fb or 0.0, ff or 0.0)
            print(f"{b:5d} {d:8d} {p:6d} {k:<12} {per:9.1f} {n // args.steps:7d}"
                  + (f" {fb:9.1f}us {ff:9.1f}us {per / bound:7.2f}x" if bound else ""))
            rows.append(dict(batch=b, adapters=d, prompt_tokens=p, kind=k, us_per_step=per,
                             kernels_per_step=n / args.steps, byte_floor_us=fb, flop_floor_us=ff,
                             x_floor=per / bound if bound else None))
        print(f"{b:5d} {d:8d} {p:6d} {'all kernels':<12} {total:9.1f}")
        for name, (us, n) in sorted(by_name.items(), key=lambda kv_: -kv_[1][0])[:args.names]:
            print(f"{'':>22}{us / args.steps:9.1f} us {n // args.steps:5d}x  {name[:90]}")
        for s_ in prompts:
            eng.blocks.free(s_)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(gpu=torch.cuda.get_device_name() if cuda else "cpu",
                                                   torch=torch.__version__, copy_rate_bps=bw, matmul_flop_s=flops,
                                                   expand=expand, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
