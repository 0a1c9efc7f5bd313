"""Metrics on synthetic records with known answers (multi-token chunks, failed requests), and the run store."""
import json

import numpy as np
import pandas as pd
import pytest

from harness.loadgen.chunks import chunk_token_count, completion_body, prompt_ids, token_times
from harness.metrics import jain, summarize
from harness.schema import METRIC_KEYS, RECORD_FIELDS
from harness.store import RunWriter, list_runs, load_run, read_records_jsonl

NAN = float("nan")


def rec(rid, adapter, send, times, *, first=1, status="ok", intended=None, end=None, out=None, window=True):
    times = list(times)
    return {"request_id": rid, "adapter": adapter, "intended_send": send if intended is None else intended,
            "actual_send": send, "first_token": times[0] if times else NAN,
            "end": end if end is not None else (times[-1] if times else send), "token_times": times,
            "first_chunk_tokens": first, "prompt_tokens": 8, "output_tokens": len(times) if out is None else out,
            "status": status, "http_status": 200 if status == "ok" else 500, "error": "" if status == "ok" else "x",
            "in_window": window}


def test_token_times_chunk_rule():
    # one token per chunk: times as they came
    assert token_times([1.0, 1.2, 1.3], [1, 1, 1], 3) == ([1.0, 1.2, 1.3], 1)
    # a chunk of 4 after 0.4 s: 4 equal gaps of 0.1
    times, first = token_times([1.0, 1.4], [1, 4], 5)
    assert np.allclose(times, [1.0, 1.1, 1.2, 1.3, 1.4]) and first == 1
    # a first chunk of 2: both at the first arrival
    times, first = token_times([1.0, 1.3], [2, 3], 5)
    assert np.allclose(times, [1.0, 1.0, 1.1, 1.2, 1.3]) and first == 2
    # the server's usage says 4 tokens over 2 chunks sent without counts: spread evenly
    times, first = token_times([1.0, 2.0], [1, 1], 4)
    assert np.allclose(times, [1.0, 1.0, 1.5, 2.0]) and first == 2
    assert token_times([], [], 0) == ([], 0)
    assert chunk_token_count({"text": "ab", "token_ids": [1, 2, 3]}) == 3
    assert chunk_token_count({"text": "ab", "logprobs": {"tokens": ["a", "b"]}}) == 2
    assert chunk_token_count({"text": ""}) == 0 and chunk_token_count({"text": "z"}) == 1


def test_request_body_asks_for_exact_lengths():
    body = json.loads(completion_body(7, "adapter-0003", 12, 9))
    assert body["model"] == "adapter-0003" and body["prompt"] == prompt_ids(7, 12) and len(body["prompt"]) == 12
    assert body["max_tokens"] == body["min_tokens"] == 9 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert all(3 <= t < 243 for t in prompt_ids(123456, 500)) and prompt_ids(1, 20) != prompt_ids(2, 20)


def summary_of(records, **kw):
    args = dict(warmup_s=0.0, duration_s=10.0, slo={"ttft_s": 0.5, "tpot_s": 0.15}, max_lag_p99_s=0.05)
    args.update(kw)
    return summarize(pd.DataFrame(records), **args)


def test_latencies_throughput_and_slo_on_known_records():
    records = [
        rec(0, "a", 1.0, [1.1, 1.2, 1.3]),  # ttft .1, e2e .3, tpot .1, itl [.1, .1]: good
        rec(1, "a", 2.0, [2.8, 3.0, 3.2]),  # ttft .8 > .5: misses the SLO
        rec(2, "b", 3.0, [3.2, 3.6, 3.7, 3.8, 3.9], first=2,  # chunk of 2 first, then 0.1 gaps
            ),
        rec(3, "b", 4.0, [], status="error", end=4.01),
        rec(4, "b", 5.0, [], status="timeout", end=9.0),
        {**rec(5, "b", NAN, [], status="not_sent", intended=6.0), "end": NAN},
    ]
    # record 2 has token times built by the chunk rule: [3.2, 3.2, ...] in real runs; here 3.2 then 3.6 etc.
    records[2]["token_times"] = [3.2, 3.2, 3.5, 3.6, 3.7]
    records[2]["end"] = 3.7
    s = summary_of(records)
    m, c = s["metrics"], s["counts"]
    assert c == {"total": 6, "sent": 5, "ok": 3, "error": 1, "timeout": 1, "rejected": 0, "not_sent": 1}
    assert c["ok"] + c["error"] + c["timeout"] + c["not_sent"] == c["total"]
    assert m["ttft_p50"] == pytest.approx(0.2)  # ttfts .1, .8, .2
    assert m["e2e_p50"] == pytest.approx(0.7)  # e2es .3, 1.2, .7
    tpots = [0.1, 0.2, 0.5 / 4]
    assert m["tpot_p50"] == pytest.approx(np.percentile(tpots, 50))
    itl = [0.1, 0.1, 0.2, 0.2, 0.3, 0.1, 0.1]  # record 2's first chunk adds no zero gap
    assert m["itl_p50"] == pytest.approx(np.percentile(itl, 50)) and m["itl_p99"] == pytest.approx(np.percentile(itl, 99))
    assert m["req_s"] == pytest.approx(3 / 10) and m["output_tok_s"] == pytest.approx(11 / 10)
    # good: record 0 (tpot .1) and record 2 (ttft .2, tpot .125); record 1 misses TTFT; 3 failed ones miss
    assert m["goodput_req_s"] == pytest.approx(2 / 10) and m["goodput"] == pytest.approx(8 / 10)
    assert m["slo_attainment"] == pytest.approx(2 / 6)
    pa = s["per_adapter"]
    assert pa["a"]["slo_attainment"] == 0.5 and pa["b"]["slo_attainment"] == pytest.approx(1 / 4)
    assert m["jain_fairness"] == pytest.approx(jain([0.5, 0.25]))
    assert pa["b"]["error"] == 1 and pa["b"]["timeout"] == 1 and pa["b"]["not_sent"] == 1
    assert set(METRIC_KEYS) <= set(m)
    assert s["valid"] is False and any("never sent" in r for r in s["invalid_reasons"])


def test_windows_count_measured_requests_over_the_measured_span():
    records = [rec(0, "a", 0.0, [0.5, 1.5, 1.6, 2.5]), rec(1, "a", 0.1, [0.2, 0.3], window=False),
               rec(2, "a", 1.0, [1.2, 3.7])]
    s = summary_of(records, duration_s=3.0, slo={})
    w = s["windows"]
    assert s["measured_s"] == pytest.approx(3.7)  # the last measured request ended at 3.7 s
    assert w["t"] == [0.0, 1.0, 2.0] and w["bin_s"] == 1.0  # whole bins of the measured span
    assert w["output_tok_s"] == [1.0, 3.0, 1.0]  # tokens of measured requests only, where they arrived
    assert w["req_s"] == [0.0, 0.0, 1.0] and w["goodput"] == [1.0, 3.0, 1.0]
    # the same rule as the totals: every measured token lies in [warm-up, warm-up + measured span)
    assert s["metrics"]["output_tok_s"] * s["measured_s"] == pytest.approx(6)
    assert s["counts"]["total"] == 3 and s["per_adapter"]["a"]["requests"] == 2  # only measured requests


def test_means_standard_deviations_and_chosen_percentiles():
    records = [rec(i, "a", float(i), [i + 0.1 * (i + 1), i + 2.0]) for i in range(5)]
    s = summary_of(records, slo={}, percentiles=(95, 99.9))
    m = s["metrics"]
    ttft = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert m["ttft_mean"] == pytest.approx(ttft.mean()) and m["ttft_std"] == pytest.approx(ttft.std())
    assert m["ttft_p95"] == pytest.approx(np.percentile(ttft, 95))
    assert m["ttft_p99.9"] == pytest.approx(np.percentile(ttft, 99.9))
    assert m["ttft_p50"] is not None and m["e2e_mean"] == pytest.approx(2.0) and m["e2e_std"] == pytest.approx(0)
    assert s["percentiles"] == ["p50", "p90", "p95", "p99", "p99.9"]
    assert m["itl_mean"] == pytest.approx((2.0 - ttft).mean())
    with pytest.raises(ValueError, match="percentile 100"):
        summary_of(records, percentiles=(100,))


def test_gate_samples_are_recomputed_from_records_jsonl(tmp_path):
    """The gate's per-window samples follow from records.jsonl alone, by the rule of docs/loadgen.md."""
    import math

    from fixtures_runs import make_run
    from harness.baseline import snapshot_dirs

    run = make_run(tmp_path, duration_s=12.0, warmup_s=2.0)
    summary = json.loads((run / "summary.json").read_text())
    warmup, span = summary["warmup_s"], summary["measured_s"]
    n = math.floor(span)
    tokens, ends, served = [0] * n, [0] * n, [0] * n
    total = 0
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        for t in r["token_times"]:  # served: every token streamed in the span, whatever its request
            if warmup <= t < warmup + n:
                served[int(t - warmup)] += 1
        if not r["in_window"] or r["status"] != "ok":
            continue
        total += r["output_tokens"]
        for t in r["token_times"]:
            assert warmup <= t <= warmup + span  # every token of a measured request lies in the measured span
            if t < warmup + n:
                tokens[int(t - warmup)] += 1
        if r["end"] < warmup + n:
            ends[int(r["end"] - warmup)] += 1
    assert summary["metrics"]["output_tok_s"] == pytest.approx(total / span)
    doc = snapshot_dirs([run])
    per_window = doc["engines"]["multilora"]["metrics"]["output_tok_s"]["per_window"]
    assert per_window == [[float(x) for x in tokens]]
    assert doc["engines"]["multilora"]["metrics"]["req_s"]["per_window"] == [[float(x) for x in ends]]
    assert doc["engines"]["multilora"]["metrics"]["served_tok_s"]["per_window"] == [[float(x) for x in served]]


def test_warmup_excluded_and_span_stretches_when_the_server_is_slow():
    records = [rec(0, "a", 0.5, [0.6, 0.7], window=False), rec(1, "a", 2.0, [20.0, 22.0])]
    s = summary_of(records, warmup_s=1.0, duration_s=5.0, slo={})
    assert s["measured_s"] == pytest.approx(21.0)  # last measured request ended 21 s after the warm-up
    assert s["metrics"]["req_s"] == pytest.approx(1 / 21) and s["metrics"]["ttft_p99"] == pytest.approx(18.0)


def test_client_lag_makes_a_run_invalid():
    records = [rec(i, "a", 1.0 + i + 0.2, [2.0 + i], intended=1.0 + i) for i in range(5)]
    s = summary_of(records)
    assert s["metrics"]["schedule_lag_p99"] == pytest.approx(0.2) and s["metrics"]["schedule_lag_max"] == pytest.approx(0.2)
    assert not s["valid"] and "client fell behind" in s["invalid_reasons"][0]
    assert summary_of(records, max_lag_p99_s=0.5)["valid"]


def test_one_token_replies_and_gpu_energy():
    records = [rec(0, "a", 0.0, [0.1]), rec(1, "a", 1.0, [1.1])]
    gpu = pd.DataFrame({"t": [0.0, 5.0, 10.0, 0.0, 5.0, 10.0], "gpu": [0, 0, 0, 1, 1, 1],
                        "util_pct": [50, 70, 90, 10, 10, 10], "mem_used_gb": [1, 2, 3, 4, 4, 4],
                        "power_w": [100] * 6, "energy_j": [0, 500, 1000, NAN, NAN, NAN]})
    s = summary_of(records, slo={"tpot_s": 0.01}, gpu=gpu)
    m = s["metrics"]
    assert m["tpot_p50"] is None and m["slo_attainment"] == 1.0  # no TPOT to miss with one token
    assert m["gpu_util_mean"] == pytest.approx(40.0) and m["gpu_mem_max_gb"] == 4
    assert m["energy_j"] == pytest.approx(1000 + 1000)  # counter on GPU 0, power integrated on GPU 1
    assert m["energy_per_token_j"] == pytest.approx(1000.0)
    assert summary_of(records)["metrics"]["gpu_util_mean"] is None


def test_jain():
    assert jain([1, 1, 1]) == 1.0 and jain([1, 0]) == 0.5 and jain([]) is None and jain([0, 0]) is None


def test_run_writer_accounts_for_every_request_and_load_run_reads_it(tmp_path):
    from harness.loadgen.recorder import Recorder

    trace = pd.DataFrame({"request_id": [0, 1, 2], "t": [0.0, 1.0, 2.0], "adapter": ["a", "", "a"],
                          "prompt_tokens": [4, 5, 6], "output_tokens": [2, 2, 2]})
    w = RunWriter(tmp_path / "runs", "my work", "multilora")
    assert w.path.name.endswith("-my-work-multilora")
    assert json.loads(w.file("status").read_text())["status"] == "running"
    w.write_trace(trace)
    with Recorder(w.file("records_jsonl")) as r:
        r.write(rec(1, "", 1.0, [1.1, 1.2]))
    with w.file("records_jsonl").open("a") as f:
        f.write('{"request_id": 2, "adapt')  # a torn last line from a killed writer
    assert len(read_records_jsonl(w.file("records_jsonl"))) == 1
    records = w.finalize_records(trace, warmup_s=0.5, reason="the server died")
    assert sorted(records["request_id"]) == [0, 1, 2]
    assert records.set_index("request_id").loc[0, "status"] == "not_sent"
    assert "the server died" in records.set_index("request_id").loc[2, "error"]
    assert records.set_index("request_id").loc[0, "in_window"] == False  # noqa: E712 (numpy bool)
    assert set(RECORD_FIELDS) <= set(records.columns)
    w.write_json("summary", {"engine": "multilora", "metrics": {"req_s": 1.5}})
    w.set_status("server_died", "boom", records=3)
    run = load_run(w.path)
    assert run.status["status"] == "server_died" and run.engine == "multilora" and len(run.records) == 3
    assert list(run.records["token_times"].iloc[1]) == [1.1, 1.2]
    w2 = RunWriter(tmp_path / "runs", "my work", "multilora")
    assert list_runs(tmp_path / "runs") == sorted([w.path, w2.path], key=lambda p: p.name)
    with pytest.raises(ValueError, match="run status 'odd'"):
        w.set_status("odd", "")
    from harness.store import RunError

    with pytest.raises(RunError, match="not a run directory"):
        load_run(tmp_path)
