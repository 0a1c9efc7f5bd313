"""ChunkEvents: the spliced SSE bytes of a stream chunk parse to exactly the OpenAI chunk object."""
import json

import pytest

from engines.server.streaming import ChunkEvents


def chunk(cid, kind, created, model, ids, delta, first, reason):
    """The chunk object as a dict (what the server used to encode per token)."""
    if kind == "chat":
        msg = {"role": "assistant", "content": delta} if first else {"content": delta}
        choice = {"index": 0, "delta": msg, "logprobs": None, "finish_reason": reason, "token_ids": ids}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason, "token_ids": ids}
        obj = "text_completion"
    return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}


@pytest.mark.parametrize("kind", ["completion", "chat"])
@pytest.mark.parametrize("ids,delta,first,reason", [
    ([120], "x", True, None),
    ([7, 300], 'a "quoted"\nline\\ é ✓ \x00', False, None),
    ([], "", False, "length"),
    ([257], "", False, "stop"),
])
def test_event_is_the_chunk_object(kind, ids, delta, first, reason):
    model = 'adapter-"odd"/name é'
    data = ChunkEvents("cmpl-abc", kind, 1700000000, model).event(ids, delta, first, reason)
    assert data.startswith(b"data: ") and data.endswith(b"\n\n") and data.count(b"\n") == 2
    want = chunk("cmpl-abc", kind, 1700000000, model, ids, delta, first, reason)
    assert json.loads(data[len(b"data: "):]) == want
    assert list(json.loads(data[6:])) == list(want)  # the same key order as before
