"""Faults around the server: runtime adapter loading (off by default, serialised, capped), unloading an adapter
in use, overload answered with 503 + Retry-After, and a SIGTERM drain that ends open streams with an error event."""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engines.procs import ChildProcess, group_members
from engines.server.app import drain
from engines.server.state import STATE
from tests.test_server import http_json, wait_until
from tests.test_server_support import echo_server, make_adapter_dirs

REPO = Path(__file__).resolve().parent.parent


def _open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _events(resp: http.client.HTTPResponse) -> list:
    """Every SSE data payload to the end of the stream ("[DONE]" as a string)."""
    out = []
    for line in resp:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def test_runtime_loading_is_off_unless_enabled(tmp_path):
    root = make_adapter_dirs(tmp_path, ["alpha", "delta"])
    with echo_server(root, adapter_root=str(root)) as (server, engine):
        for path, body in [("/v1/load_lora_adapter", {"lora_name": "d", "lora_path": "delta"}),
                           ("/v1/unload_lora_adapter", {"lora_name": "alpha"})]:
            status, payload = http_json(server.url, "POST", path, body)
            assert status == 403 and "--enable-runtime-lora" in payload["error"]["message"]
        assert set(engine.adapters()) == {"alpha", "delta"} and engine.registrations == 2  # the start ones


def test_runtime_loading_honours_the_api_key_and_the_count_cap(tmp_path):
    root = make_adapter_dirs(tmp_path, ["a0", "a1", "a2"])
    with echo_server(adapter_root=str(root), runtime_lora=True, max_runtime_loras=2, api_key="k") as (server, _):
        key = {"Authorization": "Bearer k"}
        assert http_json(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "a0"})[0] == 401
        for i in range(2):
            assert http_json(server.url, "POST", "/v1/load_lora_adapter",
                             {"lora_name": f"n{i}", "lora_path": f"a{i}"}, key)[0] == 200
        status, payload = http_json(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "n2", "lora_path": "a2"},
                                    key)
        assert status == 409 and "--max-runtime-loras" in payload["error"]["message"]
        assert http_json(server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "n0"}, key)[0] == 200
        assert http_json(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "n2", "lora_path": "a2"},
                         key)[0] == 200


def test_simultaneous_loads_of_one_name_load_it_once(tmp_path):
    root = make_adapter_dirs(tmp_path, ["delta", "other"])
    with echo_server(adapter_root=str(root), runtime_lora=True, register_delay_s=0.3) as (server, engine):
        body = {"lora_name": "d", "lora_path": "delta"}
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            same = [pool.submit(http_json, server.url, "POST", "/v1/load_lora_adapter", body) for _ in range(4)]
            assert wait_until(lambda: "d" in server.app[STATE].loading)
            other = http_json(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "d", "lora_path": "other"})
            results = [f.result() for f in same]
        assert [r[0] for r in results] == [200] * 4, results
        assert other[0] in (400, 409), other  # another folder under the same name: refused, never a 500
        assert engine.registrations == 1 and engine.adapters() == {"d": str(root / "delta")}


def test_unloading_an_adapter_in_use_waits_for_its_requests(tmp_path):
    root = make_adapter_dirs(tmp_path, ["alpha"])
    with echo_server(root, adapter_root=str(root), runtime_lora=True, step_delay_s=0.01,
                     unload_wait_s=60) as (server, engine):
        conn, resp = _open_stream(server.url, {"model": "alpha", "prompt": "x", "max_tokens": 40})
        assert resp.status == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            unload = pool.submit(http_json, server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "alpha"})
            assert wait_until(lambda: "alpha" in server.app[STATE].unloading)
            assert http_json(server.url, "POST", "/v1/completions", {"model": "alpha", "prompt": "x"})[0] == 404
            events = _events(resp)
            assert unload.result()[0] == 200
        text = "".join(e["choices"][0]["text"] for e in events if isinstance(e, dict) and e["choices"])
        assert events[-1] == "[DONE]" and text == ("alpha" * 8)[:40]  # the stream finished whole
        assert engine.adapters() == {}
        conn.close()


def test_unloading_an_adapter_in_use_answers_409_after_its_wait(tmp_path):
    root = make_adapter_dirs(tmp_path, ["alpha"])
    with echo_server(root, adapter_root=str(root), runtime_lora=True, step_delay_s=0.01,
                     unload_wait_s=0) as (server, engine):
        conn, resp = _open_stream(server.url, {"model": "alpha", "prompt": "x", "max_tokens": 30})
        status, payload = http_json(server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "alpha"})
        assert status == 409 and payload["error"]["code"] == "adapter_in_use"
        assert _events(resp)[-1] == "[DONE]"
        assert "alpha" in engine.adapters()
        conn.close()


def test_the_default_queue_is_bounded_by_the_engine_and_503_says_when_to_retry():
    with echo_server() as (server, engine):
        assert server.app[STATE].queue_limit == 2 * engine.max_running()
    with echo_server(step_delay_s=0.02, max_queue=1) as (server, _):
        conn, resp = _open_stream(server.url, {"model": "echo-base", "prompt": "x", "max_tokens": 30})
        host, port = server.url.removeprefix("http://").split(":")
        second = http.client.HTTPConnection(host, int(port), timeout=30)
        second.request("POST", "/v1/completions", body=json.dumps({"model": "echo-base", "prompt": "y"}),
                       headers={"Content-Type": "application/json"})
        answer = second.getresponse()
        assert answer.status == 503 and answer.getheader("Retry-After") == "1"
        assert json.loads(answer.read())["error"]["code"] == "queue_full"
        assert _events(resp)[-1] == "[DONE]"
        metrics = http_json(server.url, "GET", "/metrics")[1]
        assert "lora_fleet_rejected_total 1" in metrics
        conn.close()
        second.close()
    with echo_server(max_queue=0) as (server, _):
        assert server.app[STATE].queue_limit is None


def test_drain_ends_open_streams_with_an_error_event_and_refuses_new_requests():
    with echo_server(step_delay_s=0.05) as (server, engine):
        streams = [_open_stream(server.url, {"model": "echo-base", "prompt": "x", "max_tokens": 60})
                   for _ in range(3)]
        forced = asyncio.Event()
        done = threading.Event()
        future = asyncio.run_coroutine_threadsafe(drain(server.app, 600, forced), server.loop)
        future.add_done_callback(lambda _: done.set())
        assert wait_until(lambda: server.app[STATE].draining)
        status, payload = http_json(server.url, "POST", "/v1/completions", {"model": "echo-base", "prompt": "y"})
        assert status == 503 and "shutting down" in payload["error"]["message"]
        server.loop.call_soon_threadsafe(forced.set)  # a second SIGTERM: stop waiting for the streams
        for conn, resp in streams:
            events = _events(resp)
            assert events[-1] == "[DONE]" and "shutting down" in events[-2]["error"]["message"], events[-3:]
            conn.close()
        assert done.wait(30) and future.result() is None
        assert server.app[STATE].metrics.in_flight == 0


@pytest.mark.e2e
def test_sigterm_with_streams_open_ends_each_with_an_error_event_or_its_end(tmp_path):
    """The real signal path: `python -m engines.server`, 12 streams open, SIGTERM; every stream ends with
    [DONE] (finished or with the shutdown error event) and the process exits 0 within the drain bound."""
    cmd = [sys.executable, "-m", "engines.server", "--engine", "multilora", "--model", "tiny", "--port", "0",
           "--drain-s", "0.5", "--engine-config", json.dumps({"device": "cpu"})]
    with ChildProcess(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO) as child:
        url = child.proc.stdout.readline().decode().split()[1]
        streams = [_open_stream(url, {"model": "tiny", "prompt": [256, i], "max_tokens": 2000, "ignore_eos": True})
                   for i in range(12)]
        assert all(resp.status == 200 for _, resp in streams)
        child.send(signal.SIGTERM)
        ends = [_events(resp) for _, resp in streams]
        assert child.wait(60) == 0
    cut = 0
    for events in ends:
        assert events[-1] == "[DONE]", events[-2:]
        if "error" in events[-2]:
            assert "shutting down" in events[-2]["error"]["message"]
            cut += 1
        else:  # finished within the drain
            assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert cut >= 1  # 12 x 2000 tokens on a CPU outlast the 0.5 s drain
    assert not group_members(child.pid)
