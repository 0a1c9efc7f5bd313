"""The capacity planner's arithmetic: adapters per GPU, GPUs needed, $/1M tokens, shared vs dedicated."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from harness.capacity import point_bound

# $/GPU-hour defaults: typical on-demand cloud prices; every one is an input (--gpu-price, the app's table).
GPU_PRICES = {"h100": 2.50, "h200": 3.50, "a100-80gb": 1.80, "l40s": 1.00, "a10g": 0.75}

FORMULAS = (
    "total rate = adapters x rate per adapter",
    "adapters per GPU = largest N with lambda*(N) >= N x rate per adapter (lambda* linear between measured N; "
    "each measured lambda* is the passing end of its bracket, or a lower bound, so this errs on the safe side)",
    "GPUs = ceil(total rate / per-GPU capacity), per-GPU capacity = adapters per GPU x rate per adapter",
    "goodput tokens/s = total rate x (goodput at lambda* / lambda*) at that N",
    "$/1M output tokens = 1e6 x ($/GPU-hour x GPUs / 3600) / goodput tokens/s",
    "shared base at the peak: the same with the trace's aggregate peak rate / adapters as the rate per adapter",
    "dedicated: one merged deployment per adapter, sized for that adapter's own peak rate; "
    "its share = that peak / lambda*(1), the fraction of one GPU it needs",
)
_EPS = 1e-9


def gpu_price(gpu: str, price: float | None = None) -> float:
    """$/GPU-hour: the given price, else the default for that GPU type."""
    if price is not None:
        if price <= 0:
            raise ValueError(f"gpu price: {price} must be > 0 ($ per GPU-hour)")
        return float(price)
    key = gpu.lower()
    if key not in GPU_PRICES:
        raise ValueError(f"gpu: unknown type {gpu!r}; use one of {sorted(GPU_PRICES)} or give --gpu-price")
    return GPU_PRICES[key]


@dataclass(frozen=True)
class Curve:
    """A capacity curve of one engine: measured (N, λ*(N), goodput tokens/s at λ*) points, sorted by N."""

    engine: str
    n: tuple[int, ...]
    lambda_star: tuple[float, ...]
    goodput_tok_s: tuple[float, ...]
    bounds: tuple[str, ...] = ()  # per point, how lambda* was found (harness.capacity.BOUNDS); empty: brackets

    def lower_bound_ns(self, up_to: float) -> list[int]:
        """Measured N (<= up_to, and the first above it) whose lambda* is only a lower bound."""
        out = []
        for n, kind in zip(self.n, self.bounds):
            if kind == "lower":
                out.append(n)
            if n >= up_to:
                break
        return out

    @classmethod
    def from_points(cls, engine: str, points: list[dict]) -> "Curve":
        """From capacity.json points ({"n", "lambda_star", "goodput_tok_s", ...})."""
        if not points:
            raise ValueError(f"capacity curve of {engine!r} has no points; run `harness sweep` for it first")
        pts = sorted((p for p in points if int(p["n"]) >= 1), key=lambda p: p["n"])  # N*=0: nothing passed
        if not pts:
            raise ValueError(f"capacity curve of {engine!r}: no adapter count met the SLO at any rate swept")
        ns = [int(p["n"]) for p in pts]
        if len(set(ns)) != len(ns) or ns[0] < 1:
            raise ValueError(f"capacity curve of {engine!r}: adapter counts {ns} must be distinct and >= 1")
        lam = [float(p["lambda_star"]) for p in pts]
        if any(v < 0 or not math.isfinite(v) for v in lam):
            raise ValueError(f"capacity curve of {engine!r}: lambda_star {lam} must be finite and >= 0")
        return cls(engine, tuple(ns), tuple(lam), tuple(float(p.get("goodput_tok_s") or 0.0) for p in pts),
                   tuple(point_bound(p)[0] for p in pts))

    @property
    def n_max(self) -> int:
        return self.n[-1]

    def _interp(self, values: tuple[float, ...], n: float) -> float | None:
        if n > self.n_max:
            return None  # not measured: never extrapolate a capacity
        if n <= self.n[0]:
            return values[0]  # fewer adapters than measured: λ* does not fall with fewer, take the first point
        for i in range(1, len(self.n)):
            if n <= self.n[i]:
                f = (n - self.n[i - 1]) / (self.n[i] - self.n[i - 1])
                return values[i - 1] + f * (values[i] - values[i - 1])
        return values[-1]

    def lambda_at(self, n: float) -> float | None:
        """λ*(n), linear between measured points; None beyond the largest measured N."""
        return self._interp(self.lambda_star, n)

    def goodput_per_request(self, n: float) -> float:
        """Output tokens per request that met the SLO at λ*(n): goodput tokens/s / λ*, interpolated."""
        per = tuple(g / lam if lam > 0 else 0.0 for g, lam in zip(self.goodput_tok_s, self.lambda_star))
        return self._interp(per, min(n, self.n_max)) or 0.0


def adapters_per_gpu(curve: Curve, rate_per_adapter: float) -> int:
    """Largest N (up to the largest measured N) with λ*(N) >= N·rate_per_adapter; 0 if even N=1 fails."""
    if rate_per_adapter <= 0:
        raise ValueError(f"rate per adapter: {rate_per_adapter} must be > 0 (requests/s)")
    best = 0
    for n in range(1, curve.n_max + 1):
        lam = curve.lambda_at(n)
        if lam is not None and lam + _EPS >= n * rate_per_adapter:
            best = n
    return best


@dataclass
class EnginePlan:
    """How one engine serves the planned fleet on shared GPUs."""

    engine: str
    adapters_per_gpu: int
    limited_by_curve: bool  # adapters per GPU hit the largest measured N: the true figure may be larger
    per_gpu_capacity: float  # req/s
    gpus: int | None
    total_rate: float
    goodput_tok_s: float
    usd_per_gpu_hour: float
    usd_per_hour: float | None
    usd_per_m_tokens: float | None
    note: str = ""
    lower_bound_ns: list[int] = field(default_factory=list)  # measured N used whose lambda* is a lower bound

    def to_dict(self) -> dict:
        return asdict(self)


def plan_engine(curve: Curve, adapters: int, rate_per_adapter: float, usd_per_gpu_hour: float) -> EnginePlan:
    """GPUs and $/1M output tokens for `adapters` adapters at `rate_per_adapter` req/s each (formulas above)."""
    if adapters < 1:
        raise ValueError(f"adapters: {adapters} must be >= 1")
    total = adapters * rate_per_adapter
    a = adapters_per_gpu(curve, rate_per_adapter)
    if a == 0:
        return EnginePlan(curve.engine, 0, False, 0.0, None, total, 0.0, usd_per_gpu_hour, None, None,
                          note=f"one adapter at {rate_per_adapter:g} req/s exceeds lambda*(1) = "
                               f"{curve.lambda_star[0]:g} req/s: an adapter needs more than one GPU")
    per_gpu = a * rate_per_adapter
    gpus = max(1, math.ceil(total / per_gpu - _EPS))
    goodput = total * curve.goodput_per_request(min(a, adapters))
    usd_hour = usd_per_gpu_hour * gpus
    usd_m = 1e6 * (usd_hour / 3600.0) / goodput if goodput > 0 else None
    limited = a == curve.n_max and adapters > a
    notes = [f"adapters per GPU is at least {a}: the curve was measured up to N={curve.n_max}"] if limited else []
    lower = curve.lower_bound_ns(a)
    if lower:
        notes.append(f"lambda* at N={','.join(map(str, lower))} is a lower bound: the GPUs are an upper bound")
    return EnginePlan(curve.engine, a, limited, per_gpu, gpus, total, goodput, usd_per_gpu_hour, usd_hour,
                      usd_m, "; ".join(notes), lower)


@dataclass
class Peaks:
    """Peak request rates of a trace over windows of window_s seconds."""

    window_s: float
    duration_s: float
    mean_rate: float
    aggregate_peak: float
    per_adapter_peak: dict[str, float] = field(default_factory=dict)
    per_adapter_mean: dict[str, float] = field(default_factory=dict)

    @property
    def sum_of_peaks(self) -> float:
        return float(sum(self.per_adapter_peak.values()))


def trace_peaks(trace: pd.DataFrame, window_s: float = 10.0, adapters: list[str] | None = None) -> Peaks:
    """Aggregate and per-adapter peak rates (max requests in a window / window_s) of a trace (t, adapter).
    Every adapter named in `adapters` is counted, also those the trace never sent a request to (peak 0)."""
    if window_s <= 0:
        raise ValueError(f"peak window: {window_s} must be > 0 seconds")
    missing = {"t", "adapter"} - set(trace.columns)
    if missing:
        raise ValueError(f"trace: missing columns {sorted(missing)}; a trace has request_id, t, adapter, ...")
    if trace.empty:
        raise ValueError("trace: no requests; build it from a workload with a positive rate and duration")
    t = trace["t"].astype(float)
    duration = max(float(t.max()), window_s)
    win = (t // window_s).astype(int)
    agg_peak = win.value_counts().max() / window_s
    by = trace.assign(_w=win).groupby(["adapter", "_w"]).size()
    per_peak = {str(k): float(v) / window_s for k, v in by.groupby(level=0).max().items() if str(k)}
    per_mean = {str(k): float(v) / duration for k, v in trace.groupby("adapter").size().items() if str(k)}
    for name in adapters or []:  # adapters that never sent a request still exist
        per_peak.setdefault(name, 0.0)
        per_mean.setdefault(name, 0.0)
    return Peaks(window_s, duration, len(trace) / duration, float(agg_peak), per_peak, per_mean)


def shared_vs_dedicated(shared: Curve, dedicated_lambda1: float, peaks: Peaks, usd_per_gpu_hour: float) -> dict:
    """GPUs for the same trace two ways: one shared base sized for the aggregate peak, or one merged
    deployment per adapter sized for that adapter's own peak (whole GPUs, or GPU shares summed)."""
    n = len(peaks.per_adapter_peak)
    if n == 0:
        raise ValueError("trace peaks: no adapters; the trace must name at least one adapter")
    if dedicated_lambda1 <= 0:
        raise ValueError(f"dedicated capacity lambda*(1) = {dedicated_lambda1} must be > 0; the sweep found none")
    peak_per_adapter = peaks.aggregate_peak / n
    a = adapters_per_gpu(shared, peak_per_adapter)
    shared_gpus = max(1, math.ceil(n / a - _EPS)) if a > 0 else None
    shares = {k: v / dedicated_lambda1 for k, v in peaks.per_adapter_peak.items()}
    whole = int(sum(max(1, math.ceil(s - _EPS)) for s in shares.values()))
    fractional = max(1, math.ceil(sum(shares.values()) - _EPS))
    out = {
        "adapters": n, "window_s": peaks.window_s, "mean_rate": peaks.mean_rate,
        "aggregate_peak": peaks.aggregate_peak, "sum_of_peaks": peaks.sum_of_peaks,
        "peak_ratio": peaks.sum_of_peaks / peaks.aggregate_peak if peaks.aggregate_peak > 0 else None,
        "shared_adapters_per_gpu": a, "shared_gpus": shared_gpus,
        "dedicated_lambda1": dedicated_lambda1, "dedicated_gpus_whole": whole,
        "dedicated_gpus_shares": fractional,
        "usd_per_hour_shared": None if shared_gpus is None else shared_gpus * usd_per_gpu_hour,
        "usd_per_hour_dedicated_whole": whole * usd_per_gpu_hour,
        "usd_per_hour_dedicated_shares": fractional * usd_per_gpu_hour,
    }
    if shared_gpus is None:
        out["note"] = (f"one adapter at the peak share {peak_per_adapter:g} req/s exceeds lambda*(1) of "
                       f"{shared.engine}")
    elif a == shared.n_max and n > a:
        out["note"] = (f"shared GPUs is an upper bound: adapters per GPU is at least {a}, the curve was measured "
                       f"up to N={shared.n_max}; sweep larger N (--adapters) to tighten it")
    return out


PLAN_TRACE_S = 600.0  # peaks are counted over this much planned traffic: longer traces meet higher peaks


@dataclass(frozen=True)
class _PlannedAdapters:
    count: int

    def names(self) -> list[str]:
        return [f"adapter-{i:04d}" for i in range(self.count)]


@dataclass(frozen=True)
class PlannedWorkload:
    """What harness.trace.build_trace reads of a workload (name, seed, traffic, adapter names, horizon), parsed
    from the traffic section alone: planning needs no engine or model checks, so the report can plan too."""

    name: str
    seed: int
    traffic: object
    adapters: _PlannedAdapters
    horizon_s: float


def planned_trace(spec: dict, adapters: int, rate_per_adapter: float, duration_s: float | None = PLAN_TRACE_S
                  ) -> pd.DataFrame:
    """The workload's trace (its popularity and burstiness; spec = the workload as a mapping, as capacity.json
    stores it) at the planned adapter count and total rate, duration_s seconds long (None: its own horizon)."""
    from harness.spec_sections import TrafficSpec
    from harness.trace import build_trace

    traffic = copy.deepcopy(spec.get("traffic") or {})
    if "replay" in traffic:
        raise ValueError("the workload replays a trace file, whose rate and adapters cannot be re-planned")
    if isinstance(traffic.get("arrivals"), dict):
        traffic["arrivals"].pop("burst_rate", None)  # the planned total rate replaces it
    traffic["rate"] = float(adapters * rate_per_adapter)
    horizon = float(duration_s) if duration_s is not None else float(spec.get("warmup_s", 0)) + float(spec["duration_s"])
    workload = PlannedWorkload(str(spec.get("name", "planned")), int(spec.get("seed", 0)),
                               TrafficSpec.parse(traffic, Path(spec.get("base_dir", "."))), _PlannedAdapters(adapters),
                               horizon)
    return build_trace(workload)


def plan_fleet(curves: dict[str, list[dict]], adapters: int, rate_per_adapter: float, usd_per_gpu_hour: float,
               trace: pd.DataFrame | None = None, window_s: float = 10.0,
               dedicated_engine: str = "merged") -> dict:
    """Every engine's plan, and (given the planned trace) shared base vs dedicated deployments per engine.

    The dedicated alternative uses λ*(1) of `dedicated_engine` when the sweep measured it, else each engine's own.
    """
    parsed = {name: Curve.from_points(name, pts) for name, pts in curves.items()}
    if not parsed:
        raise ValueError("capacity.json has no curves; run `harness sweep WORKLOAD --over rate` first")
    plans = [plan_engine(c, adapters, rate_per_adapter, usd_per_gpu_hour) for c in parsed.values()]
    out: dict = {"adapters": adapters, "rate_per_adapter": rate_per_adapter, "usd_per_gpu_hour": usd_per_gpu_hour,
                 "formulas": list(FORMULAS), "plans": [p.to_dict() for p in plans], "peaks": None, "comparison": []}
    if trace is not None:
        names = [f"adapter-{i:04d}" for i in range(adapters)]  # as planned_trace names them
        peaks = trace_peaks(trace, window_s, adapters=names)
        silent = sum(1 for v in peaks.per_adapter_peak.values() if v == 0)
        out["peaks"] = {"window_s": window_s, "mean_rate": peaks.mean_rate, "aggregate_peak": peaks.aggregate_peak,
                        "sum_of_peaks": peaks.sum_of_peaks, "trace_s": peaks.duration_s,
                        "adapters_without_requests": silent}
        for name, c in parsed.items():
            ded = parsed.get(dedicated_engine, c)
            if ded.n[0] != 1:
                out["comparison"].append({"engine": name, "dedicated_engine": ded.engine,
                                          "note": f"the {ded.engine} curve has no N=1 point; rerun `harness sweep` "
                                                  "with --adapters 1,... to size dedicated deployments"})
                continue
            row = shared_vs_dedicated(c, ded.lambda_star[0], peaks, usd_per_gpu_hour)
            out["comparison"].append({"engine": name, "dedicated_engine": ded.engine, **row})
    return out


def without_prices(plan: dict) -> dict:
    """The same plan with every $ figure removed (None): for curves that cannot be priced (measured on a CPU)."""
    out = copy.deepcopy(plan)
    out["usd_per_gpu_hour"] = None
    for p in out["plans"]:
        p.update(usd_per_gpu_hour=None, usd_per_hour=None, usd_per_m_tokens=None)
    for c in out["comparison"]:
        for key in [k for k in c if k.startswith("usd_")]:
            c[key] = None
    return out
