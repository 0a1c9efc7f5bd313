"""Sequence: one request's tokens, blocks and status as the scheduler sees it (no torch)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engines.base import SamplingParams


PENDING = -1  # an output token sampled on the device that the host has not read yet


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: str
    prompt_ids: list[int]
    adapter: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    num_cached: int = 0  # tokens whose K/V are in the cache
    preemptions: int = 0
    finish_reason: str | None = None
    final: bool = False  # its token in flight is its last whatever it is (max_tokens, max_model_len)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.output_ids)
