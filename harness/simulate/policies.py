"""Routing policies: which replica gets a request, given every replica's state at its arrival."""
from __future__ import annotations

import random
from typing import Callable

from harness.simulate.replica import Replica

Policy = Callable[[int, list[Replica]], int]  # (adapter id, replicas) -> replica index


def _two_choices(rng: random.Random, replicas: list[Replica], pool: list[int] | None = None) -> int:
    """Power of two choices: the less loaded of two replicas drawn at random (from pool, or from all)."""
    if pool is None:
        a, b = rng.randrange(len(replicas)), rng.randrange(len(replicas))
    elif len(pool) == 1:
        return pool[0]
    else:
        a, b = rng.sample(pool, 2)
    return a if replicas[a].outstanding <= replicas[b].outstanding else b


def make_policy(name: str, seed: int = 0, max_ongoing: int | None = None) -> Policy:
    """random | round_robin | least_outstanding | power_of_two | affinity.

    affinity is Ray Serve's multiplexed routing (its PowerOfTwoChoicesRequestRouter): among the replicas that
    hold the request's adapter and have fewer than max_ongoing requests, the less loaded of two; when none
    qualifies, the less loaded of two among the replicas holding the fewest adapters (all of them once every
    replica's LRU is full; all of them for the base model), and the chosen replica loads the adapter."""
    rng = random.Random(seed)
    if name == "random":
        return lambda adapter, replicas: rng.randrange(len(replicas))
    if name == "round_robin":
        counter = iter(range(1 << 62))
        return lambda adapter, replicas: next(counter) % len(replicas)
    if name == "least_outstanding":
        def least(adapter: int, replicas: list[Replica]) -> int:
            loads = [r.outstanding for r in replicas]
            low = min(loads)
            start = rng.randrange(len(loads))  # ties go to the first from a random place, not always to 0
            try:
                return loads.index(low, start)
            except ValueError:
                return loads.index(low)
        return least
    if name == "power_of_two":
        return lambda adapter, replicas: _two_choices(rng, replicas)
    if name == "affinity":
        filling = [True]  # some replica's LRU still has room (it never shrinks once full)

        def affinity(adapter: int, replicas: list[Replica]) -> int:
            limit = max_ongoing or replicas[0].model.slots
            holders = replicas[0].holders.get(adapter) if adapter >= 0 else None
            if holders:
                pool = [j for j in holders if replicas[j].outstanding < limit]
                if pool:
                    return _two_choices(rng, replicas, pool)
            if adapter >= 0 and filling[0]:
                held = [r.adapters_held() for r in replicas]
                fewest = min(held)
                filling[0] = fewest < replicas[0].model.adapter_slots
                return _two_choices(rng, replicas, [j for j, n in enumerate(held) if n == fewest])
            return _two_choices(rng, replicas)
        return affinity
    raise ValueError(f"unknown routing policy {name!r}; use one of {', '.join(POLICIES)}")


POLICIES = ("random", "round_robin", "least_outstanding", "power_of_two", "affinity")
