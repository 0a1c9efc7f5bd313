"""Server pieces on their own: stop-string text assembly, request parsing, model resolution, Prometheus text."""
from __future__ import annotations

import math

import pytest

from engines.model.config import ModelArgs
from engines.server.metrics import ServerMetrics, parse_prometheus
from engines.server.protocol import ApiError, parse_chat, parse_completion, parse_tgi
from engines.server.state import ServerOptions, ServerState
from engines.server.streaming import TextStream
from engines.tokenizer import ByteTokenizer

TOK = ByteTokenizer(ModelArgs.from_name("tiny"))


def feed_all(stream: TextStream, text: str, per_step: int = 1) -> list[str]:
    ids = list(text.encode())
    deltas = []
    for i in range(0, len(ids), per_step):
        deltas.append(stream.feed(ids[i:i + per_step], finished=i + per_step >= len(ids)))
    return deltas


def test_text_stream_without_stops_emits_every_character_at_once():
    deltas = feed_all(TextStream(TOK.stream_decoder(), []), "hello")
    assert deltas == ["h", "e", "l", "l", "o"]


def test_stop_string_split_over_tokens_is_held_back_and_cut():
    stream = TextStream(TOK.stream_decoder(), ["END", "STOPPING"])
    deltas = feed_all(stream, "abcdefghijklEND-more")
    assert "".join(deltas) == "abcdefghijkl" and stream.stopped
    assert all("E" not in d for d in deltas)  # the stop string's prefix never left the server


def test_earliest_of_several_stop_strings_wins_and_stop_at_start():
    stream = TextStream(TOK.stream_decoder(), ["zz", "b"])
    assert "".join(feed_all(stream, "aabzz", per_step=5)) == "aa"
    stream = TextStream(TOK.stream_decoder(), ["xy"])
    assert "".join(feed_all(stream, "xyabc")) == "" and stream.stopped


def test_text_stream_holds_nothing_back_at_the_end():
    stream = TextStream(TOK.stream_decoder(), ["longstopstring"])
    assert "".join(feed_all(stream, "short")) == "short" and not stream.stopped


def test_completion_parsing_accepts_openai_and_vllm_spellings():
    req = parse_completion({"model": "m", "prompt": [[1, 2, 3]], "top_k": -1, "stop": "x", "seed": 4,
                            "stream": True, "stream_options": {"include_usage": True}, "stop_token_ids": [9]})
    assert req.prompt == [1, 2, 3] and req.sampling["top_k"] == 0 and req.stop == ["x"]
    assert req.stream and req.include_usage and req.sampling["stop_token_ids"] == (9,)
    assert req.max_tokens is None  # the route's default applies later
    chat = parse_chat({"model": "m", "max_completion_tokens": 7,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert chat.max_tokens == 7 and chat.prompt.endswith("<|assistant|>\n") and "hi" in chat.prompt


def test_tgi_parsing_is_greedy_unless_asked_to_sample():
    greedy = parse_tgi({"inputs": "x", "parameters": {"max_new_tokens": 3}}, stream=False)
    assert greedy.sampling["temperature"] == 0.0 and greedy.max_tokens == 3
    sampled = parse_tgi({"inputs": "x", "parameters": {"do_sample": True, "temperature": 0.7}}, stream=True)
    assert sampled.sampling["temperature"] == 0.7 and sampled.stream


def test_parse_errors_carry_status_and_param():
    with pytest.raises(ApiError) as err:
        parse_completion({"model": "m", "prompt": "x", "temperature": "hot"})
    assert err.value.status == 400 and err.value.param == "temperature"
    assert err.value.body()["error"]["type"] == "invalid_request_error"


class _Engine:
    base_model_name = "base"


def test_model_names_resolve_to_adapters():
    state = ServerState(engine=_Engine(), tokenizer=TOK, options=ServerOptions(model_aliases=("/models/base",)),
                        adapters={"a1": "/x/a1", "weird:name": "/x/w"})
    assert state.resolve_adapter("base") is None and state.resolve_adapter("/models/base") is None
    assert state.resolve_adapter("a1") == "a1" and state.resolve_adapter("base:a1") == "a1"
    assert state.resolve_adapter("weird:name") == "weird:name"
    for name in ("a2", "other:a1", "base:"):
        with pytest.raises(ApiError) as err:
            state.resolve_adapter(name)
        assert err.value.status == 404


def test_prometheus_text_round_trips_and_handles_odd_values():
    metrics = ServerMetrics(prompt_tokens=10, output_tokens=20, in_flight=2)
    metrics.requests["200"] += 3
    text = metrics.render({"kv_blocks_used": 5, "merged swap-seconds": 0.25, "load_s": math.inf})
    samples = parse_prometheus(text)
    assert samples['lora_fleet_requests_total{status="200"}'] == 3
    assert samples["lora_fleet_kv_blocks_used"] == 5 and samples["lora_fleet_merged_swap_seconds"] == 0.25
    assert samples["lora_fleet_load_s"] == math.inf and "lora_fleet_load_s +Inf" in text
    assert samples["lora_fleet_server_in_flight"] == 2 and samples["lora_fleet_output_tokens_total"] == 20
    assert "# TYPE lora_fleet_kv_blocks_used gauge" in text


def test_server_options_are_checked():
    with pytest.raises(ValueError, match="max_queue"):
        ServerOptions(max_queue=-1)
    with pytest.raises(ValueError, match="adapter_root"):
        ServerOptions(adapter_root="/no/such/dir")


def test_stop_strings_count_only_after_min_tokens():
    stream = TextStream(TOK.stream_decoder(), ["b"])
    ids = list(b"abab")
    deltas = [stream.feed([t], finished=False, check_stops=n >= 3) for n, t in enumerate(ids, start=1)]
    assert "".join(deltas) == "aba" and stream.stopped  # the first "b" (token 2) came before min_tokens=3
