"""LoRAMeta: per-step grouping of tokens by adapter slot, allocated once at its maximum size and refilled."""
from __future__ import annotations

import math

import numpy as np
import torch


class LoRAMeta:
    """Tokens of one step grouped by adapter slot into segments (Punica SGMV / BGMV layout).

    After prepare(token_slots):
      token_indices[:T]           token positions sorted by slot (stable), the num_lora_tokens with an adapter
                                  first, then those with slot -1 (in order; the expand by rows' overwrite zeroes them)
      sorted_slot[:T]             the slot of each token of token_indices (-1 past num_lora_tokens): the expand by
                                  rows reads a row's token and slot together, neighbours sharing an adapter
      seg_start[:num_segments]    offset of each segment into token_indices
      seg_len[:num_segments]      tokens in each segment (0 past num_segments)
      seg_slot[:num_segments]     the adapter slot of each segment
      num_segments / num_lora_tokens / num_tokens  host ints (num_tokens: T, the step's tokens); num_segments_dev
                                  a device scalar for graph replay
      max_seg_len                 host int (longest segment: decides prefill vs decode tiling)
      expand_rows                 host bool: the step's LoRA expands by rows (kernels.lora_expand_rows), by the rule
                                  of use_expand_rows unless prepare is told
      token_slot[:T]              each token's slot in the step's order (-1: none): the joint path's consumers read it
      joint                       host int: 0, or the slots (0..joint-1, a power of two or all of them) whose A rows
                                  ride in the base matmul of the joint path (engines/model/llama.py), by the rule of
                                  use_joint unless prepare is told
    Buffers never change address, so CUDA graphs captured with this object replay after a refill.
    The grouping is computed on the host (the runner knows each sequence's slot) and copied once.
    """

    def __init__(self, max_tokens: int, max_segments: int, device: torch.device | str = "cpu") -> None:
        self.max_tokens = max_tokens
        self.max_segments = max_segments
        self.device = torch.device(device)
        # one device buffer, each field a view at a 16-byte aligned offset, and the same layout on the host: a
        # step's metadata goes to the device in one copy (seg_start, seg_len, seg_slot, the segment count, then
        # sorted_slot and token_indices, the prefix a step fills)
        sizes = {"seg_start": max_segments, "seg_len": max_segments, "seg_slot": max_segments,
                 "num_segments_dev": 1, "sorted_slot": max_tokens, "token_indices": max_tokens,
                 "token_slot": max_tokens}
        self._at, end = {}, 0
        for name, n in sizes.items():
            self._at[name] = end
            end += -(-n // 4) * 4
        self._dev = torch.zeros(end, dtype=torch.int32, device=self.device)
        for name, n in sizes.items():
            setattr(self, name, self._dev[self._at[name]:self._at[name] + n])
        self.seg_slot.fill_(-1)
        self.sorted_slot.fill_(-1)
        self.num_segments = 0
        self.num_lora_tokens = 0
        self.num_tokens = 0
        self.max_seg_len = 0
        self.rows_max_tokens, self.rows_max_per_tile = 0, 0.0  # the expand-by-rows rule (use_expand_rows): never
        self.rows_any_fill = 0
        self.expand_rows = False
        self.joint_max_tokens, self.joint_free_slots, self.joint_ratio = 0, 0, 0.0  # the joint rule: never
        self.joint_min_span, self.joint_others, self.joint_flop_tokens, self.joint_most = 1, False, 0, 0
        self.joint_min_tokens = 1
        self.joint = 0
        self._counters: list[torch.Tensor] = []  # split-K semaphores; old ones stay alive for captured graphs
        # the joint path's consumer kernels count a row's programs in here (each resets its entry after)
        self.joint_counters = torch.zeros(max_tokens, dtype=torch.int32, device=self.device)
        pin = self.device.type == "cuda"
        # two host staging buffers, used in turn: a step's copy may still be queued behind the step before it
        # while the host prepares the next one (engines that overlap host and device work)
        self._hosts = [torch.zeros(end, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self._hosts_np = [h.numpy() for h in self._hosts]  # the same memory, written through numpy
        self._turn = 0

    def use_expand_rows(self, max_tokens: int, max_per_tile: float = math.inf, any_fill: int = 0) -> None:
        """The rule for a step's expand: by rows for steps of up to max_tokens tokens (0: never) whose adapter
        tokens number at most max_per_tile per 16-row tile of the segment expand (a segment of n tokens is
        ceil(n / 16) tiles), and for steps of up to any_fill tokens whatever their fill. Decode over many adapters
        has a token or two a tile, and by rows skips the segment search; a prompt's run of one adapter fills its
        tiles, and there one tensor-core dot covers 16 rows, once the step is long enough that the segment
        kernels' grids (bounded by the segment capacity, not the step's adapters) stop costing more."""
        if max_tokens < 0 or not max_per_tile > 0 or any_fill < 0:
            raise ValueError(f"LoRAMeta.use_expand_rows: max_tokens={max_tokens} and any_fill={any_fill} must be "
                             f">= 0 and max_per_tile={max_per_tile} > 0")
        self.rows_max_tokens, self.rows_max_per_tile = int(max_tokens), float(max_per_tile)
        self.rows_any_fill = int(any_fill)

    def use_joint(self, max_tokens: int, free_slots: int, ratio: float, min_span: int = 1,
                  others: bool = False, flop_tokens: int = 0, most: int = 0, min_tokens: int = 1) -> None:
        """The rule for the joint path (each slot's A rows in the base matmul, the consumer op expanding): steps of
        min_tokens to max_tokens tokens (max_tokens 0: never) whose span of slots (the highest used + 1, rounded up
        to a power of two of at least min_span, at most max_segments) is at most free_slots or at most ratio x the
        step's distinct adapters: the matmul reads the A rows of the whole span, used or not. Past flop_tokens tokens (0: never) the
        span counts as span x tokens / flop_tokens slots (the extra rows cost their FLOPs there), and never more than
        `most` (0: no cap). others: the model has LoRA groups the joint path does not serve (their expand's path
        still matters on joint steps)."""
        if max_tokens < 0 or free_slots < 0 or not ratio >= 0 or min(min_span, min_tokens) < 1 or flop_tokens < 0 \
                or most < 0:
            raise ValueError(f"LoRAMeta.use_joint: max_tokens={max_tokens}, free_slots={free_slots}, ratio={ratio}, "
                             f"flop_tokens={flop_tokens} and most={most} must be >= 0, min_span={min_span} and "
                             f"min_tokens={min_tokens} >= 1")
        self.joint_flop_tokens, self.joint_most, self.joint_min_tokens = int(flop_tokens), int(most), int(min_tokens)
        self.joint_max_tokens, self.joint_free_slots, self.joint_ratio = int(max_tokens), int(free_slots), float(ratio)
        self.joint_min_span, self.joint_others = int(min_span), bool(others)

    def joint_spans(self, tokens: int = 0) -> list[int]:
        """Every span the joint rule can give a step of `tokens` tokens (0: of any size; the CUDA graphs a joint step
        may replay)."""
        out, span = [], self.joint_min_span
        while span < self.max_segments:
            out.append(span)
            span *= 2
        out.append(self.max_segments)
        if not tokens:
            return out
        return [s for s in out if self._joint_fits(s, min(tokens, self.max_segments), tokens)]

    def _joint_fits(self, span: int, distinct: int, tokens: int) -> bool:
        weight = max(1.0, tokens / self.joint_flop_tokens) if self.joint_flop_tokens else 1.0
        counted = span * weight
        return counted <= max(self.joint_free_slots, self.joint_ratio * distinct) and not (
            self.joint_most and counted > self.joint_most)

    def joint_span(self, highest_slot: int, distinct: int, tokens: int = 0) -> int:
        """The joint rule's span for a step of `tokens` tokens whose highest slot and distinct adapters are given (0:
        not joint)."""
        if highest_slot < 0:
            return 0
        span = min(max(self.joint_min_span, 1 << highest_slot.bit_length()), self.max_segments)
        return span if self._joint_fits(span, distinct, tokens) else 0

    def prepare(self, token_slots: list[int] | torch.Tensor, expand_rows: bool | None = None,
                joint: int | None = None) -> "LoRAMeta":
        """Group the step's tokens by slot. token_slots[t] is token t's adapter slot, -1 for none. expand_rows:
        the step's expand path (None: use_expand_rows's rule); joint: its joint span (None: use_joint's rule)."""
        # numpy on the host: these few small arrays cost several times more as torch ops (scripts/host_step_bench.py)
        if isinstance(token_slots, torch.Tensor):
            token_slots = token_slots.detach().cpu().numpy()
        slots = np.asarray(token_slots, dtype=np.int64).reshape(-1)
        n_all = slots.size
        if n_all > self.max_tokens:
            raise ValueError(f"LoRAMeta: {n_all} tokens > max_tokens={self.max_tokens}")
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        none = int(np.searchsorted(sorted_slots, 0))  # the -1 (no adapter) tokens sort first: move them last
        order, sorted_slots = np.concatenate((order[none:], order[:none])), sorted_slots[none:]
        uniq, starts, counts = np.unique(sorted_slots, return_index=True, return_counts=True)  # sorted: in order
        n_seg = int(uniq.size)
        if n_seg > self.max_segments:
            raise ValueError(f"LoRAMeta: {n_seg} distinct slots > max_segments={self.max_segments}")
        n_tok = int(sorted_slots.size)
        host = self._hosts_np[self._turn]
        dev_src = self._hosts[self._turn]
        self._turn ^= 1
        at, ms = self._at, self.max_segments

        def put(name: str, values: np.ndarray, fill: int, size: int) -> None:
            """values into the field's first entries, `fill` up to `size` of them"""
            host[at[name]:at[name] + values.size] = values
            host[at[name] + values.size:at[name] + size] = fill
        put("seg_start", starts, 0, ms)
        put("seg_len", counts, 0, ms)  # kernels may read every seg_len entry without a mask
        put("seg_slot", uniq, -1, ms)
        host[at["num_segments_dev"]] = n_seg
        put("sorted_slot", sorted_slots, -1, n_all)  # -1 past the adapter tokens, up to the step's token count
        put("token_indices", order, 0, n_all)
        put("token_slot", slots, -1, n_all)
        end = at["token_slot"] + n_all
        self._dev[:end].copy_(dev_src[:end], non_blocking=self.device.type == "cuda")
        self.num_segments = n_seg
        self.num_lora_tokens = n_tok
        self.num_tokens = n_all
        self.max_seg_len = int(counts.max()) if n_seg else 0
        if expand_rows is None:
            tiles = int(((counts + 15) // 16).sum()) if 0 < n_all <= self.rows_max_tokens else 0
            expand_rows = tiles > 0 and (n_tok <= self.rows_max_per_tile * tiles or n_all <= self.rows_any_fill)
        self.expand_rows = bool(expand_rows)
        if joint is None:
            joint = (self.joint_span(int(uniq[-1]) if n_seg else -1, n_seg, n_all)
                     if self.joint_min_tokens <= n_all <= self.joint_max_tokens else 0)
        if not 0 <= joint <= self.max_segments:
            raise ValueError(f"LoRAMeta: joint span {joint} outside 0..{self.max_segments}")
        self.joint = int(joint)
        return self

    @property
    def path(self) -> tuple[bool, int]:
        """The step's LoRA path as a CUDA graph bakes it in: (expand by rows, joint span); a joint step expands in the
        consumer ops, so the first is False there unless other LoRA groups expand too (use_joint's others)."""
        return self.expand_rows and (not self.joint or self.joint_others), self.joint

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
