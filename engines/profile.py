"""Engine profile: decode step time against its byte floor, prefill against its FLOP floor, adapter loads, many adapters."""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model import blas
from engines.model.config import ModelArgs
from engines.multilora.engine import SHRINK_ROWS_DEFAULT, MultiLoRAEngine
from kernels.launch import JOINT_MAX_TOKENS
from engines.multilora.sequence import Sequence
from engines.profile_mixed import mixed_sweep
from kernels import pdl as kernels_pdl

FOLD = "fold"  # a decode sweep's LoRA path beside fused_lora's: the pair, its output added by the next op
ROWS = "rows"  # another: the pair with the expand by rows (kernels/lora_expand_rows.py) at every decode size
SEGMENTS = "segments"  # another: the pair expanding by segments always (the default before run 9)
SHRINK_ROWS = "srows"  # another: the default's path, with the shrink by rows where the expand goes by rows
SHRINK_SEGMENTS = "sseg"  # another: the default's path, with the shrink by segments always (the default before run 11)
NO_FOLD = "nofold"  # another: the default's path with the fold off (the default before run 14)
# another: the default's path, with the joint path (engine extra lora_joint=true) where its rule allows; "joint<N>": up
# to N tokens (lora_joint=N)
JOINT = "joint"
NO_JOINT = "nojoint"  # another: the default's path without the joint path (lora_joint=false)


def joint_tokens(mode) -> int | None:
    """The joint path's token bound a decode sweep's LoRA path sets (None: the engine's)."""
    if mode == JOINT:
        return JOINT_MAX_TOKENS
    if mode == NO_JOINT:
        return 0
    if isinstance(mode, str) and mode.startswith(JOINT) and mode[len(JOINT):].isdigit():
        return int(mode[len(JOINT):])
    return None
PAIR_MODES = (FOLD, ROWS, SEGMENTS, SHRINK_ROWS, SHRINK_SEGMENTS)  # the rest: fused_lora's modes, the engine's rule
ROWS_TOKENS = 512
TARGETS = {  # issue 15, on the H200 with the llama3-8b shape, bf16, rank-16 adapters on q, k, v, o
    "batch1_one_adapter_tax_pct": ("<=", 5.0),
    "batch64_64_adapters_tax_pct": ("<=", 10.0),
    "batch256_256_adapters_tax_pct": ("<=", 15.0),
    "batch1_base_x_floor": ("<=", 1.30),
    "batch64_base_x_floor": ("<=", 1.35),
    "batch256_base_x_floor": ("<=", 1.5),
    "prefill_tok_s": (">=", 25000.0),
    "adapter_load_ms": ("<=", 5.0),
    "decode_step_delay_during_loads_pct": ("<=", 5.0),
    "many_adapters_errors": ("<=", 0),
}


@dataclass
class ProfileConfig:
    model: str = "llama3-8b"
    dtype: str = "auto"
    device: str = "auto"
    rank: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    context: int = 512  # tokens of context per decoding sequence
    batches: tuple[int, ...] = (1, 16, 64, 128, 256)
    adapters: tuple[int, ...] = (0, 1, 8, 30, 64, 128, 256)  # distinct adapters in a decode batch
    iters: int = 30
    rounds: int = 3  # times the decode sweep visits every point (medians over rounds; the tax's range printed)
    warmup: int = 5
    prefill: tuple[tuple[int, int], ...] = ((8, 1024), (4, 2048))  # (prompts, tokens each)
    prefill_adapters: int = 8
    loads: int = 20  # adapters loaded while batch 64 decodes
    many_adapters: int = 5000
    many_slots: int = 128
    many_rank: int = 8
    many_host_capacity: int = 512
    many_time_limit_s: float = 150.0
    seed: int = 0
    pdl: bool | int | str | None = None  # engine extra pdl (programmatic dependent launch); None: the engine's
    cublaslt: bool | int | str | None = None  # engine extra cublaslt (base matmuls' library); None: the engine's
    lora_stream: bool | int = True  # LoRA shrink on a side stream beside the base matmul (engine extra; N: up to N tokens)
    # LoRA paths the decode sweep measures each adapter point with (engine extra fused_lora: on/off/auto/N, or
    # "fold": the pair with lora_fold); the first is the engine's for every other section and the one the
    # targets are read from
    fused_lora: tuple[str, ...] = ("auto",)
    # prompt tokens a mixed step carries as rows beside each decode batch (the mixed sweep; empty: skip it)
    mixed_prompts: tuple[int, ...] = ()
    extra_notes: dict = field(default_factory=dict)


def fast_adapters(args: ModelArgs, rank: int, targets, dtype: torch.dtype, seed: int = 0):
    """A loader factory for synthetic adapters that share one set of random A/B tensors (throughput does
    not depend on the values) so thousands can be registered in seconds; each gets its own scaling."""
    from engines.adapters.lora import LoRAAdapter
    g = torch.Generator().manual_seed(seed)
    shapes = args.module_shapes()
    shared = {m: ((torch.randn(rank, shapes[m][0], generator=g) / shapes[m][0] ** 0.5).to(dtype),
                  (torch.randn(shapes[m][1], rank, generator=g) * 0.01).to(dtype)) for m in targets}

    def make(i: int):
        w = {(layer, m): shared[m] for layer in range(args.n_layers) for m in targets}
        return lambda: LoRAAdapter(f"fast-{i}", "", rank, 2.0 * rank, 2.0 + i * 1e-3, tuple(targets), w)
    return make


def adapter_bytes(args: ModelArgs, rank: int, targets, elem: int) -> int:
    shapes = args.module_shapes()
    return args.n_layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in targets) * elem


def weight_bytes_per_step(model) -> int:
    """Bytes a decode step reads from the weights: everything but the embedding table (unless tied: lm_head)."""
    a = model.args
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.model.embed_tokens.weight
    return total - (0 if a.tie_embeddings else emb.numel() * emb.element_size())


def measure_bandwidth(device: torch.device) -> float:
    """Device copy bandwidth, bytes read + written per second: kernels.bench's on CUDA (the ceiling the kernel
    benchmark uses, timed by events), memcpy of 64 MiB elsewhere."""
    if device.type == "cuda":
        from kernels.bench import copy_bandwidth
        return copy_bandwidth(device)
    src = torch.randn(1 << 24, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _time(lambda: dst.copy_(src), device, 3, 10)


def measure_matmul(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP per second of a square matrix product in dtype: kernels.bench's on CUDA, 512^3 elsewhere."""
    if device.type == "cuda":
        from kernels.bench import matmul_flops
        return matmul_flops(device, dtype)
    a = torch.randn(512, 512, device=device, dtype=dtype)
    b = torch.randn(512, 512, device=device, dtype=dtype)
    return 2 * 512 ** 3 / _time(lambda: a @ b, device, 3, 10)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, warmup: int, iters: int) -> float:
    """Median wall time of fn() with the device synchronized around each call, seconds."""
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_pipelined(fn, device, warmup: int, iters: int) -> tuple[float, float]:
    """(seconds per call, the host's median seconds inside a call) of fn() launched back to back with no sync
    between calls: the host prepares call n+1 while the device runs call n, as the overlapped engine runs its
    steps, so the first is the larger of the device's time and the host's, not their sum; the second is the
    host's part alone (building and launching a step), what a synced step adds to the device's time."""
    for _ in range(warmup):
        fn()
    _sync(device)
    host = []
    t0 = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t)
    _sync(device)
    return (time.perf_counter() - t0) / iters, statistics.median(host)


def _kv_blocks(cfg: ProfileConfig, block_size: int = 16) -> int:
    """Blocks for the largest decode batch (or the 64 of the load test) at cfg.context, plus a prefill batch."""
    decode = max(max(cfg.batches), 64) * -(-(cfg.context + 2) // block_size)
    prefill = max((n * -(-t // block_size) for n, t in cfg.prefill), default=0)
    return decode + max(prefill, 8192 // block_size) + 64


def _engine(cfg: ProfileConfig, slots: int, rank: int, max_seqs: int, host_capacity=None) -> MultiLoRAEngine:
    return MultiLoRAEngine(EngineConfig(
        model=cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed, max_lora_rank=rank, gpu_slots=slots,
        max_loras=slots, max_num_seqs=max_seqs, max_num_batched_tokens=8192, max_model_len=4096,
        num_kv_blocks=_kv_blocks(cfg), host_adapter_capacity=host_capacity,
        extra={"lora_targets": list(cfg.targets), "lora_stream": cfg.lora_stream,
               "fused_lora": _fused_mode(cfg.fused_lora[0]),
               "lora_expand_rows": _expand_rows(cfg.fused_lora[0]),
               "lora_shrink_rows": _shrink_rows(cfg.fused_lora[0]),
               **({} if joint_tokens(cfg.fused_lora[0]) is None else {"lora_joint": joint_tokens(cfg.fused_lora[0])}),
               **({} if cfg.pdl is None else {"pdl": cfg.pdl}),
               **({} if cfg.cublaslt is None else {"cublaslt": cfg.cublaslt})}))


def _shrink_rows(mode) -> bool:
    """Engine extra lora_shrink_rows of a decode sweep's LoRA path: on for SHRINK_ROWS, off for SHRINK_SEGMENTS, else
    the engine's default."""
    return mode == SHRINK_ROWS or (mode != SHRINK_SEGMENTS and SHRINK_ROWS_DEFAULT)


def _fused_mode(mode):
    """Engine extra fused_lora of a decode sweep's LoRA path: off for the pair's paths, auto for NO_FOLD."""
    return False if mode in PAIR_MODES else "auto" if mode == NO_FOLD or joint_tokens(mode) is not None else mode


def _expand_rows(mode) -> int | str:
    """Engine extra lora_expand_rows of a decode sweep's LoRA path."""
    return ROWS_TOKENS if mode == ROWS else 0 if mode == SEGMENTS else "auto"


def set_lora_path(eng: MultiLoRAEngine, mode) -> None:
    """A decode sweep's LoRA path: a fused_lora mode, FOLD (the pair, its output added by the next op), ROWS (the
    pair, expanding by rows), SEGMENTS (the pair, expanding by segments), SHRINK_ROWS or SHRINK_SEGMENTS (the pair,
    shrinking by rows where it expands by rows, or by segments always), NO_FOLD (the engine's default without the
    fold); all but ROWS and SEGMENTS expand as the engine's default rule picks (lora_expand_rows=auto); only the
    fused_lora modes and NO_FOLD fold as the engine was configured (eng.lora_fold); JOINT, joint<N> and NO_JOINT take
    the joint path where its rule allows (up to JOINT_MAX_TOKENS or N tokens) and never, the rest as the engine was
    configured (eng.joint_tokens)."""
    eng.model.use_lora_fold(mode == FOLD or (mode != NO_FOLD and eng.lora_fold and mode not in PAIR_MODES))
    eng.model.use_shrink_rows(_shrink_rows(mode))
    eng.config.extra["lora_expand_rows"] = _expand_rows(mode)  # the engine's own parse of it sets the rule
    eng.runner.use_expand_rows(*eng._expand_rows())
    eng.model.use_fused_lora(_fused_mode(mode))
    n = joint_tokens(mode)
    eng.runner.use_joint(eng.joint_tokens if n is None else n)


def _fake_seqs(eng: MultiLoRAEngine, n: int, length: int, tag: str) -> list[Sequence]:
    g = torch.Generator().manual_seed(len(tag) + n)
    seqs = []
    for i in range(n):
        s = Sequence(f"{tag}{i}", torch.randint(0, eng.vocab_size, (length,), generator=g).tolist())
        eng.blocks.allocate(s)
        seqs.append(s)
    return seqs


def decoding_seqs(eng: MultiLoRAEngine, n: int, length: int, tag: str) -> list[Sequence]:
    """n sequences of `length` cached tokens, each about to decode one more (at position `length`)."""
    seqs = _fake_seqs(eng, n, length, tag)
    for s in seqs:
        s.output_ids.append(1)
        eng.blocks.append(s)
    return seqs


def _load_all(eng: MultiLoRAEngine, names: list[str]) -> None:
    eng.pool.want(names)
    eng.pool.finish_loads(wait=True)
    missing = [n for n in names if not eng.pool.is_ready(n)]
    if missing:
        raise RuntimeError(f"profile: {len(missing)} adapters did not load (slots {eng.config.gpu_slots})")


def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def decode_sweep(eng, cfg, names, bw, flops, out) -> None:
    """Every decode point timed in cfg.rounds rounds, each round over all the points in turn, so a drift of the
    GPU's pace over the sweep lands in the spread, not in one point: a point's times are its medians over the
    rounds, its LoRA tax the median of the round's tax against the same batch's base in the same round, printed
    with the range over the rounds."""
    a = eng.model.args
    elem = torch.empty((), dtype=eng.dtype).element_size()
    w_bytes = weight_bytes_per_step(eng.model)
    ad_bytes = adapter_bytes(a, cfg.rank, cfg.targets, elem)
    seqs = decoding_seqs(eng, max(cfg.batches), cfg.context, "d")
    points = [(b, d, m) for b in cfg.batches for d in cfg.adapters for m in (cfg.fused_lora if d else [None])
              if not (d > b or d > len(names))]
    samples: dict[tuple, list[tuple[float, float, float]]] = {p: [] for p in points}
    for r in range(cfg.rounds):
        for b, d, mode in points:
            samples[(b, d, mode)].append(_time_point(eng, cfg, seqs[:b], names, d, mode))
        if cfg.rounds > 1:
            print(f"decode sweep: round {r + 1} of {cfg.rounds} timed", flush=True)
    rows = []
    for b, d, mode in points:
        got = samples[(b, d, mode)]
        t, tp, host = (statistics.median(x[i] for x in got) for i in range(3))
        kv = b * (cfg.context + 1) * a.kv_bytes_per_token(elem)
        floor = (w_bytes + kv + d * ad_bytes) / bw  # bytes read over the copy rate (read + write per s)
        fl = 2 * b * (w_bytes + (ad_bytes if d else 0)) / elem  # each token: the weights and its adapter
        fl_floor = (fl + 4 * b * (cfg.context + 1) * a.n_heads * a.head_dim * a.n_layers) / flops  # + attention
        base = samples.get((b, 0, None)) if d else None
        taxes = [[(x[i] / y[i] - 1) * 100 for x, y in zip(got, base)] for i in (0, 1)] if base else None
        tax, tax_p = (_median_range(v) for v in taxes) if taxes else (None, None)
        rows.append(dict(batch=b, adapters=d, fused_lora=mode, step_ms=t * 1e3, floor_ms=floor * 1e3,
                         x_floor=t / floor, flop_floor_ms=fl_floor * 1e3, tax_pct=tax and tax[0],
                         pipelined_ms=tp * 1e3, x_floor_pipelined=tp / floor, tax_pct_pipelined=tax_p and tax_p[0],
                         host_ms=host * 1e3, rounds=len(got),
                         step_ms_range=[min(x[0] for x in got) * 1e3, max(x[0] for x in got) * 1e3],
                         pipelined_ms_range=[min(x[1] for x in got) * 1e3, max(x[1] for x in got) * 1e3],
                         tax_pct_range=tax and list(tax[1:]), tax_pct_pipelined_range=tax_p and list(tax_p[1:]),
                         tok_s=b / t, weight_gb=w_bytes / 1e9, kv_gb=kv / 1e9, adapter_gb=d * ad_bytes / 1e9))
        print(f"decode batch {b:4d} adapters {d:4d}" + (f" fused_lora {mode:>4}" if mode is not None else " " * 15)
              + f": {t * 1e3:8.3f} ms  byte floor {floor * 1e3:7.3f} ms  x{t / floor:5.2f}  FLOP floor "
              f"{fl_floor * 1e3:6.3f} ms  {b / t:9.0f} tok/s" + _tax_text(tax, len(got))
              + f"\n{'':>43}pipelined: {tp * 1e3:8.3f} ms  x{tp / floor:5.2f} of the byte floor"
              + _tax_text(tax_p, len(got))
              + f"  (host {host * 1e3:.3f} ms a step)", flush=True)
    set_lora_path(eng, cfg.fused_lora[0])
    out["decode"] = rows
    for s in seqs:
        eng.blocks.free(s)


def _tax_text(tax, rounds: int) -> str:
    if tax is None:
        return ""
    spread = f" (rounds {tax[1]:+.1f}% to {tax[2]:+.1f}%)" if rounds > 1 else " (one round: spread not measured)"
    return f"  LoRA tax {tax[0]:+.1f}%{spread} vs no adapter"


def _time_point(eng, cfg, batch, names, d: int, mode) -> tuple[float, float, float]:
    """(synced s, pipelined s, host s) of one decode step of `batch` over d adapters on LoRA path `mode`."""
    slots = [eng.pool.slot(names[i % d]) if d else -1 for i in range(len(batch))]
    if mode is not None:
        set_lora_path(eng, mode)  # baked into the graphs captured under this key: one set per mode
    key = None if mode in (None, cfg.fused_lora[0]) else ("fused_lora", mode)  # the start graphs: the first

    def step():
        return eng.runner.run(batch, False, slots, key).argmax(-1)
    t = _time(lambda: step().tolist(), eng.device, cfg.warmup, cfg.iters)
    tp, host = _time_pipelined(step, eng.device, cfg.warmup, cfg.iters)
    return t, tp, host


def _check_batch(eng, names, tag: str):
    """64 sequences of 100 tokens, each about to decode one more, over up to 30 adapters: (seqs, slots)."""
    seqs = decoding_seqs(eng, 64, 100, tag)
    return seqs, [eng.pool.slot(names[i % min(30, len(names))]) for i in range(64)]


def graph_check(eng, names, cfg, out) -> None:
    """Decode logits from the CUDA graph against the eager forward pass, batch 64 over 30 adapters."""
    if eng.runner.graphs is None:
        return
    seqs, slots = _check_batch(eng, names, "g")
    g = eng.runner.run(seqs, False, slots).clone()
    graphs, eng.runner.graphs = eng.runner.graphs, None
    e = eng.runner.run(seqs, False, slots)
    eng.runner.graphs = graphs
    rel = float((g - e).norm() / e.norm())
    same = float((g.argmax(-1) == e.argmax(-1)).float().mean())
    out["graph_vs_eager"] = dict(rel_err=rel, argmax_agree=same)
    print(f"graph vs eager decode logits: rel err {rel:.2e}, argmax agree {same:.3f}", flush=True)
    for s in seqs:
        eng.blocks.free(s)


def fused_check(eng, names, cfg, out) -> None:
    """Eager decode logits with the fused LoRA kernel against the shrink/expand pair, batch 64 over 30 adapters."""
    seqs, slots = _check_batch(eng, names, "f")
    graphs, eng.runner.graphs = eng.runner.graphs, None
    logits = {}
    for mode in ("on", "off"):
        set_lora_path(eng, mode)
        logits[mode] = eng.runner.run(seqs, False, slots).clone()
    set_lora_path(eng, cfg.fused_lora[0])
    eng.runner.graphs = graphs
    on, off = logits["on"], logits["off"]
    rel = float((on - off).norm() / off.norm())
    same = float((on.argmax(-1) == off.argmax(-1)).float().mean())
    out["fused_vs_pair"] = dict(rel_err=rel, argmax_agree=same)
    print(f"fused LoRA vs shrink/expand pair, eager decode logits: rel err {rel:.2e}, argmax agree {same:.3f}",
          flush=True)
    for s in seqs:
        eng.blocks.free(s)


def prefill_sweep(eng, cfg, names, flops, out) -> None:
    a = eng.model.args
    n_lin = sum(p.numel() for n, p in eng.model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    rows = []
    for nseq, length in cfg.prefill:
        for d in (0, min(cfg.prefill_adapters, len(names))):
            seqs = _fake_seqs(eng, nseq, length, f"p{length}-")
            slots = [eng.pool.slot(names[i % d]) if d else -1 for i in range(nseq)]
            t = _time(lambda: eng.runner.run(seqs, True, slots).argmax(-1).tolist(), eng.device, 2, max(3, cfg.iters // 5))
            tokens = nseq * length
            fl = 2 * n_lin * tokens + nseq * a.n_layers * 2 * a.n_heads * a.head_dim * length * length  # causal attn
            fl += 2 * nseq * a.dim * a.vocab_size
            rows.append(dict(prompts=nseq, tokens_each=length, adapters=d, ms=t * 1e3, tok_s=tokens / t,
                             flop_floor_ms=fl / flops * 1e3, x_floor=t / (fl / flops)))
            print(f"prefill {nseq} x {length} adapters {d}: {t * 1e3:8.2f} ms  {tokens / t:9.0f} tok/s  "
                  f"floor {fl / flops * 1e3:7.2f} ms  x{t * flops / fl:5.2f}", flush=True)
            for s in seqs:
                eng.blocks.free(s)
    out["prefill"] = rows


def load_while_decoding(eng, cfg, names, make, out) -> None:
    """Batch 64 over 30 adapters decodes; in the second half, a cold adapter load starts every other step."""
    seqs = decoding_seqs(eng, 64, cfg.context, "l")
    used = names[:30]
    for n in used:
        eng.pool.pin(n)
    slots = [eng.pool.slot(used[i % 30]) for i in range(64)]
    new = [f"cold-{i}" for i in range(cfg.loads)]
    for i, n in enumerate(new):
        eng.register_adapter_loader(n, make(10_000 + i))
    quiet, busy = [], []
    before = len(eng.pool.recent_load_seconds)
    for i in range(cfg.warmup + 2 * 2 * cfg.loads):
        loading = i >= cfg.warmup + 2 * cfg.loads
        if loading and i % 2 == 0:
            eng.pool.want([new[(i // 2) % cfg.loads]])
        eng.pool.finish_loads()
        _sync(eng.device)
        t0 = time.perf_counter()
        eng.runner.run(seqs, False, slots).argmax(-1).tolist()
        dt = time.perf_counter() - t0
        if i >= cfg.warmup:
            (busy if loading else quiet).append(dt)
    eng.pool.finish_loads(wait=True)
    loads = list(eng.pool.recent_load_seconds)[before:]
    for n in used:
        eng.pool.unpin(n)
    for s in seqs:
        eng.blocks.free(s)
    q, b = statistics.median(quiet), statistics.median(busy)
    out["loads"] = dict(count=len(loads), load_ms_median=statistics.median(loads) * 1e3 if loads else None,
                        load_ms_max=max(loads) * 1e3 if loads else None, step_ms_quiet=q * 1e3, step_ms_loading=b * 1e3,
                        step_ms_loading_max=max(busy) * 1e3, step_ms_quiet_max=max(quiet) * 1e3,
                        delay_pct=(b / q - 1) * 100, adapter_mb=adapter_bytes(eng.model.args, cfg.rank, cfg.targets,
                                                                             2) / 1e6)
    print(f"adapter loads while decoding: {len(loads)} loads, median {out['loads']['load_ms_median']:.3f} ms; "
          f"step {q * 1e3:.3f} ms quiet vs {b * 1e3:.3f} ms loading ({(b / q - 1) * 100:+.1f}%)", flush=True)


def many_adapters(cfg: ProfileConfig, out) -> None:
    """cfg.many_adapters rank-many_rank adapters, many_slots device slots: one short request to each."""
    eng = _engine(cfg, cfg.many_slots, cfg.many_rank, 256, host_capacity=cfg.many_host_capacity)
    try:
        make = fast_adapters(eng.model.args, cfg.many_rank, cfg.targets, eng.dtype, cfg.seed + 1)
        t0 = time.perf_counter()
        for i in range(cfg.many_adapters):
            eng.register_adapter_loader(f"m{i}", make(i))
        reg_s = time.perf_counter() - t0
        for i in range(cfg.many_adapters):
            eng.add_request(Request(f"q{i}", [1 + i % 100, 2, 3, 4, 5, 6, 7, 8], f"m{i}",
                                    SamplingParams(max_tokens=2, ignore_eos=True)))
        done, errors = 0, 0
        t0 = time.perf_counter()
        while eng.has_unfinished() and time.perf_counter() - t0 < cfg.many_time_limit_s:
            for o in eng.step():
                if o.finished:
                    done += 1
                    errors += o.finish_reason == "error"
        serve_s = time.perf_counter() - t0
        st = eng.stats()
        out["many_adapters"] = dict(registered=cfg.many_adapters, slots=cfg.many_slots, rank=cfg.many_rank,
                                    host_capacity=cfg.many_host_capacity, register_s=reg_s, serve_s=serve_s,
                                    finished=done, errors=errors + (cfg.many_adapters - done), stats=st)
        print(f"many adapters: {cfg.many_adapters} registered in {reg_s:.1f} s; {done} served in {serve_s:.1f} s, "
              f"{errors} errors; loads {st['adapter_loads']}, evictions {st['adapter_evictions']}", flush=True)
    finally:
        eng.close()
        del eng
        gc.collect()


def gpu_check(device: str, out) -> None:
    """Tiny model in float32 on the device: greedy tokens with graphs, without, and the merged baseline agree."""
    import tempfile

    from engines.adapters.synth import make_adapters
    from engines.registry import create_engine
    with tempfile.TemporaryDirectory() as d:
        make_adapters(ModelArgs.from_name("tiny"), 5, [4, 8, 16], ["q_proj", "v_proj", "o_proj", "down_proj"], d,
                      dtype=torch.float32)
        names = [f"adapter-{i:04d}" for i in range(5)] + [None]
        results = {}
        for label, kw in [("cpu", dict(device="cpu")), ("graphs", dict(device=device)),
                          ("eager", dict(device=device, cuda_graphs=False)),
                          ("unfused", dict(device=device, extra={"fused_ops": False})),
                          ("pair", dict(device=device, extra={"fused_lora": False})),  # LoRA shrink + expand
                          ("merged", dict(device=device, engine="merged", merged_copies=2)),
                          ("preempt", dict(device=device, num_kv_blocks=12, block_size=4, gpu_slots=2, max_loras=2))]:
            kw.setdefault("num_kv_blocks", 512)
            eng = create_engine(EngineConfig(model="tiny", dtype="float32", adapters=d, **kw))
            for i in range(12):
                eng.add_request(Request(f"r{i}", list(range(3 + i, 12 + 2 * i)), names[i % 6],
                                        SamplingParams(max_tokens=8, ignore_eos=True)))
            toks = {}
            for _ in range(3000):
                if not eng.has_unfinished():
                    break
                for o in eng.step():
                    toks.setdefault(o.request_id, []).extend(o.new_token_ids)
            results[label] = toks
            eng.close()
    ref = results["graphs"]
    agree = {k: sum(v.get(r) == ref.get(r) for r in ref) / len(ref) for k, v in results.items()}
    out["gpu_check"] = dict(agree_with_graphs=agree,
                            passed=all(agree[k] == 1.0 for k in ("eager", "merged", "preempt", "unfused", "pair")))
    print(f"gpu check (tiny, fp32): agreement with graph decode {agree}", flush=True)


def run_profile(cfg: ProfileConfig, check: bool = True, save=None) -> dict:
    """All sections in order; save(out) (if given) runs after each, so a run cut short keeps what it measured."""
    out: dict = {"config": asdict(cfg)}
    save = save or (lambda _: None)
    device = torch.device(EngineConfig(device=cfg.device).resolved_device())
    out["env"] = dict(torch=torch.__version__, device=str(device),
                      gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    try:
        import triton
        out["env"]["triton"] = triton.__version__
    except ImportError:
        out["env"]["triton"] = None
    if check:
        gpu_check(str(device), out)
        save(out)
    eng = _engine(cfg, max(max(cfg.adapters), cfg.prefill_adapters, 32), cfg.rank, max(max(cfg.batches), 64))
    dtype = eng.dtype
    out["env"]["pdl_max_tokens"] = kernels_pdl.in_effect(device)  # as the engine set it: 0 for none
    print(f"programmatic dependent launch (engine extra pdl): {kernels_pdl.describe(device)}", flush=True)
    out["env"]["cublaslt_max_tokens"] = blas.in_effect(device)
    out["env"]["lora_joint_max_tokens"] = eng.joint_tokens  # the engine's joint rule (0: never); paths may override
    print("joint LoRA path (engine extra lora_joint): "
          + (f"steps of {eng.runner.meta.joint_min_tokens} to {eng.joint_tokens} tokens where its rule allows"
             if eng.joint_tokens else "off"), flush=True)
    print(f"base matmuls' library (engine extra cublaslt): {blas.describe(device)}", flush=True)
    bw = measure_bandwidth(device)
    flops = measure_matmul(device, dtype)
    out["ceilings"] = dict(copy_bytes_s=bw, matmul_flop_s=flops)
    print(f"ceilings: copy {bw / 1e12:.2f} TB/s (read+write), matmul {flops / 1e12:.0f} TFLOP/s", flush=True)
    make = fast_adapters(eng.model.args, cfg.rank, cfg.targets, dtype, cfg.seed)
    names = [f"a{i}" for i in range(eng.config.gpu_slots)]
    for i, n in enumerate(names):
        eng.register_adapter_loader(n, make(i))
    _load_all(eng, names)
    graph_check(eng, names, cfg, out)
    fused_check(eng, names, cfg, out)
    save(out)
    decode_sweep(eng, cfg, names, bw, flops, out)
    save(out)
    if cfg.mixed_prompts:
        mixed_sweep(eng, cfg, names, bw, flops, out)
        save(out)
    prefill_sweep(eng, cfg, names, flops, out)
    save(out)
    if cfg.loads:
        load_while_decoding(eng, cfg, names, make, out)
        save(out)
    eng.close()
    del eng
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if cfg.many_adapters:
        many_adapters(cfg, out)
        save(out)
    out["targets"] = evaluate(out)
    return out


def _row(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def evaluate(out: dict) -> dict:
    """Each target of the issue: measured value, the bound, pass/fail (None where not measured)."""
    first = (out.get("config") or {}).get("fused_lora", ["auto"])[0]
    dec = [r for r in out.get("decode", []) if r.get("fused_lora", first) in (None, first)]  # the engine's path
    got, piped = {}, {}
    for b, d in ((1, 1), (64, 64), (256, 256)):
        r = _row(dec, batch=b, adapters=d)
        name = f"batch{b}_{'one_adapter' if d == 1 else f'{d}_adapters'}_tax_pct"
        got[name], piped[name] = r and r["tax_pct"], r and r.get("tax_pct_pipelined")
        r0 = _row(dec, batch=b, adapters=0)
        got[f"batch{b}_base_x_floor"] = r0 and r0["x_floor"]
        piped[f"batch{b}_base_x_floor"] = r0 and r0.get("x_floor_pipelined")
    pre = [p["tok_s"] for p in out.get("prefill", []) if p["adapters"] == 0]
    got["prefill_tok_s"] = min(pre) if pre else None
    loads = out.get("loads") or {}
    got["adapter_load_ms"] = loads.get("load_ms_median")
    got["decode_step_delay_during_loads_pct"] = loads.get("delay_pct")
    many = out.get("many_adapters")
    got["many_adapters_errors"] = many and many["errors"]
    res = {}
    for k, (op, bound) in TARGETS.items():
        v = got[k]
        ok = None if v is None else (v >= bound if op == ">=" else v <= bound)
        res[k] = dict(measured=v, target=f"{op} {bound}", passed=ok)
        if k in piped:  # the same step launched back to back (the host's work hidden, as the overlapped engine does)
            p = piped[k]
            res[k].update(pipelined=p, passed_pipelined=None if p is None else p <= bound)
    return res


def print_summary(out: dict) -> None:
    modes = list(dict.fromkeys(r.get("fused_lora") for r in out.get("decode", []) if r.get("fused_lora")))
    if len(modes) > 1:  # the LoRA tax of each path side by side (engine extra fused_lora)
        print("\n| batch | adapters | " + " | ".join(f"fused_lora {m}: step ms (tax)" for m in modes) + " |")
        print("|---|---|" + "---|" * len(modes))
        for b, d in dict.fromkeys((r["batch"], r["adapters"]) for r in out["decode"] if r["adapters"]):
            cells = [_row(out["decode"], batch=b, adapters=d, fused_lora=m) for m in modes]
            texts = ["-" if c is None else f"{c['step_ms']:.3f}" + (
                "" if c["tax_pct"] is None else f" ({c['tax_pct']:+.1f}%)") for c in cells]
            print(f"| {b} | {d} | " + " | ".join(texts) + " |")
    print("\n| target | measured (synced step) | pipelined step | bound | pass (synced / pipelined) |"
          "\n|---|---|---|---|---|")
    for k, r in out["targets"].items():
        def fmt(v):
            return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"| {k} | {fmt(r['measured'])} | {fmt(r.get('pipelined'))} | {r['target']} | {r['passed']}"
              + (f" / {r['passed_pipelined']}" if "passed_pipelined" in r else "") + " |")
