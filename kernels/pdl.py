"""Programmatic dependent launch (PDL; Hopper and later) for the decode step's own Triton kernels.

A kernel launched with PDL may be scheduled while the kernel before it in the stream still runs (once every program
of that one has called `griddepcontrol.launch_dependents`, or has exited). Its programs first do the work that
depends on nothing the step writes (metadata, adapter and norm weights: loads that would otherwise start only
after the launch gap), then `griddepcontrol.wait` until the kernel before has finished and its writes are
visible, then the rest. On the H200 (docs/performance.md, run 12) that took about 0.1 ms off a LoRA decode step of
64 tokens (~0.8 µs a LoRA kernel) and nothing measurable at 1 or 256 tokens.

The rules every kernel here keeps when it is launched with PDL (`tests/test_kernels_pdl.py` checks them on the
compiled code):
- every program calls the wait, unconditionally, and stores nothing before it. The wait returns only when the
  kernel before has completed, and that one waited for its own predecessor, so a kernel's completion still
  implies that of everything before it in the stream (a cuBLAS kernel, launched plainly, waits for all of it);
- before the wait it reads only what no kernel of the step writes: weights, adapter slots, step metadata.
- it calls `launch_dependents` first thing, so the next kernel's programs can take free multiprocessors as soon
  as all of this kernel's programs are resident.

Never used where it cannot work (the CPU, the Triton interpreter, GPUs before compute capability 9.0, a Triton
without the launch option), nor for calls of more than the switch's token count (MAX_TOKENS by default): on the H200
the base step of 256 tokens read 1.9% slower with it in runs 12 and 14, those of 1 and 64 tokens faster. Elsewhere
LORA_FLEET_PDL asks for it (1/on: calls of up to MAX_TOKENS tokens; all: every call; N: calls of up to N tokens) or
not (0/off), else DEFAULT; the engine's extra `pdl` sets it for the process (one switch: CUDA graphs keep what they
were captured with)."""
from __future__ import annotations

import functools
import os
import warnings

import torch

ENV = "LORA_FLEET_PDL"
# On, for calls of up to 64 tokens. H200, run 14 (docs/performance.md; harness profile, 3 rounds, pipelined step, one
# machine): with PDL the step read 1.5% faster at 1 token with no adapter, 0.8% at 64 tokens over 64 adapters (LoRA
# tax +14.5% -> +12.9%) and 1.3% over one (+11.0% -> +8.9%); at 256 tokens the base step read 1.9% slower (as in
# run 12), 256 x 256 0.9% slower
DEFAULT = True
MAX_TOKENS = 64
ALL = 1 << 62  # a token count no call reaches: every call


def _parse(value: str) -> int:
    """LORA_FLEET_PDL's value as the largest call (tokens) launched with PDL; 0: none. A value that is none of
    these warns and gives the default: a tuning switch read at import should not stop a server from starting."""
    v = value.strip().lower()
    default = MAX_TOKENS if DEFAULT else 0
    if v == "":
        return default
    if v in ("0", "false", "off", "no"):
        return 0
    if v in ("1", "true", "on", "yes"):
        return MAX_TOKENS
    if v == "all":
        return ALL
    if v.isdigit():
        return int(v)
    warnings.warn(f"{ENV}={value!r} is not on, off, all or a token count: PDL "
                  f"{'for calls of up to ' + str(default) + ' tokens' if default else 'off'} (the default)",
                  stacklevel=2)
    return default


_max_tokens = _parse(os.environ.get(ENV, ""))


def set_max_tokens(n: int) -> None:
    """The largest call (tokens) launched with PDL from the next launch on: MAX_TOKENS (the default rule), ALL
    (every call), 0 (none) or any count (max_tokens() reads it back; graphs captured before keep what they were
    captured with)."""
    global _max_tokens
    if n < 0:
        raise ValueError(f"pdl.set_max_tokens: {n} must be >= 0")
    _max_tokens = int(n)


def max_tokens() -> int:
    """The largest call (tokens) launched with PDL where it is supported; 0: none."""
    return _max_tokens


@functools.cache
def _triton_has_pdl() -> bool:
    try:
        import dataclasses

        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return any(f.name == "launch_pdl" for f in dataclasses.fields(CUDAOptions))


@functools.cache
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def supported(device: torch.device) -> bool:
    """PDL can launch on this device: CUDA, compute capability >= 9.0, compiled kernels, Triton with the option."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or not _triton_has_pdl():
        return False
    return _capability_major(device.index if device.index is not None else torch.cuda.current_device()) >= 9


def use(device: torch.device, tokens: int) -> bool:
    """Launch a kernel of a call of this many tokens on this device with PDL (USE_GDC=True, launch_pdl=True)?"""
    return 0 < tokens <= _max_tokens and supported(device)


def in_effect(device: torch.device) -> int:
    """The largest call (tokens) whose kernels launch with PDL on this device; 0: none."""
    return _max_tokens if supported(device) else 0


def describe(device: torch.device) -> str:
    n = in_effect(device)
    return "off" if n == 0 else "on for every call" if n >= ALL else f"on for calls of up to {n} tokens"


def launch_options(on: bool) -> dict:
    """The launch keywords: the kernel's USE_GDC constant, and launch_pdl only when on (the interpreter and older
    Tritons take no such option)."""
    return {"USE_GDC": True, "launch_pdl": True} if on else {"USE_GDC": False}
