"""Request routers for the fleet's replicas besides Ray's own (the multiplexed, adapter-aware one)."""
from __future__ import annotations

import itertools
from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


class RoundRobinRouter(RequestRouter):
    """Each request to the next replica in a fixed order, whatever adapter it names (the baseline to affinity)."""

    _turn = None

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        if self._turn is None:
            self._turn = itertools.count()
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[ordered[next(self._turn) % len(ordered)]]]
