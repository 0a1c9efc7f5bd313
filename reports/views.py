"""The figures of each report section, built from loaded runs; the app and the static page both use these."""
from __future__ import annotations

import plotly.graph_objects as go

from reports import data, figures

LATENCIES = ("ttft", "tpot", "e2e")


def slo_target(runs: list, default: float = 0.9) -> float:
    """The SLO attainment target the runs were planned for (workload slo.attainment, else 0.9)."""
    for r in runs:
        slo = (r.summary or {}).get("slo") or {}
        if slo.get("attainment"):
            return float(slo["attainment"])
    return default


def compare(runs: list, log: bool = True) -> list[go.Figure]:
    """Throughput, goodput, SLO attainment, latency percentiles and CDFs (ms, log axes unless log=False, SLO
    thresholds drawn) of the given runs."""
    table = data.runs_table(runs)
    samples = [data.latency_samples(r) for r in runs]
    merged = data.pd.concat(samples, ignore_index=True) if samples else data.pd.DataFrame()
    slo = data.slo_ms(runs)
    figs = [figures.throughput(table), figures.attainment(table, slo_target(runs)),
            figures.percentiles(data.percentile_table(runs), slo, log=log)]
    figs += [figures.latency_cdf(data.cdf(merged, m), m, slo.get(m), log=log) for m in LATENCIES]
    return figs


def timeline(run, bin_s: float = 1.0) -> list[go.Figure]:
    """One run over time: per-adapter arrivals, requests in flight, tokens/s, GPU, adapters resident; the
    warm-up and the measured span marked on each."""
    start, end = data.measured_window(run)
    figs = [
        figures.arrivals_heatmap(data.arrivals(run, bin_s), bin_s),
        figures.series(data.in_flight(run, bin_s / 2), "t", "in_flight", "Requests in flight", "requests"),
        figures.series(data.token_rate(run, bin_s), "t", "tokens_s", "Output tokens/s", "tokens/s"),
        figures.gpu(data.gpu_series(run)),
        figures.adapters_resident(data.server_series(run)),
    ]
    return [figures.mark_window(f, start, end) for f in figs]


def adapters(run) -> list[go.Figure]:
    """Per-adapter latency and share (with Jain's fairness) of one run."""
    table = data.adapter_table(run)
    fairness = ((run.summary or {}).get("metrics") or {}).get("jain_fairness")
    return [figures.adapter_latency(table), figures.adapter_share(table, fairness)]


def capacity(payload: dict, rate_per_adapter: float | None = None) -> list[go.Figure]:
    """The capacity curves of one sweep."""
    return [figures.capacity(data.capacity_points(payload), rate_per_adapter)]
