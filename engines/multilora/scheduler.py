"""Scheduler: iteration-level batching (mixed prefill + decode steps, or separate ones) with limits on sequences, tokens and distinct adapters, and recompute preemption (no torch)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from engines.multilora.block_manager import BlockManager
from engines.multilora.policy import MixedAdapters
from engines.multilora.sequence import Sequence, SeqStatus


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256  # running sequences (and sequences in one step)
    max_num_batched_tokens: int = 8192  # prompt tokens in one prefill step (separate steps)
    max_loras: int = 64  # distinct adapters (not counting the base model) among the running sequences
    mixed_steps: bool = True  # a step decodes the running sequences and prefills newly admitted ones
    step_tokens: int = 2048  # token budget of a mixed step (decode tokens count 1 each)


@dataclass
class Batch:
    """One step: a decode token for each of `decode` and the whole prompt (plus any generated tokens, for a
    recompute) of each of `prefill`; one kind only when steps are not mixed."""

    decode: list[Sequence] = field(default_factory=list)
    prefill: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # sent back to the queue by this schedule()

    @property
    def seqs(self) -> list[Sequence]:
        """Decode sequences first, then prefills: the order of the runner's logits rows."""
        return self.decode + self.prefill

    @property
    def is_prefill(self) -> bool:
        return not self.decode

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(len(s) for s in self.prefill)


class Scheduler:
    """Mixed steps (the default, Sarathi / vLLM v1 style): each step decodes one token for every running
    sequence and prefills the waiting ones admitted now, in arrival order, while decode tokens plus prompt
    tokens stay within `step_tokens` (the first prompt of a step is admitted even past it, so a long prompt
    is never starved; there is no chunking). A step that had to preempt admits nothing. With
    `mixed_steps=False` a step is a prefill of newly admitted sequences if any can be admitted (up to
    `max_num_batched_tokens` prompt tokens), else one decode token for every running sequence.

    A waiting sequence is admitted when its adapter is ready (`ready(name)`; None is the base model), the
    KV blocks for all its tokens are free, and the limits hold; one that is not ready is skipped, not
    waited on, so a cold adapter never holds up the others. When a decode step finds no free block, the
    most recently admitted sequence is preempted: its blocks are freed and it is recomputed later.
    The policy (engines.multilora.policy) decides which adapters a step may serve: any mix (multilora)
    or one at a time in rotation (the merged baseline).
    """

    def __init__(self, config: SchedulerConfig, blocks: BlockManager, policy=None) -> None:
        self.config = config
        self.blocks = blocks
        self.policy = policy or MixedAdapters()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- queue ----------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, seq_id: str) -> Sequence | None:
        for s in (*self.running, *self.waiting):
            if s.seq_id == seq_id:
                return s
        return None

    def remove(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out (finished or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason

    def waiting_adapters(self) -> list[str | None]:
        """Adapters of waiting sequences, each once, in queue order (the order loads should start in)."""
        seen: dict[str | None, None] = {}
        for s in self.waiting:
            seen.setdefault(s.adapter, None)
        return list(seen)

    # ---- one step -------------------------------------------------------------------------------
    def schedule(self, ready: Callable[[str | None], bool]) -> Batch | None:
        for target in self.policy.targets((*self.running, *self.waiting), ready):
            if self.config.mixed_steps:
                batch = self._mixed(ready, target)
            else:
                prefill = self._admit(ready, target, self.config.max_num_batched_tokens)
                batch = Batch(prefill=prefill) if prefill else self._decode(target)
            if batch is not None:
                self.policy.served(target)
                return batch
        return None

    def _mixed(self, ready, target) -> Batch | None:
        batch = self._decode(target) or Batch()
        if not batch.preempted:
            batch.prefill = self._admit(ready, target, self.config.step_tokens - len(batch.decode))
        return batch if batch.decode or batch.prefill or batch.preempted else None

    def _admit(self, ready, target, budget: int) -> list[Sequence]:
        """Waiting sequences admitted now (blocks allocated, moved to running) within `budget` tokens; the
        first one is admitted past the budget."""
        cfg = self.config
        adapters = {s.adapter for s in self.running if s.adapter is not None}  # the base model takes no slot
        chosen: list[Sequence] = []
        tokens = 0
        for seq in list(self.waiting):
            if len(self.running) + len(chosen) >= cfg.max_num_seqs:
                break
            if not self.policy.admits(seq, target):
                continue
            if not ready(seq.adapter):
                continue
            if seq.adapter is not None and seq.adapter not in adapters and len(adapters) >= cfg.max_loras:
                continue
            if chosen and tokens + len(seq) > budget:
                break  # keep arrival order for the token budget: the next step takes it
            if not self.blocks.can_allocate(seq):
                break
            self.blocks.allocate(seq)
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            if seq.adapter is not None:
                adapters.add(seq.adapter)
            chosen.append(seq)
            tokens += len(seq)
        self.running.extend(chosen)
        return chosen

    def _decode(self, target) -> Batch | None:
        pool = [s for s in self.running if self.policy.admits(s, target)]
        chosen: list[Sequence] = []
        preempted: list[Sequence] = []
        for seq in pool[: self.config.max_num_seqs]:
            if seq.status is not SeqStatus.RUNNING or seq.final:
                continue  # preempted earlier in this loop, or its token in flight ends it
            while not self.blocks.can_append(seq):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SeqStatus.RUNNING:
                self.blocks.append(seq)
                chosen.append(seq)
        if not chosen and not preempted:
            return None
        return Batch(decode=chosen, preempted=preempted)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SeqStatus.WAITING
        seq.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
