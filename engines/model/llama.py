"""Llama-family transformer (Llama 2/3, Mistral, Qwen2) over a flat token batch, a paged KV cache and stacked LoRA slots."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch import nn

from engines.model import blas
from engines.model.config import ModelArgs
from kernels import ops as kops
from kernels import reference as kref
from kernels.launch import SIDE_STREAM_MAX_TOKENS, fused_mode, fused_wanted
from kernels.meta import LoRAMeta

# LoRA module groups: the fused weight each group uses and the HF modules it concatenates (in order).
LORA_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MODULE_GROUP = {m: g for g, mods in LORA_GROUPS.items() for m in mods}
SMALL_MODEL_PARAMS = 1_000_000_000  # below this, random weights are drawn on the CPU (device-independent)


@dataclass
class AttnMeta:
    """Where each token of a step reads and writes the paged KV cache.

    Prefill: every sequence's tokens are contiguous in the batch (seq_lens, host ints) and attend
    only to each other (no cached prefix: a preempted sequence is recomputed from scratch).
    Decode: one token per sequence; it attends to context_lens[b] cached tokens through block_tables.
    Mixed (is_prefill False and seq_lens given): the first B tokens are decode tokens (B = rows of
    block_tables), the prefill sequences' tokens follow them.
    """

    is_prefill: bool  # no decode token in the step
    slot_mapping: torch.Tensor  # (T,) int64: row of the flattened cache (block * block_size + offset)
    seq_lens: list[int] | None = None  # prefill sequences
    block_tables: torch.Tensor | None = None  # decode (B, max_blocks) int32
    context_lens: torch.Tensor | None = None  # decode (B,) int32, including the new token


_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class LoRAStack:
    """Adapter slots of one module group in every layer: A [L, slots, S, R_max, in], B [L, slots, N, R_max].

    Layer l uses the contiguous views a[l] ([slots, S, R_max, in]) and b[l] ([slots, N_total, R_max]).
    ranks[slot] is the slot's rank in this group (0: the adapter does not touch this group), scales is
    shared by all groups. Buffers never move, so CUDA graphs replay over new slot contents.
    """

    def __init__(self, n_layers: int, slots: int, in_features: int, out_sizes: tuple[int, ...],
                 max_rank: int, scales: torch.Tensor, dtype: torch.dtype, device: torch.device,
                 base: list[nn.Linear] | None = None) -> None:
        n_total = sum(out_sizes)
        a_rows = slots * len(out_sizes) * max_rank
        # base: each layer's Linear of the group. Its weight (and bias) then sit in front of the layer's A rows in
        # one tensor, so one matmul over a prefix of the rows gives the base output and the rank vectors of the
        # slots in the prefix (the joint path, lora_linear_folded); the Linear's parameters become views of it.
        self.joint = self.joint_bias = None
        self.joint_ptrs: list[int] = []  # each layer's base weight address in the joint tensor (joint_rows checks it)
        if base is None:
            self.a = torch.zeros(n_layers, slots, len(out_sizes), max_rank, in_features, dtype=dtype, device=device)
        else:
            self.joint = torch.zeros(n_layers, n_total + a_rows, in_features, dtype=dtype, device=device)
            if base[0].bias is not None:
                self.joint_bias = torch.zeros(n_layers, n_total + a_rows, dtype=dtype, device=device)
            for layer, lin in enumerate(base):
                self.joint[layer, :n_total].copy_(lin.weight)
                lin.weight = nn.Parameter(self.joint[layer, :n_total], requires_grad=False)
                if self.joint_bias is not None:
                    self.joint_bias[layer, :n_total].copy_(lin.bias)
                    lin.bias = nn.Parameter(self.joint_bias[layer, :n_total], requires_grad=False)
            self.a = self.joint[:, n_total:].view(n_layers, slots, len(out_sizes), max_rank, in_features)
            self.joint_ptrs = [lin.weight.data_ptr() for lin in base]
        self.b = torch.zeros(n_layers, slots, n_total, max_rank, dtype=dtype, device=device)
        self.ranks = torch.zeros(slots, dtype=torch.int32, device=device)
        self.scales = scales
        offs = [0]
        for n in out_sizes:
            offs.append(offs[-1] + n)
        self.slice_offsets = torch.tensor(offs, dtype=torch.int32, device=device)
        self.max_rank = max_rank
        self.num_slices = len(out_sizes)
        self.stream: torch.cuda.Stream | None = None  # a side stream: shrink overlaps the base matmul
        self.side_tokens = SIDE_STREAM_MAX_TOKENS  # calls of up to this many tokens use the side stream
        self.fold = False  # and run shrink + expand there into a buffer that the next op adds (lora_linear_folded)
        self.fused: bool | int | str = "auto"  # kernels.launch.fused_mode: fused shrink+expand or the pair
        self.shrink_rows = False  # steps that expand by rows also shrink by rows (kernels/lora_shrink_rows.py)
        self.paths: dict[tuple, bool] = {}  # (tokens, dtype, device) -> fused? under `fused`: decided once
        self.base_rows = n_total

    def nbytes(self) -> int:
        """The adapter slots' bytes (A and B; not the base weight that shares the joint tensor)."""
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()

    def joint_rows(self, weight: torch.Tensor, layer: int, span: int) -> int:
        """Rows of the layer's joint tensor a joint matmul over slots 0..span-1 reads; 0 when the stack has none or
        `weight` is no longer its view (a copy put in its place)."""
        if span <= 0 or not self.joint_ptrs or weight.data_ptr() != self.joint_ptrs[layer]:
            return 0
        return self.base_rows + span * self.num_slices * self.max_rank


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


def _plus(x: torch.Tensor, delta) -> torch.Tensor:
    """x + delta rounded to x's dtype, as an add into x in float32 (the expand kernel's rounding); delta a float32
    tensor or a JointOut."""
    if delta is None:
        return x
    return (x.float() + (delta.dense() if isinstance(delta, JointOut) else delta)).to(x.dtype)


class TorchOps:
    """The elementwise pieces of a layer in plain torch, with Hugging Face's rounding. On CUDA the runner
    swaps in kernels.fused_ops.FusedOps (same methods, one Triton kernel each)."""

    @staticmethod
    def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()  # HF computes the norm in fp32, then casts back before the weight
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    @classmethod
    def add_rms_norm(cls, x, residual, w, eps, delta=None):
        """(norm(x + residual), x + residual): the residual add of HF's layer, then the next norm. delta: a
        float32 LoRA output added into x first (as the expand kernel adds it)."""
        s = _plus(x, delta) + residual
        return cls.rms_norm(s, w, eps), s

    @staticmethod
    def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor):
        freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
        return freqs.cos()[:, None, :], freqs.sin()[:, None, :]  # (T, 1, D/2)

    @staticmethod
    def rope_and_cache(qkv, rope, n_heads, n_kv, hd, k_cache, v_cache, slot_mapping, delta=None):
        """Rotate q and k of the fused qkv output (plus delta, a float32 LoRA output), write k and v to the
        paged cache; returns q, k, v (T, H, D)."""
        qkv = _plus(qkv, delta)
        t = qkv.shape[0]
        q, k, v = qkv.split([n_heads * hd, n_kv * hd, n_kv * hd], dim=-1)
        cos, sin = rope
        q, k, v = apply_rope(q.view(t, n_heads, hd), cos, sin), apply_rope(k.view(t, n_kv, hd), cos, sin), v.view(t, n_kv, hd)
        nb, bs = k_cache.shape[:2]
        k_cache.view(nb * bs, n_kv, hd).index_copy_(0, slot_mapping, k)
        v_cache.view(nb * bs, n_kv, hd).index_copy_(0, slot_mapping, v)
        return q, k, v

    @staticmethod
    def silu_mul(gu: torch.Tensor) -> torch.Tensor:
        gate, up = gu.chunk(2, dim=-1)  # (T, I) each
        return F.silu(gate) * up


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) with the checkpoint's theta and rope_scaling (default, linear, llama3)."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = args.rope_scaling
    kind = (sc or {}).get("rope_type", (sc or {}).get("type", "default"))
    if sc is None or kind == "default":
        return inv.float()
    if kind == "linear":
        return (inv / float(sc["factor"])).float()
    if kind == "llama3":
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled).float()
    raise ValueError(f"{args.name}: rope_scaling type {kind!r} is not supported; supported: default, linear, llama3")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (T, H, D); cos/sin (T, 1, D/2); HF's rotate_half layout: the two halves of D are the pairs
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


@dataclass
class Folded:
    """A LoRA output (float32, T x N) computed beside the base matmul, for the op that consumes the base output
    to add; join() waits for the side stream first. `keep` holds what the side stream still reads, so the
    caching allocator cannot hand it out before the join."""

    delta: torch.Tensor
    stream: torch.cuda.Stream | None
    keep: tuple

    def join(self) -> torch.Tensor:
        if self.stream is not None:
            torch.cuda.current_stream(self.delta.device).wait_stream(self.stream)
        return self.delta


@dataclass
class JointOut:
    """The joint path's rank vectors, for the op that consumes the base output to expand and add: s (T, span x S x
    R_max), the matmul's rows past the base output (slot k's slice i at columns (k S + i) R_max ...); each token
    takes its own slot's, up to the slot's rank, times B and the slot's scale."""

    s: torch.Tensor
    b: torch.Tensor
    token_slot: torch.Tensor
    ranks: torch.Tensor
    scales: torch.Tensor
    slice_offsets: torch.Tensor
    num_slices: int
    max_rank: int
    counters: torch.Tensor  # zeroed int32, one per token: the consumer's programs of a row count in (LoRAMeta)

    def join(self) -> "JointOut":
        return self  # made on the main stream: nothing to wait for

    def dense(self) -> torch.Tensor:
        """The LoRA output, float32 (T, N_total)."""
        return kref.joint_expand_ref(self.s, self.b, self.token_slot, self.ranks, self.scales, self.slice_offsets,
                                     self.num_slices, self.max_rank)


def _fused_path(stack: LoRAStack, x: torch.Tensor, b: torch.Tensor) -> bool:
    path = (x.shape[0], x.dtype, x.device)  # the same for every layer of a step: looked up once
    fused = stack.paths.get(path)
    if fused is None:
        fused = stack.paths[path] = fused_wanted(stack.fused, x.shape[0], x.shape[1], b.shape[1], stack.num_slices,
                                                 stack.max_rank, x.dtype, x.device)
    return fused


def _shrink(x: torch.Tensor, a: torch.Tensor, stack: LoRAStack, lora: LoRAMeta, buf: torch.Tensor) -> torch.Tensor:
    """The rank vectors into buf; by rows where the step expands by rows and the stack says so (they may then come
    back as partial planes, which the expand by rows sums). Planes made on the side stream are read on the main
    stream after the join; the side stream's next work waits for the main stream first, so their memory is not
    handed out again before that read."""
    return kops.lora_shrink(x, a, lora, stack.scales, stack.ranks, buf, stack.shrink_rows and lora.expand_rows)


def lora_linear_folded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stack: LoRAStack | None, layer: int, lora: LoRAMeta | None):
    """(x W^T (+ b), Folded, JointOut or None): on a step the meta gives a joint span, one matmul over the base
    weight and the span's A rows, the consumer of the output expanding and adding (JointOut); with stack.fold, a
    call of up to stack.side_tokens tokens runs the LoRA shrink and expand on the side stream into a float32
    buffer while the base matmul runs, and the consumer of the output adds it (the fused norm and RoPE kernels
    take it), so no LoRA kernel waits on the main stream; otherwise lora_linear and None."""
    rows = stack.joint_rows(weight, layer, lora.joint) if stack is not None and lora is not None else 0
    if rows:
        out = F.linear(x, stack.joint[layer, :rows], None if bias is None else stack.joint_bias[layer, :rows])
        n = stack.base_rows
        return out[:, :n], JointOut(out[:, n:], stack.b[layer], lora.token_slot[:x.shape[0]], stack.ranks,
                                    stack.scales, stack.slice_offsets, stack.num_slices, stack.max_rank,
                                    lora.joint_counters)
    if stack is None or lora is None or not stack.fold or x.shape[0] > stack.side_tokens \
            or _fused_path(stack, x, stack.b[layer]):
        return lora_linear(x, weight, bias, stack, layer, lora), None
    a, b = stack.a[layer], stack.b[layer]
    buf = torch.empty(stack.num_slices, x.shape[0], stack.max_rank, dtype=torch.float32, device=x.device)
    delta = torch.empty(x.shape[0], b.shape[1], dtype=torch.float32, device=x.device)
    side = nullcontext()  # no side stream (the CPU): the same arithmetic, in order
    if stack.stream is not None:
        stack.stream.wait_stream(torch.cuda.current_stream(x.device))
        side = torch.cuda.stream(stack.stream)
    with side:  # launched before the base matmul: the base matmul first measured no faster (run 16, call b)
        buf = _shrink(x, a, stack, lora, buf)
        kops.lora_expand(buf, b, lora, stack.ranks, stack.slice_offsets, delta, lora.expand_rows, overwrite=True)
    return F.linear(x, weight, bias), Folded(delta, stack.stream, (x, buf))


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stack: LoRAStack | None, layer: int, lora: LoRAMeta | None) -> torch.Tensor:
    """y = x W^T (+ b) + sum over slices of scale * x A^T B^T for each token's adapter slot."""
    if stack is None or lora is None:
        return F.linear(x, weight, bias)  # (T, N_total)
    a, b = stack.a[layer], stack.b[layer]
    if _fused_path(stack, x, b):  # one launch after the base matmul: the rank vector never leaves the chip
        y = F.linear(x, weight, bias)
        kops.lora_fused(x, a, b, lora, stack.scales, stack.ranks, stack.slice_offsets, y)
        return y
    buf = torch.empty(stack.num_slices, x.shape[0], stack.max_rank, dtype=torch.float32, device=x.device)
    if stack.stream is None or x.shape[0] > stack.side_tokens:
        y = F.linear(x, weight, bias)
        buf = _shrink(x, a, stack, lora, buf)
    else:  # fork: the shrink reads only x, so it runs beside the base matmul (also inside a CUDA graph)
        main = torch.cuda.current_stream(x.device)
        stack.stream.wait_stream(main)
        with torch.cuda.stream(stack.stream):
            buf = _shrink(x, a, stack, lora, buf)
        y = F.linear(x, weight, bias)
        main.wait_stream(stack.stream)  # join before the expand adds into y (x and buf belong to main)
    kops.lora_expand(buf, b, lora, stack.ranks, stack.slice_offsets, y, lora.expand_rows)
    return y


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.args, self.layer = args, layer
        self.n_heads, self.n_kv, self.hd = args.n_heads, args.n_kv_heads, args.head_dim
        self.qkv_proj = nn.Linear(args.dim, args.q_size + 2 * args.kv_size, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.q_size, args.dim, bias=False)
        self.k_cache: torch.Tensor | None = None  # (num_blocks, block_size, Hkv, D), bound by the runner
        self.v_cache: torch.Tensor | None = None
        self.lora: dict[str, LoRAStack] = {}
        self._register_load_state_dict_pre_hook(_fuse_hook(("q_proj", "k_proj", "v_proj"), "qkv_proj"))

    def forward(self, x, rope, attn: AttnMeta, lora: LoRAMeta | None, ops):
        """(attention output before o's LoRA, Folded or None): o's LoRA output folded for the next norm to add."""
        t = x.shape[0]
        qkv, folded = lora_linear_folded(x, self.qkv_proj.weight, self.qkv_proj.bias, self.lora.get("qkv"),
                                         self.layer, lora)
        q, k, v = ops.rope_and_cache(qkv, rope, self.n_heads, self.n_kv, self.hd, self.k_cache, self.v_cache,
                                     attn.slot_mapping, delta=folded.join() if folded else None)  # (T, H, D) each
        scale = 1.0 / math.sqrt(self.hd)
        if attn.is_prefill:
            o = self._prefill(q, k, v, attn.seq_lens, scale)
        elif attn.seq_lens:  # mixed: decode tokens over the cache, then the prompts among themselves
            b = attn.block_tables.shape[0]
            o = torch.cat((kops.paged_decode_attention(q[:b], self.k_cache, self.v_cache, attn.block_tables,
                                                      attn.context_lens, scale),
                           self._prefill(q[b:], k[b:], v[b:], attn.seq_lens, scale)))
        else:
            o = kops.paged_decode_attention(q, self.k_cache, self.v_cache, attn.block_tables,
                                           attn.context_lens, scale)
        o = o.reshape(t, self.args.q_size)
        return lora_linear_folded(o, self.o_proj.weight, None, self.lora.get("o"), self.layer, lora)

    def _prefill(self, q, k, v, seq_lens: list[int], scale: float) -> torch.Tensor:
        if self.n_kv != self.n_heads:  # GQA: expand K, V to every query head; SDPA's enable_gqa falls
            group = self.n_heads // self.n_kv  # back to the slow math kernel (66% of a serving profile on H100)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (T, Hq, D)

        def sdpa(qs, ks, vs):  # (B, L, H, D) -> (B, L, Hq, D), causal within each sequence
            # not cuDNN: it builds a plan per new sequence length (~0.1 s each on an H100 while serving)
            with sdpa_kernel(_SDPA_BACKENDS):
                out = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                                     is_causal=True, scale=scale)
            return out.transpose(1, 2)
        if len(set(seq_lens)) == 1:  # equal lengths: one batched call
            b, n = len(seq_lens), seq_lens[0]
            return sdpa(q.view(b, n, *q.shape[1:]), k.view(b, n, *k.shape[1:]), v.view(b, n, *v.shape[1:])).reshape(q.shape)
        outs, start = [], 0
        for n in seq_lens:
            sl = slice(start, start + n)
            outs.append(sdpa(q[sl][None], k[sl][None], v[sl][None])[0])
            start += n
        return torch.cat(outs, dim=0)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer, self.inter = layer, args.intermediate_size
        self.gate_up_proj = nn.Linear(args.dim, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)
        self.lora: dict[str, LoRAStack] = {}
        self._register_load_state_dict_pre_hook(_fuse_hook(("gate_proj", "up_proj"), "gate_up_proj"))

    def forward(self, x: torch.Tensor, lora: LoRAMeta | None, ops) -> torch.Tensor:
        gu = lora_linear(x, self.gate_up_proj.weight, None, self.lora.get("gate_up"), self.layer, lora)  # (T, 2I)
        return lora_linear(ops.silu_mul(gu), self.down_proj.weight, None, self.lora.get("down"), self.layer, lora)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.mlp = MLP(args, layer)
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, residual, rope, attn: AttnMeta, lora: LoRAMeta | None, ops):
        """(layer output before its residual add, the residual stream): the add is fused into the next norm."""
        n1, n2 = self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            h, residual = ops.rms_norm(x, n1.weight, n1.eps), x
        else:
            h, residual = ops.add_rms_norm(x, residual, n1.weight, n1.eps)
        out, folded = self.self_attn(h, rope, attn, lora, ops)
        h, residual = ops.add_rms_norm(out, residual, n2.weight, n2.eps, delta=folded.join() if folded else None)
        return self.mlp(h, lora, ops), residual


class Backbone(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)


class Transformer(nn.Module):
    """State-dict names are Hugging Face's (model.layers.N.self_attn.q_proj.weight, ...): loading fuses
    q/k/v into qkv_proj and gate/up into gate_up_proj; hf_state_dict() splits them back."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Backbone(args)
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.lora_stacks: dict[str, LoRAStack] = {}
        self.lora_scales: torch.Tensor | None = None
        self.ops = TorchOps  # elementwise ops; FusedOps on CUDA (use_fused_ops)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnMeta,
                lora: LoRAMeta | None = None) -> torch.Tensor:
        """input_ids, positions (T,) -> final hidden states (T, dim); lora None skips the adapter ops."""
        ops = self.ops
        blas.select(input_ids.device, input_ids.shape[0])  # the base matmuls' library for a pass of this size
        rope = ops.rope_tables(positions, self.inv_freq)
        x, residual = self.model.embed_tokens(input_ids), None  # (T, dim)
        for blk in self.model.layers:
            x, residual = blk(x, residual, rope, attn, lora, ops)
        return ops.add_rms_norm(x, residual, self.model.norm.weight, self.model.norm.eps)[0]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w).float()  # (B, vocab)

    def use_fused_ops(self) -> None:
        """One Triton kernel per norm, rope + cache write and SiLU-mul (CUDA only; fewer launches per step)."""
        from kernels.fused_ops import FusedOps
        self.ops = FusedOps

    def use_lora_stream(self, max_tokens: int = SIDE_STREAM_MAX_TOKENS) -> None:
        """Run LoRA shrinks of calls of up to max_tokens tokens on one side stream beside the base matmul (CUDA
        only; after enable_lora). At the stream's default priority: a higher one measured worse on the H200 (run
        15: LoRA tax at 64 decodes over 64 adapters +13.2–13.3% against +10.4–10.8%)."""
        stream = torch.cuda.Stream(self.inv_freq.device)
        for stack in self.lora_stacks.values():
            stack.stream, stack.side_tokens = stream, max_tokens

    def use_lora_fold(self, on: bool) -> None:
        """q,k,v and o LoRA in side-stream calls: shrink and expand both beside the base matmul, into a buffer
        that the RoPE + cache kernel and the next add + RMSNorm add (lora_linear_folded)."""
        for group in ("qkv", "o"):
            if group in self.lora_stacks:
                self.lora_stacks[group].fold = on

    def use_shrink_rows(self, on: bool) -> None:
        """Steps that expand LoRA by rows also shrink by rows (kernels/lora_shrink_rows.py; CUDA only, elsewhere the
        reference runs either way)."""
        for stack in self.lora_stacks.values():
            stack.shrink_rows = bool(on)

    def use_fused_lora(self, mode) -> None:
        """LoRA path per call size: "auto", True, False or a token count (kernels.launch.fused_mode; ValueError
        on anything else). Fused calls run after the base matmul, so the side stream serves only the pair."""
        mode = fused_mode(mode)
        for stack in self.lora_stacks.values():
            stack.fused = mode
            stack.paths.clear()

    # ---- weights ---------------------------------------------------------------------------------
    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(_drop_tied(sd, self.args), strict=False)
        if missing or unexpected:
            raise ValueError(f"{self.args.name}: checkpoint does not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}; is it a {self.args.name}-shaped Llama-family checkpoint?")

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        a, out = self.args, {}
        for name, t in self.state_dict().items():
            if ".qkv_proj." in name:
                for mod, piece in zip(("q_proj", "k_proj", "v_proj"), t.split([a.q_size, a.kv_size, a.kv_size])):
                    out[name.replace("qkv_proj", mod)] = piece
            elif ".gate_up_proj." in name:
                g, u = t.split(a.intermediate_size)
                out[name.replace("gate_up_proj", "gate_proj")], out[name.replace("gate_up_proj", "up_proj")] = g, u
            else:
                out[name] = t
        return out

    @torch.no_grad()
    def init_random_(self, seed: int) -> None:
        """Fill the weights in place on their own device (fast for 8B shapes); values depend on the device."""
        gen = torch.Generator(device=self.inv_freq.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.01, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)

    def linear_weights(self) -> dict[tuple[int, str], torch.Tensor]:
        """(layer, group) -> the fused weight of that group; what a merged copy replaces."""
        out = {}
        for i, blk in enumerate(self.model.layers):
            out[(i, "qkv")] = blk.self_attn.qkv_proj.weight
            out[(i, "o")] = blk.self_attn.o_proj.weight
            out[(i, "gate_up")] = blk.mlp.gate_up_proj.weight
            out[(i, "down")] = blk.mlp.down_proj.weight
        return out

    def group_slices(self, group: str) -> tuple[tuple[int, ...], int]:
        """Output sizes of a group's slices and its input features."""
        shapes = self.args.module_shapes()
        mods = LORA_GROUPS[group]
        return tuple(shapes[m][1] for m in mods), shapes[mods[0]][0]

    # ---- LoRA slots ------------------------------------------------------------------------------
    def enable_lora(self, slots: int, max_rank: int, groups: tuple[str, ...]) -> None:
        """Allocate stacked slots for the given module groups (zeros: every slot starts empty)."""
        p = self.model.embed_tokens.weight
        self.lora_scales = torch.zeros(slots, dtype=torch.float32, device=p.device)
        joint_bases = {"qkv": [blk.self_attn.qkv_proj for blk in self.model.layers],  # the groups the joint path
                       "o": [blk.self_attn.o_proj for blk in self.model.layers]}  # serves, and their Linears
        for g in groups:
            outs, fin = self.group_slices(g)
            self.lora_stacks[g] = LoRAStack(self.args.n_layers, slots, fin, outs, max_rank, self.lora_scales,
                                            p.dtype, p.device, joint_bases.get(g))
        for blk in self.model.layers:
            blk.self_attn.lora = {g: s for g, s in self.lora_stacks.items() if g in ("qkv", "o")}
            blk.mlp.lora = {g: s for g, s in self.lora_stacks.items() if g in ("gate_up", "down")}

    def set_slot(self, slot: int, packed: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                 scaling: float, non_blocking: bool = False) -> None:
        """Copy a packed adapter into a slot: packed[group] = (A [L, S, r, in], B [L, N_total, r])."""
        for g, stack in self.lora_stacks.items():
            if g in packed:
                a, b = packed[g]
                stack.a[:, slot, :, :rank, :].copy_(a, non_blocking=non_blocking)
                stack.b[:, slot, :, :rank].copy_(b, non_blocking=non_blocking)
                stack.ranks[slot] = rank
            else:
                stack.ranks[slot] = 0
        self.lora_scales[slot] = scaling

    def clear_slot(self, slot: int) -> None:
        for stack in self.lora_stacks.values():
            stack.ranks[slot] = 0
        if self.lora_scales is not None:
            self.lora_scales[slot] = 0.0


def _fuse_hook(parts: tuple[str, ...], fused: str):
    """load_state_dict pre-hook: concatenate the HF per-module weights (and biases) into the fused one."""
    def hook(state_dict, prefix, *unused):
        for kind in ("weight", "bias"):
            keys = [f"{prefix}{p}.{kind}" for p in parts]
            if all(k in state_dict for k in keys):
                state_dict[f"{prefix}{fused}.{kind}"] = torch.cat([state_dict.pop(k) for k in keys], dim=0)
    return hook


def _drop_tied(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    if args.tie_embeddings and "lm_head.weight" in sd:
        return {k: v for k, v in sd.items() if k != "lm_head.weight"}
    return dict(sd)


def build_model(args: ModelArgs, dtype: torch.dtype, device: torch.device | str,
                state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0) -> Transformer:
    """The model on `device` without a host copy: from a state dict, or random (the values of
    engines.model.weights.random_state_dict on the CPU and for small models; for large models on CUDA
    drawn on the device, which is fast for 8B shapes but gives other values)."""
    device = torch.device(device)
    with torch.device("meta"):
        model = Transformer(args)
    model.to(dtype)  # on meta: free; the device memory is then allocated once, in `dtype`, not float32 first
    model.to_empty(device=device)
    model.inv_freq = rope_inv_freq(args).to(device)
    if state_dict is None and (device.type == "cpu" or args.num_params() < SMALL_MODEL_PARAMS):
        from engines.model.weights import random_state_dict
        state_dict = random_state_dict(args, seed=seed, dtype=dtype)
    if state_dict is None:
        model.init_random_(seed)
    else:
        model.load_hf_state_dict(state_dict)
    return model.eval().requires_grad_(False)
