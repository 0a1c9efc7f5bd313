"""Engine token ids to text deltas (stop strings held back and cut) and Server-Sent Events framing."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from engines.tokenizer import StreamDecoder


class TextStream:
    """Feeds token ids through a streaming decoder; cuts the text at the first stop string.

    While a stop string could still be completing, its possible prefix is held back, so no client ever
    sees text past a stop string. As in vLLM, a stop string counts only when it ends after min_tokens.
    """

    def __init__(self, decoder: StreamDecoder, stop: list[str]) -> None:
        self._decoder = decoder
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._text = ""
        self._emitted = 0
        self._floor = 0  # stop strings must end after this many characters (text made before min_tokens)
        self.stopped = False  # a stop string was found
        self.text = ""  # everything emitted so far

    def feed(self, ids: list[int], finished: bool, check_stops: bool = True) -> str:
        """The text delta that may be sent now; check_stops=False while min_tokens is not reached."""
        if self.stopped:
            return ""
        self._text += self._decoder.push(ids)
        if finished:
            self._text += self._decoder.flush()
        end = len(self._text) if finished else max(self._emitted, len(self._text) - self._hold)
        if self._stop and not check_stops:
            self._floor = len(self._text)
        elif self._stop:
            hits = [i for i in (self._text.find(s, max(0, self._emitted - self._hold, self._floor - len(s) + 1))
                                for s in self._stop) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
        delta = self._text[self._emitted:end]
        self._emitted = max(self._emitted, end)
        self.text += delta
        return delta


class ChunkEvents:
    """Server-Sent Events of one completion's stream chunks (OpenAI text or chat) as bytes, without building
    and encoding a dict per token: the fields that never change are encoded once, the token's text, ids and
    finish reason are spliced in. json.loads of an event's data is the chunk object the OpenAI API sends."""

    def __init__(self, completion_id: str, kind: str, created: int, model: str) -> None:
        self._chat = kind == "chat"
        head = json.dumps({"id": completion_id, "object": "chat.completion.chunk" if self._chat else "text_completion",
                           "created": created, "model": model}, separators=(",", ":"))
        self._head = b"data: " + head[:-1].encode() + b',"choices":[{"index":0,'

    def event(self, ids: list[int], delta: str, first: bool, finish_reason: str | None) -> bytes:
        text = json.dumps(delta)
        if self._chat:
            body = ('"delta":{"role":"assistant","content":' if first else '"delta":{"content":') + text + "}"
        else:
            body = '"text":' + text
        reason = "null" if finish_reason is None else json.dumps(finish_reason)
        tail = f',"logprobs":null,"finish_reason":{reason},"token_ids":[{",".join(map(str, ids))}]}}]}}'
        return self._head + (body + tail).encode() + b"\n\n"


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
