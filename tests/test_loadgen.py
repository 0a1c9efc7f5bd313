"""The Locust process against the stub server: open-loop timing, chunk counting, failures, timeouts, workers, SIGINT."""
import sys
import time

import pandas as pd
import pytest

from harness.loadgen.launch import LoadgenProcess
from harness.progress import RecordProgress
from harness.scrape import MetricsScraper, parse_prometheus
from harness.server_proc import ServerError, ServerProcess
from harness.store import read_records_jsonl
from harness.trace import write_trace


def stub(tmp_path, *flags):
    server = ServerProcess([sys.executable, "-m", "harness.loadgen.stub_server", "--port", "0", *flags],
                           tmp_path / f"stub{len(list(tmp_path.glob('stub*.log')))}.log", ready_timeout_s=30)
    server.start()
    return server


def make_trace(tmp_path, n, rate, out_tokens=4, adapters=("adapter-0000", "adapter-0001", "")):
    df = pd.DataFrame({"request_id": range(n), "t": [i / rate for i in range(n)],
                       "adapter": [adapters[i % len(adapters)] for i in range(n)],
                       "prompt_tokens": [5 + i % 7 for i in range(n)], "output_tokens": out_tokens})
    return write_trace(df, tmp_path / "trace.csv"), df


def run_loadgen(tmp_path, url, trace, *, workers=1, request_timeout_s=30.0, drain_timeout_s=10.0, users=64,
                name="records.jsonl"):
    out = tmp_path / name
    lg = LoadgenProcess(trace, url, out, "tiny", warmup_s=0.2, users=users, workers=workers,
                        request_timeout_s=request_timeout_s, drain_timeout_s=drain_timeout_s,
                        log_path=tmp_path / "loadgen.log").start()
    try:
        assert lg.wait(120) == 0, lg.log_tail()
    finally:
        lg.interrupt()
    return lg, read_records_jsonl(out)


@pytest.mark.e2e
def test_open_loop_streaming_records(tmp_path):
    server = stub(tmp_path, "--ttft-ms", "20", "--token-delay-ms", "5")
    try:
        trace, df = make_trace(tmp_path, 60, rate=30.0, out_tokens=5)
        lg, rec = run_loadgen(tmp_path, server.url, trace)
    finally:
        server.stop()
    assert lg.result["reason"] == "completed" and lg.result["ok"] == 60 and lg.t0 is not None
    assert sorted(rec["request_id"]) == list(range(60)) and (rec["status"] == "ok").all()
    rec = rec.set_index("request_id").sort_index()
    assert (rec["intended_send"] == df["t"].round(6)).all()  # as written in the trace file
    lag = rec["actual_send"] - rec["intended_send"]
    assert (lag >= 0).all() and lag.median() < 0.05  # released at the intended time, open loop
    ttft = rec["first_token"] - rec["actual_send"]
    assert ttft.min() >= 0.018 and (rec["output_tokens"] == 5).all()
    assert all(len(t) == 5 and list(t) == sorted(t) for t in rec["token_times"])
    gaps = [b - a for t in rec["token_times"] for a, b in zip(t, t[1:])]
    assert sorted(gaps)[len(gaps) // 2] >= 0.004  # the stub's 5 ms between tokens (a busy client may coalesce some)
    assert (rec["prompt_tokens"] == df["prompt_tokens"]).all()
    assert rec["in_window"].tolist() == (df["t"] >= 0.2).tolist()


@pytest.mark.e2e
def test_multi_token_chunks_use_the_servers_counts(tmp_path):
    server = stub(tmp_path, "--ttft-ms", "5", "--token-delay-ms", "20", "--chunk-tokens", "3")
    try:
        trace, _ = make_trace(tmp_path, 6, rate=20.0, out_tokens=7)
        _, rec = run_loadgen(tmp_path, server.url, trace)
    finally:
        server.stop()
    assert (rec["status"] == "ok").all() and (rec["output_tokens"] == 7).all()
    for times, first in zip(rec["token_times"], rec["first_chunk_tokens"]):
        # chunks 3+3+1 without counts: usage says 7, spread evenly over 3 chunks as 3, 2, 2
        assert len(times) == 7 and first == 3 and times[0] == times[1] == times[2]
        assert times[3] - times[2] == pytest.approx(times[4] - times[3], abs=1e-9)


@pytest.mark.e2e
def test_failures_and_timeouts_are_records_not_losses(tmp_path):
    server = stub(tmp_path, "--fail-every", "4", "--ttft-ms", "1", "--token-delay-ms", "1")
    try:
        trace, _ = make_trace(tmp_path, 20, rate=50.0)
        _, rec = run_loadgen(tmp_path, server.url, trace)
    finally:
        server.stop()
    assert len(rec) == 20
    errors = rec[rec["status"] == "error"]
    assert len(errors) == 5 and (errors["http_status"] == 500).all()
    assert errors["error"].str.contains("injected failure").all()
    slow = stub(tmp_path, "--ttft-ms", "1", "--token-delay-ms", "400")
    try:
        trace, _ = make_trace(tmp_path, 4, rate=20.0, out_tokens=10)
        lg, rec = run_loadgen(tmp_path, slow.url, trace, request_timeout_s=0.5, name="slow.jsonl")
    finally:
        slow.stop()
    assert (rec["status"] == "timeout").all() and len(rec) == 4
    assert rec["error"].str.contains("no end of stream after 0.5 s").all()
    assert all(0 < len(t) < 10 for t in rec["token_times"])  # tokens that arrived before the timeout are kept


@pytest.mark.e2e
def test_unknown_adapter_and_dead_server(tmp_path):
    server = stub(tmp_path, "--adapters", "adapter-0000")
    try:
        trace, _ = make_trace(tmp_path, 4, rate=20.0, adapters=("adapter-0000", "nope"))
        _, rec = run_loadgen(tmp_path, server.url, trace)
    finally:
        server.stop()
    by = rec.set_index("adapter")
    assert (by.loc["adapter-0000", "status"] == "ok").all()
    assert (by.loc["nope", "http_status"] == 404).all() and (by.loc["nope", "status"] == "error").all()
    # nothing listens any more: every request is an error record with the cause
    _, rec = run_loadgen(tmp_path, server.url, trace, name="dead.jsonl")
    assert len(rec) == 4 and (rec["status"] == "error").all() and (rec["http_status"] == 0).all()


@pytest.mark.e2e
def test_master_worker_mode_shares_the_trace(tmp_path):
    server = stub(tmp_path, "--ttft-ms", "2", "--token-delay-ms", "2")
    try:
        trace, _ = make_trace(tmp_path, 80, rate=40.0)
        lg, rec = run_loadgen(tmp_path, server.url, trace, workers=2, users=16)
    finally:
        server.stop()
    assert lg.result["workers_done"] == 2 and lg.result["ok"] == 80
    assert sorted(rec["request_id"]) == list(range(80)) and (rec["status"] == "ok").all()
    lag = rec["actual_send"] - rec["intended_send"]
    assert lag.median() < 0.05


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.e2e
def test_sigint_keeps_the_records_of_what_ran(tmp_path, workers):
    server = stub(tmp_path, "--ttft-ms", "1", "--token-delay-ms", "300")
    try:
        trace, _ = make_trace(tmp_path, 100, rate=20.0, out_tokens=3)
        out = tmp_path / "records.jsonl"
        lg = LoadgenProcess(trace, server.url, out, "tiny", warmup_s=0, users=32, workers=workers, request_timeout_s=30,
                            drain_timeout_s=10, log_path=tmp_path / "loadgen.log").start()
        assert lg.started.wait(30)
        time.sleep(1.5)
        lg.interrupt()
    finally:
        server.stop()
    rec = read_records_jsonl(out)
    assert lg.result["reason"] == "interrupted"
    assert 10 <= len(rec) < 100 and len(rec) == lg.result["released"] == lg.result["written"]
    assert (rec["status"] == "ok").sum() >= 5
    stopped = rec[rec["status"] != "ok"]
    assert len(stopped) >= 1 and stopped["error"].str.contains("interrupted").all()


def test_scraper_parser_and_progress(tmp_path):
    values = parse_prometheus('# HELP x\nlora_fleet_running 3\nreq_total{status="ok"} 7 1700000\n'
                              'bad line here\nlatency{le="+Inf"} 2\nlatency_bucket{le="1"} 1\n')
    assert values == [("lora_fleet_running", "", 3.0), ("req_total", 'status="ok"', 7.0),
                      ("latency", 'le="+Inf"', 2.0)]  # histogram buckets are skipped
    server = stub(tmp_path)
    try:
        scraper = MetricsScraper(server.url + "/metrics", interval_s=0.1).start()
        deadline = time.monotonic() + 30
        while scraper.scrapes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scraper.finish()  # the last scrape after the load
    finally:
        server.stop()
    frame = scraper.frame(t0=0.0)
    assert scraper.scrapes >= 3 and list(frame.columns) == ["t", "metric", "labels", "value"]
    assert frame["t"].nunique() == scraper.scrapes and "lora_fleet_running" in set(frame["metric"])
    path = tmp_path / "r.jsonl"
    path.write_text('{"a":1}\n{"a":2}\n{"a"')
    bar = RecordProgress(path, total=3, desc="x", enabled=False)
    assert bar.poll() == 2
    with path.open("a") as f:
        f.write(':3}\n')
    assert bar.poll() == 3


def test_server_process_errors_carry_the_log(tmp_path):
    bad = ServerProcess([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                        tmp_path / "bad.log", ready_timeout_s=10)
    with pytest.raises(ServerError, match=r"exited with code 3 before it was ready:[\s\S]*boom"):
        bad.start()
    silent = ServerProcess([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "silent.log",
                           ready_timeout_s=1)
    with pytest.raises(ServerError, match="no READY line within 1 s"):
        silent.start()
    assert not silent.alive()


@pytest.mark.e2e
def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    import json

    from harness.loadgen.bench import main as bench

    out = tmp_path / "bench.json"
    assert bench(["--workers", "1", "--start-rate", "40", "--max-rate", "40", "--duration-s", "1",
                  "--max-lag-ms", "1000", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max sustained req/s" in text and "offered/s" in text
    result = json.loads(out.read_text())
    trial = result["trials"][0]
    assert trial["offered_req_s"] == 40 and trial["requests"] == 40 and trial["ok"] == 40 and trial["sustained"]
    assert result["max_sustained_req_s"] == {"1": 40} and result["target_req_s"] == 500


@pytest.mark.e2e
def test_a_full_queue_is_recorded_as_rejected_not_as_an_error(tmp_path):
    server = stub(tmp_path, "--ttft-ms", "5", "--token-delay-ms", "100", "--max-running", "3")
    try:
        trace, _ = make_trace(tmp_path, 30, rate=60.0, out_tokens=5)
        lg, rec = run_loadgen(tmp_path, server.url, trace)
    finally:
        server.stop()
    assert sorted(rec["request_id"]) == list(range(30))
    rejected = rec[rec["status"] == "rejected"]
    assert len(rejected) >= 1 and (rejected["http_status"] == 503).all()
    assert set(rec["status"]) <= {"ok", "rejected"}  # never counted as engine errors
    assert lg.result["rejected"] == len(rejected) and lg.result["ok"] == len(rec) - len(rejected)
