"""Tables the report draws, built from run directories and sweep folders (files only, never engines)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import server_metrics
from harness.capacity import point_bound, point_text
from harness.console import failed
from harness.store import list_runs, load_run

TABLE_METRICS = ("req_s", "output_tok_s", "goodput", "goodput_req_s", "slo_attainment", "ttft_mean", "ttft_p50",
                 "ttft_p99", "tpot_mean", "tpot_p50", "tpot_p99", "e2e_mean", "e2e_p50", "e2e_p99", "jain_fairness")
PERCENTILES = ("p50", "p90", "p99")
LATENCIES = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}  # latency -> its SLO key


def load(run_dir: str | Path):
    """One run (path, config, summary, records, gpu, server, status, env) through harness.store.load_run."""
    return load_run(Path(run_dir))


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under root, nested ones too (a sweep keeps its runs in <sweep>/runs/)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist; run `harness run WORKLOAD` first or pass "
                                "the folder that holds the run directories")
    return [Path(p) for p in list_runs(root)]


def label(run) -> str:
    """A short unique name for a run: its directory name."""
    return Path(run.path).name


def runs_table(runs: list) -> pd.DataFrame:
    """One row per run: what ran (workload, engine, model, GPU, date, status) and its headline metrics."""
    rows = []
    for r in runs:
        s = r.summary or {}
        m = s.get("metrics") or {}
        counts = s.get("counts") or {}
        rows.append({
            "run": label(r), "workload": s.get("workload", ""), "engine": s.get("engine", ""),
            "model": s.get("model", ""), "gpu": s.get("gpu", ""),
            "started_at": pd.to_datetime(s.get("started_at"), utc=True, errors="coerce"),
            "status": (r.status or {}).get("status", s.get("status", "")), "valid": bool(s.get("valid", False)),
            "offered_req_s": s.get("offered_req_s"), **{k: m.get(k) for k in TABLE_METRICS},
            "requests": counts.get("total"), "failed": failed(counts), "path": str(r.path),
        })
    cols = ["run", "workload", "engine", "model", "gpu", "started_at", "status", "valid", "offered_req_s",
            *TABLE_METRICS, "requests", "failed", "path"]
    return pd.DataFrame(rows, columns=cols).sort_values("started_at", ascending=False, ignore_index=True)


def filter_runs(table: pd.DataFrame, *, workload=None, engine=None, model=None, gpu=None, date_from=None,
                date_to=None) -> pd.DataFrame:
    """Rows whose workload/engine/model/gpu is in the given lists and whose date lies in [date_from, date_to]."""
    out = table
    for col, allowed in (("workload", workload), ("engine", engine), ("model", model), ("gpu", gpu)):
        if allowed:
            out = out[out[col].isin(list(allowed))]
    day = out["started_at"].dt.date
    if date_from is not None:
        out = out[day >= date_from]
        day = out["started_at"].dt.date
    if date_to is not None:
        out = out[day <= date_to]
    return out.reset_index(drop=True)


def percentile_table(runs: list) -> pd.DataFrame:
    """Long table: run, engine, metric (ttft/tpot/e2e), statistic (mean, p50, p90, p99), ms."""
    rows = []
    for r in runs:
        m = r.summary.get("metrics") or {}
        for metric in LATENCIES:
            for p in ("mean", *PERCENTILES):
                v = m.get(f"{metric}_{p}")
                if v is not None:
                    rows.append({"run": label(r), "engine": r.summary.get("engine", ""), "metric": metric,
                                 "percentile": p, "ms": float(v) * 1000.0})
    return pd.DataFrame(rows, columns=["run", "engine", "metric", "percentile", "ms"])


def slo_ms(runs: list) -> dict[str, float]:
    """The latency SLO thresholds of the runs in ms, by latency (ttft, tpot, e2e); the first run that has one."""
    out: dict[str, float] = {}
    for r in runs:
        slo = (r.summary or {}).get("slo") or {}
        for metric, key in LATENCIES.items():
            if slo.get(key) is not None:
                out.setdefault(metric, float(slo[key]) * 1000.0)
    return out


def measured_window(run) -> tuple[float, float]:
    """(start, end) of the measured span in seconds from the run's start: warm-up before it."""
    s = run.summary or {}
    start = float(s.get("warmup_s") or 0.0)
    span = s.get("measured_s", s.get("window_s"))
    if span is None:
        span = float(((run.config or {}).get("workload") or {}).get("duration_s") or 0.0)
    return start, start + float(span)


def latency_samples(run) -> pd.DataFrame:
    """Per completed request in the measured window: adapter, ttft, tpot, e2e (seconds), labelled by run."""
    rec = run.records
    ok = rec[(rec["status"] == "ok") & rec["in_window"].astype(bool)]
    out_tokens = ok["output_tokens"].astype(float)
    df = pd.DataFrame({
        "run": label(run), "engine": run.summary.get("engine", ""), "adapter": ok["adapter"].astype(str),
        "ttft": ok["first_token"] - ok["actual_send"], "e2e": ok["end"] - ok["actual_send"],
        "tpot": ((ok["end"] - ok["first_token"]) / (out_tokens - 1)).where(out_tokens > 1),
    })
    return df.reset_index(drop=True)


def cdf(samples: pd.DataFrame, column: str) -> pd.DataFrame:
    """Empirical CDF per run of one latency column: run, ms, fraction of requests at or below it."""
    parts = []
    for run, g in samples.groupby("run", sort=False):
        v = np.sort(g[column].dropna().to_numpy(dtype=float)) * 1000.0
        if len(v):
            parts.append(pd.DataFrame({"run": run, "ms": v, "fraction": np.arange(1, len(v) + 1) / len(v)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "ms", "fraction"])


def arrivals(run, bin_s: float = 1.0) -> pd.DataFrame:
    """Requests per adapter per time bin (by intended send): the bursts. Columns: t, adapter, requests."""
    rec = run.records
    b = (rec["intended_send"] // bin_s) * bin_s
    out = rec.assign(t=b).groupby(["t", "adapter"]).size().rename("requests").reset_index()
    return out


def in_flight(run, bin_s: float = 0.5) -> pd.DataFrame:
    """Requests in flight (sent, not ended) sampled every bin_s seconds. Columns: t, in_flight."""
    rec = run.records.dropna(subset=["actual_send", "end"])
    if rec.empty:
        return pd.DataFrame(columns=["t", "in_flight"])
    t = np.arange(0.0, float(rec["end"].max()) + bin_s, bin_s)
    starts = np.sort(rec["actual_send"].to_numpy(dtype=float))
    ends = np.sort(rec["end"].to_numpy(dtype=float))
    n = np.searchsorted(starts, t, side="right") - np.searchsorted(ends, t, side="right")
    return pd.DataFrame({"t": t, "in_flight": n})


def token_rate(run, bin_s: float = 1.0) -> pd.DataFrame:
    """Output tokens/s over the run from every token's arrival time. Columns: t, tokens_s."""
    times = [t for ts in run.records["token_times"] if ts is not None for t in ts]
    if not times:
        return pd.DataFrame(columns=["t", "tokens_s"])
    edges = np.arange(0.0, max(times) + 2 * bin_s, bin_s)
    counts, _ = np.histogram(times, edges)
    return pd.DataFrame({"t": edges[:-1], "tokens_s": counts / bin_s})


def gpu_series(run) -> pd.DataFrame:
    """GPU samples in long form: t, gpu, series (util_pct, mem_used_gb), value. Empty when there was no GPU."""
    g = run.gpu
    if g is None or g.empty:
        return pd.DataFrame(columns=["t", "gpu", "series", "value"])
    cols = [c for c in ("util_pct", "mem_used_gb") if c in g.columns]
    gid = g["gpu"] if "gpu" in g.columns else 0
    return g.assign(gpu=gid).melt(id_vars=["t", "gpu"], value_vars=cols, var_name="series", value_name="value")


ADAPTER_SERIES = ("adapters_resident", "adapters_running", "adapters_waiting", "adapter_loads", "adapter_evictions")


def server_series(run, keys: tuple[str, ...] = ADAPTER_SERIES) -> pd.DataFrame:
    """The server's adapter series (harness.server_metrics' explicit mapping for its kind): t, series, value."""
    long = server_metrics.series(run.server)
    return long[long["series"].isin(keys)].reset_index(drop=True)


def adapter_table(run) -> pd.DataFrame:
    """Per adapter: the summary's per-adapter metrics, one row each, sorted by share of requests."""
    per = run.summary.get("per_adapter") or {}
    if isinstance(per, list):
        per = {str(p.get("adapter", i)): p for i, p in enumerate(per)}
    df = pd.DataFrame.from_dict(per, orient="index")
    df.index.name = "adapter"
    df = df.reset_index()
    if "share" not in df.columns and "requests" in df.columns:
        df["share"] = df["requests"] / df["requests"].sum()
    return df.sort_values("share", ascending=False, ignore_index=True) if "share" in df.columns else df


def find_sweeps(*roots: str | Path) -> dict[str, dict]:
    """capacity.json payloads under the given folders (up to two levels down), keyed by their folder."""
    found: dict[str, dict] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for p in sorted([*root.glob("capacity.json"), *root.glob("*/capacity.json"), *root.glob("*/*/capacity.json")]):
            try:
                found[str(p.parent)] = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}: not valid JSON ({exc}); rerun `harness sweep` to rewrite it") from exc
    return found


CAPACITY_COLUMNS = ["engine", "n", "capacity", "bound", "lambda_star", "upper", "goodput_tok_s", "runs_tried",
                    "limited_runs", "reason"]


def capacity_points(payload: dict) -> pd.DataFrame:
    """A sweep's curves as one table: engine, n, λ* as found ("[lo, hi]", ">= lo", "< hi"), how it is known
    (bound), lambda_star (lo) and upper (hi), goodput at λ*, runs tried, runs limited by the load generator."""
    rows = [{"engine": e, "n": p["n"], "bound": point_bound(p)[0], "capacity": point_text(p),
             "lambda_star": p["lambda_star"], "upper": point_bound(p)[1], "goodput_tok_s": p.get("goodput_tok_s"),
             "runs_tried": len(p.get("tried", [])),
             "limited_runs": sum(1 for t in p.get("tried", []) if t.get("limited")), "reason": p.get("reason", "")}
            for e, pts in payload.get("curves", {}).items() for p in pts]
    return pd.DataFrame(rows, columns=CAPACITY_COLUMNS)
