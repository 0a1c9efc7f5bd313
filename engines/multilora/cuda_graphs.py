"""DecodeGraphs: one CUDA graph per decode batch-size bucket (with and without LoRA), static input buffers, one shared pool."""
from __future__ import annotations

import bisect

import torch

from engines.model.llama import AttnMeta, Transformer
from kernels.meta import LoRAMeta

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def buckets_up_to(max_batch: int) -> list[int]:
    out = [b for b in BUCKETS if b < max_batch]
    out += list(range(BUCKETS[-1] + 64, max_batch, 64)) if max_batch > BUCKETS[-1] else []
    return out + [max_batch]


class DecodeGraphs:
    """Decode steps replayed from graphs. Inputs are copied into static buffers (padded rows write to
    the scratch KV block 0 and belong to no adapter); the LoRA metadata lives in a LoRAMeta whose
    buffers the captured kernels read, so new adapter mixes replay the same graph.

    Graphs are captured on first use per (bucket, with_lora, path, weights_key); path is the step's LoRA path
    (LoRAMeta.path: by rows or by segments by use_expand_rows's rule, and the joint span by use_joint's, baked into
    the graph), weights_key names the set of weights the graph reads (the merged baseline captures one set per
    resident copy).
    """

    def __init__(self, model: Transformer, max_batch: int, max_blocks: int, lora_slots: int,
                 device: torch.device) -> None:
        self.model = model
        # One stream warms up and captures every graph. With a fresh torch.cuda.Stream() per capture (the 32 that
        # PyTorch hands out in turn) a graph replay hit an illegal address on the H200 whenever the LoRA side stream
        # was on and another Triton kernel had run in the process before the engine (scripts/graph_crash_probe.py,
        # docs/performance.md run 13); graphs each in a pool of their own, or this one stream, removed it. PyTorch
        # keys cuBLAS workspaces by stream: this stream's is made by its first warm-up, outside every graph's pool.
        self.capture_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.buckets = buckets_up_to(max_batch)
        self.max_batch = self.buckets[-1]
        i64, i32 = dict(dtype=torch.long, device=device), dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(self.max_batch, **i64)
        self.positions = torch.zeros(self.max_batch, **i64)
        self.slot_mapping = torch.zeros(self.max_batch, **i64)
        self.block_tables = torch.zeros(self.max_batch, max_blocks, **i32)
        self.context_lens = torch.ones(self.max_batch, **i32)
        self.meta = LoRAMeta(self.max_batch, max(1, lora_slots), device)
        self.pool = None
        self.graphs: dict[tuple[int, bool, tuple, object], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def bucket(self, n: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def _forward(self, b: int, with_lora: bool) -> torch.Tensor:
        attn = AttnMeta(False, self.slot_mapping[:b], block_tables=self.block_tables[:b],
                        context_lens=self.context_lens[:b])
        h = self.model(self.input_ids[:b], self.positions[:b], attn, self.meta if with_lora else None)
        return self.model.logits(h)

    def capture(self, b: int, with_lora: bool, weights_key: object = None, path: tuple[bool, int] = (False, 0)) -> None:
        path = path if with_lora else (False, 0)
        key = (b, with_lora, path, weights_key)
        if key in self.graphs:
            return
        self.context_lens[:b].fill_(1)
        self.slot_mapping[:b].zero_()
        self.block_tables[:b].zero_()
        if with_lora:
            self.meta.prepare([-1] * b, expand_rows=path[0], joint=path[1])
        s = self.capture_stream
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._forward(b, with_lora)  # warm-up: Triton compiles and autotunes outside the capture
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool, stream=s):
            out = self._forward(b, with_lora)
        if self.pool is None:
            self.pool = g.pool()
        self.graphs[key] = (g, out)
        torch.cuda.synchronize()

    def capture_all(self, with_lora: bool, weights_key: object = None) -> None:
        """Every bucket's graph; with LoRA, also the by-rows graph of every bucket the expand-by-rows rule can pick
        and the joint graph of every span the joint rule can, so no step captures while serving."""
        for b in reversed(self.buckets):  # largest first: smaller graphs reuse its pool memory
            for path in (self.paths(b) if with_lora else [(False, 0)]):
                self.capture(b, with_lora, weights_key, path)

    def paths(self, b: int) -> list[tuple[bool, int]]:
        """The LoRA paths (LoRAMeta.path) a step of bucket b can take under the meta's rules."""
        m = self.meta
        rows = [False] + ([True] if 0 < b <= m.rows_max_tokens else [])
        spans = m.joint_spans(b) if m.joint_min_tokens <= b <= m.joint_max_tokens else []
        return ([(r, 0) for r in rows]
                + list(dict.fromkeys((r and m.joint_others, j) for j in spans for r in rows)))

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_tables: torch.Tensor, context_lens: torch.Tensor, token_slots: list[int] | None,
            weights_key: object = None, patch=None) -> torch.Tensor:
        """Host-built decode inputs for n sequences -> logits (n, V). patch(ids), if given, rewrites device
        ids before the replay (tokens the previous step sampled and the host has not read)."""
        n = input_ids.shape[0]
        b = self.bucket(n)
        with_lora, path = token_slots is not None, (False, 0)
        if with_lora:  # the step's LoRA path (the rules of LoRAMeta.use_expand_rows and use_joint) picks its graph
            meta = self.meta.prepare(token_slots + [-1] * (b - n))
            path = meta.path
            if (b, True, path, weights_key) not in self.graphs:
                rows, joint = meta.expand_rows, meta.joint
                self.capture(b, True, weights_key, path)  # captures with blank metadata: refill after
                self.meta.prepare(token_slots + [-1] * (b - n), expand_rows=rows, joint=joint)
        else:
            self.capture(b, False, weights_key)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        if patch is not None:
            patch(self.input_ids[:n])
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        self.slot_mapping[n:b].zero_()
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        self.context_lens[:n].copy_(context_lens, non_blocking=True)
        self.context_lens[n:b].fill_(1)
        g, out = self.graphs[(b, with_lora, path, weights_key)]
        g.replay()
        return out[:n]
