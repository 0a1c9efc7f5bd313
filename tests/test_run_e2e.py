"""`harness run` end to end on the CPU: the stub server and each in-process engine; Ctrl-C and a dying server."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness import server_metrics
from harness.runner import run_engine
from harness.schema import (METRIC_KEYS, RECORD_EXTRA_FIELDS, RECORD_FIELDS, RUN_FILES, SUMMARY_EXTRA_KEYS,
                            SUMMARY_KEYS)
from harness.spec import load_workload
from harness.store import list_runs, load_run
from harness.trace import build_trace, read_trace

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e  # every test here starts a server and the load generator


def workload(tmp_path, **over):
    d = {"name": "e2e", "seed": 5, "duration_s": 3.0, "warmup_s": 0.5, "model": "tiny",
         "adapters": {"count": 3, "ranks": [4, 8]},
         "traffic": {"rate": 6.0, "popularity": {"kind": "zipf", "s": 1.0},
                     "arrivals": {"kind": "onoff", "mean_on_s": 1.0, "mean_off_s": 1.0},
                     "prompt_tokens": {"kind": "uniform", "low": 4, "high": 12},
                     "output_tokens": {"kind": "uniform", "low": 2, "high": 6}},
         "slo": {"ttft_s": 2.0, "tpot_s": 0.5}, "engines": ["multilora"],
         "loadgen": {"users": 32, "drain_timeout_s": 20}}
    d.update(over)
    path = tmp_path / "w.yaml"
    import yaml

    path.write_text(yaml.safe_dump(d))
    return path


def check_run(run_dir, spec, status="completed"):
    run = load_run(run_dir)
    assert run.status["status"] == status, run.status
    c = run.summary["counts"]
    assert c["ok"] + c["error"] + c["timeout"] + c["not_sent"] == c["total"] == len(build_trace(spec))
    assert set(SUMMARY_KEYS) <= set(run.summary) and set(METRIC_KEYS) <= set(run.summary["metrics"])
    assert set(SUMMARY_EXTRA_KEYS) <= set(run.summary)
    assert set(RECORD_FIELDS) | set(RECORD_EXTRA_FIELDS) <= set(run.records.columns)
    assert sorted(run.records["request_id"]) == list(range(c["total"]))
    for key in ("config", "trace", "records_jsonl", "records", "gpu", "server", "summary", "env", "status"):
        assert (run_dir / RUN_FILES[key]).is_file(), key
    return run


def test_stub_run_writes_a_complete_run_directory(tmp_path):
    spec = load_workload(workload(tmp_path))
    run_dir = run_engine(spec, {"name": "stub", "kind": "stub", "options": {"ttft_ms": 5, "token_delay_ms": 3}},
                         tmp_path / "runs", progress=False, log=lambda s: None)
    run = check_run(run_dir, spec)
    assert run.summary["counts"]["ok"] == run.summary["counts"]["total"] and run.summary["valid"]
    assert run.summary["engine"] == "stub" and run.summary["workload"] == "e2e"
    assert len(run.summary["windows"]["output_tok_s"]) == 3 and sum(run.summary["windows"]["output_tok_s"]) > 0
    assert run.summary["metrics"]["ttft_p50"] >= 0.004 and run.summary["metrics"]["jain_fairness"] == 1.0
    assert set(run.summary["per_adapter"]) <= {"adapter-0000", "adapter-0001", "adapter-0002"}
    assert read_trace(run_dir / "trace.csv").equals(build_trace(spec))
    assert run.config["workload"]["name"] == "e2e" and run.config["engine"]["kind"] == "stub"
    assert run.env["git"]["commit"] and "locust" in run.env["packages"]
    assert run.env["gpu"]["available"] or run.env["gpu"]["reason"]  # no GPU here: it says why
    assert list(run.server.columns) == ["t", "metric", "labels", "value"]  # stored long
    assert "lora_fleet_running" in set(run.server["metric"])
    last_token = max(t for ts in run.records["token_times"] for t in ts)
    assert run.server["t"].max() > last_token  # the last scrape came after the load
    assert list_runs(tmp_path / "runs") == [run_dir]


@pytest.mark.parametrize("engine", ["multilora", "merged", "peft"])
def test_in_process_engines(tmp_path, engine):
    spec = load_workload(workload(tmp_path, duration_s=2.0))
    run_dir = run_engine(spec, engine, tmp_path / "runs", progress=False, log=lambda s: None)
    run = check_run(run_dir, spec)
    assert run.summary["counts"]["ok"] == run.summary["counts"]["total"], run.records["error"].tolist()
    ok = run.records
    assert (ok["output_tokens"] == ok["requested_output_tokens"]).all()  # min_tokens + ignore_eos honoured
    assert run.summary["metrics"]["output_tok_s"] > 0
    mapped = set(server_metrics.series(run.server)["series"])  # peft has no paged KV cache: no kv_use
    assert {"requests_running", "requests_waiting", "adapters_resident"} <= mapped


def test_a_server_that_cannot_start_leaves_an_error_run(tmp_path):
    spec = load_workload(workload(tmp_path))
    printed = []
    run_dir = run_engine(spec, {"name": "stub", "kind": "stub", "options": {"chunk_tokens": 0}}, tmp_path / "runs",
                         progress=False, log=printed.append)
    run = check_run(run_dir, spec, status="error")
    assert "exited with code 2 before it was ready" in run.status["message"]
    assert "--chunk-tokens must be >= 1" in run.status["message"]  # the server's own words, from its log
    assert run.summary["counts"]["not_sent"] == run.summary["counts"]["total"] and not run.summary["valid"]
    # the cause is in the one-line reason and, with the end of the server's log, on the console
    assert "--chunk-tokens must be >= 1" in run.summary["invalid_reasons"][0]
    assert "--chunk-tokens must be >= 1" in printed[-1] and printed[-1].startswith("[stub] error: ")


def test_cli_exits_1_with_the_reason_per_engine_when_a_run_is_invalid(tmp_path, capsys):
    from harness.cli import main

    bad = '{"name": "stub", "kind": "stub", "label": "broken", "options": {"chunk_tokens": 0}}'
    code = main(["run", str(workload(tmp_path, duration_s=1.0)), "--engine", "stub", "--engine", bad,
                 "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--machine", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "harness run: broken: invalid: run error: server exited with code 2" in err and "chunk-tokens" in err
    assert "harness run: stub:" not in err  # the valid run is not blamed
    runs = {load_run(p).engine: load_run(p) for p in list_runs(tmp_path / "runs")}
    assert runs["stub"].summary["valid"] and not runs["broken"].summary["valid"]
    # config.json holds the resolved spec and how it was resolved
    config = runs["stub"].config
    assert config["workload"]["duration_s"] == 1.0 and "cpu" not in config["workload"]
    assert config["resolution"]["machine"] == "cpu" and config["resolution"]["precedence"].startswith("the workload file")


def test_external_engine_attached_by_url(tmp_path):
    from harness.server_proc import ServerProcess

    stub = ServerProcess([sys.executable, "-m", "harness.loadgen.stub_server", "--port", "0", "--model", "tiny",
                          "--adapters", "adapter-0000,adapter-0001,adapter-0002"], tmp_path / "stub.log")
    stub.start()
    try:
        spec = load_workload(workload(tmp_path, duration_s=2.0))
        run_dir = run_engine(spec, {"name": "vllm-like", "kind": "external", "url": stub.url}, tmp_path / "runs",
                             progress=False, log=lambda s: None)
        assert stub.alive()  # attached, not launched: the harness leaves it running
    finally:
        stub.stop()
    run = check_run(run_dir, spec)
    assert run.summary["engine"] == "vllm-like" and run.summary["engine_kind"] == "external"
    assert run.summary["counts"]["ok"] == run.summary["counts"]["total"]


def start_cli(tmp_path, *extra):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(workload(tmp_path, **dict(extra))),
                             "--engine", "stub", "--runs-dir", str(runs), "--no-progress", "--machine", "cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until a few records are written
        files = list(runs.glob("*/records.jsonl"))
        text = files[0].read_text() if files else ""
        if text.count("\n") - text.count('"status":"sent"') >= 5:  # finished requests (not just sent)
            return proc, files[0].parent
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no records appeared: {proc.communicate()[0]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_the_records(tmp_path, sig):
    proc, run_dir = start_cli(tmp_path, ("duration_s", 30.0), ("traffic", {"rate": 10.0}))
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    spec = load_workload(workload(tmp_path, duration_s=30.0, traffic={"rate": 10.0}))
    run = check_run(run_dir, spec, status="interrupted")
    c = run.summary["counts"]
    assert c["ok"] >= 5 and c["not_sent"] > 0 and not run.summary["valid"]
    assert "interrupted" in out and "records gathered so far are kept" in out


def test_a_server_killed_mid_run_is_server_died(tmp_path):
    proc, run_dir = start_cli(tmp_path, ("duration_s", 30.0), ("traffic", {"rate": 10.0}))
    try:
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "harness.loadgen.stub_server" in " ".join(p.cmdline())]
        assert len(servers) == 1
        os.kill(servers[0].pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    spec = load_workload(workload(tmp_path, duration_s=30.0, traffic={"rate": 10.0}))
    run = check_run(run_dir, spec, status="server_died")
    assert run.summary["counts"]["ok"] >= 5 and run.summary["counts"]["not_sent"] > 0
    assert run.summary["invalid_reasons"][0].startswith("run server_died: the server exited during the load")
    assert "server_died" in out
