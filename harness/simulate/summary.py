"""Summary of a simulated fleet run with the run summary's definitions (harness/metrics.py), plus adapter loads
per replica and $/1M output tokens."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.metrics import _block, good_mask, request_latencies
from harness.simulate.fleet import FleetResult


def as_records(trace: pd.DataFrame, result: FleetResult, warmup_s: float, duration_s: float) -> pd.DataFrame:
    """The simulated requests as run records (sent at their intended time; every one completes)."""
    t = trace["t"].to_numpy(np.float64)
    return pd.DataFrame({"adapter": trace["adapter"].to_numpy(), "intended_send": t, "actual_send": t,
                         "first_token": result.first, "end": result.end,
                         "output_tokens": trace["output_tokens"].to_numpy(), "status": "ok",
                         "in_window": (t >= warmup_s) & (t < warmup_s + duration_s)})


def summarize_fleet(trace: pd.DataFrame, result: FleetResult, *, warmup_s: float, duration_s: float,
                    slo: dict[str, float | None], usd_per_replica_hour: float | None = None) -> dict[str, Any]:
    """metrics (req/s, tokens/s, goodput, SLO attainment, TTFT/TPOT/E2E percentiles over the measured window),
    loads per replica and cost; the measured span is the run summary's (duration, or longer while draining)."""
    df = as_records(trace, result, warmup_s, duration_s)
    lat = request_latencies(df)
    good = good_mask(df, lat, slo)
    measured = df["in_window"].to_numpy()
    if not measured.any():
        raise ValueError("no request of the trace falls in the measured window")
    m = df[measured]
    span = max(duration_s, float(m["end"].max()) - warmup_s)
    metrics = _block(m, lat[measured], good[measured], span)
    replicas = len(result.loads)
    out = {"replicas": replicas, "span_s": span, "metrics": metrics, "adapter_loads": result.loads,
           "adapter_loads_total": int(sum(result.loads)),
           "requests_per_replica": np.bincount(result.replica, minlength=replicas).tolist()}
    if usd_per_replica_hour is not None and metrics["output_tok_s"] > 0:
        usd_s = usd_per_replica_hour * replicas / 3600.0
        out["usd_per_1m_tokens"] = 1e6 * usd_s / metrics["output_tok_s"]
        out["usd_per_1m_good_tokens"] = 1e6 * usd_s / metrics["goodput"] if metrics["goodput"] > 0 else None
    return out
