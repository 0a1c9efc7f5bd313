"""Regression gate statistics: Mann-Whitney U, bootstrap interval on the ratio of medians, verdict per metric.

Three verdicts per metric: regression (significant and beyond the minimum effect in the bad direction), pass
(the interval rules out a regression of the minimum effect; an improvement passes too) and inconclusive (the
interval still reaches beyond the minimum effect in the bad direction: this sample cannot tell).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Which way is worse, per summary metric: "lower" = a drop is a regression (throughput),
# "higher" = a rise is a regression (latency, memory, energy). Metrics absent here cannot be gated.
WORSE_WHEN: dict[str, str] = {
    "req_s": "lower", "output_tok_s": "lower", "served_tok_s": "lower", "goodput_req_s": "lower", "goodput": "lower",
    "slo_attainment": "lower", "jain_fairness": "lower",
    "ttft_p50": "higher", "ttft_p90": "higher", "ttft_p99": "higher",
    "tpot_p50": "higher", "tpot_p90": "higher", "tpot_p99": "higher",
    "e2e_p50": "higher", "e2e_p90": "higher", "e2e_p99": "higher",
    "itl_p50": "higher", "itl_p99": "higher",
    "ttft_mean": "higher", "tpot_mean": "higher", "e2e_mean": "higher", "itl_mean": "higher",
    "schedule_lag_p50": "higher", "schedule_lag_p99": "higher", "schedule_lag_max": "higher",
    "gpu_mem_max_gb": "higher", "energy_j": "higher", "energy_per_token_j": "higher",
}

EXACT_MAX_PAIRS = 2500  # exact U distribution when there are no ties and n1*n2 is at most this
BOOTSTRAP_RESAMPLES = 4000


class GateInputError(Exception):
    """The input cannot be judged (exit 2): the message says which input and what to do."""


@dataclass(frozen=True)
class MetricSpec:
    """A gated quantity: a summary metric of each engine, or a ratio of one metric between two engines."""

    text: str  # as the user wrote it
    metric: str
    numerator: str | None = None  # ratio only: engine names
    denominator: str | None = None

    @property
    def is_ratio(self) -> bool:
        return self.numerator is not None

    @property
    def worse_when(self) -> str:
        return WORSE_WHEN[self.metric]


def parse_metric(text: str) -> MetricSpec:
    """'output_tok_s' or 'ratio:output_tok_s:multilora/merged' -> MetricSpec; bad text raises GateInputError."""
    if text.startswith("ratio:"):
        parts = text.split(":")
        engines = parts[2].split("/") if len(parts) == 3 else []
        if len(engines) != 2 or not all(engines) or engines[0] == engines[1]:
            raise GateInputError(f"--metric {text!r}: a ratio is written ratio:METRIC:ENGINE_A/ENGINE_B "
                                 "with two different engines, e.g. ratio:output_tok_s:multilora/merged")
        spec = MetricSpec(text, parts[1], engines[0], engines[1])
    else:
        spec = MetricSpec(text, text)
    if spec.metric not in WORSE_WHEN:
        raise GateInputError(f"--metric {text!r}: {spec.metric!r} cannot be gated; "
                             f"gateable metrics: {', '.join(sorted(WORSE_WHEN))}")
    return spec


def parse_fraction(text: str, name: str = "--max-regression") -> float:
    """'5%' or '0.05' -> 0.05. A bare number above 1 is refused as ambiguous."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise GateInputError(f"{name} {text!r} is not a number; write e.g. 5% or 0.05") from None
    if not raw.endswith("%") and value > 1.0:
        raise GateInputError(f"{name} {text!r} is ambiguous; write {raw}% for a percentage or a fraction <= 1")
    if not 0.0 <= value < 1.0:
        raise GateInputError(f"{name} {text!r} must be at least 0% and below 100%")
    return value


# ---------------------------------------------------------------- Mann-Whitney U


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: pairs (x > y) + half the ties
    p: float
    method: str  # "exact" | "normal"


def _rank(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the sizes of the tie groups."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks, ends - starts


def _exact_cdf(u: int, m: int, n: int) -> float:
    """P(U <= u) without ties: counts are the coefficients of the Gaussian binomial [m+n choose m]_q."""
    coeffs = [0] * (m * n + 1)
    coeffs[0] = 1
    for i in range(1, m + 1):
        a = n + i
        for k in range(m * n, a - 1, -1):  # multiply by (1 - q^a)
            coeffs[k] -= coeffs[k - a]
        for k in range(i, m * n + 1):  # divide by (1 - q^i)
            coeffs[k] += coeffs[k - i]
    return sum(coeffs[: u + 1]) / math.comb(m + n, m)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def mann_whitney(x, y, alternative: str = "two-sided") -> MannWhitney:
    """Mann-Whitney U test of x against y.

    alternative "less": x tends to be smaller than y; "greater": larger; "two-sided": either.
    Exact distribution when there are no ties and len(x)*len(y) <= EXACT_MAX_PAIRS; otherwise the
    normal approximation with the tie correction of the variance and a continuity correction.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise GateInputError("Mann-Whitney U needs at least one sample on each side")
    if alternative not in ("less", "greater", "two-sided"):
        raise ValueError(f"alternative={alternative!r}; use less, greater or two-sided")
    ranks, ties = _rank(np.concatenate([x, y]))
    u = float(ranks[:m].sum() - m * (m + 1) / 2.0)
    mean = m * n / 2.0
    if ties.max() == 1 and m * n <= EXACT_MAX_PAIRS:
        u_int = int(round(u))
        p_less = _exact_cdf(u_int, m, n)
        p_greater = _exact_cdf(m * n - u_int, m, n)  # U is symmetric about m*n/2
        method = "exact"
    else:
        total = m + n
        var = m * n / 12.0 * ((total + 1) - float((ties ** 3 - ties).sum()) / (total * (total - 1)))
        if var <= 0:  # every value equal: no evidence either way
            return MannWhitney(u, 1.0, "normal")
        sd = math.sqrt(var)
        p_less = _normal_cdf((u - mean + 0.5) / sd)
        p_greater = 1.0 - _normal_cdf((u - mean - 0.5) / sd)
        method = "normal"
    p = {"less": p_less, "greater": p_greater, "two-sided": min(1.0, 2.0 * min(p_less, p_greater))}[alternative]
    return MannWhitney(u, min(1.0, max(0.0, p)), method)


def smallest_p(m: int, n: int) -> float:
    """The smallest one-sided p-value any outcome can reach with m and n samples (no ties)."""
    return 0.0 if m + n > 1000 else 1.0 / math.comb(m + n, m)  # beyond 1000 samples: below any alpha


# ---------------------------------------------------------------- effect size


def bootstrap_change(base, now, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(now) / median(base) - 1, each side resampled on its own."""
    base = np.asarray(base, dtype=float)
    now = np.asarray(now, dtype=float)
    rng = np.random.default_rng(seed)
    base_med = np.median(base[rng.integers(0, len(base), (resamples, len(base)))], axis=1)
    now_med = np.median(now[rng.integers(0, len(now), (resamples, len(now)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = now_med / base_med - 1.0
    change = change[np.isfinite(change)]
    if len(change) == 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(change, [tail, 100.0 - tail])
    return (float(lo), float(hi))


# ---------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    """One gated row: a metric of one engine (or a ratio), baseline against now."""

    metric: str
    engine: str  # the engine, or "a/b" for a ratio
    worse_when: str
    n_base: int
    n_now: int
    base: float  # medians
    now: float
    change: float  # now / base - 1
    interval: tuple[float, float]  # of change
    p: float  # one-sided, in the bad direction
    method: str
    status: str  # "pass" | "improved" | "regression" | "inconclusive"
    detectable: float = math.nan  # smallest change this sample resolves: the width of its interval
    samples_needed: int | None = None  # per side, for the interval to resolve max_regression (None: n/a)

    @property
    def failed(self) -> bool:
        return self.status == "regression"


def samples_needed(n: int, detectable: float, effect: float) -> int | None:
    """Samples per side for an interval as wide as `effect` (its width shrinks as 1/sqrt(n)): then an unchanged
    metric passes (the interval, centred near 0, stays within effect/2 of it) and a drop of 2x effect fails."""
    if not math.isfinite(detectable) or effect <= 0:
        return None
    return max(n, math.ceil(n * (detectable / effect) ** 2))


def judge(metric: str, engine: str, base, now, worse_when: str, *, max_regression: float = 0.05,
          alpha: float = 0.05, min_samples: int = 3, level: float = 0.95, seed: int = 0) -> Verdict:
    """Regression = significant (one-sided Mann-Whitney p < alpha) AND the median moved more than
    max_regression in the bad direction; the same in the good direction is reported as improved."""
    base = np.asarray([v for v in base if v is not None and math.isfinite(v)], dtype=float)
    now = np.asarray([v for v in now if v is not None and math.isfinite(v)], dtype=float)
    label = f"{metric} ({engine})"
    for side, values in (("baseline", base), ("current", now)):
        if len(values) < min_samples:
            raise GateInputError(f"{label}: {len(values)} {side} sample(s), fewer than the "
                                 f"{min_samples} needed; record more runs or a longer measured window")
    if smallest_p(len(base), len(now)) >= alpha:
        raise GateInputError(f"{label}: with {len(base)} baseline and {len(now)} current samples no "
                             f"outcome can reach p < {alpha}; record more runs or a longer window")
    base_med, now_med = float(np.median(base)), float(np.median(now))
    if base_med == 0:
        raise GateInputError(f"{label}: the baseline median is 0, so a relative change is undefined; "
                             "gate a metric the baseline actually measured")
    change = now_med / base_med - 1.0
    bad_alt, good_alt = ("less", "greater") if worse_when == "lower" else ("greater", "less")
    test_bad = mann_whitney(now, base, bad_alt)
    test_good = mann_whitney(now, base, good_alt)
    bad_change = -change if worse_when == "lower" else change
    interval = bootstrap_change(base, now, level=level, seed=seed)
    worst = -interval[0] if worse_when == "lower" else interval[1]  # the worst change the interval allows
    if test_bad.p < alpha and bad_change > max_regression:
        status = "regression"
    elif test_good.p < alpha and -bad_change > max_regression:
        status = "improved"
    elif not math.isfinite(worst) or worst > max_regression:
        status = "inconclusive"
    else:
        status = "pass"
    detectable = interval[1] - interval[0]
    return Verdict(metric, engine, worse_when, len(base), len(now), base_med, now_med, change,
                   interval, test_bad.p, test_bad.method, status, detectable,
                   samples_needed(min(len(base), len(now)), detectable, max_regression))


# ---------------------------------------------------------------- samples of a baseline document


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _metric_entry(doc: dict, engine: str, metric: str, side: str) -> dict:
    engines = doc.get("engines", {})
    if engine not in engines:
        raise GateInputError(f"the {side} have no runs of engine {engine!r} (they have: "
                             f"{', '.join(sorted(engines)) or 'none'}); include that engine's runs")
    metrics = engines[engine]["metrics"]
    if metric not in metrics:
        raise GateInputError(f"the {side} have no metric {metric!r} for engine {engine!r}; "
                             "their summary.json does not record it")
    return metrics[metric]


def metric_samples(doc: dict, spec: MetricSpec, engine: str | None = None, side: str = "runs") -> list[float]:
    """Repeated samples of one gated quantity: per-window values of every run when the summary has
    windows for the metric, else one value per run. A ratio pairs run k of the numerator engine with
    run k of the denominator engine and, with windows, window i with window i (same trace, same load)."""
    if not spec.is_ratio:
        entry = _metric_entry(doc, engine, spec.metric, side)
        if "per_window" in entry:
            return _clean(v for run in entry["per_window"] for v in run)
        return _clean(entry["per_run"])
    num = _metric_entry(doc, spec.numerator, spec.metric, side)
    den = _metric_entry(doc, spec.denominator, spec.metric, side)
    if len(num["per_run"]) != len(den["per_run"]):
        raise GateInputError(f"{spec.text}: the {side} have {len(num['per_run'])} run(s) of {spec.numerator} "
                             f"but {len(den['per_run'])} of {spec.denominator}; a ratio pairs one run of each")
    if "per_window" in num and "per_window" in den:
        pairs = [(a, b) for run_a, run_b in zip(num["per_window"], den["per_window"]) for a, b in zip(run_a, run_b)]
    else:
        pairs = list(zip(num["per_run"], den["per_run"]))
    return [a / b for a, b in pairs if a is not None and b is not None and b > 0 and math.isfinite(a / b)]


EXIT_INCONCLUSIVE = 1  # unless --allow-inconclusive (then 0): a gate that cannot see the asked change fails


@dataclass
class GateReport:
    baseline: dict
    verdicts: list[Verdict]
    max_regression: float
    alpha: float
    allow_inconclusive: bool = False
    samples_per_run: dict = field(default_factory=dict)  # verdict label -> samples one run adds per side

    @property
    def verdict(self) -> str:
        statuses = {v.status for v in self.verdicts}
        return "regression" if "regression" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"

    @property
    def exit_code(self) -> int:
        return {"regression": 1, "inconclusive": 0 if self.allow_inconclusive else EXIT_INCONCLUSIVE,
                "pass": 0}[self.verdict]

    def runs_needed(self, v: Verdict) -> int | None:
        """Runs per side for the interval of v to resolve max_regression (samples_needed / samples per run)."""
        per_run = self.samples_per_run.get((v.metric, v.engine)) or 1
        return None if v.samples_needed is None else math.ceil(v.samples_needed / per_run)


def _runs(doc: dict, spec: MetricSpec, engine: str | None) -> int:
    name = spec.numerator if spec.is_ratio else engine
    return len(((doc.get("engines", {}).get(name) or {}).get("metrics", {}).get(spec.metric) or {}).get("per_run", [])
               ) or 1


def evaluate(baseline: dict, current: dict, specs: list[MetricSpec], *, max_regression: float = 0.05,
             alpha: float = 0.05, min_samples: int = 3, allow_inconclusive: bool = False) -> GateReport:
    """Judge every metric (per engine of the current runs, or once per ratio) against the baseline."""
    if not 0.0 < alpha < 1.0:
        raise GateInputError(f"--alpha {alpha} must be between 0 and 1 (e.g. 0.05)")
    verdicts = []
    per_run: dict = {}
    for spec in specs:
        if spec.is_ratio:
            rows = [(f"{spec.numerator}/{spec.denominator}", None)]
        else:
            rows = [(engine, engine) for engine in sorted(current.get("engines", {}))]
        for label, engine in rows:
            base = metric_samples(baseline, spec, engine, side=f"baseline {baseline.get('name', '')!r}".strip())
            now = metric_samples(current, spec, engine, side="current runs")
            metric = f"{spec.metric} ratio" if spec.is_ratio else spec.metric
            verdicts.append(judge(metric, label, base, now, spec.worse_when, max_regression=max_regression,
                                  alpha=alpha, min_samples=min_samples))
            per_run[(metric, label)] = len(now) / _runs(current, spec, engine)
    return GateReport(baseline, verdicts, max_regression, alpha, allow_inconclusive, per_run)


# ---------------------------------------------------------------- markdown


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 100:+.1f}%"


_VERDICT = {"regression": "**FAIL**", "improved": "pass (improved)", "pass": "pass",
            "inconclusive": "**inconclusive**"}


def render_markdown(report: GateReport) -> str:
    base = report.baseline
    head = report.verdict.upper()
    git = (base.get("environment") or {}).get("git") or {}
    commit = f", commit {str(git['commit'])[:10]}" if git.get("commit") else ""
    effect = f"{report.max_regression * 100:g}%"
    lines = [
        f"### Regression gate: {head} (exit {report.exit_code})",
        "",
        f"Baseline `{base.get('name', '?')}` (workload `{base.get('workload')}`, model `{base.get('model')}`, "
        f"GPU `{base.get('gpu')}`, saved {base.get('created_at', '?')}{commit}). A regression needs both a one-sided "
        f"Mann-Whitney U p < {report.alpha:g} and a median change beyond {effect} in the bad direction; a pass "
        f"needs the 95% bootstrap interval of the change of medians to rule out a {effect} regression; otherwise "
        "the sample cannot tell and the verdict is inconclusive.",
        "",
        "| metric | engine | worse when | baseline median (n) | now median (n) | change | 95% interval | "
        "resolves | p | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report.verdicts:
        lines.append(f"| {v.metric} | {v.engine} | {v.worse_when} | {v.base:.4g} ({v.n_base}) | "
                     f"{v.now:.4g} ({v.n_now}) | {_pct(v.change)} | [{_pct(v.interval[0])}, {_pct(v.interval[1])}] | "
                     f"{v.detectable * 100:.1f}% | {v.p:.3g} | {_VERDICT[v.status]} |")
    lines.append("")
    for v in report.verdicts:
        if v.status == "regression":
            lines.append(f"- {v.metric} of {v.engine} regressed {_pct(v.change)} (p = {v.p:.3g}).")
        elif v.status == "inconclusive":
            runs = report.runs_needed(v)
            more = (f" about {v.samples_needed} samples per side ({runs} run(s) of this length) would resolve it"
                    if runs else "")
            lines.append(f"- {v.metric} of {v.engine}: inconclusive. This sample resolves changes of about "
                         f"{v.detectable * 100:.1f}% (the width of its interval), not the {effect} asked;{more}.")
    if report.verdict == "inconclusive":
        lines.append(f"- Inconclusive exits {EXIT_INCONCLUSIVE} (a gate that cannot see the change fails) unless "
                     "--allow-inconclusive, which exits 0.")
    return "\n".join(lines).rstrip() + "\n"


def report_json(report: GateReport) -> dict:
    """The verdict as data: what `harness gate --json` writes."""
    base = report.baseline
    return {"verdict": report.verdict, "exit_code": report.exit_code,
            "baseline": {k: base.get(k) for k in ("name", "workload", "model", "gpu", "created_at")},
            "max_regression": report.max_regression, "alpha": report.alpha,
            "metrics": [{"metric": v.metric, "engine": v.engine, "worse_when": v.worse_when, "n_base": v.n_base,
                         "n_now": v.n_now, "base_median": v.base, "now_median": v.now, "change": v.change,
                         "interval": list(v.interval), "detectable": v.detectable,
                         "samples_needed": v.samples_needed, "runs_needed": report.runs_needed(v), "p": v.p,
                         "test": f"mann-whitney-{v.method}", "status": v.status} for v in report.verdicts]}


def render_unusable(message: str) -> str:
    return f"### Regression gate: UNUSABLE INPUT\n\n{message}\n"
