"""The mixed step in the profile: a decode batch plus prompt tokens carried as rows (what a server's graphed mixed
step runs), timed beside its byte and FLOP floors, so a serving run can be set against the steps it really runs."""
from __future__ import annotations

import torch

from engines.multilora.engine import MultiLoRAEngine

PROMPT_LEN = 128  # prompt tokens are carried as prompts of this many tokens (the last one shorter)


def _prompts(eng: MultiLoRAEngine, tokens: int, tag: str) -> list:
    """Prompts of PROMPT_LEN tokens (the last one shorter) adding up to `tokens`, blocks allocated."""
    from engines.profile import _fake_seqs
    out, left, i = [], tokens, 0
    while left > 0:
        n = min(PROMPT_LEN, left)
        out += _fake_seqs(eng, 1, n, f"{tag}{i}-")
        left, i = left - n, i + 1
    return out


def mixed_sweep(eng: MultiLoRAEngine, cfg, names: list[str], bw: float, flops: float, out: dict) -> None:
    """For each decode batch b, adapter count d <= b and prompt tokens P of cfg.mixed_prompts: one step that decodes
    b sequences (cfg.context cached) and prefills P prompt tokens, timed as the engine runs it (a graph replay
    when b + P fits the graphs' rows, else eager). out["mixed"]: one row each, with its floors."""
    from engines.profile import _time, _time_pipelined, adapter_bytes, decoding_seqs, weight_bytes_per_step
    a = eng.model.args
    decode_seqs = decoding_seqs(eng, max(cfg.batches), cfg.context, "x")
    elem = torch.empty((), dtype=eng.dtype).element_size()
    w_bytes = weight_bytes_per_step(eng.model)
    ad_bytes = adapter_bytes(a, cfg.rank, cfg.targets, elem)
    rows_cap = eng.runner.cfg.max_num_seqs + eng.runner.cfg.graph_rows
    rows = []
    for b in cfg.batches:
        for d in [d for d in cfg.adapters if d <= b and d <= len(names)]:
            for p in cfg.mixed_prompts:
                prompts = _prompts(eng, p, f"m{b}-{d}-{p}-")
                slots = [eng.pool.slot(names[i % d]) if d else -1 for i in range(b + len(prompts))]
                def step():
                    return eng.runner.step(decode_seqs[:b], prompts, slots).argmax(-1)
                t = _time(lambda: step().tolist(), eng.device, cfg.warmup, cfg.iters)
                # back to back, the host's work hidden as the overlapped engine runs; and that work alone
                tp, host = _time_pipelined(step, eng.device, cfg.warmup, cfg.iters)
                kv_read = b * (cfg.context + 1) * a.kv_bytes_per_token(elem)
                kv_prompt = p * a.kv_bytes_per_token(elem)  # written once (as rows, each re-reads its own)
                floor = (w_bytes + kv_read + kv_prompt + d * ad_bytes) / bw
                fl = 2 * (b + p) * (w_bytes + (ad_bytes if d else 0)) / elem
                fl += 4 * a.n_heads * a.head_dim * a.n_layers * (b * (cfg.context + 1)
                                                                 + sum(len(s) * (len(s) + 1) // 2 for s in prompts))
                graphed = eng.runner.graphs is not None and b + p <= rows_cap
                rows.append(dict(batch=b, adapters=d, prompt_tokens=p, rows=b + p, step_ms=t * 1e3,
                                 pipelined_ms=tp * 1e3, host_ms=host * 1e3,
                                 floor_ms=floor * 1e3, x_floor=t / floor, flop_floor_ms=fl / flops * 1e3,
                                 graphed=graphed, decode_tok_s=b / t))
                print(f"mixed step: decode {b:4d} + prompt {p:4d} tokens, adapters {d:4d}: {t * 1e3:8.3f} ms  byte "
                      f"floor {floor * 1e3:7.3f} ms  x{t / floor:5.2f}  FLOP floor {fl / flops * 1e3:6.3f} ms  "
                      f"({'graph' if graphed else 'eager'}); pipelined {tp * 1e3:8.3f} ms (host {host * 1e3:.3f} ms)",
                      flush=True)
                for s in prompts:
                    eng.blocks.free(s)
    for s in decode_seqs:
        eng.blocks.free(s)
    out["mixed"] = rows
