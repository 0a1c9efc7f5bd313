"""The one thread that owns the engine: drains an inbox of commands, steps while there is work, posts outputs."""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from engines.base import AdapterFileError, AdapterNotFoundError, Engine, Request, StepOutput


@dataclass
class Admitted:
    """The engine accepted the request (posted before its first StepOutput)."""

    request_id: str


@dataclass
class Failed:
    """The request failed; status is the HTTP status the client should get."""

    request_id: str
    status: int
    message: str


def status_for(exc: BaseException) -> int:
    """HTTP status for an exception raised by an engine call."""
    if isinstance(exc, AdapterNotFoundError):
        return 404
    if isinstance(exc, (ValueError, AdapterFileError)):
        return 400
    return 500


_STOP = object()


class EngineThread:
    """Engines are single-threaded; every engine call happens here, results reach asyncio via call_soon_threadsafe."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self._loop = loop
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, asyncio.Queue] = {}  # touched only by the engine thread
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.step_errors = 0

    # ---- called from the event loop -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def add(self, request: Request, sink: asyncio.Queue) -> None:
        self._inbox.put(("add", request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def call(self, fn: Callable[[Engine], Any]) -> "asyncio.Future[Any]":
        """Run fn(engine) on the engine thread; await the result (exceptions propagate)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(("call", fn, future))
        return asyncio.wrap_future(future, loop=self._loop)

    # ---- the engine thread ------------------------------------------------------------
    def _post(self, items: list[tuple[asyncio.Queue, Any]]) -> None:
        if items and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop closed between the check and the call (shutdown)
                pass

    def _handle(self, cmd: Any, posts: list) -> bool:
        if cmd is _STOP:
            return False
        kind = cmd[0]
        if kind == "add":
            _, request, sink = cmd
            try:
                self.engine.add_request(request)
            except Exception as exc:  # a bad request must not stop the thread
                posts.append((sink, Failed(request.request_id, status_for(exc), str(exc))))
            else:
                self._sinks[request.request_id] = sink
                posts.append((sink, Admitted(request.request_id)))
        elif kind == "abort":
            if self._sinks.pop(cmd[1], None) is not None:
                self.engine.abort(cmd[1])
        elif kind == "call":
            _, fn, future = cmd
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine))
                except Exception as exc:
                    future.set_exception(exc)
        return True

    def _fail_all(self, posts: list, message: str) -> None:
        """Fail every request in flight with 500 and drop it from the engine (so its cache is freed)."""
        for rid, sink in list(self._sinks.items()):
            posts.append((sink, Failed(rid, 500, message)))
            try:
                self.engine.abort(rid)
            except Exception:
                traceback.print_exc(file=sys.stderr)
        self._sinks.clear()

    def _step(self, posts: list) -> None:
        outputs: list[StepOutput] = self.engine.step()
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue  # aborted meanwhile
            posts.append((sink, out))
            if out.finished:
                del self._sinks[out.request_id]

    def _cycle(self, posts: list) -> bool:
        """Take commands (waiting for one when the engine is idle), then step once; False on stop."""
        running = True
        if not self.engine.has_unfinished():
            running = self._handle(self._inbox.get(), posts)
        while running:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                break
            running = self._handle(cmd, posts)
        if running and self.engine.has_unfinished():
            self._step(posts)
        return running

    def _run(self) -> None:
        running = True
        while running:
            posts: list = []
            try:
                running = self._cycle(posts)
            except Exception as exc:  # the engine failed: its requests fail, the server goes on
                self.step_errors += 1
                traceback.print_exc(file=sys.stderr)
                self._fail_all(posts, f"engine step failed: {type(exc).__name__}: {exc}")
                time.sleep(0.01)  # an engine that keeps failing must not spin the CPU
            self._post(posts)
        for rid, sink in self._sinks.items():
            self._post([(sink, Failed(rid, 503, "the server is shutting down"))])
        self._sinks.clear()


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for sink, item in items:
        sink.put_nowait(item)
