"""Request routers for the fleet's replicas besides Ray's own (the multiplexed, adapter-aware one)."""
from __future__ import annotations

from typing import List, Optional

import ray
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

TURN_ACTOR, TURN_NAMESPACE = "round-robin-turn", "lora-fleet"  # stop_fleet kills it


@ray.remote(num_cpus=0)
class Turn:
    """The fleet's one counter: every ingress replica has a router of its own, and round-robin is fleet-wide."""

    def __init__(self) -> None:
        self.n = -1

    def next(self) -> int:
        self.n += 1
        return self.n


class RoundRobinRouter(RequestRouter):
    """Each request to the next replica in a fixed order, whatever adapter it names (the baseline to affinity),
    in turn across the whole fleet: the ingress replicas share one counter (a Ray actor; one call per request)."""

    _turn = None

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        if self._turn is None:
            self._turn = Turn.options(name=TURN_ACTOR, namespace=TURN_NAMESPACE, get_if_exists=True,
                                      lifetime="detached").remote()
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[ordered[await self._turn.next.remote() % len(ordered)]]]
