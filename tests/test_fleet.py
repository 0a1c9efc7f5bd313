"""engines/fleet without Ray: which adapter a request names, and /metrics of several replicas merged."""
from __future__ import annotations

import json

import pytest

from engines.fleet.names import merge_metrics, requested_adapter
from engines.server.metrics import parse_prometheus

BASES, CATALOG = {"tiny"}, {"ad-1", "ad-2"}


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/completions", {"model": "ad-1"}, "ad-1"),
    ("/v1/completions", {"model": "tiny:ad-2"}, "ad-2"),
    ("/v1/chat/completions", {"model": "tiny"}, ""),
    ("/v1/completions", {"model": "other:ad-1"}, ""),  # not this base: the replica answers 404
    ("/v1/completions", {"model": "nope"}, ""),
    ("/v1/completions", {"model": 7}, ""),
    ("/generate", {"inputs": "x", "parameters": {"adapter_id": "ad-1"}}, "ad-1"),
    ("/generate_stream", {"inputs": "x"}, ""),
    ("/v1/models", {"model": "ad-1"}, ""),
])
def test_requested_adapter(path, body, expected):
    assert requested_adapter(path, json.dumps(body).encode(), BASES, CATALOG) == expected


def test_a_body_that_does_not_parse_goes_unrouted():
    assert requested_adapter("/v1/completions", b"{not json", BASES, CATALOG) == ""
    assert requested_adapter("/v1/completions", b"[1]", BASES, CATALOG) == ""


def test_merged_metrics_label_every_sample_with_its_replica_and_keep_families_together():
    page = ('# HELP lora_fleet_requests_total Requests.\n# TYPE lora_fleet_requests_total counter\n'
            'lora_fleet_requests_total{status="200"} 3\n# HELP lora_fleet_running x\n'
            '# TYPE lora_fleet_running gauge\nlora_fleet_running 2.0\n')
    merged = merge_metrics({"r1": page, "r2": page.replace(" 3\n", " 5\n")})
    samples = parse_prometheus(merged)
    assert samples['lora_fleet_requests_total{status="200",replica="r1"}'] == 3
    assert samples['lora_fleet_requests_total{status="200",replica="r2"}'] == 5
    assert samples['lora_fleet_running{replica="r2"}'] == 2.0
    lines = merged.splitlines()
    assert lines.count("# TYPE lora_fleet_running gauge") == 1
    family = [i for i, line in enumerate(lines) if "lora_fleet_running" in line]
    assert family == list(range(family[0], family[0] + 4))  # HELP, TYPE, then both samples


def test_engine_entry_replicas_key_in_process_only():
    from harness.distributions import WorkloadError
    from harness.engine_spec import parse_engine_entry

    assert parse_engine_entry({"name": "multilora", "replicas": 2}, "engines[0]").to_dict()["replicas"] == 2
    assert "replicas" not in parse_engine_entry("multilora", "engines[0]").to_dict()
    with pytest.raises(WorkloadError, match=r"engines\[0\].replicas: 0 must be an integer >= 1"):
        parse_engine_entry({"name": "multilora", "replicas": 0}, "engines[0]")
    with pytest.raises(WorkloadError, match="unknown key"):
        parse_engine_entry({"name": "v", "kind": "external", "url": "http://127.0.0.1:9", "replicas": 2}, "e")
