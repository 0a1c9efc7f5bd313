"""LoRAAdapter: one adapter's rank, scaling and per-layer A/B matrices on the CPU, as engines consume it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRAAdapter:
    """A LoRA adapter in memory: y = W x + scaling * B (A x) for every (layer, module) in `weights`.

    weights maps (layer index, module name) -> (A [rank, in_features], B [out_features, rank]).
    Per-module ranks and alphas of a PEFT rank_pattern / alpha_pattern are already folded in:
    smaller ranks are zero-padded up to `rank` and per-module scalings multiplied into B, so one
    `scaling` holds for every module.
    """

    name: str
    path: str
    rank: int
    alpha: float
    scaling: float  # alpha / rank of the config, or alpha / sqrt(rank) with use_rslora
    targets: tuple[str, ...]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def loaded(self) -> bool:
        """False for an adapter described from its file header (inspect_adapter): meta tensors, no values."""
        return not any(a.is_meta or b.is_meta for a, b in self.weights.values())

    def nbytes(self) -> int:
        """Bytes of all A and B matrices (what a host or device copy of the adapter costs)."""
        return sum(a.nelement() * a.element_size() + b.nelement() * b.element_size()
                   for a, b in self.weights.values())

    def layers(self) -> tuple[int, ...]:
        """Layer indices that carry at least one LoRA pair, ascending."""
        return tuple(sorted({layer for layer, _ in self.weights}))

    def delta(self, layer: int, module: str) -> torch.Tensor:
        """scaling * B @ A [out_features, in_features] in at least float32: the weight change to merge."""
        key = (layer, module)
        if key not in self.weights:
            raise KeyError(f"adapter {self.name!r} has no LoRA weights for layer {layer} {module}; "
                           f"it targets {list(self.targets)} on layers {list(self.layers())}")
        a, b = self.weights[key]
        dtype = torch.promote_types(a.dtype, torch.float32)
        return self.scaling * (b.to(dtype) @ a.to(dtype))
