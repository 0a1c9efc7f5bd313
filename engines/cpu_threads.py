"""Torch threads of a server on the CPU: one core left to the HTTP front end, as vLLM-CPU does by default."""
from __future__ import annotations

import os


def serving_threads(cores: int | None = None) -> int:
    """Intra-op threads for an engine that serves on the CPU: all usable cores but one (at least one).

    The event loop that streams tokens and, on a load machine, the load generator need a core; torch's
    threads spinning on every core beside them made a 2-core machine 9x slower (161 vs 1,459 tokens/s,
    docs/peers.md).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def limit_for_serving(device: str) -> int | None:
    """On the CPU, unless OMP_NUM_THREADS says otherwise, set torch's threads to serving_threads(); the count set."""
    if not device.startswith("cpu") or "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    n = serving_threads()
    torch.set_num_threads(n)
    return n
