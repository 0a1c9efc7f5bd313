"""LoRAMeta: per-step grouping of tokens by adapter slot, allocated once at its maximum size and refilled."""
from __future__ import annotations

import torch


class LoRAMeta:
    """Tokens of one step grouped by adapter slot into segments (Punica SGMV / BGMV layout).

    After prepare(token_slots):
      token_indices[:num_tokens]  token positions sorted by slot (stable); tokens with slot -1 are left out
      sorted_slot[:T]             the slot of each token of token_indices (-1 past num_tokens): the expand by
                                  rows reads a row's token and slot together, neighbours sharing an adapter
      seg_start[:num_segments]    offset of each segment into token_indices
      seg_len[:num_segments]      tokens in each segment (0 past num_segments)
      seg_slot[:num_segments]     the adapter slot of each segment
      num_segments / num_lora_tokens  host ints; num_segments_dev a device scalar for graph replay
      max_seg_len                 host int (longest segment: decides prefill vs decode tiling)
    Buffers never change address, so CUDA graphs captured with this object replay after a refill.
    The grouping is computed on the host (the runner knows each sequence's slot) and copied once.
    """

    def __init__(self, max_tokens: int, max_segments: int, device: torch.device | str = "cpu") -> None:
        self.max_tokens = max_tokens
        self.max_segments = max_segments
        self.device = torch.device(device)
        i32 = dict(dtype=torch.int32, device=self.device)
        self.token_indices = torch.zeros(max_tokens, **i32)
        self.sorted_slot = torch.full((max_tokens,), -1, **i32)
        self.seg_start = torch.zeros(max_segments, **i32)
        self.seg_len = torch.zeros(max_segments, **i32)
        self.seg_slot = torch.full((max_segments,), -1, **i32)
        self.num_segments_dev = torch.zeros(1, **i32)
        self.num_segments = 0
        self.num_lora_tokens = 0
        self.max_seg_len = 0
        self._counters: list[torch.Tensor] = []  # split-K semaphores; old ones stay alive for captured graphs
        pin = self.device.type == "cuda"
        # two host staging buffers, used in turn: a step's copies may still be queued behind the step before it
        # while the host prepares the next one (engines that overlap host and device work)
        self._hosts = [torch.zeros(2 * max_tokens + 3 * max_segments + 1, dtype=torch.int32, pin_memory=pin)
                       for _ in range(2)]
        self._turn = 0

    def prepare(self, token_slots: list[int] | torch.Tensor) -> "LoRAMeta":
        """Group the step's tokens by slot. token_slots[t] is token t's adapter slot, -1 for none."""
        slots = torch.as_tensor(token_slots, dtype=torch.int64, device="cpu").flatten()
        if slots.numel() > self.max_tokens:
            raise ValueError(f"LoRAMeta: {slots.numel()} tokens > max_tokens={self.max_tokens}")
        order = torch.argsort(slots, stable=True)
        sorted_slots = slots[order]
        keep = sorted_slots >= 0
        order, sorted_slots = order[keep], sorted_slots[keep]
        uniq, counts = torch.unique_consecutive(sorted_slots, return_counts=True)
        n_seg = int(uniq.numel())
        if n_seg > self.max_segments:
            raise ValueError(f"LoRAMeta: {n_seg} distinct slots > max_segments={self.max_segments}")
        starts = torch.cumsum(counts, 0) - counts
        n_tok = int(order.numel())
        host = self._hosts[self._turn]
        self._turn ^= 1
        mt, ms = self.max_tokens, self.max_segments
        host[:n_tok] = order.to(torch.int32)
        host[mt:mt + n_seg] = starts.to(torch.int32)
        host[mt + ms:mt + ms + n_seg] = counts.to(torch.int32)
        host[mt + 2 * ms:mt + 2 * ms + n_seg] = uniq.to(torch.int32)
        host[mt + ms + n_seg:mt + 2 * ms] = 0  # kernels may read every seg_len entry without a mask
        host[mt + 2 * ms + n_seg:mt + 3 * ms] = -1
        host[mt + 3 * ms] = n_seg
        tail, n_all = mt + 3 * ms + 1, slots.numel()  # then the slots of token_indices' tokens, -1 past them
        host[tail:tail + n_tok] = sorted_slots.to(torch.int32)
        host[tail + n_tok:tail + n_all] = -1
        nb = self.device.type == "cuda"
        self.token_indices[:n_tok].copy_(host[:n_tok], non_blocking=nb)
        self.seg_start.copy_(host[mt:mt + ms], non_blocking=nb)
        self.seg_len.copy_(host[mt + ms:mt + 2 * ms], non_blocking=nb)
        self.seg_slot.copy_(host[mt + 2 * ms:mt + 3 * ms], non_blocking=nb)
        self.num_segments_dev.copy_(host[mt + 3 * ms:mt + 3 * ms + 1], non_blocking=nb)
        self.sorted_slot[:n_all].copy_(host[tail:tail + n_all], non_blocking=nb)
        self.num_segments = n_seg
        self.num_lora_tokens = n_tok
        self.max_seg_len = int(counts.max()) if n_seg else 0
        return self

    def counters(self, n: int) -> torch.Tensor:
        """Zeroed int32 semaphores (at least n) on the meta's device, kept for the object's lifetime.

        Split-K kernels count arriving programs in them and put each one back to 0, so they stay zero
        between launches; a larger request allocates a new tensor and keeps the old one (a captured
        CUDA graph may still point at it).
        """
        for t in self._counters:
            if t.numel() >= n:
                return t
        t = torch.zeros(max(n, 256), dtype=torch.int32, device=self.device)
        self._counters.append(t)
        return t

    def segments(self):
        """(start, length, slot) of each segment, read on the host; for references and tests."""
        s = self.seg_start[: self.num_segments].tolist()
        n = self.seg_len[: self.num_segments].tolist()
        k = self.seg_slot[: self.num_segments].tolist()
        return list(zip(s, n, k))
