"""ModelRunner: owns the paged KV cache, turns a scheduled batch of sequences into tensors and returns next-token logits."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from engines.model.llama import AttnMeta, Transformer
from engines.multilora.cuda_graphs import DecodeGraphs
from engines.multilora.sequence import Sequence
from kernels.meta import LoRAMeta


@dataclass
class RunnerConfig:
    block_size: int
    num_blocks: int  # usable blocks; block 0 is an extra scratch block
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    lora_slots: int  # 0: the model has no LoRA stacks
    cuda_graphs: bool


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
        self.meta = LoRAMeta(cfg.max_num_batched_tokens + cfg.max_num_seqs, max(1, cfg.lora_slots), device)
        self.graphs = (DecodeGraphs(model, cfg.max_num_seqs, self.max_blocks, cfg.lora_slots, device)
                       if cfg.cuda_graphs and device.type == "cuda" else None)

    def _to_dev(self, data, dtype) -> torch.Tensor:
        pin = self.device.type == "cuda"
        return torch.tensor(data, dtype=dtype, pin_memory=pin).to(self.device, non_blocking=True)

    def run(self, seqs: list[Sequence], is_prefill: bool, slots: list[int], weights_key: object = None) -> torch.Tensor:
        """Next-token logits (len(seqs), V) float32 of a prefill or a decode of `seqs`; slots[i] is the adapter
        slot of seqs[i] (-1: none)."""
        return self.step([] if is_prefill else seqs, seqs if is_prefill else [], slots, weights_key)

    @torch.inference_mode()
    def step(self, decode: list[Sequence], prefill: list[Sequence], slots: list[int],
             weights_key: object = None) -> torch.Tensor:
        """One forward pass: a token for each of `decode` (at position len - 1, over its cached context) and
        the whole of each of `prefill` (nothing cached before). Returns next-token logits
        (len(decode) + len(prefill), V) float32, decode rows first; slots follow the same order (-1: none).
        Decode-only steps replay a CUDA graph when there is one; the others run eagerly, decode tokens first
        in the flat token batch."""
        use_lora = self.cfg.lora_slots > 0 and any(s >= 0 for s in slots)
        bs = self.cfg.block_size
        ids = [s.last_token for s in decode]
        pos = [len(s) - 1 for s in decode]
        smap = [s.block_table[p // bs] * bs + p % bs for s, p in zip(decode, pos)]
        ctx = [len(s) for s in decode]
        for s in decode:
            s.num_cached = len(s)
        if decode and not prefill and self.graphs is not None and len(decode) <= self.graphs.max_batch:
            width = max(len(s.block_table) for s in decode)
            cpu = dict(pin_memory=True)
            return self.graphs.run(torch.tensor(ids, **cpu), torch.tensor(pos, **cpu), torch.tensor(smap, **cpu),
                                   torch.tensor(_tables(decode, width), dtype=torch.int32, **cpu),
                                   torch.tensor(ctx, dtype=torch.int32, **cpu),
                                   list(slots) if use_lora else None, weights_key)
        lens = []
        for seq in prefill:
            n = len(seq)
            ids.extend(seq.tokens)
            pos.extend(range(n))
            table = seq.block_table
            smap.extend(table[p // bs] * bs + p % bs for p in range(n))
            lens.append(n)
            seq.num_cached = n
        tok_slots = list(slots[: len(decode)])
        for slot, n in zip(slots[len(decode):], lens):
            tok_slots.extend([slot] * n)
        tables = ctx_lens = None
        if decode:  # as wide as the graphs' tables: the attention kernel's key and split count match theirs
            width = max(len(s.block_table) for s in decode)
            tables = torch.zeros(len(decode), self.max_blocks, dtype=torch.int32, device=self.device)
            tables[:, :width].copy_(self._to_dev(_tables(decode, width), torch.int32))
            ctx_lens = self._to_dev(ctx, torch.int32)
        attn = AttnMeta(not decode, self._to_dev(smap, torch.long), seq_lens=lens or None, block_tables=tables,
                        context_lens=ctx_lens)
        meta = self.meta.prepare(tok_slots) if use_lora else None
        h = self.model(self._to_dev(ids, torch.long), self._to_dev(pos, torch.long), attn, meta)
        if prefill:  # each prompt's last token after the decode rows
            rows = list(range(len(decode))) + [len(decode) + e - 1 for e in itertools.accumulate(lens)]
            h = h.index_select(0, self._to_dev(rows, torch.long))
        return self.model.logits(h)


def _tables(seqs: list[Sequence], width: int) -> list[list[int]]:
    """Block tables padded with the scratch block 0 to `width` columns."""
    return [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
