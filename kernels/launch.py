"""Launch configurations as data: kernels/configs/<gpu>.json keyed by shape, defaults when absent, autotune spaces."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class ShrinkConfig:
    block_m: int = 16  # token rows per tile (tl.dot needs >= 16)
    block_r: int = 16  # rank columns per inner step; ranks are looped, so padding past a slot's rank costs nothing
    block_k: int = 256  # hidden columns per step
    split_k: int = 1  # programs sharing one tile's hidden dimension; the last to finish reduces
    num_warps: int = 4
    num_stages: int = 3
    # token-tile programs: 0, one per tile of the host's bound (the segment capacity's); N, N programs that loop
    # over the step's real tiles (kernels/lora_shrink.py)
    m_programs: int = 0


@dataclass(frozen=True)
class ExpandConfig:
    block_m: int = 16
    block_n: int = 128  # output columns per program
    block_r: int = 16
    n_steps: int = 1  # column tiles per program (fewer, longer programs)
    num_warps: int = 4
    num_stages: int = 2
    # token-tile programs: 0, one per tile of the host's bound (the segment capacity's); N, N programs that loop
    # over the step's real tiles (kernels/lora_expand.py), so a step over few adapters launches no empty ones
    m_programs: int = 0


@dataclass(frozen=True)
class ExpandRowsConfig:
    """The expand by rows (BGMV-like, decode): each program gathers its rows' own adapters' B, no segments."""
    block_m: int = 4  # token rows per program, each with its own slot
    block_n: int = 64  # output columns per program
    block_r: int = 16  # rank columns per step
    num_warps: int = 4
    late_rank: bool = False  # B and y load once the rows' slots are known; their ranks mask after the loads


@dataclass(frozen=True)
class ShrinkRowsConfig:
    """The shrink by rows (BGMV-like, decode): each program takes its rows' own adapters' A over one share of the
    hidden dimension, into a partial plane of its own that the expand by rows sums (no reduction pass). The field
    defaults are a generic small shape for hand-made configs; a launch without a tuned entry takes
    kernels.lora_shrink_rows.default_shrink_rows for its shape."""
    block_m: int = 1  # token rows per program, each with its own slot
    block_k: int = 128  # hidden columns per step
    split_k: int = 4  # shares of the hidden dimension (partial planes)
    num_warps: int = 4


@dataclass(frozen=True)
class FusedConfig:
    """Fused shrink + expand (decode): each program recomputes its tile's rank-r vector, then expands it."""
    block_m: int = 16
    block_n: int = 128  # output columns per step
    block_k: int = 256  # hidden columns per shrink step
    n_steps: int = 4  # column steps per program: a program's chunk is block_n * n_steps columns of one slice
    split_k: int = 1  # programs sharing one program's hidden dimension; the last to finish reduces and expands
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class LoRAPath:
    """Which LoRA path a shape takes in "auto" mode: the fused kernel, or the shrink/expand pair."""
    fused: bool = True


@dataclass(frozen=True)
class AttentionConfig:
    pages_per_tile: int = 4  # KV-cache blocks loaded per step
    num_splits: int = 0  # split-K over the context (flash-decoding); 0: chosen from the batch size
    num_warps: int = 4
    num_stages: int = 2


CONFIG_TYPES = {"shrink": ShrinkConfig, "shrink_rows": ShrinkRowsConfig, "expand": ExpandConfig,
                "expand_rows": ExpandRowsConfig, "fused": FusedConfig,
                "lora_path": LoRAPath, "attention": AttentionConfig}


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the JSON file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def bucket(n: int) -> int:
    """Token counts are keyed by the next power of two (at least 16)."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


def _dtype(dtype) -> str:
    return str(dtype).replace("torch.", "")


def shrink_key(tokens: int, hidden: int, slices: int, max_rank: int, dtype) -> str:
    return f"T{bucket(tokens)}-H{hidden}-S{slices}-R{max_rank}-{_dtype(dtype)}"


def expand_key(tokens: int, n_total: int, slices: int, max_rank: int, dtype) -> str:
    return f"T{bucket(tokens)}-N{n_total}-S{slices}-R{max_rank}-{_dtype(dtype)}"


def fused_key(tokens: int, hidden: int, n_total: int, slices: int, max_rank: int, dtype) -> str:
    return f"T{bucket(tokens)}-H{hidden}-N{n_total}-S{slices}-R{max_rank}-{_dtype(dtype)}"


def attention_key(batch: int, max_blocks: int, block_size: int, hq: int, hkv: int, head_dim: int, dtype) -> str:
    # batches keep their own power of two down to 1: the best split count of 1 and 16 sequences differs 2x
    return (f"B{1 << max(0, int(batch) - 1).bit_length()}-L{bucket(max_blocks * block_size)}-bs{block_size}-Hq{hq}-Hkv{hkv}"
            f"-D{head_dim}-{_dtype(dtype)}")


def config_path(device_name: str, directory: Path | None = None) -> Path:
    return (directory or CONFIG_DIR) / f"{gpu_slug(device_name)}.json"


def load_table(path: Path) -> dict[str, dict[str, object]]:
    """Read and validate a config file: {"shrink": {key: {field: value}}, "expand": ..., "attention": ...}."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it or rerun `python -m kernels.tune`") from exc
    table: dict[str, dict[str, object]] = {}
    for op, entries in data.items():
        if op in ("gpu", "versions"):
            continue
        if op not in CONFIG_TYPES:
            raise ValueError(f"{path}: unknown op {op!r}; known: {sorted(CONFIG_TYPES)}")
        cls = CONFIG_TYPES[op]
        fields = {f.name for f in dataclasses.fields(cls)}
        table[op] = {}
        for key, cfg in entries.items():
            unknown = sorted(set(cfg) - fields)
            if unknown:
                raise ValueError(f"{path}: {op}[{key!r}] has unknown field(s) {unknown}; known: {sorted(fields)}")
            table[op][key] = cls(**cfg)
    return table


@functools.lru_cache(maxsize=None)
def _table_for(device_name: str) -> dict[str, dict[str, object]]:
    path = config_path(device_name)
    return load_table(path) if path.exists() else {}


def _device_name(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "cpu"


@functools.lru_cache(maxsize=None)
def _sm_count(device_name: str, index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device) -> int:
    """Multiprocessors of a CUDA device (8 elsewhere: the interpreter's grids stay small)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return 8
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(_device_name(device), index)


def lookup(op: str, key: str, device, default):
    """The tuned config for (op, key) on this device's GPU, else `default`."""
    return _table_for(_device_name(device)).get(op, {}).get(key, default)


def default_shrink(tokens: int, hidden: int, slices: int, max_rank: int, tiles: int = 0,
                   sms: int = 0) -> ShrinkConfig:
    """Used when the GPU's JSON has no entry (from the H100 tuning runs in docs/kernels.md).

    Decode with few token tiles (`tiles`, e.g. 1 at batch 1) splits the hidden dimension so that
    about `sms` programs stream the adapter weights, not one or two (a single program reading the
    whole A is what made a batch-1 shrink cost ~10 us).
    """
    block_r = 16 if max_rank <= 16 else 64
    if tokens <= 256:  # decode: one weight stream per adapter; split the hidden dim when tiles are few
        split = 1
        if tiles and sms:
            split = 1 << max(0, round(math.log2(max(1.0, sms / tiles))))
            split = max(1, min(32, split, hidden // 64))
        elif tokens <= 64 and hidden >= 2048:
            split = 8 if max_rank > 16 else 2
        block_k = 256 if split == 1 else max(64, min(512, 1 << (hidden // split).bit_length() - 1))
        return ShrinkConfig(block_m=16, block_r=block_r, block_k=block_k, split_k=split, num_warps=4, num_stages=4)
    return ShrinkConfig(block_m=32, block_r=block_r, block_k=256 if max_rank <= 16 else 128,
                        split_k=1, num_warps=4, num_stages=4 if max_rank <= 16 else 3)


def default_expand(tokens: int, n_total: int, slices: int, max_rank: int) -> ExpandConfig:
    """Used when the GPU's JSON has no entry (longer programs, 16-64 column steps, measured slower on the
    H200 at 128 tokens: docs/performance.md)."""
    block_r = 16 if max_rank <= 16 else 64
    if tokens <= 256:
        return ExpandConfig(block_m=16, block_n=128, block_r=block_r, n_steps=4, num_warps=4, num_stages=2)
    return ExpandConfig(block_m=32, block_n=128, block_r=block_r, n_steps=4, num_warps=4, num_stages=2)


FUSED_MAX_TOKENS = 256  # the tuner tries the fused kernel up to this many tokens (decode sizes)
# the model runs the pair's shrink on a side stream beside the base matmul up to this many tokens (engines/model/
# llama.py), and with the fold (engine extra lora_fold) the expand too: on the H200 it cut the batch-1 LoRA tax from
# 16% to 13% (docs/performance.md), and with the fold up to 64 tokens the tax at 64 over 64 adapters from +13.7% to
# +12.2% and over one from +10.4% to +8.4% (run 14, 3 rounds, pipelined); up to 256 tokens the fold cost 14 points
# at 256 over 64. There only the expand is on the step's critical path, which the tuner's choice of path must weigh:
# the fused kernel runs after the base matmul.
SIDE_STREAM_MAX_TOKENS = 64
# The joint path (engines/model/llama.py, LoRAMeta.use_joint): the q,k,v and o LoRA shrink as extra rows of the base
# matmul (the A rows of slots 0..span-1), the expand in the op that consumes its output; steps of up to JOINT_MAX_TOKENS
# tokens. Spans are powers of two from JOINT_MIN_SPAN (fewer CUDA graphs), used while at most JOINT_FREE_SLOTS slots or
# JOINT_RATIO x the step's adapters. On the H200 (scripts/ext_gemm_probe.py, run 17) the extra rows cost about their bytes at 64 tokens:
# q,k,v over 64 slots +5.3 us (floor 5.9), o +2.0 (floor 2.0); over one slot +0.7 and +0.1.
JOINT_MAX_TOKENS = 256
# ... and of at least JOINT_MIN_TOKENS: at one token the joint path measured 0.2-0.3 points of tax behind the fold on the
# H200 (run 17: +4.0% against +3.8% in call c, +5.2% against +4.9% in call f; at 16 tokens +2.7% against +5.6%)
JOINT_MIN_TOKENS = 2
JOINT_MIN_SPAN = 4
JOINT_FREE_SLOTS = 16
JOINT_RATIO = 2.0
# Past JOINT_FLOP_TOKENS tokens the extra rows cost their FLOPs, not their bytes (the H200's 4.3 TB/s over 670-785
# TFLOP/s, per byte of bf16 weight): the rule counts a span as span x tokens / JOINT_FLOP_TOKENS slots there, and
# never more than JOINT_MOST_SLOTS. On the H200 (run 17 call e, pipelined, 2 rounds) up to 512 tokens with no such cap
# the joint path took the tax at 128 over 64 adapters from +17.0% to +9.5%, at 256 over 64 from +21.7% to +13.4%, at
# 128 and 256 over one from +9.9% to +6.8% and level (+8.7%), and lost at 256 over 256 (+26.3% against +22.6%: 256
# slots x 1.6 = 410 counted slots; 256 over 64 counts 102)
JOINT_FLOP_TOKENS = 160
JOINT_MOST_SLOTS = 128
# The expand's path per step under engine extra lora_expand_rows=auto (LoRAMeta.use_expand_rows): by rows for
# steps of up to ROWS_AUTO_TOKENS tokens with at most ROWS_AUTO_PER_TILE adapter tokens per 16-row tile of the
# segment expand. On the H200 (docs/kernels.md, run 9; q,k,v over 256 tokens) by rows took 26.6 against 56.9 us
# at one token a tile, 21.7 against 30.9 at 2, 20.5 against 17.2 at 4 and 19.5 against 14.0 at 8.5: the two
# cross between 3 and 4.
ROWS_AUTO_TOKENS = 512
ROWS_AUTO_PER_TILE = 3.0
# ... and for steps of up to ROWS_ANY_FILL_TOKENS tokens whatever their fill. In the engine the segment kernels' grids
# are bounded by the segment capacity (64 tokens over one adapter: 67 token tiles, 4 of them real), which a kernel
# bench over the case's own adapters does not see: on the H200 (docs/performance.md, run 11; decode profile in 3
# rounds, pipelined) by rows took the LoRA tax at 64 tokens over 1 adapter from +16.2% to +12.8% and over 8 from
# +17.6% to +14.9% (over 30: +14.9% and +14.5%), where at 256 tokens segments stayed ahead (+11.5% against +15.1%
# over 1, +14.3% against +19.9% over 30)
ROWS_ANY_FILL_TOKENS = 64


def default_fused(tokens: int, hidden: int, n_total: int, slices: int, max_rank: int, tiles: int = 0,
                  sms: int = 0) -> FusedConfig:
    """Used when the GPU's JSON has no entry (docs/kernels.md, "Fused shrink + expand", has the arithmetic).

    A program's chunk of columns decides how often its rank-r vector is recomputed: once per chunk, so the
    adapter's A (r x H, from L2 after the first chunk) is read columns/chunk times per token tile. Chunks are
    sized so that `tiles` token tiles x chunks is about one program per SM (`sms`; wider in proportion to the
    rank), between 512 and 4096 columns: 12 programs for q,k,v at batch 1, whole q and o slices (no recompute)
    at 64 x 64 adapters and beyond.
    Each loop step of a program costs about a memory latency over the pipeline depth (16-64 column steps per
    expand program cost 2 ms a step at batch 128 on the H200), so steps are wide and few: 512 hidden columns
    per shrink step, 256 output columns per expand step, and at <= 16 tokens hidden dimensions past 4096
    (MLP down) are split so that no share takes more than 8 steps. Prefill-sized calls (only when forced)
    take 64-row tiles.
    """
    r_pad = max(16, 1 << max(0, max_rank - 1).bit_length())
    block_n = {16: 256, 32: 256, 64: 128}.get(r_pad, 64)  # the fp32 B tile (r_pad x block_n) stays <= 32 KiB
    block_k = 512 if r_pad <= 32 else (128 if r_pad <= 64 else 64)
    if tiles and sms:  # programs ~ SMs; a larger A (rank) per recompute asks for wider chunks
        chunk = 1 << max(0, (n_total * tiles * (r_pad // 16) // sms) - 1).bit_length()
    else:
        chunk = 512 if tokens <= 16 else 2048
    chunk = min(4096, max(512, chunk))
    split = 1 if tokens > 16 else max(1, min(8, -(-hidden // (8 * block_k))))
    return FusedConfig(block_m=16 if tokens <= 256 else 64, block_n=block_n, block_k=block_k,
                       n_steps=max(1, chunk // block_n), split_k=split, num_warps=4,
                       num_stages=3 if tokens <= 16 else 2)


def fused_mode(value) -> bool | int | str:
    """The engine extra `fused_lora` as a mode: "auto", True (fused at every size), False (the shrink/expand
    pair), or an int N (fused up to N tokens). Raises ValueError naming the accepted values."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, int) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "on", "false", "off"):
        return "auto" if text == "auto" else text in ("true", "on")
    if text.isdigit():
        return int(text)
    raise ValueError(f"engine config: extra fused_lora={value!r}: give auto, true, false or a token count "
                     "(fused up to that many tokens)")


def fused_wanted(mode, tokens: int, hidden: int, n_total: int, slices: int, max_rank: int, dtype, device) -> bool:
    """Whether a LoRA call of this shape takes the fused kernel under `mode` (see fused_mode).

    "auto": the GPU file's lora_path entry for the shape (`kernels.tune` measures fused against the pair), else
    the pair: the fused kernel is taken where a GPU run measured it faster, not on a prediction. Decided from
    host-known sizes only, so a CUDA graph keeps its path.
    """
    if isinstance(mode, bool):
        return mode
    if isinstance(mode, int):
        return tokens <= mode
    key = fused_key(tokens, hidden, n_total, slices, max_rank, dtype)
    return lookup("lora_path", key, device, LoRAPath(fused=False)).fused


def default_attention(batch: int, max_blocks: int, block_size: int, hq: int, hkv: int, head_dim: int) -> AttentionConfig:
    return AttentionConfig(pages_per_tile=max(1, 64 // block_size), num_splits=0, num_warps=4, num_stages=2)


def _shrink_smem(cfg: ShrinkConfig, slices: int, elem: int = 2) -> int:
    """Shared memory of the pipelined x and A tiles: an estimate that prunes the tuner's search only.

    Launches never rely on it: `launch_fitting` steps a config down when Triton's compiled kernel asks
    for more than the device has (the estimate once missed float32 tiles, twice the size).
    """
    s_pad = 1 << max(0, slices - 1).bit_length()
    return (cfg.block_r * s_pad + cfg.block_m) * cfg.block_k * elem * cfg.num_stages


SHRINK_SMEM_LIMIT = 200_000  # bytes; prunes the tune space (H100/H200 allow 232,448 per block)


def step_down(cfg):
    """The next smaller config of the same kind (less shared memory), or None when none is smaller.

    Order: pipeline stages, then the widest tile dimension (K, then columns, then rank), then rows.
    """
    if isinstance(cfg, ShrinkConfig):
        if cfg.num_stages > 2:
            return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        for name, floor in (("block_k", 32), ("block_r", 16), ("block_m", 16)):
            if getattr(cfg, name) > floor:
                return dataclasses.replace(cfg, **{name: getattr(cfg, name) // 2})
        return dataclasses.replace(cfg, num_stages=1) if cfg.num_stages > 1 else None
    if isinstance(cfg, ExpandConfig):
        if cfg.num_stages > 1:
            return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        for name, floor in (("block_n", 32), ("block_r", 16), ("block_m", 16)):
            if getattr(cfg, name) > floor:
                return dataclasses.replace(cfg, **{name: getattr(cfg, name) // 2})
        return None
    if isinstance(cfg, ShrinkRowsConfig):  # registers (and the sum's scratch) bound it; step down all the same
        for name, floor in (("block_k", 16), ("block_m", 1)):
            if getattr(cfg, name) > floor:
                return dataclasses.replace(cfg, **{name: getattr(cfg, name) // 2})
        return None
    if isinstance(cfg, ExpandRowsConfig):  # registers, not shared memory, bound it; step down all the same
        for name, floor in (("block_n", 16), ("block_m", 1)):
            if getattr(cfg, name) > floor:
                return dataclasses.replace(cfg, **{name: getattr(cfg, name) // 2})
        return None
    if isinstance(cfg, FusedConfig):
        if cfg.num_stages > 1:
            return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        for name, floor in (("block_k", 16), ("block_n", 16), ("block_m", 16)):
            if getattr(cfg, name) > floor:
                return dataclasses.replace(cfg, **{name: getattr(cfg, name) // 2},
                                           **({"n_steps": cfg.n_steps * 2} if name == "block_n" else {}))
        return None
    if isinstance(cfg, AttentionConfig):
        if cfg.num_stages > 1:
            return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        if cfg.pages_per_tile > 1:
            return dataclasses.replace(cfg, pages_per_tile=cfg.pages_per_tile // 2)
        return None
    raise TypeError(f"step_down: not a launch config: {cfg!r}")


_FITTED: dict[tuple, object] = {}  # (op, key, asked-for config) -> the config that launched


def _out_of_resources() -> tuple[type, ...]:
    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - every supported Triton has it
        return ()
    return (OutOfResources,)


def launch_fitting(op: str, key: str, cfg, launch):
    """launch(cfg), stepping the config down while Triton refuses it for resources (shared memory).

    Triton compiles before it launches and raises OutOfResources when the compiled kernel needs more
    shared memory than the device has, before anything runs; so the first call of each (op, key,
    config) finds the largest config that launches, and later calls (CUDA-graph replays included)
    start from it. Raises the last refusal if even the smallest config does not fit.
    """
    memo = (op, key, cfg)
    tried = _FITTED.get(memo, cfg)
    refused = _out_of_resources()
    while True:
        try:
            result = launch(tried)
        except refused as exc:
            smaller = step_down(tried)
            if smaller is None:
                exc.add_note(f"launch_fitting: {op} [{key}] does not fit this GPU even at its smallest config "
                             f"{tried} (asked for {cfg})")
                raise
            tried = smaller
            continue
        _FITTED[memo] = tried
        return result


def shrink_space(tokens: int, max_rank: int = 16, slices: int = 1) -> list[ShrinkConfig]:
    """The autotune space of the shrink kernel for `tokens` tokens, slots of `max_rank`, `slices` slices; the decode
    and mixed shapes with one program per token tile of the bound (m_programs 0) and with 32 that loop."""
    block_rs = (16,) if max_rank <= 16 else (16, 64)
    if tokens <= 256:  # decode: 16-row tiles; deep pipelines or a split hidden dim keep bytes in flight
        space = [ShrinkConfig(block_m=16, block_r=br, block_k=bk, split_k=sk, num_warps=w, num_stages=st,
                              m_programs=mp)
                 for br in block_rs for bk in (256, 512, 1024) for sk in (1, 2, 4, 8) for w in (4, 8)
                 for st in ((3, 4) if bk < 1024 else (2, 3)) for mp in (0, 32)]
        if tokens <= 16:  # one or two tiles: only a split hidden dim puts many programs on the weights
            space += [ShrinkConfig(block_m=16, block_r=br, block_k=bk, split_k=sk, num_warps=4, num_stages=st)
                      for br in block_rs for bk in (64, 128) for sk in (16, 32) for st in (2, 3)]
    else:
        space = [ShrinkConfig(block_m=bm, block_r=br, block_k=bk, split_k=sk, num_warps=w, num_stages=st,
                              m_programs=mp)
                 for br in block_rs for bm in (16, 32, 64) for bk in (128, 256) for sk in (1, 2)
                 for w in (4, 8) for st in (3, 4) for mp in (0, 32)]
    return [c for c in space if _shrink_smem(c, slices) <= SHRINK_SMEM_LIMIT]


def shrink_rows_space(tokens: int, max_rank: int = 16, slices: int = 1) -> list[ShrinkRowsConfig]:
    """The autotune space of the shrink by rows (decode sizes): rows a program, K step, shares of the hidden dim.
    Tiles past ~16K elements of A a step spill registers and are left out."""
    cols = (1 << max(0, slices - 1).bit_length()) * (1 << max(0, max_rank - 1).bit_length())
    return [ShrinkRowsConfig(block_m=bm, block_k=bk, split_k=sk, num_warps=w)
            for bm in (1, 2, 4) for bk in (32, 64, 128, 256) for sk in (1, 2, 4, 8, 16) for w in (4, 8)
            if bm * bk * cols <= 16384 and (tokens // bm) * sk <= 8192]


def expand_rows_space(max_rank: int = 16) -> list[ExpandRowsConfig]:
    """The autotune space of the expand by rows (decode sizes, the same for every token count): rows and columns a
    program, 4 warps or (for tiles of 256 rows x columns and more) 8, which hold fewer of the tile's products each
    (run 13: 72 registers a thread at 4 rows x 64 columns limited occupancy to 44%), and whether the rank masks the
    loads or only the products (late_rank). A grid of 256 or 1024 programs looping over the tiles was tried in
    run 14 and won no key: it is gone."""
    block_r = 16 if max_rank <= 16 else 32
    return [ExpandRowsConfig(block_m=bm, block_n=bn, block_r=block_r, num_warps=w, late_rank=late)
            for bm in (1, 2, 4, 8) for bn in (32, 64, 128) for w in (4, 8) for late in (False, True)
            if bm * bn <= 512 and (w == 4 or bm * bn >= 256)]


def expand_space(tokens: int, max_rank: int = 16) -> list[ExpandConfig]:
    """The autotune space of the expand kernel for a batch of `tokens` tokens and slots of `max_rank`; each shape
    with one program per token tile of the bound (m_programs 0) and with 32 that loop over the real tiles."""
    block_rs = (16,) if max_rank <= 16 else (16, 64)
    if tokens <= 256:
        return ([ExpandConfig(block_m=16, block_n=bn, block_r=br, n_steps=ns, num_warps=w, num_stages=st,
                              m_programs=mp)
                 for br in block_rs for bn in (64, 128, 256) for ns in (1, 2, 4, 8) for w in (2, 4)
                 for st in ((1,) if ns == 1 else (2, 3)) for mp in (0, 32)]
                + [ExpandConfig(block_m=16, block_n=bn, block_r=br, n_steps=ns, num_warps=4, num_stages=st)
                   for br in block_rs for bn in (64, 128) for ns in (16, 32, 64) for st in (2, 3)])
    block_ms = (16, 32, 64) if tokens <= 1024 else (32, 64)  # mixed steps: many adapters' short segments
    return [ExpandConfig(block_m=bm, block_n=bn, block_r=br, n_steps=ns, num_warps=w, num_stages=st, m_programs=mp)
            for br in block_rs for bm in block_ms for bn in (64, 128) for ns in (1, 4, 8) for w in (4, 8)
            for st in ((2,) if ns == 1 else (2, 3)) for mp in (0, 32)]


def fused_space(tokens: int, max_rank: int = 16) -> list[FusedConfig]:
    """The autotune space of the fused kernel (decode sizes): chunk width, step widths, split hidden dim, stages."""
    r_pad = max(16, 1 << max(0, max_rank - 1).bit_length())
    block_ns = (128, 256) if r_pad <= 32 else (64,)
    if tokens <= 16:  # few token tiles: a split hidden dimension shortens each program's shrink
        chunks = (256, 512, 1024)
        ks = ((512, 1), (1024, 1), (512, 4), (256, 8)) if r_pad <= 32 else ((128, 1), (64, 4), (64, 8))
        warps = (4,)
    else:
        chunks = (1024, 2048, 4096)
        ks = ((512, 1), (1024, 1)) if r_pad <= 32 else ((64, 1), (128, 1))
        warps = (4, 8)
    return [FusedConfig(block_m=16, block_n=bn, block_k=bk, n_steps=max(1, ch // bn), split_k=sk, num_warps=w,
                        num_stages=st)
            for ch in chunks for bn in block_ns for bk, sk in ks for w in warps for st in (2, 3)]


def attention_space(batch: int) -> list[AttentionConfig]:
    """The autotune space of paged decode attention for `batch` sequences."""
    splits = (0, 1, 2, 4) if batch >= 64 else (0, 4, 8, 16, 32)
    return [AttentionConfig(pages_per_tile=p, num_splits=sp, num_warps=w, num_stages=2)
            for p in (2, 4, 8) for sp in splits for w in (4,)]


SPACES = {"shrink": shrink_space, "expand": expand_space, "fused": fused_space, "attention": attention_space}
