"""A capacity plan as plain text: what it was measured on, the curves as brackets or bounds, the GPU table and
the shared-vs-dedicated answer in sentences; used by `harness plan` and the static report."""
from __future__ import annotations

from harness.capacity import point_text


def _fmt(v, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def measured_on_lines(provenance: dict[str, list[dict]]) -> list[str]:
    """One line per engine and machine: where its capacity curve was measured."""
    lines = ["Measured on:"]
    for engine, records in provenance.items():
        for p in records:
            host = f" (host {p['host']}, {p['cpus']} CPU cores)" if p.get("host") else ""
            lines.append(f"  {engine}: {p.get('machine')}{host}, model {p.get('model')}, "
                         f"workload {p.get('workload')}")
    return lines


def curve_lines(curves: dict[str, list[dict]]) -> list[str]:
    """Each engine's lambda*(N) as it is known: [lo, hi] brackets, >= lower bounds, < upper bounds."""
    lines = ["Capacity curves, lambda*(N) in total req/s ([lo, hi]: lo met the SLO, hi did not; >= x: a lower "
             "bound; < x: an upper bound):"]
    for engine, points in curves.items():
        parts = [f"N={p['n']} {point_text(p)}"
                 for p in sorted(points, key=lambda p: p["n"])]
        lines.append(f"  {engine}: " + ", ".join(parts))
    return lines


def plan_table(plan: dict) -> list[str]:
    head = f"{'engine':<12} {'adapters/GPU':>12} {'GPUs':>6} {'$/hour':>9} {'goodput tok/s':>14} {'$/1M tok':>9}  note"
    lines = [head, "-" * len(head)]
    for p in plan["plans"]:
        lines.append(f"{p['engine']:<12} {p['adapters_per_gpu']:>12} {_fmt(p['gpus'], 'd'):>6} "
                     f"{_fmt(p['usd_per_hour'], '.2f'):>9} {p['goodput_tok_s']:>14.4g} "
                     f"{_fmt(p['usd_per_m_tokens'], '.3f'):>9}  {p['note']}")
    return lines


def shared_vs_dedicated_lines(plan: dict) -> list[str]:
    """The answer in two or three sentences, then a small table of GPUs and $/hour per way of deploying."""
    pk, rows = plan.get("peaks"), [c for c in plan.get("comparison", []) if "shared_gpus" in c]
    notes = [f"  {c['engine']}: {c['note']}" for c in plan.get("comparison", []) if c.get("note")]
    if not pk or not rows:
        return (["", "Shared base vs dedicated deployments: not compared", *notes]) if notes else []
    n, price = plan["adapters"], plan["usd_per_gpu_hour"]
    usd = (lambda gpus: None if gpus is None or price is None else gpus * price)  # noqa: E731
    best = min((c for c in rows if c["shared_gpus"] is not None), key=lambda c: c["shared_gpus"], default=None)
    ded = rows[0]
    ratio = pk["sum_of_peaks"] / pk["aggregate_peak"] if pk["aggregate_peak"] > 0 else float("nan")
    lines = ["", "Shared base vs dedicated deployments:",
             f"  In the busiest {pk['window_s']:g} s window of {pk['trace_s']:.0f} s of planned traffic, all {n} adapters "
             f"together send {pk['aggregate_peak']:.4g} req/s, while each adapter's own busiest window, summed over "
             f"adapters, is {pk['sum_of_peaks']:.4g} req/s ({ratio:.1f}x): adapters burst at different times."]
    if best is not None:
        lines.append(f"  A shared base ({best['engine']}) sized for that aggregate peak needs {best['shared_gpus']} "
                     f"GPU(s); one dedicated {ded['dedicated_engine']} deployment per adapter, sized for its own "
                     f"peak, needs {ded['dedicated_gpus_whole']} with a whole GPU each.")
    lines.append(f"  A share is the fraction of one GPU an adapter's peak needs (its peak / lambda*(1) of "
                 f"{ded['dedicated_engine']} = {ded['dedicated_lambda1']:.4g} req/s); packing shares gives "
                 f"{ded['dedicated_gpus_shares']} GPU(s), an optimistic floor that ignores the memory of one merged "
                 "copy per adapter and the cost of switching between them.")
    if pk.get("adapters_without_requests"):
        lines.append(f"  {pk['adapters_without_requests']} of {n} adapters sent no request in the planned trace; "
                     "they are counted all the same (peak 0).")
    lines.append(f"  The GPU table above sizes for the mean rate ({n * plan['rate_per_adapter']:.4g} req/s); "
                 "these figures size for the peak, so they can be higher.")
    head = f"  {'deployment':<44} {'GPUs':>6} {'$/hour':>9}"
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    for c in rows:
        gpus = c["shared_gpus"]
        lines.append(f"  {'shared base, ' + c['engine']:<44} {_fmt(gpus, 'd'):>6} {_fmt(usd(gpus), '.2f'):>9}")
    for engine in dict.fromkeys(c["dedicated_engine"] for c in rows):
        c = next(r for r in rows if r["dedicated_engine"] == engine)
        lines.append(f"  {'dedicated ' + engine + ', a whole GPU per adapter':<44} {c['dedicated_gpus_whole']:>6} "
                     f"{_fmt(usd(c['dedicated_gpus_whole']), '.2f'):>9}")
        lines.append(f"  {'dedicated ' + engine + ', shares packed (optimistic)':<44} "
                     f"{c['dedicated_gpus_shares']:>6} {_fmt(usd(c['dedicated_gpus_shares']), '.2f'):>9}")
    return lines + notes


def render(plan: dict, gpu: str, provenance: dict[str, list[dict]], curves: dict[str, list[dict]],
           extrapolation: str = "") -> str:
    """The whole plan: provenance, curves, formulas, the GPU table and the shared-vs-dedicated answer."""
    lines = []
    if extrapolation:
        lines += [f"*** {extrapolation} ***", ""]
    lines += measured_on_lines(provenance) + [""] + curve_lines(curves) + [""]
    lines += ["Formulas:", *(f"  {f}" for f in plan["formulas"]), ""]
    price = plan["usd_per_gpu_hour"]
    priced = f"{gpu} at ${price:.2f}/GPU-hour" if price is not None else "not priced"
    lines += [f"{plan['adapters']} adapters x {plan['rate_per_adapter']:g} req/s = "
              f"{plan['adapters'] * plan['rate_per_adapter']:.4g} req/s, {priced}"
              + (" (extrapolated)" if extrapolation and price is not None else ""), ""]
    lines += plan_table(plan)
    lines += shared_vs_dedicated_lines(plan)
    if extrapolation:
        lines += ["", f"*** {extrapolation} ***"]
    return "\n".join(lines)


def plan_sweep(folder, payload: dict, *, adapters: int | None = None, rate_per_adapter: float | None = None,
               gpu: str | None = None, price: float | None = None, window_s: float = 10.0) -> tuple[dict, str]:
    """The plan of one sweep folder, as `harness plan` prints it, for the report: by default for the workload
    the sweep measured (its adapter count and rate per adapter) on the GPU it ran on. A GPU other than the one
    measured is labelled an extrapolation; a sweep on a CPU is planned but not priced."""
    from harness import planner
    from harness.errors import UsageError
    from harness.provenance import check_gpu, sweep_provenance

    spec = payload.get("spec") or {}
    n = adapters or int((spec.get("adapters") or {}).get("count") or 1)
    rate = rate_per_adapter or float((spec.get("traffic") or {}).get("rate") or 1.0) / max(n, 1)
    provenance = sweep_provenance(folder, payload)
    try:
        key, extrapolation = check_gpu(gpu, provenance, planner.GPU_PRICES, allow_other=gpu is not None)
        usd = planner.gpu_price(key, price)
    except UsageError as exc:
        key, extrapolation, usd = "not priced", f"NOT PRICED: {exc}", None
    trace = None
    if spec:
        try:
            trace = planner.planned_trace(spec, n, rate)
        except ValueError:
            trace = None
    plan = planner.plan_fleet(payload.get("curves", {}), n, rate, usd or 0.0, trace=trace, window_s=window_s)
    if usd is None:
        plan = planner.without_prices(plan)
    plan.update(gpu=key, extrapolation=extrapolation, measured_on=provenance)
    return plan, render(plan, key, provenance, payload.get("curves", {}), extrapolation)
