"""Summary of a run from its per-request records: every metric of DESIGN.md, overall, per adapter and per window.

Definitions (times in s, from the records):
  TTFT = first_token - actual_send; E2E = end - actual_send; TPOT = (E2E - TTFT) / (output_tokens - 1);
  ITL = gaps between token arrivals after the first chunk (a chunk of k tokens is k equal gaps);
  schedule lag = actual_send - intended_send.
Measured requests are those intended in [warmup_s, warmup_s + duration_s). Throughput divides by the measured
span (summary "measured_s"): duration_s, or longer when the last measured request ended later (an overloaded
server stretches it). Windows (summary "windows", the gate's repeated samples) tile that same span from
warmup_s in bins of bin_s (a last partial bin is left out) and count only measured ok requests, by the same
rule as the totals: a request's output tokens where its tokens arrived, a request where it ended. served_tok_s
is the server's pace instead: every token streamed during the measured span, whatever request it belonged to
(warm-up requests and requests that later failed included), over the span, in total and per bin.
A request is good when it is ok and meets every SLO given; SLO attainment = good / measured requests (errors,
timeouts and unsent requests count as misses). Jain's fairness is taken over per-adapter SLO attainment.
Latencies have their mean and standard deviation beside the percentiles (p50, p90, p99 always, and any others
asked for).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.schema import RECORD_STATUSES

PERCENTILES = {"p50": 50, "p90": 90, "p99": 99}
BIN_S = 1.0  # width of the summary's windows


def percentile_keys(qs) -> dict[str, float]:
    """{"p50": 50, "p99.9": 99.9, ...}: the defaults and the percentiles asked for, in order."""
    out = dict(PERCENTILES)
    for q in qs or ():
        q = float(q)
        if not 0 < q < 100:
            raise ValueError(f"percentile {q:g} must be between 0 and 100")
        out[f"p{q:g}"] = q
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _stats(values: np.ndarray, name: str, pcts: dict[str, float]) -> dict[str, float | None]:
    """{name}_mean, {name}_std (population) and {name}_pXX of the finite values; None when there are none."""
    values = values[np.isfinite(values)]
    out = {f"{name}_mean": float(values.mean()) if len(values) else None,
           f"{name}_std": float(values.std()) if len(values) else None}
    out.update({f"{name}_{label}": _pct(values, q) for label, q in pcts.items()})
    return out


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else None


def _itl(token_times: Any, first_chunk_tokens: Any) -> np.ndarray:
    times = np.asarray(token_times if token_times is not None else [], dtype=np.float64)
    k = int(first_chunk_tokens) if first_chunk_tokens is not None and first_chunk_tokens == first_chunk_tokens else 1
    return np.diff(times[max(k, 1) - 1:]) if len(times) > k else np.empty(0)


def jain(values: list[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one gets everything."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0 or float((x ** 2).sum()) == 0.0:
        return None
    return float(x.sum() ** 2 / (len(x) * (x ** 2).sum()))


def request_latencies(df: pd.DataFrame) -> pd.DataFrame:
    """ttft, e2e, tpot and lag columns for each record (NaN where undefined)."""
    out = pd.DataFrame(index=df.index)
    out["ttft"] = df["first_token"] - df["actual_send"]
    out["e2e"] = df["end"] - df["actual_send"]
    n = df["output_tokens"].astype(np.float64)
    out["tpot"] = np.where(n > 1, (out["e2e"] - out["ttft"]) / (n - 1).clip(lower=1), np.nan)
    out["lag"] = df["actual_send"] - df["intended_send"]
    return out


def good_mask(df: pd.DataFrame, lat: pd.DataFrame, slo: dict[str, float | None]) -> pd.Series:
    good = df["status"] == "ok"
    for key, col in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e")):
        limit = slo.get(key)
        if limit is not None:
            value = lat[col]
            passed = value <= limit
            if col == "tpot":
                passed |= value.isna()  # a 1-token reply has no TPOT to miss
            good &= passed
    return good


def _block(df: pd.DataFrame, lat: pd.DataFrame, good: pd.Series, span: float,
           pcts: dict[str, float] = PERCENTILES) -> dict[str, Any]:
    ok = df["status"] == "ok"
    n = len(df)
    out: dict[str, Any] = {
        "requests": int(n),
        "ok": int(ok.sum()),
        "error": int((df["status"] == "error").sum()),
        "timeout": int((df["status"] == "timeout").sum()),
        "rejected": int((df["status"] == "rejected").sum()),
        "not_sent": int((df["status"] == "not_sent").sum()),
        "req_s": float(ok.sum() / span),
        "output_tok_s": float(df.loc[ok, "output_tokens"].sum() / span),
        "goodput_req_s": float(good.sum() / span),
        "goodput": float(df.loc[good, "output_tokens"].sum() / span),
        "slo_attainment": float(good.sum() / n) if n else None,
    }
    for name in ("ttft", "tpot", "e2e"):
        out.update(_stats(lat.loc[ok, name].to_numpy(np.float64), name, pcts))
    return out


def _arrivals(df: pd.DataFrame, edges: np.ndarray) -> np.ndarray:
    """Token arrivals of every record per bin."""
    counts = np.zeros(len(edges) - 1)
    for times in df["token_times"]:
        if times is not None and len(times):
            counts += np.histogram(np.asarray(times, dtype=np.float64), bins=edges)[0]
    return counts


def windows(measured: pd.DataFrame, good: pd.Series, warmup_s: float, span: float, bin_s: float = BIN_S,
            every: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per bin of the measured span [warmup_s, warmup_s + k*bin_s), k = floor(span / bin_s): output tokens/s,
    requests/s and goodput tokens/s of the measured ok requests (tokens where they arrived, requests where
    they ended), the summary's totals cut into bins; with `every` (all records), served tokens/s too."""
    n = max(1, int(math.floor(span / bin_s + 1e-9)))
    edges = warmup_s + bin_s * np.arange(n + 1)
    ok = measured["status"] == "ok"
    tokens = _arrivals(measured[ok], edges)
    good_tokens = _arrivals(measured[ok & good], edges)
    ends = measured.loc[ok, "end"].to_numpy(np.float64)
    reqs = np.histogram(ends[np.isfinite(ends)], bins=edges)[0] if len(ends) else np.zeros(n)
    out = {"bin_s": bin_s, "t": [float(x) for x in edges[:-1]],
           "output_tok_s": [float(x) for x in tokens / bin_s],
           "req_s": [float(x) for x in np.asarray(reqs) / bin_s],
           "goodput": [float(x) for x in good_tokens / bin_s]}
    if every is not None:
        out["served_tok_s"] = [float(x) for x in _arrivals(every, edges) / bin_s]
    return out


def _gpu(gpu: pd.DataFrame | None, start: float, end: float, tokens: float) -> dict[str, Any]:
    none = {"gpu_util_mean": None, "gpu_mem_max_gb": None, "energy_j": None, "energy_per_token_j": None}
    if gpu is None or gpu.empty:
        return none
    w = gpu[(gpu["t"] >= start) & (gpu["t"] <= end)]
    if w.empty:
        return none
    energy = 0.0
    for _, g in w.groupby("gpu"):
        g = g.sort_values("t")
        e = g["energy_j"].to_numpy(np.float64)
        if np.isfinite(e).all() and len(e) > 1:
            energy += float(e[-1] - e[0])
        elif len(g) > 1:  # no energy counter: integrate power
            p, t = g["power_w"].to_numpy(np.float64), g["t"].to_numpy(np.float64)
            energy += float(((p[1:] + p[:-1]) / 2 * np.diff(t)).sum())
    return {"gpu_util_mean": float(w["util_pct"].mean()), "gpu_mem_max_gb": float(w["mem_used_gb"].max()),
            "energy_j": energy, "energy_per_token_j": energy / tokens if tokens > 0 else None}


def summarize(records: pd.DataFrame, *, warmup_s: float, duration_s: float, slo: dict[str, float | None],
              max_lag_p99_s: float, gpu: pd.DataFrame | None = None, bin_s: float = BIN_S,
              percentiles=()) -> dict[str, Any]:
    """counts, metrics, per_adapter, windows, valid and invalid_reasons of summary.json (percentiles: more
    latency percentiles beside p50, p90, p99, e.g. (95, 99.9))."""
    pcts = percentile_keys(percentiles)
    df = records.reset_index(drop=True)
    counts = {"total": int(len(df)), "sent": int(df["actual_send"].notna().sum())}
    for status in RECORD_STATUSES:
        counts[status] = int((df["status"] == status).sum())
    lat = request_latencies(df)
    good = good_mask(df, lat, slo)
    measured = df["in_window"].astype(bool)
    m, mlat, mgood = df[measured], lat[measured], good[measured]
    ok_m = m["status"] == "ok"
    last_end = float(m.loc[ok_m, "end"].max()) if ok_m.any() else warmup_s + duration_s
    span = max(duration_s, last_end - warmup_s)
    metrics = _block(m, mlat, mgood, span, pcts)
    itl = np.concatenate([_itl(t, k) for t, k in zip(m.loc[ok_m, "token_times"],
                                                     m.loc[ok_m].get("first_chunk_tokens", pd.Series(1, index=m.loc[ok_m].index)))]
                         or [np.empty(0)])
    lag = mlat["lag"].to_numpy(np.float64)
    per_adapter = {str(a): _block(g, mlat.loc[g.index], mgood.loc[g.index], span)
                   for a, g in m.groupby("adapter", sort=True)}
    attain = [v["slo_attainment"] for v in per_adapter.values() if v["slo_attainment"] is not None]
    out_metrics = {
        "req_s": metrics["req_s"], "output_tok_s": metrics["output_tok_s"],
        "goodput_req_s": metrics["goodput_req_s"], "goodput": metrics["goodput"],
        "slo_attainment": metrics["slo_attainment"],
        "served_tok_s": float(_arrivals(df, np.array([warmup_s, warmup_s + span]))[0] / span),
        **{k: v for k, v in metrics.items() if k.startswith(("ttft_", "tpot_", "e2e_"))},
        **_stats(itl, "itl", pcts),
        "schedule_lag_p50": _pct(lag, 50), "schedule_lag_p99": _pct(lag, 99),
        "schedule_lag_max": float(np.nanmax(lag)) if np.isfinite(lag).any() else None,
        "jain_fairness": jain(attain),
        **_gpu(gpu, warmup_s, warmup_s + span, float(m.loc[ok_m, "output_tokens"].sum())),
    }
    reasons = []
    if sum(counts[status] for status in RECORD_STATUSES) != counts["total"]:
        reasons.append(f"records with an unknown status: {' + '.join(RECORD_STATUSES)} != total")
    lag99 = out_metrics["schedule_lag_p99"]
    if lag99 is not None and lag99 > max_lag_p99_s:
        reasons.append(f"client fell behind: p99 schedule lag {lag99 * 1000:.1f} ms > {max_lag_p99_s * 1000:.1f} ms "
                       "(use more loadgen workers or a lower rate)")
    if metrics["ok"] == 0:
        reasons.append("no request of the measured window completed")
    if counts["not_sent"]:
        reasons.append(f"{counts['not_sent']} request(s) of the trace were never sent")
    return {"measured_s": span, "warmup_s": warmup_s, "offered_req_s": len(m) / duration_s,
            "percentiles": list(pcts), "counts": counts,
            "metrics": out_metrics, "per_adapter": per_adapter, "windows": windows(m, mgood, warmup_s, span, bin_s, every=df),
            "valid": not reasons, "invalid_reasons": reasons}
