"""One simulated replica as engines/multilora runs: continuous batching, device adapter slots that running
requests pin, at most max_loras distinct adapters running, and adapter loads that overlap serving.

Prefill-first: each step is a prefill of the waiting requests that are ready (their adapter loaded), taken in
arrival order within the free slots, the distinct-adapter limit and the prefill token budget, else one decode
token for every running request. Mixed steps: a step decodes every running request and prefills the ready
ones admitted within the step's token budget. A load starts at a step boundary (the engine's `want` at the
start of a step) once a device slot can be had (a free one, or the least recently used adapter that no
request runs or waits for); on CUDA it copies while steps run (one copy at a time) and its requests can be
prefilled from the first step boundary after it completes, on the CPU the copy runs inside the step that then
prefills them. Between changes of the running set the decode step time is constant, so the replica jumps from
event to event instead of stepping.
"""
from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from harness.simulate.model import ServiceModel

NO_EVENT = math.inf


class Replica:
    __slots__ = ("model", "index", "t0", "n0", "s", "fin", "running_adapters", "waiting", "ready", "blocked", "pending",
                 "wanted", "device", "pinned", "holders", "loader_free", "sync_load", "max_loras", "outstanding", "loads",
                 "first", "end", "out", "prompt", "adapter")

    def __init__(self, model: ServiceModel, index: int, holders: dict[int, set[int]], trace) -> None:
        self.model, self.index, self.holders = model, index, holders
        self.t0 = 0.0  # decode steps run back to back from t0 (idle from t0 when nothing runs)
        self.n0 = 0  # decode steps done by t0
        self.s = 0.0  # the decode step time of the running set
        self.fin: list[tuple[int, int]] = []  # (decode step at which the request ends, request)
        self.running_adapters: dict[int, int] = {}  # adapter -> running requests (the base model not counted)
        self.waiting: list[tuple[float, int]] = []  # (time it can be prefilled, request): its adapter has a slot
        self.ready: list[int] = []  # requests past that time, by arrival (the scheduler's queue order)
        self.blocked: dict[int, list[int]] = {}  # adapter without a slot -> its requests, in arrival order
        self.pending: OrderedDict[int, None] = OrderedDict()  # adapters waiting for a slot, in arrival order
        self.wanted: dict[int, int] = {}  # adapter -> requests of it waiting (not yet prefilled)
        self.device: OrderedDict[int, float] = OrderedDict()  # adapter in a slot -> its load's end (LRU order)
        self.pinned = False  # every slot was found running, loading or wanted, and no adapter stopped running since
        self.loader_free = 0.0  # device copies run one at a time
        self.sync_load = 0.0  # without async loads: load time the next prefill step carries
        self.max_loras = min(model.max_loras, model.adapter_slots)
        self.outstanding = 0  # routed and not finished
        self.loads = 0
        self.first, self.end, self.out, self.prompt, self.adapter = trace

    # ---- routing side ---------------------------------------------------------------------------------------
    def arrive(self, i: int, t: float) -> None:
        """Request i reaches this replica at t (every event before t has been processed)."""
        self.outstanding += 1
        a = self.adapter[i]
        if a < 0:
            heapq.heappush(self.waiting, (t, i))
            return
        self.wanted[a] = self.wanted.get(a, 0) + 1
        device = self.device
        if a in device:
            device.move_to_end(a)
            heapq.heappush(self.waiting, (max(t, device[a]), i))
            return
        self.blocked.setdefault(a, []).append(i)
        if a not in self.pending:
            self.pending[a] = None
            self._start_loads(self._boundary(t))

    def adapters_held(self) -> int:
        """Adapters in the replica's slots or waiting for one (what Ray's multiplexed LRU lists)."""
        return len(self.device) + len(self.pending)

    def _boundary(self, t: float) -> float:
        """The first step start at or after t."""
        if not self.fin or t <= self.t0:
            return max(t, self.t0)
        return self.t0 + math.ceil((t - self.t0) / self.s - 1e-9) * self.s

    def _start_loads(self, at: float) -> None:
        """Start the pending adapters' loads at step start `at`, in order, while a slot can be had."""
        device, pending, model = self.device, self.pending, self.model
        while pending:
            a = next(iter(pending))
            if len(device) >= model.adapter_slots:
                # a slot frees only when its adapter's last request ends (a wanted or loading one runs first)
                if self.pinned:
                    return
                victim = next((b for b, done in device.items() if b not in self.running_adapters
                               and not self.wanted.get(b) and done <= at), None)
                if victim is None:
                    self.pinned = True  # every slot is running, loading or wanted: wait for a request to finish
                    return
                del device[victim]
                self.holders[victim].discard(self.index)
            del pending[a]
            if model.async_loads:
                done = max(at, self.loader_free) + model.adapter_load_s
                self.loader_free = done
            else:  # the step that loads it prefills it
                done = at
                self.sync_load += model.adapter_load_s
            self.loads += 1
            device[a] = done
            self.holders.setdefault(a, set()).add(self.index)
            for i in self.blocked.pop(a):
                heapq.heappush(self.waiting, (done, i))

    # ---- events -----------------------------------------------------------------------------------------------
    def _earliest_ready(self) -> float | None:
        """When the first waiting request the distinct-adapter limit admits can be prefilled (None: none can)."""
        adapter, running = self.adapter, self.running_adapters
        free = len(running) < self.max_loras
        if self.ready and (free or any(adapter[i] < 0 or adapter[i] in running for i in self.ready)):
            return self.t0  # ready since an earlier step
        waiting = self.waiting
        if not waiting:
            return None
        if free:
            return waiting[0][0]
        return min((r for r, i in waiting if adapter[i] < 0 or adapter[i] in running), default=None)

    def next_event(self) -> tuple[float, int]:
        """(time, k) of the next event: k >= 0 a prefill after k more decode steps, k = -1 a completion."""
        fin, waiting = self.fin, self.waiting
        if not fin:
            ready = self._earliest_ready()
            return (max(self.t0, ready), 0) if ready is not None else (NO_EVENT, 0)
        done = self.t0 + (fin[0][0] - self.n0) * self.s
        if (waiting or self.ready) and len(fin) < self.model.slots:
            if waiting and not self.ready and len(self.running_adapters) < self.max_loras:
                ready = waiting[0][0]  # the common case of _earliest_ready, inlined: the hot path
            else:
                ready = self._earliest_ready()
            if ready is not None:
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

    def _finished(self, i: int, at: float) -> None:
        self.end[i] = at
        self.outstanding -= 1

    def _complete(self, at: float) -> None:
        fin, step, freed = self.fin, self.fin[0][0], False
        while fin and fin[0][0] == step:
            _, i = heapq.heappop(fin)
            self._finished(i, at)
            a = self.adapter[i]
            if a >= 0:
                left = self.running_adapters[a] - 1
                if left:
                    self.running_adapters[a] = left
                else:
                    del self.running_adapters[a]
                    freed, self.pinned = True, False
        self.t0, self.n0 = at, step
        if fin:
            self._decode_time()
        if freed and self.pending:
            self._start_loads(at)

    def _prefill(self, at: float) -> None:
        """A step that admits the ready requests: a prefill step, or with mixed steps a decode step of the running
        requests that also prefills the admitted ones."""
        model, waiting, fin = self.model, self.waiting, self.fin
        if model.mixed_steps:  # the running requests' decode part, before the admitted ones join
            budget, decode = model.step_tokens - len(fin), (self.s if fin else model.step_s)
        else:
            budget, decode = model.max_batched_tokens, 0.0
        ready = self.ready
        while waiting and waiting[0][0] <= at:
            heapq.heappush(ready, heapq.heappop(waiting)[1])
        admitted, skipped, tokens, running = [], [], 0, self.running_adapters
        # the scheduler walks its queue in arrival order until a limit binds
        while ready and len(fin) + len(admitted) < model.slots:
            i = ready[0]
            a = self.adapter[i]
            if a >= 0 and a not in running and len(running) >= self.max_loras:
                skipped.append(heapq.heappop(ready))  # skipped, not waited on: the next request may go
                continue
            if admitted and tokens + self.prompt[i] > budget:
                break
            heapq.heappop(ready)
            admitted.append(i)
            tokens += self.prompt[i]
            if a >= 0:
                running[a] = running.get(a, 0) + 1
                self.wanted[a] -= 1
                self.device.move_to_end(a)
        for i in skipped:
            heapq.heappush(ready, i)
        done = at + decode + model.prefill_step_s(tokens, len(admitted)) + self.sync_load
        self.sync_load = 0.0
        if model.mixed_steps:
            self.n0 += 1  # the running requests got a token in this step too (those that end now, at done)
        for i in admitted:
            self.first[i] = done
            if self.out[i] <= 1:
                self._finished(i, done)
                a = self.adapter[i]
                if a >= 0:
                    left = running[a] - 1
                    if left:
                        running[a] = left
                    else:
                        del running[a]
                        self.pinned = False
                continue
            heapq.heappush(fin, (self.n0 + self.out[i] - 1, i))
        self.t0 = done
        if fin:
            self._decode_time()
        if self.pending:
            self._start_loads(done)
