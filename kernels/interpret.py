"""Triton interpreter (TRITON_INTERPRET=1) fix for NumPy >= 2.4, where int() of a 1-element array raises."""
from __future__ import annotations

import os


def patch_interpreter() -> None:
    """Make `range(0, n)` over a runtime scalar work in the interpreter (Triton 3.6 with NumPy >= 2.4).

    The interpreter keeps scalars as 1-element arrays and converts them with int(array), which NumPy 2.4
    turned into a TypeError, so every loop with a runtime bound failed. Idempotent; no effect on GPUs.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import triton.runtime.interpreter as interp

    if getattr(interp._patch_lang_tensor, "_lora_fleet_patched", False):
        return
    original = interp._patch_lang_tensor

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._lora_fleet_patched = True
    interp._patch_lang_tensor = patched


def upcast_bf16_dot() -> bool:
    """True under the interpreter, whose tl.dot on bfloat16 operands returns garbage (Triton 3.6).

    Kernels then widen bfloat16 operands to float32 before tl.dot; every bfloat16 value is exact in
    float32, so the result is the same function. On GPUs the native bfloat16 dot runs.
    """
    return os.environ.get("TRITON_INTERPRET") == "1"
