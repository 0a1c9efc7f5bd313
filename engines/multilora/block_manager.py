"""BlockManager: hands out fixed-size KV-cache blocks to sequences and takes them back (no torch)."""
from __future__ import annotations

from collections import deque

from engines.multilora.sequence import Sequence


class BlockManager:
    """Blocks are numbered first_block .. first_block + num_blocks - 1 (the runner keeps block 0 as a
    scratch block that padded graph slots write to). No prefix sharing: each block has one owner."""

    def __init__(self, num_blocks: int, block_size: int, first_block: int = 1) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"block manager: num_blocks={num_blocks} and block_size={block_size} must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(first_block, first_block + num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        return self.blocks_for(len(seq)) - len(seq.block_table) <= self.num_free

    def allocate(self, seq: Sequence) -> None:
        """Blocks for every token of the sequence (a prefill, or the recompute of a preempted one)."""
        need = self.blocks_for(len(seq)) - len(seq.block_table)
        if need > self.num_free:
            raise RuntimeError(f"block manager: {seq.seq_id} needs {need} blocks, {self.num_free} free")
        seq.block_table.extend(self.free_blocks.popleft() for _ in range(need))

    def can_append(self, seq: Sequence) -> bool:
        """Room for the token the next decode step writes (at position len(seq) - 1)."""
        return len(seq.block_table) * self.block_size >= len(seq) or self.num_free > 0

    def append(self, seq: Sequence) -> None:
        if len(seq.block_table) * self.block_size < len(seq):
            if not self.free_blocks:
                raise RuntimeError(f"block manager: no free block for {seq.seq_id}; call can_append first")
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
        seq.num_cached = 0
