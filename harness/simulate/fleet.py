"""The discrete-event loop: a trace's arrivals routed over R replicas, every replica event in time order."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.simulate.model import ServiceModel
from harness.simulate.policies import make_policy
from harness.simulate.replica import NO_EVENT, Replica


@dataclass
class FleetResult:
    """Per request (trace order): replica, first token and end time; per replica: adapter loads."""

    replica: np.ndarray
    first: np.ndarray
    end: np.ndarray
    loads: list[int]


def encode_adapters(names: pd.Series) -> np.ndarray:
    """Adapter names as integer ids; the base model ('') is -1."""
    codes, _ = pd.factorize(names.astype(str), sort=True)
    return np.where(names.astype(str).to_numpy() == "", -1, codes)


def simulate(trace: pd.DataFrame, model: ServiceModel, replicas: int, policy: str = "affinity", *,
             seed: int = 0, max_ongoing: int | None = None) -> FleetResult:
    """Route every request of `trace` (columns t, adapter, prompt_tokens, output_tokens; sorted by t)."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be >= 1")
    n = len(trace)
    t = trace["t"].to_numpy(np.float64).tolist()
    adapter = encode_adapters(trace["adapter"]).tolist()
    first, end = [math.nan] * n, [math.nan] * n
    state = (first, end, trace["output_tokens"].astype(int).tolist(), trace["prompt_tokens"].astype(int).tolist(),
             adapter)
    holders: dict[int, set[int]] = {}
    reps = [Replica(model, j, holders, state) for j in range(replicas)]
    route = make_policy(policy, seed=seed, max_ongoing=max_ongoing)
    chosen = [0] * n
    version = [0] * replicas
    events: list[tuple[float, int, int]] = []  # (time, replica, version): stale versions are skipped

    def schedule(j: int, at: float) -> None:
        version[j] += 1
        if at < NO_EVENT:
            heapq.heappush(events, (at, j, version[j]))

    def run_until(limit: float) -> None:
        while events and events[0][0] <= limit:
            at, j, v = heapq.heappop(events)
            if v == version[j]:
                schedule(j, reps[j].advance(at))

    for i in range(n):
        ti = t[i]
        run_until(ti)
        j = route(adapter[i], reps)
        chosen[i] = j
        reps[j].arrive(i, ti)
        schedule(j, reps[j].next_event()[0])
    run_until(NO_EVENT)
    return FleetResult(replica=np.asarray(chosen), first=np.asarray(first) + model.latency_s,
                       end=np.asarray(end) + model.latency_s,
                       loads=[r.loads for r in reps])
