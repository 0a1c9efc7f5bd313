"""Trace: the requests of a run (time, adapter, token counts) generated from the spec and seed, and its statistics."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.distributions import WorkloadError
from harness.spec import WorkloadSpec

COLUMNS = ["request_id", "t", "adapter", "prompt_tokens", "output_tokens"]
REPLAY_COLUMNS = ["timestamp", "adapter", "prompt_tokens", "output_tokens"]
T_DECIMALS = 6  # microseconds: written with fixed decimals so the same spec gives the same bytes


def build_trace(spec: WorkloadSpec) -> pd.DataFrame:
    """Every request of the run, sorted by intended send time t (s from the start, warm-up included)."""
    df = _replay(spec) if spec.traffic.replay is not None else _synthetic(spec)
    if df.empty:
        raise WorkloadError(f"traffic: the trace of {spec.name!r} has no request in {spec.horizon_s:g} s; "
                            "raise traffic.rate or duration_s")
    df = df.sort_values(["t", "adapter"], kind="stable").reset_index(drop=True)
    df["t"] = df["t"].round(T_DECIMALS)
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    return df[COLUMNS]


def _synthetic(spec: WorkloadSpec) -> pd.DataFrame:
    tr, horizon = spec.traffic, spec.horizon_s
    rng = np.random.default_rng(spec.seed)
    names = spec.adapters.names()
    rate = tr.mean_rate
    adapter_share = (1.0 - tr.base_fraction) * (tr.popularity.weights(len(names)) if names else np.empty(0))
    streams = [("", tr.base_fraction)] + list(zip(names, adapter_share))
    times, labels = [], []
    for name, share in streams:
        ts = tr.arrivals.times(rng, rate * float(share), horizon) if share > 0 else np.empty(0)
        times.append(ts)
        labels.append(np.full(len(ts), name, dtype=object))
    t = np.concatenate(times) if times else np.empty(0)
    adapters = np.concatenate(labels) if labels else np.empty(0, dtype=object)
    order = np.argsort(t, kind="stable")
    t, adapters = t[order], adapters[order]
    n = len(t)
    return pd.DataFrame({"t": t, "adapter": adapters.astype(str),
                         "prompt_tokens": tr.prompt_tokens.sample(rng, n),
                         "output_tokens": tr.output_tokens.sample(rng, n)})


def _replay(spec: WorkloadSpec) -> pd.DataFrame:
    rp = spec.traffic.replay
    try:
        raw = pd.read_csv(rp.path, dtype={"adapter": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise WorkloadError(f"traffic.replay.path: cannot read {rp.path} ({exc})") from None
    missing = [c for c in REPLAY_COLUMNS if c not in raw.columns]
    if missing:
        raise WorkloadError(f"traffic.replay.path: {rp.path} lacks column(s) {missing}; "
                            f"it needs {REPLAY_COLUMNS}")
    for col in ("timestamp", "prompt_tokens", "output_tokens"):
        values = pd.to_numeric(raw[col], errors="coerce")
        if values.isna().any() or (col != "timestamp" and (values < 1).any()):
            row = int(np.flatnonzero(values.isna() | ((values < 1) if col != "timestamp" else False))[0])
            raise WorkloadError(f"traffic.replay.path: {rp.path} row {row + 2}, column {col}: "
                                f"{raw[col].iloc[row]!r} is not a {'number' if col == 'timestamp' else 'count >= 1'}")
        raw[col] = values
    t = (raw["timestamp"].to_numpy(np.float64) - raw["timestamp"].min()) * rp.time_scale
    adapters = raw["adapter"].astype(str).to_numpy()
    if rp.map_adapters:
        names = spec.adapters.names()
        distinct = [a for a in dict.fromkeys(adapters) if a != ""]
        if len(distinct) > len(names):
            raise WorkloadError(f"adapters.count: the replayed trace names {len(distinct)} adapters but the "
                                f"workload has {len(names)}; raise adapters.count to {len(distinct)}")
        mapping = dict(zip(distinct, names))
        mapping[""] = ""
        adapters = np.array([mapping[a] for a in adapters], dtype=object)
    df = pd.DataFrame({"t": t, "adapter": adapters.astype(str),
                       "prompt_tokens": raw["prompt_tokens"].astype(np.int64),
                       "output_tokens": raw["output_tokens"].astype(np.int64)})
    return df[df["t"] < spec.horizon_s]


def trace_to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df[COLUMNS].to_csv(buf, index=False, float_format=f"%.{T_DECIMALS}f", lineterminator="\n")
    return buf.getvalue()


def write_trace(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(trace_to_csv(df))
    return path


def read_trace(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"adapter": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a trace file, column(s) {missing} missing; write one with `harness trace`")
    return df[COLUMNS]


def _peak_to_mean(times: np.ndarray, horizon: float, window_s: float) -> float | None:
    n_windows = max(1, int(np.ceil(horizon / window_s)))
    counts = np.bincount(np.minimum((times / window_s).astype(np.int64), n_windows - 1), minlength=n_windows)
    mean = counts.mean()
    return float(counts.max() / mean) if mean > 0 else None


def trace_stats(df: pd.DataFrame, spec: WorkloadSpec, window_s: float = 1.0) -> dict[str, Any]:
    """Rate, cv of inter-arrivals, per-adapter shares and peak-to-mean ratios over `window_s` windows."""
    horizon = max(spec.horizon_s, float(df["t"].max()) if len(df) else 0.0)
    t = df["t"].to_numpy(np.float64)
    gaps = np.diff(t)
    per_adapter: dict[str, dict[str, float | None]] = {}
    peaks_sum = 0.0
    n_windows = max(1, int(np.ceil(horizon / window_s)))
    for name, group in df.groupby("adapter", sort=True):
        ts = group["t"].to_numpy(np.float64)
        counts = np.bincount(np.minimum((ts / window_s).astype(np.int64), n_windows - 1), minlength=n_windows)
        peaks_sum += counts.max() / window_s
        per_adapter[str(name)] = {"requests": int(len(ts)), "share": len(ts) / len(df),
                                  "rate": len(ts) / horizon,
                                  "peak_to_mean": _peak_to_mean(ts, horizon, window_s)}
    agg_counts = np.bincount(np.minimum((t / window_s).astype(np.int64), n_windows - 1), minlength=n_windows)
    agg_peak = agg_counts.max() / window_s
    return {
        "requests": int(len(df)),
        "horizon_s": horizon,
        "rate": len(df) / horizon,
        "cv": float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else None,
        "adapters": len(per_adapter),
        "window_s": window_s,
        "peak_to_mean": _peak_to_mean(t, horizon, window_s),
        "peak_rate": float(agg_peak),
        "sum_of_adapter_peaks": float(peaks_sum),
        "prompt_tokens_mean": float(df["prompt_tokens"].mean()),
        "output_tokens_mean": float(df["output_tokens"].mean()),
        "per_adapter": per_adapter,
    }
