"""ModelRunner: owns the paged KV cache, turns a scheduled batch of sequences into tensors and returns next-token logits."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from engines.model.llama import AttnMeta, Transformer
from engines.multilora.cuda_graphs import DecodeGraphs
from engines.multilora.sampler import host_tensor, to_device
from engines.multilora.sequence import Sequence
from kernels.launch import (JOINT_FLOP_TOKENS, JOINT_FREE_SLOTS, JOINT_MIN_SPAN, JOINT_MIN_TOKENS, JOINT_MOST_SLOTS,
                            JOINT_RATIO)
from kernels.meta import LoRAMeta


class RowsInput(NamedTuple):
    """A rows step's host inputs (pinned on CUDA): ids, positions, cache slots, block tables and context lengths
    per row, and each row's adapter slot (None: no adapter in the step)."""
    ids: torch.Tensor
    pos: torch.Tensor
    smap: torch.Tensor
    tables: torch.Tensor
    ctx: torch.Tensor
    slots: list[int] | None


@dataclass
class RunnerConfig:
    block_size: int
    num_blocks: int  # usable blocks; block 0 is an extra scratch block
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    lora_slots: int  # 0: the model has no LoRA stacks
    cuda_graphs: bool
    graph_rows: int = 0  # prompt tokens a step may carry as rows beyond max_num_seqs (0: prompts go varlen)


@dataclass
class Carry:
    """Decode rows (indices into the step's decode list) whose input token is row src[i] of `tokens`, the
    device tensor of tokens the previous step sampled."""

    tokens: torch.Tensor
    rows: list[int]
    src: list[int]


def kv_block_bytes(model: Transformer, block_size: int, dtype: torch.dtype) -> int:
    return model.args.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size()) * block_size


class ModelRunner:
    def __init__(self, model: Transformer, cfg: RunnerConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        a = model.args
        shape = (cfg.num_blocks + 1, cfg.block_size, a.n_kv_heads, a.head_dim)
        self.k_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(a.n_layers)]
        self.v_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(a.n_layers)]
        for blk, k, v in zip(model.model.layers, self.k_caches, self.v_caches):
            blk.self_attn.k_cache, blk.self_attn.v_cache = k, v
        self.max_blocks = -(-cfg.max_model_len // cfg.block_size)
        # eager steps (prefills, mixed steps, decodes without a graph): a mixed step carries at most
        # max_num_batched_tokens prompt tokens beside one decode token per running sequence
        self.meta = LoRAMeta(max(cfg.max_num_batched_tokens, cfg.graph_rows) + cfg.max_num_seqs,
                             max(1, cfg.lora_slots), device)
        self.graphs = (DecodeGraphs(model, cfg.max_num_seqs + cfg.graph_rows, self.max_blocks, cfg.lora_slots, device)
                       if cfg.cuda_graphs and device.type == "cuda" else None)
        # forward passes with adapters; those that expanded by rows; those that took the joint path
        self.lora_steps = self.expand_rows_steps = self.joint_steps = 0

    def use_expand_rows(self, max_tokens: int, max_per_tile: float = math.inf, any_fill: int = 0) -> None:
        """Steps of up to max_tokens tokens with at most max_per_tile adapter tokens per 16-row tile of the segment
        expand, and steps of up to any_fill tokens, take the expand by rows (kernels.lora_expand_rows); 0: by
        segments always (LoRAMeta.use_expand_rows)."""
        for meta in [self.meta] + ([self.graphs.meta] if self.graphs is not None else []):
            meta.use_expand_rows(max_tokens, max_per_tile, any_fill)

    def use_joint(self, max_tokens: int) -> None:
        """Steps of up to max_tokens tokens (0: never) run the q,k,v and o LoRA shrink inside the base matmul where
        the joint rule (kernels.launch JOINT_*; LoRAMeta.use_joint) allows."""
        others = any(stack.joint is None for stack in self.model.lora_stacks.values())
        for meta in [self.meta] + ([self.graphs.meta] if self.graphs is not None else []):
            meta.use_joint(max_tokens, JOINT_FREE_SLOTS, JOINT_RATIO, JOINT_MIN_SPAN, others, JOINT_FLOP_TOKENS,
                           JOINT_MOST_SLOTS, JOINT_MIN_TOKENS)

    def _to_dev(self, data, dtype) -> torch.Tensor:
        return to_device(data, dtype, self.device)

    def run(self, seqs: list[Sequence], is_prefill: bool, slots: list[int], weights_key: object = None) -> torch.Tensor:
        """Next-token logits (len(seqs), V) float32 of a prefill or a decode of `seqs`; slots[i] is the adapter
        slot of seqs[i] (-1: none)."""
        return self.step([] if is_prefill else seqs, seqs if is_prefill else [], slots, weights_key)

    @torch.inference_mode()
    def step(self, decode: list[Sequence], prefill: list[Sequence], slots: list[int],
             weights_key: object = None, carry: Carry | None = None) -> torch.Tensor:
        """One forward pass: a token for each of `decode` (at position len - 1, over its cached context) and
        the whole of each of `prefill` (nothing cached before). Returns next-token logits
        (len(decode) + len(prefill), V) float32, decode rows first; slots follow the same order (-1: none).

        Decode tokens are rows that attend over their cached context through the paged decode attention.
        Prompts follow them as a causal varlen batch (eager), or, when graph_rows > 0 and the step has at most
        max_num_seqs + graph_rows tokens, as rows too: token p of a prompt attends over positions 0..p of its
        own cache (written by the same layer just before), so the step replays a decode graph.

        carry: decode rows whose input token the previous step sampled and the host has not read yet (their
        last token is a placeholder); their ids are taken from that step's tokens on the device."""
        use_lora = self.cfg.lora_slots > 0 and any(s >= 0 for s in slots)
        lens = [len(s) for s in prefill]
        as_rows = not prefill or (self.cfg.graph_rows > 0
                                  and len(decode) + sum(lens) <= self.cfg.max_num_seqs + self.cfg.graph_rows)
        if as_rows:
            logits = self._rows(decode, prefill, lens, slots if use_lora else None, weights_key, carry)
        else:
            logits = self._varlen(decode, prefill, lens, slots if use_lora else None, carry)
        for seq in decode + prefill:
            seq.num_cached = len(seq)
        if as_rows and prefill:  # each prompt's last token after the decode rows
            logits = logits.index_select(0, self._to_dev(_last_rows(len(decode), lens), torch.long))
        return logits

    def host_rows(self, decode, prefill, lens, slots) -> RowsInput:
        """A rows step's inputs on the host: decode tokens, then each prompt token as a row of its own."""
        ids, pos, smap, ctx = self._tokens(decode, prefill, lens)
        for n in lens:
            ctx.extend(range(1, n + 1))
        width = max(len(s.block_table) for s in decode + prefill)
        tables = np.asarray(_tables(decode + prefill, width), dtype=np.int32)
        if prefill:  # each prompt token's row: its prompt's table
            tables = np.repeat(tables, [1] * len(decode) + lens, axis=0)
        row_slots = None if slots is None else _token_slots(slots, len(decode), lens)
        pin = self.device.type == "cuda"
        return RowsInput(host_tensor(ids, torch.long, pin), host_tensor(pos, torch.long, pin),
                         host_tensor(smap, torch.long, pin), host_tensor(tables, torch.int32, pin),
                         host_tensor(ctx, torch.int32, pin), row_slots)

    def _rows(self, decode, prefill, lens, slots, weights_key, carry) -> torch.Tensor:
        """Logits of every row (decode tokens, then each prompt token as a row of its own)."""
        h = self.host_rows(decode, prefill, lens, slots)
        if self.graphs is not None and h.ids.shape[0] <= self.graphs.max_batch:
            out = self.graphs.run(h.ids, h.pos, h.smap, h.tables, h.ctx, h.slots, weights_key, self._patch(carry))
            self._count_path(self.graphs.meta if h.slots is not None else None)
            return out
        dev = dict(device=self.device, non_blocking=True)
        attn = AttnMeta(False, h.smap.to(**dev), block_tables=self._wide(h.tables), context_lens=h.ctx.to(**dev))
        meta = self._count_path(self.meta.prepare(h.slots) if h.slots is not None else None)
        return self.model.logits(self.model(self._ids(h.ids, carry), h.pos.to(**dev), attn, meta))

    def _varlen(self, decode, prefill, lens, slots, carry) -> torch.Tensor:
        """Logits of the decode rows and of each prompt's last token: the prompts, after the decode tokens in
        the flat batch, attend among themselves (causal, per prompt)."""
        ids, pos, smap, ctx = self._tokens(decode, prefill, lens)
        tables = ctx_lens = None
        if decode:
            width = max(len(s.block_table) for s in decode)
            tables = self._wide(host_tensor(_tables(decode, width), torch.int32))
            ctx_lens = self._to_dev(ctx, torch.int32)
        attn = AttnMeta(not decode, self._to_dev(smap, torch.long), seq_lens=lens, block_tables=tables,
                        context_lens=ctx_lens)
        meta = self._count_path(None if slots is None else self.meta.prepare(_token_slots(slots, len(decode), lens)))
        h = self.model(self._ids(ids, carry), self._to_dev(pos, torch.long), attn, meta)
        return self.model.logits(h.index_select(0, self._to_dev(_last_rows(len(decode), lens), torch.long)))

    def _count_path(self, meta: LoRAMeta | None) -> LoRAMeta | None:
        """Count the step's LoRA path (expand_rows_steps: steps that expanded by rows; joint_steps: steps that took
        the joint path); returns meta."""
        if meta is not None:
            self.lora_steps += 1
            self.expand_rows_steps += meta.expand_rows
            self.joint_steps += meta.joint > 0
        return meta

    def _patch(self, carry: Carry | None):
        """A function that writes the carried tokens into a device ids tensor (None: nothing carried)."""
        if carry is None:
            return None
        rows, src = self._to_dev(carry.rows, torch.long), self._to_dev(carry.src, torch.long)
        return lambda ids: ids.index_copy_(0, rows, carry.tokens.index_select(0, src))

    def _ids(self, ids: list[int] | torch.Tensor, carry: Carry | None) -> torch.Tensor:
        """The step's input ids on the device (from a host list or a host tensor), the carried tokens written in."""
        out = ids.to(self.device, non_blocking=True) if isinstance(ids, torch.Tensor) else self._to_dev(ids, torch.long)
        patch = self._patch(carry)
        return out if patch is None else patch(out)

    def _tokens(self, decode: list[Sequence], prefill: list[Sequence], lens: list[int]):
        """Host lists of the step's flat token batch (decode tokens, then every prompt token): ids, positions,
        cache slots; and the context lengths of the decode tokens."""
        bs = self.cfg.block_size
        ctx = [len(s) for s in decode]
        pos = [n - 1 for n in ctx]
        smap = [s.block_table[p // bs] * bs + p % bs for s, p in zip(decode, pos)]
        ids = [s.last_token for s in decode]
        for seq, n in zip(prefill, lens):
            table = seq.block_table
            ids.extend(seq.tokens)
            pos.extend(range(n))
            smap.extend(table[p // bs] * bs + p % bs for p in range(n))
        return ids, pos, smap, ctx

    def _wide(self, tables: torch.Tensor) -> torch.Tensor:
        """Block tables on the device as wide as the graphs' (the attention kernel's key and split count match
        the ones the graph capture compiled), padded with the scratch block 0."""
        out = torch.zeros(tables.shape[0], self.max_blocks, dtype=torch.int32, device=self.device)
        out[:, : tables.shape[1]].copy_(tables.pin_memory() if self.device.type == "cuda" else tables,
                                        non_blocking=True)
        return out


def _tables(seqs: list[Sequence], width: int) -> list[list[int]]:
    """Block tables padded with the scratch block 0 to `width` columns."""
    return [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]


def _token_slots(slots: list[int], num_decode: int, lens: list[int]) -> list[int]:
    """The adapter slot of every token: one per decode sequence, then each prompt's slot for its tokens."""
    return list(slots[:num_decode]) + [slot for slot, n in zip(slots[num_decode:], lens) for _ in range(n)]


def _last_rows(num_decode: int, lens: list[int]) -> list[int]:
    """Rows of the decode tokens and of each prompt's last token in a step's flat token batch."""
    return list(range(num_decode)) + [num_decode + end - 1 for end in itertools.accumulate(lens)]
