"""The planner's simulated answer: smallest fleet per routing policy for the planned trace, beside the ceil() plan."""
from __future__ import annotations

from typing import Any

import pandas as pd

from harness.simulate.model import SCOPE, fit_run
from harness.simulate.search import replicas_needed

PLAN_POLICIES = ("round_robin", "power_of_two", "affinity")


def simulated_plan(run_dir: str, trace: pd.DataFrame, spec: Any, adapters: int, target: float,
                   usd_per_gpu_hour: float, policies: tuple[str, ...] = PLAN_POLICIES) -> dict[str, Any]:
    """Per policy: GPUs (one replica each) the simulator needs for `target` SLO attainment on the planned trace,
    adapters per GPU = adapters / GPUs, and $/1M output tokens."""
    from harness.spec import load_workload

    spec = spec if hasattr(spec, "slo") else load_workload(spec, machine="cuda")
    model = fit_run(run_dir)
    horizon = float(trace["t"].max())
    warmup = min(float(spec.warmup_s), horizon / 2)
    found = replicas_needed(trace, model, list(policies), warmup_s=warmup, duration_s=horizon - warmup,
                            slo=spec.slo.limits(), target=target, usd_per_replica_hour=usd_per_gpu_hour)
    rows = []
    for policy, f in found.items():
        s = f["summary"] or {}
        rows.append({"policy": policy, "gpus": f["replicas"],
                     "adapters_per_gpu": adapters / f["replicas"] if f["replicas"] else None,
                     "slo_attainment": (s.get("metrics") or {}).get("slo_attainment"),
                     "usd_per_m_tokens": s.get("usd_per_1m_tokens"), "adapter_loads": s.get("adapter_loads_total"),
                     "tried": f["tried"]})
    return {"run": str(run_dir), "target": target, "model": model.to_dict(), "requests": len(trace), "rows": rows}


def render_simulated(sim: dict[str, Any], plan: dict[str, Any]) -> str:
    """The simulated fleet next to the ceil() arithmetic of every engine in the plan."""
    lines = ["", f"Simulated fleet (replica model fitted from {sim['run']}; {sim['requests']} requests of the planned "
                 f"trace; smallest R with SLO attainment >= {sim['target']:g}):"]
    head = f"{'':<28} {'adapters/GPU':>12} {'GPUs':>6} {'$/1M tok':>9}"
    lines += [head, "-" * len(head)]
    for p in plan["plans"]:
        cost = "n/a" if p["usd_per_m_tokens"] is None else f"{p['usd_per_m_tokens']:.3f}"
        lines.append(f"{'ceil(), ' + p['engine']:<28} {p['adapters_per_gpu']:>12} "
                     f"{'n/a' if p['gpus'] is None else p['gpus']:>6} {cost:>9}")
    for r in sim["rows"]:
        if r["gpus"] is None:
            lines.append(f"{'simulated, ' + r['policy']:<28} {'n/a':>12} {'> 4096':>6}")
            continue
        cost = "n/a" if r["usd_per_m_tokens"] is None else f"{r['usd_per_m_tokens']:.3f}"
        lines.append(f"{'simulated, ' + r['policy']:<28} {r['adapters_per_gpu']:>12.0f} {r['gpus']:>6} {cost:>9}")
    lines.append("ceil() assumes perfect balancing and no adapter locality; the simulation routes every request, "
                 "queues it, and loads adapters into each replica's LRU (see docs/fleet.md).")
    lines.append(SCOPE)
    return "\n".join(lines)
