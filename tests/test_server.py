"""The server driven by the official openai client (and raw HTTP for TGI routes, metrics, adapter loading)."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import time

import openai
import pytest

from engines.server.metrics import parse_prometheus
from tests.test_server_support import echo_server, make_adapter_dirs


def http_json(url: str, method: str, path: str, body=None, headers=None, timeout=30.0):
    """(status, parsed JSON or text) of one request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except json.JSONDecodeError:
        return resp.status, raw


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_adapter_dirs(tmp_path_factory.mktemp("adapters"), ["alpha", "beta"])
    with echo_server(root, adapter_root=str(root), runtime_lora=True) as (server, engine):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        yield server, engine, client, root


def test_completion_text_and_usage(served):
    _, _, client, _ = served
    out = client.completions.create(model="echo-base", prompt="hello", max_tokens=7, temperature=0)
    assert out.choices[0].text == "hellohe"  # the echo engine repeats the prompt's bytes (BOS is not text)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (6, 7, 13)


def test_completion_token_id_prompt(served):
    _, _, client, _ = served
    out = client.completions.create(model="echo-base", prompt=[104, 105], max_tokens=4, temperature=0)
    assert out.choices[0].text == "hihi"
    assert out.usage.prompt_tokens == 2


def test_adapter_by_name_and_by_base_colon_adapter(served):
    _, _, client, _ = served
    by_name = client.completions.create(model="alpha", prompt="x", max_tokens=5, temperature=0)
    ray_style = client.completions.create(model="echo-base:beta", prompt="x", max_tokens=4, temperature=0)
    assert by_name.choices[0].text == "alpha"
    assert ray_style.choices[0].text == "beta"


def test_streaming_one_chunk_per_step_and_usage_last(served):
    _, _, client, _ = served
    chunks = list(client.completions.create(model="beta", prompt="q", max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 6  # the echo engine makes one token per step
    assert "".join(c.choices[0].text for c in token_chunks) == "betabe"
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 5 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == 2


def test_streaming_without_usage_has_no_usage_chunk(served):
    _, _, client, _ = served
    chunks = list(client.completions.create(model="echo-base", prompt="ab", max_tokens=3, stream=True))
    assert all(c.choices for c in chunks) and len(chunks) == 3


def test_chat_completion_and_stream(served):
    _, _, client, _ = served
    out = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=10, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "alphaalpha"
    assert out.usage.completion_tokens == 10
    base = client.chat.completions.create(model="echo-base", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=9, temperature=0)
    assert base.choices[0].message.content == "<|user|>\n"  # the template's bytes, echoed
    chunks = list(client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "beta"
    assert chunks[-1].usage.completion_tokens == 4


def test_models_list_base_and_adapters_with_parent(served):
    _, _, client, root = served
    models = {m.id: m for m in client.models.list().data}
    assert {"echo-base", "alpha", "beta"} <= set(models)
    assert models["alpha"].parent == "echo-base" and models["beta"].parent == "echo-base"
    assert models["echo-base"].parent is None


def test_unknown_adapter_is_404(served):
    _, _, client, _ = served
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "nope" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="echo-base:nope", prompt="x", max_tokens=2)


def test_stop_string_cuts_text_and_frees_the_request():
    with echo_server(step_delay_s=0.005) as (server, engine):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
        out = client.completions.create(model="echo-base", prompt="abcXYZdef", max_tokens=50, stop=["XYZ"])
        assert out.choices[0].text == "abc" and out.choices[0].finish_reason == "stop"
        assert out.usage.completion_tokens < 50
        # the engine knows no stop strings: the server aborts the request so its cache is freed now
        assert wait_until(lambda: out.id in engine.aborted and not engine.has_unfinished())
        chunks = list(client.completions.create(model="echo-base", prompt="abcXYZdef", max_tokens=50, stop="YZ",
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == "abcX"
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_tgi_generate_and_stream_with_adapter_id(served):
    server, _, _, _ = served
    status, body = http_json(server.url, "POST", "/generate",
                             {"inputs": "zz", "parameters": {"max_new_tokens": 5, "adapter_id": "alpha"}})
    assert status == 200 and body["generated_text"] == "alpha"
    assert body["details"]["generated_tokens"] == 5
    status, text = http_json(server.url, "POST", "/generate_stream",
                             {"inputs": "zz", "parameters": {"max_new_tokens": 3}})
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert status == 200 and [e["token"]["text"] for e in events] == ["z", "z", "z"]
    assert events[-1]["generated_text"] == "zzz" and events[0]["generated_text"] is None


def test_concurrent_requests_get_their_own_tokens(served):
    _, _, client, _ = served
    models = ["alpha", "beta", "echo-base", "alpha", "beta", "echo-base", "alpha", "beta"]

    def one(i: int) -> tuple[str, str]:
        out = client.completions.create(model=models[i], prompt=f"p{i}", max_tokens=6, temperature=0)
        return models[i], out.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    expected = {"alpha": "alphaa", "beta": "betabe"}
    for i, (model, text) in enumerate(results):
        assert text == expected.get(model, (f"p{i}" * 3)[:6])


def test_load_and_unload_adapter_at_run_time(served):
    server, _, client, root = served
    make_adapter_dirs(root, ["gamma"])
    status, body = http_json(server.url, "POST", "/v1/load_lora_adapter",
                             {"lora_name": "gamma", "lora_path": str(root / "gamma")})
    assert status == 200, body
    assert "gamma" in {m.id for m in client.models.list().data}
    assert client.completions.create(model="gamma", prompt="x", max_tokens=5).choices[0].text == "gamma"
    status, body = http_json(server.url, "POST", "/v1/load_lora_adapter",
                             {"lora_name": "gamma", "lora_path": "gamma"})
    assert status == 400 and body["error"]["param"] == "lora_name"  # already loaded
    status, _ = http_json(server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "gamma"})
    assert status == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt="x", max_tokens=2)


def test_metrics_prometheus_counts_requests_tokens_and_engine_stats(served):
    server, _, client, _ = served
    before = parse_prometheus(http_json(server.url, "GET", "/metrics")[1])
    client.completions.create(model="echo-base", prompt="abc", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="abc", max_tokens=3)
    after = parse_prometheus(http_json(server.url, "GET", "/metrics")[1])
    key = 'lora_fleet_requests_total{status="200"}'
    assert after[key] - before.get(key, 0) == 1
    assert after['lora_fleet_requests_total{status="404"}'] - before.get('lora_fleet_requests_total{status="404"}', 0) == 1
    assert after["lora_fleet_output_tokens_total"] - before["lora_fleet_output_tokens_total"] == 3
    assert after["lora_fleet_prompt_tokens_total"] - before["lora_fleet_prompt_tokens_total"] == 4
    for gauge in ("running", "batch_size", "kv_blocks_used", "kv_blocks_total", "adapters_resident", "steps"):
        assert f"lora_fleet_{gauge}" in after
    assert after["lora_fleet_kv_blocks_total"] == 128 and after["lora_fleet_running"] == 0


def test_health(served):
    server, _, _, _ = served
    assert http_json(server.url, "GET", "/health") == (200, {"status": "ok"})


def test_engine_exception_fails_affected_requests_with_500_and_server_keeps_serving():
    with echo_server(step_delay_s=0.01) as (server, engine):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as err:
            client.completions.create(model="echo-base", prompt="BOOM", max_tokens=5)
        assert "simulated device failure" in str(err.value)
        out = client.completions.create(model="echo-base", prompt="fine", max_tokens=4)
        assert out.choices[0].text == "fine"
        chunks = client.completions.create(model="echo-base", prompt="BOOM", max_tokens=5, stream=True)
        with pytest.raises(openai.APIError):
            list(chunks)  # the error arrives as an SSE event after the 200 headers
        assert client.completions.create(model="echo-base", prompt="ok", max_tokens=2).choices[0].text == "ok"
        assert not engine.has_unfinished()


def test_max_queue_full_is_503_then_serves_again():
    with echo_server(step_delay_s=0.02, max_queue=1) as (server, _):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
        stream = client.completions.create(model="echo-base", prompt="slow", max_tokens=40, stream=True)
        first = next(iter(stream))
        assert first.choices[0].text == "s"
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="echo-base", prompt="x", max_tokens=2)
        assert err.value.status_code == 503 and "--max-queue" in str(err.value)
        assert len("".join(c.choices[0].text for c in stream)) == 39  # the first request was not disturbed
        assert client.completions.create(model="echo-base", prompt="x", max_tokens=2).choices[0].text == "xx"


def test_api_key_required_on_api_routes_not_on_health():
    with echo_server(api_key="sekret") as (server, _):
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        assert good.completions.create(model="echo-base", prompt="k", max_tokens=1).choices[0].text == "k"
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="echo-base", prompt="k", max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert http_json(server.url, "GET", "/health")[0] == 200


def test_client_disconnect_mid_stream_aborts_the_request():
    with echo_server(step_delay_s=0.02) as (server, engine):
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "echo-base", "prompt": "long", "max_tokens": 2000 // 40, "stream": True}),
            headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data:")  # one chunk arrived
        resp.close()
        conn.close()  # the client goes away mid-stream
        assert wait_until(lambda: engine.aborted and not engine.has_unfinished())
        assert len(engine.aborted) == 1
        metrics = parse_prometheus(http_json(server.url, "GET", "/metrics")[1])
        assert metrics["lora_fleet_client_aborts_total"] == 1 and metrics["lora_fleet_kv_blocks_used"] == 0
        assert metrics['lora_fleet_requests_total{status="499"}'] == 1
        assert http_json(server.url, "POST", "/v1/completions",
                         {"model": "echo-base", "prompt": "ok", "max_tokens": 2})[1]["choices"][0]["text"] == "ok"


def test_min_tokens_defers_stop_strings_over_http(served):
    _, _, client, _ = served
    out = client.completions.create(model="echo-base", prompt="abab", max_tokens=8, stop=["b"],
                                    extra_body={"min_tokens": 3})
    assert out.choices[0].text == "aba" and out.choices[0].finish_reason == "stop"
