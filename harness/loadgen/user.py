"""The Locust user: takes released requests from the schedule and streams each one, open-loop."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient
from locust import User, constant, task

from harness.loadgen.client import ERROR_TEXT_MAX, stream_completion


def make_user_class(schedule_ref: dict, url: str, base_model: str, request_timeout_s: float,
                    api_key: str | None = None) -> type[User]:
    """A User subclass bound to this process's schedule (looked up through schedule_ref["schedule"])."""
    parts = urlsplit(url)
    path = (parts.path.rstrip("/") or "") + "/v1/completions"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    class TraceUser(User):
        wait_time = constant(0)

        def on_start(self) -> None:
            self.http = HTTPClient(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   ssl=parts.scheme == "https", concurrency=1, connection_timeout=10.0,
                                   network_timeout=request_timeout_s, headers={})

        def on_stop(self) -> None:
            self.http.close()

        @task
        def next_request(self) -> None:
            schedule = schedule_ref["schedule"]
            item = schedule.queue.get()
            try:
                with gevent.Timeout(request_timeout_s):
                    stream_completion(self.http, path, headers, item, item.adapter or base_model, schedule.t0,
                                      on_send=schedule.sent)
            except gevent.Timeout:
                item.status, item.error = "timeout", f"no end of stream after {request_timeout_s:g} s"
                self._reset()
            except Exception as exc:  # every failure becomes a record, never a lost request
                item.status, item.error = "error", f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
                self._reset()
            if item.end != item.end:  # NaN: failed before the end was stamped
                item.end = time.monotonic() - schedule.t0
            schedule.finish(item)

        def _reset(self) -> None:
            self.http.close()
            self.on_start()

    return TraceUser
