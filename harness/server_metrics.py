"""Which /metrics series of each server kind (self, vLLM, SGLang, TGI) are the few the report shows, by name.

A run's server.csv holds every sample long (t, metric, labels, value; harness.scrape). The report does not
guess from substrings: `series(frame)` finds the server kind by its metric names and applies that kind's
explicit mapping, giving one tidy table of
  requests_running    requests in the running batch
  requests_waiting    requests queued (not yet scheduled)
  kv_use              fraction of the KV cache in use, 0..1
  adapters_resident   adapters loaded and usable (self: device slots or merged copies)
  adapters_running    distinct adapters of the running requests (vLLM: lora_requests_info)
  adapters_waiting    distinct adapters of the waiting requests (vLLM: lora_requests_info)
  adapter_loads       adapters loaded so far (counter)
  adapter_evictions   adapters evicted so far (counter)
A server kind that does not export one of them simply has no rows for it.
"""
from __future__ import annotations

import re
from typing import Callable

import pandas as pd

SERIES = ("requests_running", "requests_waiting", "kv_use", "adapters_resident", "adapters_running",
          "adapters_waiting", "adapter_loads", "adapter_evictions")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_labels(text: str) -> dict[str, str]:
    """`a="x",b="y,z"` -> {"a": "x", "b": "y,z"} (escaped quotes and backslashes undone)."""
    out, pos = {}, 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            break
        out[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\\\", "\\").replace("\\n", "\n")
        pos = m.end()
    return out


class Scrape:
    """One scrape's samples: metric name -> [(labels text, value)]."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.by_metric: dict[str, list[tuple[str, float]]] = {}
        for name, labels, value in zip(rows["metric"], rows["labels"], rows["value"]):
            self.by_metric.setdefault(name, []).append(("" if pd.isna(labels) else str(labels), float(value)))

    def total(self, name: str) -> float | None:
        """The sum over label sets (vLLM labels each engine and model), None when the series is absent."""
        samples = self.by_metric.get(name)
        return sum(v for _, v in samples) if samples else None


Extractor = Callable[[Scrape], "float | None"]


def total(*names: str) -> Extractor:
    """The first of `names` the server exports, summed over its label sets."""
    def get(s: Scrape) -> float | None:
        return next((v for v in (s.total(n) for n in names) if v is not None), None)
    return get


def ratio(num: str, den: str) -> Extractor:
    def get(s: Scrape) -> float | None:
        a, b = s.total(num), s.total(den)
        return a / b if a is not None and b else None
    return get


def lora_info_count(label: str, name: str = "vllm:lora_requests_info") -> Extractor:
    """vLLM's lora_requests_info gauge: one sample per state, its value the time it was set; the newest
    sample's label lists the adapters (comma-separated) of the running or waiting requests."""
    def get(s: Scrape) -> float | None:
        samples = s.by_metric.get(name)
        if not samples:
            return None
        labels, _ = max(samples, key=lambda lv: lv[1])
        names = parse_labels(labels).get(label, "")
        return float(len([n for n in names.split(",") if n.strip()]))
    return get


KINDS: dict[str, dict[str, Extractor]] = {
    "self": {  # engines/server/metrics.py: every engine.stats() key as lora_fleet_<key>
        "requests_running": total("lora_fleet_running"),
        "requests_waiting": total("lora_fleet_queue_depth"),
        "kv_use": ratio("lora_fleet_kv_blocks_used", "lora_fleet_kv_blocks_total"),
        "adapters_resident": total("lora_fleet_adapters_resident"),
        "adapter_loads": total("lora_fleet_adapter_loads"),
        "adapter_evictions": total("lora_fleet_adapter_evictions"),
    },
    "vllm": {
        "requests_running": total("vllm:num_requests_running"),
        "requests_waiting": total("vllm:num_requests_waiting"),
        "kv_use": total("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # a fraction despite the name
        "adapters_running": lora_info_count("running_lora_adapters"),
        "adapters_waiting": lora_info_count("waiting_lora_adapters"),
    },
    "sglang": {
        "requests_running": total("sglang:num_running_reqs"),
        "requests_waiting": total("sglang:num_queue_reqs"),
        "kv_use": total("sglang:token_usage"),
    },
    "tgi": {
        "requests_running": total("tgi_batch_current_size"),
        "requests_waiting": total("tgi_queue_size"),
    },
}
PREFIXES = {"self": "lora_fleet_", "vllm": "vllm:", "sglang": "sglang:", "tgi": "tgi_"}


def detect_kind(metrics) -> str | None:
    """The server kind whose metric prefix most names carry; None for an unknown server."""
    names = set(metrics)
    counts = {kind: sum(n.startswith(p) for n in names) for kind, p in PREFIXES.items()}
    kind, n = max(counts.items(), key=lambda kv: kv[1])
    return kind if n else None


def series(frame: pd.DataFrame | None, kind: str | None = None) -> pd.DataFrame:
    """The mapped series of a long server frame: t, series, value (empty for an unknown server or no frame)."""
    empty = pd.DataFrame(columns=["t", "series", "value"])
    if frame is None or frame.empty or not {"t", "metric", "labels", "value"} <= set(frame.columns):
        return empty
    kind = kind or detect_kind(frame["metric"].unique())
    if kind not in KINDS:
        return empty
    rows = []
    for t, group in frame.groupby("t", sort=True):
        scrape = Scrape(group)
        for name, get in KINDS[kind].items():
            value = get(scrape)
            if value is not None:
                rows.append({"t": float(t), "series": name, "value": float(value)})
    return pd.DataFrame(rows, columns=["t", "series", "value"]) if rows else empty
