"""One simulated replica: prefill-first continuous batching (as engines/multilora's scheduler) with an adapter LRU.

Each step is a prefill of every waiting request that is ready (its adapter loaded), within the free slots and
the prefill token budget, else one decode token for every running request. Between changes of the running set
the decode step time is constant, so the replica jumps from event to event instead of stepping.
"""
from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from harness.simulate.model import ServiceModel

NO_EVENT = math.inf


class Replica:
    __slots__ = ("model", "index", "t0", "n0", "s", "fin", "running_adapters", "waiting", "lru", "holders",
                 "loader_free", "outstanding", "loads", "first", "end", "out", "prompt", "adapter")

    def __init__(self, model: ServiceModel, index: int, holders: dict[int, set[int]], trace) -> None:
        self.model, self.index, self.holders = model, index, holders
        self.t0 = 0.0  # decode steps run back to back from t0 (idle from t0 when nothing runs)
        self.n0 = 0  # decode steps done by t0
        self.s = 0.0  # the decode step time of the running set
        self.fin: list[tuple[int, int]] = []  # (decode step at which the request ends, request)
        self.running_adapters: dict[int, int] = {}  # adapter -> running requests (the base model not counted)
        self.waiting: list[tuple[float, int]] = []  # (ready time, request)
        self.lru: OrderedDict[int, float] = OrderedDict()  # resident adapter -> time its load completes
        self.loader_free = 0.0  # loads run one at a time
        self.outstanding = 0  # routed and not finished
        self.loads = 0
        self.first, self.end, self.out, self.prompt, self.adapter = trace

    # ---- routing side ---------------------------------------------------------------------------------------
    def arrive(self, i: int, t: float) -> None:
        """Request i reaches this replica at t (every event before t has been processed)."""
        a = self.adapter[i]
        ready = t
        if a >= 0:
            lru = self.lru
            if a in lru:
                lru.move_to_end(a)
                ready = max(t, lru[a])
            else:
                ready = max(t, self.loader_free) + self.model.adapter_load_s
                self.loader_free = ready
                self.loads += 1
                lru[a] = ready
                self.holders.setdefault(a, set()).add(self.index)
                if len(lru) > self.model.adapter_slots:
                    old, _ = lru.popitem(last=False)
                    self.holders[old].discard(self.index)
        heapq.heappush(self.waiting, (ready, i))
        self.outstanding += 1

    # ---- events -----------------------------------------------------------------------------------------------
    def next_event(self) -> tuple[float, int]:
        """(time, k) of the next event: k >= 0 a prefill after k more decode steps, k = -1 a completion."""
        fin, waiting = self.fin, self.waiting
        if not fin:
            return (max(self.t0, waiting[0][0]), 0) if waiting else (NO_EVENT, 0)
        done = self.t0 + (fin[0][0] - self.n0) * self.s
        if waiting and len(fin) < self.model.slots:
            ready = waiting[0][0]
            k = 0 if ready <= self.t0 else math.ceil((ready - self.t0) / self.s - 1e-9)
            at = self.t0 + k * self.s
            if at < done:
                return at, k
        return done, -1

    def advance(self, limit: float) -> float:
        """Process every event at or before `limit`; return the time of the next one (NO_EVENT: none)."""
        while True:
            at, k = self.next_event()
            if at > limit:
                return at
            if k < 0:
                self._complete(at)
            else:
                self.n0 += k
                self._prefill(at)

    def _decode_time(self) -> None:  # ServiceModel.decode_s, inlined: the hot path
        m = self.model
        self.s = max(m.step_s + m.per_seq_s * len(self.fin) + m.per_adapter_s * len(self.running_adapters), 1e-9)

    def _complete(self, at: float) -> None:
        fin, step = self.fin, self.fin[0][0]
        while fin and fin[0][0] == step:
            _, i = heapq.heappop(fin)
            self.end[i] = at
            self.outstanding -= 1
            a = self.adapter[i]
            if a >= 0:
                left = self.running_adapters[a] - 1
                if left:
                    self.running_adapters[a] = left
                else:
                    del self.running_adapters[a]
        self.t0, self.n0 = at, step
        if fin:
            self._decode_time()

    def _prefill(self, at: float) -> None:
        model, waiting, fin = self.model, self.waiting, self.fin
        admitted, tokens = [], 0
        while waiting and waiting[0][0] <= at and len(fin) + len(admitted) < model.slots:
            i = waiting[0][1]
            if admitted and tokens + self.prompt[i] > model.max_batched_tokens:
                break
            heapq.heappop(waiting)
            admitted.append(i)
            tokens += self.prompt[i]
        done = at + model.prefill_step_s(tokens)
        for i in admitted:
            self.first[i] = done
            if self.out[i] <= 1:
                self.end[i] = done
                self.outstanding -= 1
                continue
            heapq.heappush(fin, (self.n0 + self.out[i] - 1, i))
            a = self.adapter[i]
            if a >= 0:
                self.running_adapters[a] = self.running_adapters.get(a, 0) + 1
        self.t0 = done
        if fin:
            self._decode_time()
