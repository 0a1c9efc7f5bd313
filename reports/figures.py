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


def percentiles(pct: pd.DataFrame, slo_ms: dict[str, float] | None = None, log: bool = True) -> go.Figure:
    """TTFT / TPOT / E2E mean, p50, p90, p99 per run in ms: one panel per metric, each with its SLO threshold.
    log: a log-scale latency axis, so engines in ms stay visible beside one in tens of seconds."""
    order = [m for m in ("ttft", "tpot", "e2e") if m in set(pct["metric"])] or ["ttft"]
    fig = px.bar(pct, x="percentile", y="ms", color="run", facet_col="metric", barmode="group",
                 category_orders={"metric": order}, log_y=log,
                 labels={"ms": "ms" + (" (log scale)" if log else ""), "percentile": ""})
    fig.update_yaxes(matches=None, showticklabels=True)
    slo_ms = slo_ms or {}
    fig.for_each_annotation(lambda a: a.update(text=_facet_title(a.text.split("=")[-1], slo_ms)))
    for i, metric in enumerate(order, start=1):
        slo = slo_ms.get(metric)
        values = pct.loc[pct["metric"] == metric, "ms"]
        if slo is not None:
            fig.add_hline(y=slo, line_dash="dash", line_color="red", col=i, row=1)
        if len(values):  # room for the SLO line and its label above the bars
            fig.update_yaxes(range=_span(values, slo, log), col=i, row=1)
    return _style(fig, "Latency: mean and percentiles (ms)")


def _facet_title(metric: str, slo_ms: dict[str, float]) -> str:
    slo = slo_ms.get(metric)
    return metric.upper() + (f" (SLO {slo:g} ms: red line)" if slo is not None else "")


def _span(values, extra: float | None, log: bool) -> list[float]:
    """An axis range over values and the extra threshold, with a margin; in log10 units on a log axis."""
    v = [float(x) for x in values if x == x and (x > 0 or not log)]
    hi = max(v + ([extra] if extra else [])) * 1.4
    if log:
        lo = min(v + ([extra] if extra else [])) / 1.4
        return [float(np.log10(lo)), float(np.log10(hi))]
    return [0.0, hi]


def latency_cdf(cdf: pd.DataFrame, metric: str, slo_ms: float | None = None, log: bool = True) -> go.Figure:
    """Empirical CDF of one latency metric in ms, one line per run, with its SLO threshold."""
    fig = px.line(cdf, x="ms", y="fraction", color="run", line_shape="hv", log_x=log,
                  labels={"ms": f"{metric.upper()} (ms{', log scale' if log else ''})",
                          "fraction": "fraction of requests"})
    if slo_ms is not None:  # the label as its own annotation: add_vline places labels wrongly on log axes
        fig.add_vline(x=slo_ms, line_dash="dash", line_color="red")
        fig.add_annotation(x=float(np.log10(slo_ms)) if log else slo_ms, y=0.5, yref="paper", text=f"SLO {slo_ms:g} ms",
                           showarrow=False, xanchor="right", font=dict(color="red"), textangle=-90)
    if len(cdf):
        fig.update_xaxes(range=_span(cdf["ms"], slo_ms, log))
    return _style(fig, f"{metric.upper()} CDF")


def mark_window(fig: go.Figure, start: float, end: float) -> go.Figure:
    """Shade the warm-up [0, start) grey and outline the measured span [start, end) on a timeline."""
    if start > 0:
        fig.add_vrect(x0=0, x1=start, fillcolor="grey", opacity=0.15, line_width=0, annotation_text="warm-up",
                      annotation_position="top left")
    fig.add_vrect(x0=start, x1=end, fillcolor="green", opacity=0.05, line_width=1, line_color="green",
                  annotation_text="measured", annotation_position="top right")
    return fig


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


def adapter_latency(adapters: pd.DataFrame, columns: tuple[str, ...] = ("ttft_p50", "ttft_p99", "e2e_p99"),
                    log: bool = True):
    """Per-adapter latency percentiles in ms (grouped bars, adapters sorted by share)."""
    cols = [c for c in columns if c in adapters.columns]
    long = adapters.melt(id_vars=["adapter"], value_vars=cols, var_name="metric", value_name="ms")
    long["ms"] = pd.to_numeric(long["ms"], errors="coerce") * 1000.0
    long["metric"] = [f"{m.split('_')[0].upper()} {m.split('_')[1]}" for m in long["metric"]]
    fig = px.bar(long, x="adapter", y="ms", color="metric", barmode="group", log_y=log,
                 labels={"adapter": "", "ms": "ms" + (" (log scale)" if log else "")})
    return _style(fig, "Latency per adapter (ms)")


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
    """Capacity curves λ*(N) per engine, each point drawn as it is known: a bracket [lo, hi] as an error bar
    from lo up to hi, a lower bound as an upward triangle at lo; with a rate per adapter, the demand line."""
    points = points[points["n"] >= 1]  # N*=0 (nothing met the SLO) has no place on a log axis
    points = points.assign(plus=(points["upper"].astype(float) - points["lambda_star"]).where(
        points["bound"] == "bracket"), minus=0.0,
        symbol=points["bound"].map({"lower": "triangle-up"}).fillna("circle"))
    fig = px.line(points, x="n", y="lambda_star", color="engine", markers=True, log_x=True, error_y="plus",
                  error_y_minus="minus",
                  hover_data={"capacity": True, "bound": True, "plus": False, "minus": False, "symbol": False},
                  labels={"n": "adapters N", "lambda_star": "λ*(N), total requests/s (brackets: [lo, hi]; "
                                                            "▲ lower bound)"})
    for trace in fig.data:  # lower bounds as upward triangles
        sub = points[points["engine"] == trace.name]
        trace.marker.symbol = sub["symbol"].tolist()
        trace.marker.size = 10
    if rate_per_adapter and not points.empty:
        n = np.geomspace(points["n"].min(), points["n"].max(), 64)  # enough points to draw it smoothly on the log axis
        fig.add_scatter(x=n, y=n * rate_per_adapter, mode="lines", name=f"demand N x {rate_per_adapter:g}",
                        line=dict(dash="dash", color="grey"))
    return _style(fig, "Capacity: largest total rate meeting the SLO")


def require_png_export() -> None:
    """RuntimeError that says what to install unless the optional kaleido package (plotly's image exporter) is there."""
    try:
        import kaleido  # noqa: F401
    except ModuleNotFoundError as exc:
        raise RuntimeError("PNG export needs the kaleido package, which is not installed: `pip install kaleido` "
                           "(or use `harness report RUNS --html OUT.html` for a static page)") from exc


def save_png(fig: go.Figure, path: str | Path, width: int = 1000, height: int = 500) -> Path:
    """Write a figure as PNG; needs the optional kaleido package (plotly's image exporter)."""
    require_png_export()
    path = Path(path)
    fig.write_image(str(path), width=width, height=height)
    return path
