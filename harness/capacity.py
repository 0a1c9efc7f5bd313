"""Capacity search: the largest load that still meets the SLO, found by doubling then bisection (pure logic)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Probe:
    """What one run at (rate, n) measured: the SLO attainment and the goodput in output tokens/s."""

    attainment: float
    goodput_tok_s: float = 0.0
    run: str = ""  # the run directory (or any label) that produced it
    note: str = ""  # why a run counts as failed although it may have numbers (invalid, server died, ...)
    limited: bool = False  # the load generator could not send this load on time: neither a pass nor an SLO miss

    def passes(self, target: float) -> bool:
        return not self.limited and not self.note and self.attainment >= target


@dataclass(frozen=True)
class SearchConfig:
    """How the search brackets and when it stops.

    target: a load passes when its SLO attainment >= target.
    resolution: relative for rates (stop when hi - lo <= resolution * lo), absolute (>= 1) for adapter counts.
    start: the first load tried; the bracket grows by doubling (or shrinks by halving) from there.
    lowest / highest: the search never probes below / above these; max_probes bounds the number of runs.
    """

    target: float = 0.9
    resolution: float = 0.1
    start: float = 1.0
    lowest: float = 1e-3
    highest: float = 1e6
    max_probes: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target: {self.target} must be in (0, 1] (an SLO attainment fraction)")
        if self.resolution <= 0:
            raise ValueError(f"resolution: {self.resolution} must be > 0")
        if not 0 < self.lowest <= self.start <= self.highest:
            raise ValueError(f"start: {self.start} must lie in [lowest={self.lowest}, highest={self.highest}], "
                             "all > 0")
        if self.max_probes < 2:
            raise ValueError(f"max_probes: {self.max_probes} must be >= 2 (one to bracket, one to refine)")


BOUNDS = ("bracket", "lower", "upper", "unknown")  # how a capacity was found; see SearchResult.bound


def bound_kind(lo: float, hi: float) -> str:
    """bracket: lo passed and hi failed, the capacity lies in [lo, hi); lower: only lo passed, the capacity is
    at least lo; upper: only hi failed (nothing passed), it is below hi; unknown: no load passed or failed."""
    if lo > 0:
        return "bracket" if math.isfinite(hi) else "lower"
    return "upper" if math.isfinite(hi) else "unknown"


def point_bound(point: dict, over: str = "rate") -> tuple[str, float | None]:
    """(bound kind, upper) of a capacity.json point. Points written before bounds were recorded carry neither:
    they are derived from the point's tried loads (the smallest failed load is the upper end), the same rule
    as bound_kind, so an old sweep is never shown as a bracket it does not have."""
    if "bound" in point or "tried" not in point:  # a point with no search record is taken as given
        return str(point.get("bound", "bracket")), point.get("upper")
    lo = float(point["lambda_star"] if over == "rate" else point["n"])
    failed = [float(t["load"]) for t in point.get("tried", []) if not t.get("pass") and not t.get("limited")]
    hi = min((f for f in failed if f > lo), default=math.inf)
    return bound_kind(lo, hi), (hi if math.isfinite(hi) else None)


def point_text(point: dict, over: str = "rate") -> str:
    """How a point's answer is known: the bracket, or a bound (see bound_text)."""
    kind, upper = point_bound(point, over)
    return bound_text(kind, point["lambda_star"] if over == "rate" else point["n"], upper)


def bound_text(kind: str, lo: float | None, hi: float | None, fmt: str = ".4g") -> str:
    """A capacity as it is known: "[2.25, 2.5]", ">= 2.25" (a lower bound), "< 0.5" (an upper bound) or "?"."""
    if kind == "bracket":
        return f"[{lo:{fmt}}, {hi:{fmt}}]" if hi is not None else f"{lo:{fmt}}"
    if kind == "lower":
        return f">= {lo:{fmt}}"
    if kind == "upper":
        return f"< {hi:{fmt}}"
    return "?"


@dataclass
class SearchResult:
    """The answer of one search: the largest passing load and every probe it took to find it."""

    best: float  # largest load seen to pass (0.0 if none passed)
    upper: float  # smallest load seen to fail (math.inf if none failed)
    best_probe: Probe | None
    tried: list[dict] = field(default_factory=list)  # {"load", "attainment", ..., "pass", "limited"}
    converged: bool = False  # the bracket closed to the resolution (False: max_probes or a limit stopped it)
    reason: str = ""

    @property
    def bound(self) -> str:
        return bound_kind(self.best, self.upper)

    def to_dict(self) -> dict:
        return {
            "best": self.best,
            "upper": None if math.isinf(self.upper) else self.upper,
            "bound": self.bound,
            "goodput_tok_s": self.best_probe.goodput_tok_s if self.best_probe else 0.0,
            "attainment": self.best_probe.attainment if self.best_probe else None,
            "run": self.best_probe.run if self.best_probe else "",
            "converged": self.converged,
            "reason": self.reason,
            "tried": self.tried,
        }


def _closed(lo: float, hi: float, cfg: SearchConfig, integer: bool) -> bool:
    if integer:
        return hi - lo <= max(1.0, cfg.resolution)
    return hi - lo <= cfg.resolution * lo


def search_max(probe: Callable[[float], Probe], cfg: SearchConfig, *, integer: bool = False) -> SearchResult:
    """Largest load x with probe(x).attainment >= cfg.target, assuming attainment falls as the load grows.

    Phase 1 brackets: from cfg.start, double while the load passes (or halve while it fails) until one passing
    and one failing load are known, or a limit (lowest/highest/max_probes) is hit. Phase 2 bisects the bracket
    [pass, fail] until it is narrower than the resolution. Loads are integers when integer=True (adapter counts).
    """
    tried: list[dict] = []
    seen: dict[float, Probe] = {}

    def run(x: float) -> str:
        """ "pass", "fail" or "limited" (the load generator fell behind: the load says nothing either way)."""
        if x not in seen:
            p = probe(x)
            seen[x] = p
            tried.append({"load": x, "attainment": p.attainment, "goodput_tok_s": p.goodput_tok_s,
                          "run": p.run, "note": p.note, "pass": p.passes(cfg.target), "limited": p.limited})
        p = seen[x]
        return "limited" if p.limited else ("pass" if p.passes(cfg.target) else "fail")

    def snap(x: float) -> float:
        return float(max(1, round(x))) if integer else x

    lo, hi = 0.0, math.inf  # lo passes (0 = nothing passed yet), hi fails
    x = snap(cfg.start)
    reason = ""
    while True:  # phase 1: bracket
        if len(seen) >= cfg.max_probes:
            reason = f"stopped after max_probes={cfg.max_probes} runs while bracketing"
            break
        outcome = run(x)
        if outcome == "limited" and lo > 0:
            reason = f"the load generator could not send {x:g} on time; the capacity is at least {lo:g}"
            break
        if outcome == "pass":
            lo = max(lo, x)
            if math.isfinite(hi):
                break
            nxt = snap(min(x * 2, cfg.highest))
            if nxt <= x:
                reason = f"passes at the highest load searched ({cfg.highest:g}); the capacity may be larger"
                break
            x = nxt
        else:  # a failure, or a limited load with nothing passed yet: look lower
            if outcome == "fail":
                hi = min(hi, x)
            if lo > 0:
                break
            nxt = snap(max(x / 2, cfg.lowest))
            if nxt >= x:
                reason = (f"fails even at the lowest load searched ({cfg.lowest:g})" if outcome == "fail" else
                          f"the load generator fell behind even at the lowest load searched ({cfg.lowest:g})")
                break
            x = nxt
    while lo > 0 and math.isfinite(hi) and not _closed(lo, hi, cfg, integer):  # phase 2: bisect
        if len(seen) >= cfg.max_probes:
            reason = f"stopped after max_probes={cfg.max_probes} runs; bracket [{lo:g}, {hi:g}]"
            break
        mid = snap((lo + hi) / 2)
        if mid <= lo or mid >= hi:
            break
        outcome = run(mid)
        if outcome == "limited":
            reason = f"the load generator could not send {mid:g} on time; bracket [{lo:g}, {hi:g}]"
            break
        if outcome == "pass":
            lo = mid
        else:
            hi = mid
    converged = lo > 0 and math.isfinite(hi) and _closed(lo, hi, cfg, integer)
    if converged:
        reason = f"bracket [{lo:g}, {hi:g}] within resolution {cfg.resolution:g}"
    return SearchResult(best=lo, upper=hi, best_probe=seen.get(lo), tried=tried, converged=converged,
                        reason=reason)


@dataclass(frozen=True)
class CurvePoint:
    """One point of a capacity curve: with n adapters, lambda_star req/s total still meets the SLO."""

    n: int
    lambda_star: float
    goodput_tok_s: float
    attainment: float | None
    run: str
    converged: bool
    reason: str
    tried: list
    bound: str = "bracket"  # how lambda_star is known: bracket [lambda_star, upper), lower or upper bound (BOUNDS)
    upper: float | None = None  # the smallest failing load (None: none failed)

    def to_dict(self) -> dict:
        return asdict(self)


def capacity_curve(probe: Callable[[float, int], Probe], ns: list[int], cfg: SearchConfig) -> list[CurvePoint]:
    """λ*(N) for each adapter count N: one rate search per N; each search starts from the previous answer."""
    return list(iter_capacity_curve(probe, ns, cfg))


def iter_capacity_curve(probe: Callable[[float, int], Probe], ns: list[int], cfg: SearchConfig):
    """capacity_curve one point at a time (ascending N), so a caller can save each point as it is found."""
    start = cfg.start
    ns = sorted(set(int(v) for v in ns))
    if ns and ns[0] < 1:
        raise ValueError(f"adapters: {ns[0]} must be >= 1")
    for n in ns:
        step_cfg = SearchConfig(target=cfg.target, resolution=cfg.resolution,
                                start=min(max(start, cfg.lowest), cfg.highest), lowest=cfg.lowest,
                                highest=cfg.highest, max_probes=cfg.max_probes)
        res = search_max(lambda rate, n=n: probe(rate, n), step_cfg)
        d = res.to_dict()
        yield CurvePoint(n=n, lambda_star=res.best, goodput_tok_s=d["goodput_tok_s"], attainment=d["attainment"],
                         run=d["run"], converged=res.converged, reason=res.reason, tried=res.tried,
                         bound=res.bound, upper=d["upper"])
        if res.best > 0:
            start = res.best
