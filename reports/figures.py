"""Plotly figure builders: pure functions from the tables of reports.data to figures, shared by app and HTML."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

TEMPLATE = "plotly_white"
_METRIC_NAMES = {"req_s": "requests/s", "output_tok_s": "output tokens/s", "goodput": "goodput tokens/s",
                 "goodput_req_s": "goodput requests/s", "slo_attainment": "SLO attainment"}


def _style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title, template=TEMPLATE, margin=dict(l=50, r=20, t=50, b=40), legend_title_text="")
    return fig


def throughput(table: pd.DataFrame) -> go.Figure:
    """Throughput and goodput per run (grouped bars), output tokens/s."""
    long = table.melt(id_vars=["run", "engine"], value_vars=["output_tok_s", "goodput"], var_name="metric",
                      value_name="tokens_s")
    long["metric"] = long["metric"].map(_METRIC_NAMES)
    fig = px.bar(long, x="run", y="tokens_s", color="metric", barmode="group", hover_data=["engine"],
                 labels={"tokens_s": "output tokens/s", "run": ""})
    return _style(fig, "Throughput and goodput")


def attainment(table: pd.DataFrame, target: float | None = None) -> go.Figure:
    """SLO attainment per run, with the target as a line."""
    fig = px.bar(table, x="run", y="slo_attainment", color="engine", range_y=[0, 1.05],
                 labels={"slo_attainment": "SLO attainment", "run": ""})
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:g}")
    return _style(fig, "SLO attainment (fraction of requests meeting every SLO)")


def percentiles(pct: pd.DataFrame) -> go.Figure:
    """TTFT / TPOT / E2E p50, p90, p99 per run: one panel per metric."""
    fig = px.bar(pct, x="percentile", y="seconds", color="run", facet_col="metric", barmode="group",
                 labels={"seconds": "seconds", "percentile": ""})
    fig.update_yaxes(matches=None, showticklabels=True)
    return _style(fig, "Latency percentiles")


def latency_cdf(cdf: pd.DataFrame, metric: str) -> go.Figure:
    """Empirical CDF of one latency metric, one line per run."""
    fig = px.line(cdf, x="seconds", y="fraction", color="run", line_shape="hv",
                  labels={"seconds": f"{metric.upper()} (s)", "fraction": "fraction of requests"})
    return _style(fig, f"{metric.upper()} CDF")


def arrivals_heatmap(arr: pd.DataFrame, bin_s: float = 1.0) -> go.Figure:
    """Requests per adapter per time bin (intended send): the per-adapter bursts."""
    grid = arr.pivot_table(index="adapter", columns="t", values="requests", fill_value=0).sort_index()
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), colorscale="Viridis",
                               colorbar=dict(title="requests")))
    fig.update_xaxes(title=f"time (s), {bin_s:g} s bins")
    return _style(fig, "Arrivals per adapter")


def series(df: pd.DataFrame, x: str, y: str, title: str, y_label: str, color: str | None = None) -> go.Figure:
    """A time series (optionally one line per `color` value) over the run."""
    fig = px.line(df, x=x, y=y, color=color, labels={x: "time (s)", y: y_label})
    return _style(fig, title)


def gpu(gpu_long: pd.DataFrame) -> go.Figure:
    """GPU utilisation (%) and memory used (GB) over the run, one panel each."""
    if gpu_long.empty:
        fig = go.Figure()
        fig.add_annotation(text="no GPU samples in this run (it ran without a GPU)", showarrow=False)
        return _style(fig, "GPU")
    fig = px.line(gpu_long, x="t", y="value", color="gpu", facet_row="series", labels={"t": "time (s)"})
    fig.update_yaxes(matches=None, title="")
    return _style(fig, "GPU utilisation (%) and memory (GB)")


def adapters_resident(server_long: pd.DataFrame) -> go.Figure:
    """Adapters resident, running and waiting, loads and evictions from the server's /metrics over the run."""
    fig = px.line(server_long, x="t", y="value", color="series", line_shape="hv", labels={"t": "time (s)"})
    if server_long.empty:
        fig.add_annotation(text="this server exports none of these series", showarrow=False)
    return _style(fig, "Adapters resident, running and loaded (server /metrics)")


def adapter_latency(adapters: pd.DataFrame, columns: tuple[str, ...] = ("ttft_p50", "ttft_p99", "e2e_p99")):
    """Per-adapter latency percentiles (grouped bars, adapters sorted by share)."""
    cols = [c for c in columns if c in adapters.columns]
    long = adapters.melt(id_vars=["adapter"], value_vars=cols, var_name="metric", value_name="seconds")
    fig = px.bar(long, x="adapter", y="seconds", color="metric", barmode="group", labels={"adapter": ""})
    return _style(fig, "Latency per adapter")


def adapter_share(adapters: pd.DataFrame, fairness: float | None = None) -> go.Figure:
    """Share of requests and of output tokens/s per adapter; Jain's fairness index in the title."""
    fig = go.Figure()
    fig.add_bar(x=adapters["adapter"], y=adapters["share"], name="share of requests")
    if "output_tok_s" in adapters.columns:
        tok = adapters["output_tok_s"] / adapters["output_tok_s"].sum()
        fig.add_bar(x=adapters["adapter"], y=tok, name="share of output tokens")
    jain = f" (Jain's fairness {fairness:.3f})" if fairness is not None else ""
    fig.update_layout(barmode="group", yaxis_title="share")
    return _style(fig, "Share per adapter" + jain)


def capacity(points: pd.DataFrame, rate_per_adapter: float | None = None) -> go.Figure:
    """Capacity curves λ*(N) per engine; with a rate per adapter, the demand line N·λ_adapter."""
    points = points[points["n"] >= 1]  # N*=0 (nothing met the SLO) has no place on a log axis
    fig = px.line(points, x="n", y="lambda_star", color="engine", markers=True, log_x=True,
                  labels={"n": "adapters N", "lambda_star": "λ*(N), total requests/s"})
    if rate_per_adapter and not points.empty:
        n = np.geomspace(points["n"].min(), points["n"].max(), 64)  # enough points to draw it smoothly on the log axis
        fig.add_scatter(x=n, y=n * rate_per_adapter, mode="lines", name=f"demand N x {rate_per_adapter:g}",
                        line=dict(dash="dash", color="grey"))
    return _style(fig, "Capacity: largest total rate meeting the SLO")


def save_png(fig: go.Figure, path: str | Path, width: int = 1000, height: int = 500) -> Path:
    """Write a figure as PNG; needs the optional kaleido package (plotly's image exporter)."""
    try:
        import kaleido  # noqa: F401
    except ModuleNotFoundError as exc:
        raise RuntimeError("PNG export needs the kaleido package, which is not installed: `pip install kaleido` "
                           "(or use `harness report RUNS --html OUT.html` for a static page)") from exc
    path = Path(path)
    fig.write_image(str(path), width=width, height=height)
    return path
