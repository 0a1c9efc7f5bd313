"""EngineConfig: the one typed source of truth for how an in-process engine is built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


DEFAULT_SLOT_RANK = 64  # slots' rank of an engine that starts without adapters and is not given max_lora_rank


def slot_rank(ranks) -> int:
    """max_lora_rank left unset: the largest of the start adapters' ranks, rounded up to a power of two of at
    least 16 (the LoRA kernels' rank tile), else DEFAULT_SLOT_RANK. Slots padded far past the adapters' rank
    cost device memory and kernel time: on the H200, 30 rank-8 adapters served 11% more tokens/s from rank-16
    slots than from rank-64 ones (docs/performance.md, run 10)."""
    top = max(ranks, default=0)
    return DEFAULT_SLOT_RANK if top < 1 else max(16, 1 << (int(top) - 1).bit_length())


@dataclass
class EngineConfig:
    engine: str = "multilora"  # registry name: multilora | merged | peft
    model: str = "tiny"  # preset name or a local Hugging Face checkpoint folder
    adapters: str | None = None  # folder whose sub-folders are PEFT adapters (registered by folder name)
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    seed: int = 0  # seed of a preset's random weights
    max_num_seqs: int = 256  # sequences per step
    max_num_batched_tokens: int = 8192  # tokens per step (prefill chunks + decode)
    max_model_len: int = 4096  # capped by the model's own limit
    max_loras: int = 64  # distinct adapters in one step
    max_lora_rank: int | None = None  # adapter slots' rank; None: sized from the adapters at start (slot_rank)
    gpu_slots: int = 64  # adapter slots on the device (multilora)
    host_adapter_capacity: int | None = None  # adapters kept in pinned host memory (None: all that fit in 1/4 of RAM)
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # None: sized from kv_cache_memory_fraction (cuda) or 2048 (cpu)
    gpu_memory_utilization: float = 0.85
    cuda_graphs: bool = True
    merged_copies: int | None = None  # merged: copies kept on the device (None: as many as fit)
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific knobs, validated by the engine

    def __post_init__(self) -> None:
        positive = ["max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_loras",
                    "max_lora_rank", "gpu_slots", "block_size"]
        for name in positive:
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"engine config: {name}={getattr(self, name)!r} must be >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"engine config: gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"engine config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if self.dtype not in table:
            raise ValueError(f"engine config: dtype={self.dtype!r}; use one of {sorted(table)} or auto")
        return table[self.dtype]
