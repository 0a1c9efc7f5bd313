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
without the launch option). Elsewhere LORA_FLEET_PDL=1/0 asks for it or not, else DEFAULT; the engine's extra `pdl`
sets it for the process (one switch: CUDA graphs keep what they were captured with)."""
from __future__ import annotations

import functools
import os

import torch

ENV = "LORA_FLEET_PDL"
# Off: on the H200 it took two points off the LoRA tax at 64 tokens and none at 1 and 256, where the base step read
# 1.9% slower (run 12), and it is not yet measured with run 13's tuned configs. The illegal address that first kept
# it off was not PDL's: the decode graphs' capture (run 13, engines/multilora/cuda_graphs.py)
DEFAULT = False
_wanted = DEFAULT if os.environ.get(ENV, "").strip() == "" else \
    os.environ[ENV].strip().lower() not in ("0", "false", "off", "no")


def set_enabled(on: bool) -> None:
    """Use PDL from the next launch on (graphs captured before keep what they were captured with)."""
    global _wanted
    _wanted = bool(on)


def enabled() -> bool:
    """Asked for (by the environment or set_enabled); launches still go plainly where PDL is not supported."""
    return _wanted


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


def use(device: torch.device) -> bool:
    """Launch a kernel on this device with PDL (USE_GDC=True, launch_pdl=True)?"""
    return _wanted and supported(device)


def launch_options(on: bool) -> dict:
    """The launch keywords: the kernel's USE_GDC constant, and launch_pdl only when on (the interpreter and older
    Tritons take no such option)."""
    return {"USE_GDC": True, "launch_pdl": True} if on else {"USE_GDC": False}
