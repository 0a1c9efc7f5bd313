"""Which library runs the base model's matrix products in a forward pass: cuBLASLt for passes of up to `max_tokens()`
tokens, the process's own choice (torch's default, or TORCH_BLAS_PREFER_CUBLASLT) above.

torch reads its preferred BLAS library when a matmul is launched or captured into a CUDA graph, so the model sets it
at the start of each forward pass (`select`) and a captured graph keeps the library it was captured with. One
setting for the process, as torch's is; the engine's extra `cublaslt` sets it.

H200, run 16 (docs/performance.md; harness profile, 3 rounds, pipelined step, profiles without and with it in turn
on one machine): the base step of 64 tokens 5.83 against 6.04 ms, of 96 tokens 6.67-6.70 against 6.93-6.95, a LoRA
step of 64 tokens over 64 adapters 6.43-6.47 against 6.70-6.73 ms; at 16 tokens 0.04 ms slower (5.14-5.16 against
5.10-5.12), at 1 token level (4.49 against 4.48 ms; 4.55-4.57 against 4.55 on another machine).
`python -m engines.model.blas_bench` times each matmul both ways: cuBLASLt wins mostly on o and down at 32-96
tokens; at 128-512 tokens the two are level within 1%, so passes above 96 tokens keep torch's choice. torch prints
once a process that its preferred-library setting is experimental.
"""
from __future__ import annotations

import torch

MAX_TOKENS = 96  # the default: passes of up to this many tokens go through cuBLASLt
ALL = 1 << 62  # a token count no pass reaches: every pass

_max_tokens = MAX_TOKENS
_own = None  # the process's preferred library, read at the first select on CUDA
_now = None  # the library select last set


def set_max_tokens(n: int) -> None:
    """Passes of up to n tokens go through cuBLASLt from the next forward pass on: MAX_TOKENS (the default rule),
    ALL (every pass) or 0 (none; the process's own choice). Graphs captured before keep what they were captured
    with."""
    global _max_tokens
    if n < 0:
        raise ValueError(f"blas.set_max_tokens: {n} must be >= 0")
    _max_tokens = int(n)


def max_tokens() -> int:
    return _max_tokens


def _applies(device: torch.device) -> bool:
    return device.type == "cuda" and torch.version.cuda is not None


def in_effect(device: torch.device) -> int:
    """The largest pass (tokens) whose base matmuls go through cuBLASLt on this device; 0: none."""
    return _max_tokens if _applies(device) else 0


def describe(device: torch.device) -> str:
    if not _applies(device):
        return f"torch's own on {device.type} (the switch applies to CUDA only)"
    n = _max_tokens
    return ("the process's own (cuBLAS unless TORCH_BLAS_PREFER_CUBLASLT=1)" if n == 0 else
            "cuBLASLt for every pass" if n >= ALL else f"cuBLASLt for passes of up to {n} tokens, the process's own above")


def library(tokens: int) -> str | None:
    """"cublaslt" where a pass of `tokens` tokens takes it, else None (the process's own choice)."""
    return "cublaslt" if tokens <= _max_tokens else None


def select(device: torch.device, tokens: int) -> None:
    """Set torch's preferred BLAS library for a forward pass of `tokens` tokens on `device` (CUDA builds only)."""
    global _own, _now
    if not _applies(device):
        return
    if _own is None:
        _own = torch.backends.cuda.preferred_blas_library()
    want = library(tokens) or _own
    if want != _now:  # one torch call only when the library changes
        torch.backends.cuda.preferred_blas_library(want)
        _now = want
