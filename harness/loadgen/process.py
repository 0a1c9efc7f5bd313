"""Locust runners around the schedule: one local process, or a master with N worker processes sharing the trace."""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import gevent
from locust.env import Environment

from harness.loadgen.recorder import Recorder
from harness.loadgen.scheduler import Schedule, spawn
from harness.loadgen.user import make_user_class
from harness.spec_sections import LoadgenSpec

START_LEAD_S = 0.3  # t0 is this far after the users are ready, so the first request is not late
REASON_TO_STATUS = {"drain_timeout": ("timeout", "still streaming at the drain timeout"),
                    "interrupted": ("error", "interrupted while in flight")}


@dataclass
class Options:
    trace: str
    url: str
    out: str
    base_model: str
    warmup_s: float = 0.0
    users: int = LoadgenSpec.users  # the defaults are the workload's (harness/spec_sections.py), written once
    workers: int = LoadgenSpec.workers
    request_timeout_s: float = LoadgenSpec.request_timeout_s
    drain_timeout_s: float = LoadgenSpec.drain_timeout_s
    api_key: str | None = None
    master_port: int = 0  # worker mode: the master to join


def read_rows(path: str) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="") as f:
        return [{"request_id": int(r["request_id"]), "t": float(r["t"]), "adapter": r["adapter"],
                 "prompt_tokens": int(r["prompt_tokens"]), "output_tokens": int(r["output_tokens"])}
                for r in csv.DictReader(f)]


def say(line: str) -> None:
    """A protocol line for the harness on stdout (START t0, DONE counts)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stop_on_signals(schedule_ref: dict[str, Any]) -> None:
    def handler() -> None:
        schedule_ref["schedule"].stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, handler)


def _quiet_gc() -> None:
    """Move everything imported so far out of the collector's sight: a full collection over Locust's and
    gevent's objects pauses tens of milliseconds, which would show up as schedule lag. The young generations
    keep their default thresholds: frequent, tiny collections."""
    gc.collect()
    gc.freeze()


def _finish(schedule: Schedule, reason: str) -> None:
    if reason in REASON_TO_STATUS:
        schedule.flush(*REASON_TO_STATUS[reason])


def run_local(opts: Options) -> dict[str, Any]:
    """One process: a LocalRunner with `users` users and the whole trace."""
    rows = read_rows(opts.trace)
    ref: dict[str, Any] = {}
    with Recorder(opts.out) as recorder:
        schedule = ref["schedule"] = Schedule(rows=rows, recorder=recorder, warmup_s=opts.warmup_s)
        _stop_on_signals(ref)
        user = make_user_class(ref, opts.url, opts.base_model, opts.request_timeout_s, opts.api_key)
        env = Environment(user_classes=[user], catch_exceptions=True)
        runner = env.create_local_runner()
        runner.start(opts.users, spawn_rate=opts.users * 100)
        runner.spawning_greenlet.join()
        _quiet_gc()
        t0 = time.monotonic() + START_LEAD_S
        say(f"START {t0:.6f}")
        spawn(schedule, t0)
        reason = schedule.wait(opts.drain_timeout_s)
        _finish(schedule, reason)
        runner.quit()
        result = {"reason": reason, **schedule.summary()}
    say("DONE " + json.dumps(result))
    return result


def run_worker(opts: Options) -> None:
    """Worker process: joins the master, runs its shard (request_id % workers == index) on the go message."""
    rows = read_rows(opts.trace)
    ref: dict[str, Any] = {}
    recorder = Recorder(opts.out)
    ref["schedule"] = Schedule(rows=[], recorder=recorder, warmup_s=opts.warmup_s)
    _stop_on_signals(ref)
    user = make_user_class(ref, opts.url, opts.base_model, opts.request_timeout_s, opts.api_key)
    env = Environment(user_classes=[user], catch_exceptions=True)
    runner = env.create_worker_runner("127.0.0.1", opts.master_port)

    def on_go(environment, msg, **_kw) -> None:
        index, n = runner.worker_index, int(msg.data["workers"])
        schedule = ref["schedule"]
        schedule.rows = [r for r in rows if r["request_id"] % n == index]
        _quiet_gc()
        spawn(schedule, float(msg.data["t0"]))

        def drain() -> None:
            reason = schedule.wait(opts.drain_timeout_s)
            _finish(schedule, reason)
            runner.send_message("trace_done", {"index": index, "reason": reason, **schedule.summary()})

        gevent.spawn(drain)

    runner.register_message("trace_go", on_go)
    runner.greenlet.join()
    recorder.close()


def run_master(opts: Options) -> dict[str, Any]:
    """Master: starts N worker processes, spreads the users over them, sends t0, gathers their counts."""
    rows = read_rows(opts.trace)
    ref: dict[str, Any] = {"schedule": Schedule(rows=rows, recorder=Recorder(os.devnull), warmup_s=0.0)}
    _stop_on_signals(ref)
    user = make_user_class(ref, opts.url, opts.base_model, opts.request_timeout_s, opts.api_key)
    env = Environment(user_classes=[user], catch_exceptions=True)
    master = env.create_master_runner("127.0.0.1", 0)
    port = master.server.port
    done: dict[int, dict[str, Any]] = {}
    master.register_message("trace_done", lambda environment, msg, **kw: done.__setitem__(msg.data["index"], msg.data))
    worker_args = [sys.executable, "-m", "harness.loadgen", "--worker", "--master-port", str(port),
                   "--trace", opts.trace, "--url", opts.url, "--out", opts.out, "--base-model", opts.base_model,
                   "--warmup-s", str(opts.warmup_s), "--request-timeout-s", str(opts.request_timeout_s),
                   "--drain-timeout-s", str(opts.drain_timeout_s)]
    if opts.api_key:
        worker_args += ["--api-key", opts.api_key]
    procs = [subprocess.Popen(worker_args, stdout=subprocess.DEVNULL) for _ in range(opts.workers)]
    stopping = ref["schedule"].stopping
    try:
        deadline = time.monotonic() + 120
        while len(master.clients.ready) < opts.workers:
            if time.monotonic() > deadline or stopping.is_set() or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"loadgen: only {len(master.clients.ready)} of {opts.workers} Locust workers "
                                   "connected; see the worker errors above")
            gevent.sleep(0.05)
        master.start(opts.users * opts.workers, spawn_rate=opts.users * opts.workers * 100)
        deadline = time.monotonic() + 60
        while master.user_count < opts.users * opts.workers and time.monotonic() < deadline:
            gevent.sleep(0.05)
        t0 = time.monotonic() + START_LEAD_S + 0.2
        say(f"START {t0:.6f}")
        master.send_message("trace_go", {"t0": t0, "workers": opts.workers})
        last = t0 + (rows[-1]["t"] if rows else 0.0)
        limit = last + opts.drain_timeout_s + 10.0
        while len(done) < opts.workers and time.monotonic() < limit:
            if stopping.is_set():
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                stopping.clear()
                limit = min(limit, time.monotonic() + 10.0)
            gevent.sleep(0.05)
    finally:
        master.quit()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    reasons = {d["reason"] for d in done.values()}
    result: dict[str, Any] = {"reason": "interrupted" if "interrupted" in reasons else
                              ("drain_timeout" if "drain_timeout" in reasons else
                               ("completed" if len(done) == opts.workers else "workers_lost")),
                              "workers": opts.workers, "workers_done": len(done)}
    for key in ("rows", "released", "written", "ok", "error", "timeout"):
        result[key] = sum(int(d.get(key, 0)) for d in done.values())
    say("DONE " + json.dumps(result))
    return result


class _DropSpawnRateWarning(logging.Filter):
    """All users start at once on purpose (they idle until the schedule releases work), so Locust's ramp-up
    warning about a high spawn rate does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "spawn rate is very high" not in record.getMessage()


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="loadgen %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropSpawnRateWarning())
