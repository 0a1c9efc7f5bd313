"""Test-only engine for the gate's end-to-end test: multilora whose every step takes SLOWDOWN times as long.

The injected regression is relative (each step then waits SLOWDOWN - 1 times its own duration), so it cuts
throughput to about 1/SLOWDOWN whatever the speed of the machine or how busy it is. Served through
`harness run --engine '{"name": "tests.gate_slow_engine:SlowMultiLoRA", "label": "multilora", ...}'`."""
from __future__ import annotations

import time

from engines.multilora.engine import MultiLoRAEngine

SLOWDOWN = 4.0


class SlowMultiLoRA(MultiLoRAEngine):
    def step(self):
        t0 = time.perf_counter()
        out = super().step()
        time.sleep((SLOWDOWN - 1.0) * (time.perf_counter() - t0))
        return out
