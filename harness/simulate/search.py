"""The smallest replica count R whose simulated SLO attainment reaches a target, for each routing policy."""
from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from harness.simulate.fleet import simulate
from harness.simulate.model import ServiceModel
from harness.simulate.summary import summarize_fleet


def smallest_replicas(attains: Callable[[int], bool], start: int, limit: int) -> int | None:
    """Smallest R in [1, limit] with attains(R), assuming attainment grows with R: double up, then bisect."""
    lo, hi = 0, max(1, start)  # attains(lo) is false (or lo = 0), attains(hi) unknown
    while not attains(hi):
        lo = hi
        if hi >= limit:
            return None
        hi = min(limit, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attains(mid):
            hi = mid
        else:
            lo = mid
    return hi


def replicas_needed(trace: pd.DataFrame, model: ServiceModel, policies: list[str], *, warmup_s: float,
                    duration_s: float, slo: dict[str, float | None], target: float = 0.99, limit: int = 4096,
                    usd_per_replica_hour: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Per policy: the smallest R meeting `target` SLO attainment and the summary at that R.

    The search starts at the token-throughput lower bound (total output tokens / what one replica decodes
    at its full slots), since no routing can beat it."""
    tokens_s = trace["output_tokens"].sum() / max(float(trace["t"].max()), 1e-9)
    full = model.slots / model.decode_s(model.slots, min(model.slots, model.adapter_slots))
    start = max(1, math.floor(tokens_s / full))
    out: dict[str, Any] = {}
    for policy in policies:
        cache: dict[int, dict[str, Any]] = {}

        def attains(r: int) -> bool:
            if r not in cache:
                result = simulate(trace, model, r, policy, seed=seed)
                cache[r] = summarize_fleet(trace, result, warmup_s=warmup_s, duration_s=duration_s, slo=slo,
                                           usd_per_replica_hour=usd_per_replica_hour)
            return (cache[r]["metrics"]["slo_attainment"] or 0.0) >= target

        r = smallest_replicas(attains, start, limit)
        out[policy] = {"replicas": r, "summary": cache.get(r) if r else None,
                       "tried": {k: v["metrics"]["slo_attainment"] for k, v in sorted(cache.items())}}
    return out
