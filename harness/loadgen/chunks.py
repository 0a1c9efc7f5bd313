"""Plain helpers of the load generator: request bodies, prompt token ids, and per-token times from SSE chunks."""
from __future__ import annotations

import json
from typing import Any

PROMPT_ID_LOW, PROMPT_ID_SPAN = 3, 240  # ids 3..242: inside every vocabulary, clear of BOS/EOS/UNK of presets


def prompt_ids(request_id: int, n: int) -> list[int]:
    """A deterministic prompt of n token ids, different per request (no accidental prefix sharing)."""
    a = (request_id * 2654435761) % 1000003
    return [PROMPT_ID_LOW + (a + j * 40503 + (j * j) % 97) % PROMPT_ID_SPAN for j in range(n)]


def completion_body(request_id: int, model: str, prompt_tokens: int, output_tokens: int) -> bytes:
    """The /v1/completions body: exactly `output_tokens` tokens, streamed, with usage at the end."""
    return json.dumps({
        "model": model,
        "prompt": prompt_ids(request_id, prompt_tokens),
        "max_tokens": int(output_tokens),
        "min_tokens": int(output_tokens),
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }, separators=(",", ":")).encode()


def chunk_token_count(choice: dict[str, Any]) -> int:
    """Tokens in one streamed choice: token_ids or logprobs when the server sends them, else 1 per non-empty text."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return len(ids)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        return len(logprobs["tokens"])
    return 1 if choice.get("text") else 0


def token_times(chunk_times: list[float], chunk_tokens: list[int], total: int | None) -> tuple[list[float], int]:
    """Per-token arrival times from chunk arrivals, and the number of tokens in the first chunk.

    Chunk i > 0 of k tokens arriving at T_i after chunk i-1 at T_(i-1) spreads its tokens over k equal gaps:
    T_(i-1) + (T_i - T_(i-1)) * j / k for j = 1..k. The first chunk's tokens all arrive at T_0 (they open the
    stream; they make no inter-token gap). When the server's usage count `total` differs from the counted tokens
    (a server that sends several tokens per chunk without saying so), the total is spread evenly over the chunks.
    """
    pairs = [(t, k) for t, k in zip(chunk_times, chunk_tokens) if k > 0]
    if not pairs:
        return [], 0
    times = [t for t, _ in pairs]
    counts = [k for _, k in pairs]
    if total is not None and total > 0 and sum(counts) != total:
        c = len(times)
        if total >= c:
            counts = [total // c + (1 if i < total % c else 0) for i in range(c)]
        else:  # fewer tokens than chunks: keep the last `total` chunk arrivals, one token each
            times, counts = times[-total:], [1] * total
    out = [times[0]] * counts[0]
    for i in range(1, len(times)):
        prev, now, k = times[i - 1], times[i], counts[i]
        out.extend(prev + (now - prev) * j / k for j in range(1, k + 1))
    return out, counts[0]
