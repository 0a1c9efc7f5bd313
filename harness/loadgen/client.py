"""One streamed /v1/completions request over geventhttpclient, filling an InFlight record as bytes arrive."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from harness.loadgen.chunks import chunk_token_count, completion_body, token_times

ERROR_TEXT_MAX = 500


@dataclass
class InFlight:
    """The state of one request of the trace while it runs; becomes a record (schema.RECORD_FIELDS)."""

    request_id: int
    adapter: str
    intended_send: float  # s from t0
    prompt_tokens: int
    output_tokens: int  # as the trace asks
    released: float = float("nan")  # s from t0: when the scheduler handed it to the users
    actual_send: float = float("nan")
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end: float = float("nan")
    usage_prompt: int | None = None
    usage_output: int | None = None
    http_status: int = 0
    status: str = "not_sent"
    error: str = ""

    def record(self, warmup_s: float) -> dict[str, Any]:
        times, first = token_times(self.chunk_times, self.chunk_tokens, self.usage_output)
        return {
            "request_id": self.request_id,
            "adapter": self.adapter,
            "intended_send": self.intended_send,
            "released": self.released,
            "actual_send": self.actual_send,
            "first_token": times[0] if times else float("nan"),
            "end": self.end,
            "token_times": times,
            "first_chunk_tokens": first,
            "prompt_tokens": self.usage_prompt if self.usage_prompt is not None else self.prompt_tokens,
            "output_tokens": self.usage_output if self.usage_output is not None else len(times),
            "requested_output_tokens": self.output_tokens,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "in_window": self.intended_send >= warmup_s,
        }


def stream_completion(http, path: str, headers: dict[str, str], item: InFlight, model: str, t0: float,
                      on_send=lambda item: None) -> None:
    """Send item's request and read its SSE stream to the end; times are s from t0 (time.monotonic).
    on_send(item) runs as it is sent (the "sent" record). A 503 (the server's queue is full) is "rejected":
    the server's overload answer, not an engine error."""
    body = completion_body(item.request_id, model, item.prompt_tokens, item.output_tokens)
    item.actual_send = time.monotonic() - t0
    on_send(item)
    response = http.post(path, body=body, headers=headers)
    item.http_status = response.status_code
    if response.status_code != 200:
        text = response.read().decode(errors="replace")
        item.end = time.monotonic() - t0
        item.status = "rejected" if response.status_code == 503 else "error"
        item.error = f"HTTP {response.status_code}: {text[:ERROR_TEXT_MAX]}"
        return
    done = False
    while True:
        line = response.readline(b"\n")
        if not line:
            break
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        now = time.monotonic() - t0
        try:
            obj = json.loads(data)
        except ValueError:
            item.status, item.error = "error", f"bad SSE data: {data[:200]!r}"
            item.end = now
            return
        if obj.get("error"):
            item.status, item.error = "error", f"stream error: {json.dumps(obj['error'])[:ERROR_TEXT_MAX]}"
            item.end = now
            return
        for choice in obj.get("choices") or []:
            k = chunk_token_count(choice)
            if k:
                item.chunk_times.append(now)
                item.chunk_tokens.append(k)
        usage = obj.get("usage")
        if usage:
            item.usage_prompt = usage.get("prompt_tokens")
            item.usage_output = usage.get("completion_tokens")
    item.end = time.monotonic() - t0
    if not done:
        item.status, item.error = "error", "stream ended without data: [DONE]"
    elif not item.chunk_times:
        item.status, item.error = "error", "stream finished without a token"
    else:
        item.status = "ok"
