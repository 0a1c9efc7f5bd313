"""The open-loop schedule: releases each trace row at its intended time to the users and accounts for it."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event

from harness.loadgen.client import InFlight
from harness.loadgen.recorder import SENT, Recorder


class Dispatch:
    """Hands released requests to idle users, most recently idle first: a small set of users (and their
    kept-alive connections) serves a moderate rate, so few new connections open during the load."""

    def __init__(self) -> None:
        self.idle: list[gevent.event.AsyncResult] = []
        self.backlog: deque = deque()

    def put(self, item) -> None:
        if self.idle:
            self.idle.pop().set(item)
        else:
            self.backlog.append(item)  # every user is busy: the first one free takes it (its lag shows it)

    def get(self):
        if self.backlog:
            return self.backlog.popleft()
        slot = gevent.event.AsyncResult()
        self.idle.append(slot)
        try:
            return slot.get()
        finally:
            if not slot.ready() and slot in self.idle:  # killed while idle (shutdown)
                self.idle.remove(slot)


@dataclass
class Schedule:
    """Shared by the scheduler greenlet and the users of one process (one shard of the trace)."""

    rows: list[dict[str, Any]]  # this process's share of the trace
    recorder: Recorder
    warmup_s: float
    queue: Dispatch = field(default_factory=Dispatch)
    inflight: dict[int, InFlight] = field(default_factory=dict)
    stopping: gevent.event.Event = field(default_factory=gevent.event.Event)
    idle: gevent.event.Event = field(default_factory=gevent.event.Event)
    t0: float = 0.0
    released: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "timeout": 0, "rejected": 0})
    schedule_done: bool = False
    write_error: str | None = None  # a record could not be written (disk full...): the run stops

    def run(self, t0: float) -> None:
        """Release every row at t0 + t; stops early when `stopping` is set."""
        self.t0 = t0
        for row in self.rows:
            delay = t0 + row["t"] - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                break
            if self.stopping.is_set():
                break
            item = InFlight(request_id=int(row["request_id"]), adapter=row["adapter"], intended_send=row["t"],
                            prompt_tokens=int(row["prompt_tokens"]), output_tokens=int(row["output_tokens"]))
            item.released = time.monotonic() - t0
            self.inflight[item.request_id] = item
            self.released += 1
            self.queue.put(item)
        self.schedule_done = True
        self._check_idle()

    def sent(self, item: InFlight) -> None:
        """A user is sending item now: its "sent" line goes first, so a client that dies leaves a trace of it."""
        self._record({**item.record(self.warmup_s), "status": SENT})

    def finish(self, item: InFlight) -> None:
        """A user is done with item: write its record unless shutdown already accounted for it."""
        if self.inflight.pop(item.request_id, None) is None:
            return
        self._write(item)
        self._check_idle()

    def _write(self, item: InFlight) -> None:
        self.counts[item.status] = self.counts.get(item.status, 0) + 1
        self._record(item.record(self.warmup_s))

    def _record(self, record: dict[str, Any]) -> None:
        """A failed write (disk full, read-only folder) stops the whole run: records must not go missing."""
        if self.write_error is not None:
            return
        try:
            self.recorder.write(record)
        except OSError as exc:
            self.write_error = f"cannot write {self.recorder.path}: {exc}"
            self.stopping.set()

    def _check_idle(self) -> None:
        if self.schedule_done and not self.inflight:
            self.idle.set()

    def flush(self, status: str, error: str) -> None:
        """Shutdown: record every request released but unfinished (sent ones as `status`, queued as not sent)."""
        now = time.monotonic() - self.t0
        for item in list(self.inflight.values()):
            self.inflight.pop(item.request_id)
            if item.actual_send == item.actual_send:  # sent (not NaN)
                item.status, item.error, item.end = status, error, now
            else:
                item.status, item.error = "not_sent", f"not sent: {error}"
            self._write(item)
        self.idle.set()

    def wait(self, drain_timeout_s: float) -> str:
        """Block until the schedule is done and drained; returns 'completed', 'drain_timeout', 'interrupted'
        or 'write_failed'."""
        last = self.t0 + (self.rows[-1]["t"] if self.rows else 0.0)
        while not self.stopping.is_set() and time.monotonic() < last:
            self.stopping.wait(min(0.5, max(0.0, last - time.monotonic())))
        if self.write_error is not None:
            return "write_failed"
        if self.stopping.is_set():
            return "interrupted"
        deadline = time.monotonic() + drain_timeout_s
        while not self.idle.is_set():
            if self.stopping.is_set():
                return "write_failed" if self.write_error is not None else "interrupted"
            left = deadline - time.monotonic()
            if left <= 0:
                return "drain_timeout"
            self.idle.wait(min(0.2, left))
        return "completed"

    def summary(self) -> dict[str, Any]:
        out = {"rows": len(self.rows), "released": self.released, "written": self.recorder.written, **self.counts}
        if self.write_error is not None:
            out["write_error"] = self.write_error
        return out


def spawn(schedule: Schedule, t0: float) -> gevent.Greenlet:
    schedule.t0 = t0  # set before wait() reads it: the greenlet starts only at the next yield
    return gevent.spawn(schedule.run, t0)
