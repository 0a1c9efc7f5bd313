"""Benchmark and tuning shapes, their inputs, and their byte and FLOP floors (shared by bench and tune)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.meta import LoRAMeta


ENGINE_SLOTS = 64  # EngineConfig.gpu_slots' default


@dataclass(frozen=True)
class LoRACase:
    """Shrink + expand of `tokens` tokens over `adapters` adapters of rank `rank` (slots padded to r_max)."""

    name: str
    tokens: int
    adapters: int
    rank: int
    hidden: int = 4096
    widths: tuple[int, ...] = (4096,)
    r_max: int | None = None  # slot padding; None: the rank itself
    contiguous: bool = False  # True: each adapter's tokens are one run (prefill); False: round-robin (decode)
    prompt_tokens: int = 0  # a mixed step: the last this many tokens are 128-token prompts, one adapter each
    # segments the step's LoRAMeta has room for, as the engine's adapter slots bound them (at least `adapters`): the
    # segment kernels' grids follow it (kernels.tiles.tile_bound), so a case over few adapters launches the grid
    # the engine launches (run 11: at 64 tokens over one adapter, 67 token tiles of which 4 hold tokens)
    capacity: int = ENGINE_SLOTS
    target_us: float | None = None
    target_floor_ratio: float | None = None  # target as a multiple of the byte floor

    def segments(self) -> int:
        """The LoRAMeta's segment capacity: the engine's slots, or the case's adapters where they are more."""
        return max(self.adapters, self.capacity, 1)

    @property
    def slices(self) -> int:
        return len(self.widths)

    @property
    def n_total(self) -> int:
        return sum(self.widths)

    def slots(self) -> list[int]:
        if self.contiguous:
            per = -(-self.tokens // self.adapters)
            return [t // per for t in range(self.tokens)]
        decodes = [t % self.adapters for t in range(self.tokens - self.prompt_tokens)]
        return decodes + [p // 128 % self.adapters for p in range(self.prompt_tokens)]

    def bytes_moved(self, elem: int = 2, fused: bool = False) -> int:
        """Every weight, input and output once: A and B of each distinct adapter, x, y read and written,
        and (not fused) the fp32 intermediate written by shrink and read by expand."""
        a = self.adapters * self.slices * self.rank * self.hidden * elem
        b = self.adapters * self.n_total * self.rank * elem
        x = self.tokens * self.hidden * elem
        y = 2 * self.tokens * self.n_total * elem
        buf = 0 if fused else 2 * self.slices * self.tokens * self.rank * 4
        return a + b + x + y + buf

    def expand_bytes(self, elem: int = 2) -> int:
        """What the expand alone moves: B of each distinct adapter, y read and written, the fp32 rank vectors."""
        return self.adapters * self.n_total * self.rank * elem + 2 * self.tokens * self.n_total * elem \
            + self.slices * self.tokens * self.rank * 4

    def recompute_bytes(self, chunk: int, block_m: int = 16, elem: int = 2) -> int:
        """What the fused kernel reads beyond bytes_moved(fused=True), mostly from L2: each token tile's A
        slice once per extra chunk of columns of that slice, and its x rows once per extra chunk."""
        chunks = sum(-(-w // chunk) for w in self.widths)
        per = -(-self.tokens // self.adapters)  # tokens per adapter (round-robin or contiguous)
        tiles = self.adapters * -(-per // block_m)
        return (chunks - self.slices) * tiles * self.rank * self.hidden * elem + \
            (chunks - 1) * self.tokens * self.hidden * elem

    def flops(self) -> int:
        return 2 * self.tokens * self.rank * (self.slices * self.hidden + self.n_total)


@dataclass(frozen=True)
class AttentionCase:
    """Decode attention of `batch` sequences with `context` cached tokens each (Llama-3-8B heads by default)."""

    name: str
    batch: int
    context: int
    hq: int = 32
    hkv: int = 8
    head_dim: int = 128
    block_size: int = 16

    def bytes_moved(self, elem: int = 2) -> int:
        kv = 2 * self.batch * self.context * self.hkv * self.head_dim * elem
        q_out = 2 * self.batch * self.hq * self.head_dim * elem
        return kv + q_out

    def flops(self) -> int:
        return 4 * self.batch * self.hq * self.context * self.head_dim


QKV = (4096, 1024, 1024)  # Llama-3-8B q, k, v widths: one launch covers the three slices

LORA_CASES = [
    LoRACase("decode-1x1-r16-qkv", 1, 1, 16, widths=QKV),  # the decode step's shapes at batch 1, 64, 256
    LoRACase("decode-1x1-r16", 1, 1, 16),
    LoRACase("decode-64x64-r16-qkv", 64, 64, 16, widths=QKV),
    # batch 64 over few adapters: by segments before run 11 (and with lora_expand_rows=0), by rows since
    LoRACase("decode-64x1-r16-qkv", 64, 1, 16, widths=QKV),
    LoRACase("decode-64x1-r16", 64, 1, 16),
    LoRACase("decode-64x8-r16-qkv", 64, 8, 16, widths=QKV),
    LoRACase("decode-64x8-r16", 64, 8, 16),
    LoRACase("decode-256x256-r16-qkv", 256, 256, 16, widths=QKV),
    # 128 tokens over 8 adapters: 16 a tile, so by segments, on a grid bounded by the engine's 64 slots (m_programs)
    LoRACase("decode-128x8-r16-qkv", 128, 8, 16, widths=QKV),
    LoRACase("decode-128x8-r16", 128, 8, 16),
    LoRACase("decode-256x30-r16-qkv", 256, 30, 16, widths=QKV),  # tokens sharing adapters (bursty30's count)
    LoRACase("decode-256x128-r16-qkv", 256, 128, 16, widths=QKV),  # 2 and 4 tokens an adapter: where the expand
    LoRACase("decode-256x64-r16-qkv", 256, 64, 16, widths=QKV),  # by rows stops paying (lora_expand_rows=auto)
    LoRACase("decode-256x30-r16", 256, 30, 16),
    # the step a saturated server runs: 256 decodes over 30 adapters and two 128-token prompts (by segments)
    LoRACase("mixed-512x30-r16-qkv", 512, 30, 16, widths=QKV, prompt_tokens=256),
    LoRACase("mixed-512x30-r16", 512, 30, 16, prompt_tokens=256),
    LoRACase("mixed-768x30-r16-qkv", 768, 30, 16, widths=QKV, prompt_tokens=512),  # a full prompt budget
    LoRACase("mixed-768x30-r16", 768, 30, 16, prompt_tokens=512),
    LoRACase("decode-32x32-r16", 32, 32, 16),
    LoRACase("decode-64x64-r16", 64, 64, 16, target_us=10.0),
    LoRACase("decode-64x64-r16-slots64", 64, 64, 16, r_max=64),
    LoRACase("decode-128x128-r16", 128, 128, 16),
    LoRACase("decode-256x256-r16", 256, 256, 16, target_us=35.0),
    LoRACase("decode-64x8-r64", 64, 8, 64, target_us=8.0),
    LoRACase("prefill-4096x8-r16-qkv", 4096, 8, 16, widths=(4096, 1024, 1024), contiguous=True,
             target_floor_ratio=1.3),
]

ATTENTION_CASES = [AttentionCase(f"decode-attn-b{b}-ctx{c}", b, c) for b in (1, 16, 64, 256) for c in (512, 2048)]


@dataclass
class LoRAInputs:
    x: torch.Tensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scales: torch.Tensor
    ranks: torch.Tensor
    slice_offsets: torch.Tensor
    meta: LoRAMeta
    buf: torch.Tensor
    y: torch.Tensor
    token_slots: torch.Tensor = field(default=None)
    host_offsets: list[int] = field(default_factory=list)  # slice offsets on the host (no sync in graphs)


def lora_inputs(case: LoRACase, dtype=torch.bfloat16, device="cuda", seed: int = 0,
                meta: LoRAMeta | None = None) -> LoRAInputs:
    """Random inputs (never zeros: they hide unwritten outputs and can run faster than real data).

    Pass `meta` to share one LoRAMeta between input sets, as every layer of a step shares one.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    r_max = case.r_max or case.rank
    n = case.adapters
    x = torch.randn(case.tokens, case.hidden, generator=g, device=device, dtype=dtype)
    a = torch.randn(n, case.slices, r_max, case.hidden, generator=g, device=device, dtype=dtype) * case.hidden ** -0.5
    b = torch.randn(n, case.n_total, r_max, generator=g, device=device, dtype=dtype) * case.rank ** -0.5
    offs = [0]
    for w in case.widths:
        offs.append(offs[-1] + w)
    slots = case.slots()
    meta = meta or LoRAMeta(case.tokens, case.segments(), device=device).prepare(slots)
    return LoRAInputs(
        x=x, lora_a=a, lora_b=b,
        scales=torch.full((n,), 2.0, device=device),
        ranks=torch.full((n,), case.rank, dtype=torch.int32, device=device),
        slice_offsets=torch.tensor(offs, dtype=torch.int32, device=device),
        meta=meta,
        buf=torch.empty(case.slices, case.tokens, r_max, dtype=torch.float32, device=device),
        y=torch.randn(case.tokens, case.n_total, generator=g, device=device, dtype=dtype),
        token_slots=torch.tensor(slots, dtype=torch.long, device=device),
        host_offsets=offs,
    )


def input_sets(bytes_per_set: int, cache_bytes: int, most: int = 64) -> int:
    """Input sets to rotate through so that one pass moves at least 4x the cache: timings then read
    weights from memory, not from the cache (the per-step metadata stays shared and cached, as in serving)."""
    return max(1, min(most, -(-4 * cache_bytes // max(1, bytes_per_set))))


def torch_gather_bmm(inp: LoRAInputs, rank: int) -> None:
    """The plain-PyTorch baseline: gather each token's adapter weights, then batched matrix-vector products."""
    sl = inp.token_slots
    offs = inp.host_offsets
    for i in range(len(offs) - 1):
        a = inp.lora_a[sl, i, :rank]  # (T, r, H)
        h = torch.bmm(a, inp.x.unsqueeze(-1)).squeeze(-1) * inp.scales[sl, None].to(a.dtype)  # (T, r)
        b = inp.lora_b[sl, offs[i]:offs[i + 1], :rank]  # (T, N_i, r)
        inp.y[:, offs[i]:offs[i + 1]] += torch.bmm(b, h.unsqueeze(-1)).squeeze(-1)


@dataclass
class AttentionInputs:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    scale: float


def attention_inputs(case: AttentionCase, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> AttentionInputs:
    """A cache of exactly the needed blocks, handed out in a random order (as a block manager would)."""
    g = torch.Generator(device=device).manual_seed(seed)
    per_seq = -(-case.context // case.block_size)
    n_blocks = case.batch * per_seq
    shape = (n_blocks, case.block_size, case.hkv, case.head_dim)
    return AttentionInputs(
        q=torch.randn(case.batch, case.hq, case.head_dim, generator=g, device=device, dtype=dtype),
        k_cache=torch.randn(shape, generator=g, device=device, dtype=dtype),
        v_cache=torch.randn(shape, generator=g, device=device, dtype=dtype),
        block_tables=torch.randperm(n_blocks, generator=g, device=device).view(case.batch, per_seq).to(torch.int32),
        context_lens=torch.full((case.batch,), case.context, dtype=torch.int32, device=device),
        scale=case.head_dim ** -0.5,
    )
