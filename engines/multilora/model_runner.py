"""ModelRunner: owns the paged KV cache, turns a scheduled batch of sequences into tensors and returns next-token logits."""
from __future__ import annotations

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
        self.prefill_meta = LoRAMeta(cfg.max_num_batched_tokens, max(1, cfg.lora_slots), device)
        self.decode_meta = LoRAMeta(cfg.max_num_seqs, max(1, cfg.lora_slots), device)
        self.graphs = (DecodeGraphs(model, cfg.max_num_seqs, self.max_blocks, cfg.lora_slots, device)
                       if cfg.cuda_graphs and device.type == "cuda" else None)

    def _to_dev(self, data, dtype) -> torch.Tensor:
        pin = self.device.type == "cuda"
        return torch.tensor(data, dtype=dtype, pin_memory=pin).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool, slots: list[int], weights_key: object = None) -> torch.Tensor:
        """Next-token logits (len(seqs), V) float32. slots[i]: the adapter slot of seqs[i] (-1: none)."""
        use_lora = self.cfg.lora_slots > 0 and any(s >= 0 for s in slots)
        bs = self.cfg.block_size
        if is_prefill:
            ids, pos, smap, tok_slots, lens = [], [], [], [], []
            for seq, slot in zip(seqs, slots):
                n = len(seq)
                ids.extend(seq.tokens)
                pos.extend(range(n))
                table = seq.block_table
                smap.extend(table[p // bs] * bs + p % bs for p in range(n))
                tok_slots.extend([slot] * n)
                lens.append(n)
                seq.num_cached = n
            attn = AttnMeta(True, self._to_dev(smap, torch.long), seq_lens=lens)
            meta = self.prefill_meta.prepare(tok_slots) if use_lora else None
            h = self.model(self._to_dev(ids, torch.long), self._to_dev(pos, torch.long), attn, meta)
            last = torch.tensor(lens).cumsum(0) - 1
            return self.model.logits(h.index_select(0, last.to(self.device)))
        ids = [s.last_token for s in seqs]
        pos = [len(s) - 1 for s in seqs]
        smap = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, pos)]
        width = max(len(s.block_table) for s in seqs)
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
        ctx = [len(s) for s in seqs]
        for s in seqs:
            s.num_cached = len(s)
        if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
            cpu = dict(pin_memory=True)
            return self.graphs.run(torch.tensor(ids, **cpu), torch.tensor(pos, **cpu), torch.tensor(smap, **cpu),
                                   torch.tensor(tables, dtype=torch.int32, **cpu),
                                   torch.tensor(ctx, dtype=torch.int32, **cpu),
                                   list(slots) if use_lora else None, weights_key)
        attn = AttnMeta(False, self._to_dev(smap, torch.long), block_tables=self._to_dev(tables, torch.int32),
                        context_lens=self._to_dev(ctx, torch.int32))
        meta = self.decode_meta.prepare(slots) if use_lora else None
        h = self.model(self._to_dev(ids, torch.long), self._to_dev(pos, torch.long), attn, meta)
        return self.model.logits(h)
