"""Scheduling policies: which adapters one step may serve (all mixed, or one at a time in rotation)."""
from __future__ import annotations

from typing import Callable, Iterable

from engines.multilora.sequence import Sequence, SeqStatus

ANY = object()  # a target that admits every adapter
_NOTHING = object()  # no adapter served yet


class MixedAdapters:
    """Multi-LoRA: one step serves any mix of adapters (and the base model)."""

    def targets(self, seqs: Iterable[Sequence], ready: Callable[[str | None], bool]) -> list[object]:
        return [ANY]

    def admits(self, seq: Sequence, target: object) -> bool:
        return True

    def served(self, target: object) -> None:
        pass


class OneAdapterPerStep:
    """The merged baseline: a step serves one adapter (one weight copy); steps rotate round-robin over
    the adapters with a running or a ready waiting sequence, the one after the last served first."""

    def __init__(self) -> None:
        self._last: object = _NOTHING

    def targets(self, seqs: Iterable[Sequence], ready: Callable[[str | None], bool]) -> list[object]:
        order: list[str | None] = []
        for s in seqs:
            if s.adapter not in order and (s.status is SeqStatus.RUNNING or ready(s.adapter)):
                order.append(s.adapter)
        order.sort(key=lambda a: "" if a is None else "\x00" + a)
        if self._last in order:
            i = order.index(self._last) + 1
            order = order[i:] + order[:i]
        return order

    def admits(self, seq: Sequence, target: object) -> bool:
        return seq.adapter == target

    def served(self, target: object) -> None:
        self._last = target
