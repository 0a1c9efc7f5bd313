"""Measured fleets next to their simulation: the replica model fitted from the single-replica run in a folder of
runs, every fleet run's own trace replayed over its replicas with each routing policy (docs/fleet.md, (c))."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import EXIT_USAGE, UsageError
from harness.simulate.fleet import simulate
from harness.simulate.model import ServiceModel, fit_run
from harness.simulate.policies import POLICIES
from harness.simulate.samples import counter_by_replica, pace_by_replica
from harness.simulate.summary import summarize_fleet
from harness.simulate.validate import replay_run
from harness.simulate.workload import run_trace
from harness.store import RunError, list_runs, load_run

FLEET_PREFIX = "fleet-"  # an external engine named fleet-<policy> is a `harness serve --replicas N --routing <policy>`
COMPARED = ("output_tok_s", "ttft_p50", "ttft_p99", "tpot_p50", "slo_attainment")
LOADS, TOKENS = "lora_fleet_adapter_loads", "lora_fleet_tokens_generated"


def fleet_policy(engine: dict[str, Any]) -> str | None:
    """The routing of a fleet run's engine entry: fleet-<policy> by name, Ray's own (affinity) for an in-process
    entry with replicas > 1; None for a single server."""
    name = str(engine.get("label") or engine.get("name") or "")
    if name.startswith(FLEET_PREFIX) and name[len(FLEET_PREFIX):] in POLICIES:
        return name[len(FLEET_PREFIX):]
    if engine.get("kind") == "inprocess" and int(engine.get("replicas") or 1) > 1:
        return "affinity"
    return None


def find_runs(root: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(single-replica in-process runs, [(fleet run, its routing policy)]) under root, oldest first."""
    singles, fleets = [], []
    for path in list_runs(root):
        try:
            engine = load_run(path).config.get("engine") or {}
        except (OSError, ValueError, RunError):
            continue
        policy = fleet_policy(engine)
        if policy is not None:
            fleets.append((path, policy))
        elif engine.get("kind") == "inprocess":
            singles.append(path)
    return singles, fleets


def per_replica(server, metric: str) -> list[int]:
    """A counter's growth per replica during the run (last scrape minus first), largest first."""
    return sorted((int(round(last - first)) for first, last in counter_by_replica(server, metric).values()),
                  reverse=True)


def ms_per_step(run) -> float | None:
    """The engine's mean time per step over the measured window, averaged over the replicas (step counter over
    time: samples of the last step's time over-weight long steps); None without the counter."""
    pace = pace_by_replica(run.server, 0.0, float(run.summary.get("measured_s") or 0.0))
    return float(np.mean([p["ms_per_step"] for p in pace.values()])) if pace else None


def compare_fleet(path: Path, policy: str, model: ServiceModel, policies: list[str],
                  replicas: int | None) -> dict[str, Any]:
    """One fleet run measured, and simulated on its own trace with each policy."""
    run = load_run(path)
    by_replica = counter_by_replica(run.server, LOADS)
    r = replicas or len(by_replica) or int((run.config.get("engine") or {}).get("replicas") or 0)
    if r < 1:
        raise UsageError(f"fleet_compare: {path}: its server samples name no replica; give --replicas")
    trace, warmup, duration, slo = run_trace(path)
    measured = {k: run.summary.get("metrics", {}).get(k) for k in COMPARED}
    measured.update(adapter_loads=per_replica(run.server, LOADS), tokens_per_replica=per_replica(run.server, TOKENS),
                    step_ms=ms_per_step(run))
    simulated = {}
    for p in [policy] + [x for x in policies if x != policy]:
        result = simulate(trace, model, r, p)
        s = summarize_fleet(trace, result, warmup_s=warmup, duration_s=duration, slo=slo)
        tokens = np.bincount(result.replica, weights=trace["output_tokens"].to_numpy(np.float64), minlength=r)
        simulated[p] = {**{k: s["metrics"][k] for k in COMPARED},
                        "adapter_loads": sorted(s["adapter_loads"], reverse=True),
                        "tokens_per_replica": sorted((int(x) for x in tokens), reverse=True)}
    error = {k: (simulated[policy][k] / measured[k] - 1 if measured[k] not in (None, 0) else None)
             for k in COMPARED}
    return {"run": str(path), "policy": policy, "replicas": r, "replicas_from": "--replicas" if replicas else
            "server samples" if by_replica else "engine entry", "requests": len(trace), "valid": run.summary.get(
                "valid"), "measured": measured, "simulated": simulated, "error": error}


def _cells(row: dict[str, Any]) -> str:
    def ms(v):
        return f"{v * 1e3:>11.1f}" if v is not None and math.isfinite(v) else f"{'-':>11}"
    loads = "+".join(str(x) for x in row.get("adapter_loads") or []) or "-"
    tokens = row.get("tokens_per_replica") or []
    share = "/".join(f"{x / sum(tokens):.0%}" for x in tokens) if sum(tokens) else "-"
    tok = f"{row['output_tok_s']:>10.1f}" if row.get("output_tok_s") is not None else f"{'-':>10}"
    slo = f"{row['slo_attainment']:>6.3f}" if row.get("slo_attainment") is not None else f"{'-':>6}"
    return f"{tok} {ms(row['ttft_p50'])} {ms(row['ttft_p99'])} {ms(row['tpot_p50'])} {slo}  {loads:<14} {share}"


def _errors(error: dict[str, Any]) -> str:
    def pct(k, width):
        v = error.get(k)
        return f"{v * 100:>+{width - 1}.1f}%" if v is not None else f"{'-':>{width}}"
    return f"{pct('output_tok_s', 10)} {pct('ttft_p50', 11)} {pct('ttft_p99', 11)} {pct('tpot_p50', 11)} " \
           f"{pct('slo_attainment', 6)}"


def print_report(single: Path, model: ServiceModel, replay: dict[str, Any], rows: list[dict[str, Any]],
                 single_step_ms: float | None) -> None:
    own = replay["compare"]
    print(f"replica model fitted from {single}:\n  {model.describe()}\n  replayed on its own trace: output tok/s "
          f"{own['output_tok_s']['error'] * 100:+.1f}%, TTFT p50 {own['ttft_p50']['error'] * 100:+.1f}% "
          f"(simulated / measured - 1)")
    head = f"{'':<24} {'out tok/s':>10} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'TPOT p50 ms':>11} {'SLO':>6}  " \
           f"{'loads/replica':<14} tokens/replica"
    for row in rows:
        print(f"\n{Path(row['run']).name}: routing {row['policy']}, {row['replicas']} replicas (from "
              f"{row['replicas_from']}), {row['requests']:,} requests, valid {row['valid']}")
        print(head)
        print(f"{'measured':<24} {_cells(row['measured'])}")
        print(f"{'simulated ' + row['policy']:<24} {_cells(row['simulated'][row['policy']])}")
        print(f"{'error':<24} {_errors(row['error'])}")
        step = row["measured"]["step_ms"]
        if step is not None and single_step_ms:
            print(f"{'':<24} engine time per step (step counter, measured window): {step:.2f} ms per replica here, "
                  f"{single_step_ms:.2f} ms in the single-replica run ({step / single_step_ms:.2f}x)")
        for p, sim in row["simulated"].items():
            if p != row["policy"]:
                print(f"{'simulated ' + p:<24} {_cells(sim)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.simulate.fleet_compare", description=__doc__)
    p.add_argument("runs_dir", help="folder holding one single-replica run and the fleet runs (fleet-<policy>)")
    p.add_argument("--single", default=None, help="the single-replica run to fit (default: the newest in-process "
                                                  "run with one replica under RUNS_DIR)")
    p.add_argument("--policies", default="affinity,round_robin", help="policies simulated for every fleet run")
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas of the fleet runs (default: the replica labels in their server samples)")
    p.add_argument("--adapter-slots", type=int, default=None, metavar="K",
                   help="adapters a replica keeps (default: the single run's gpu_slots, as --max-adapters-per-"
                        "replica's default)")
    p.add_argument("--out", default=None, help="also write the comparison as JSON here")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"fleet_compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if not policies or any(x not in POLICIES for x in policies):
        raise UsageError(f"--policies {args.policies!r}: use names from {', '.join(POLICIES)}")
    if args.replicas is not None and args.replicas < 1:
        raise UsageError(f"--replicas {args.replicas}: must be >= 1")
    singles, fleets = find_runs(args.runs_dir)
    if args.single is None and not singles:
        raise UsageError(f"fleet_compare {args.runs_dir}: no single-replica in-process run in it; give --single")
    if not fleets:
        raise UsageError(f"fleet_compare {args.runs_dir}: no fleet run in it (an external engine named "
                         f"{FLEET_PREFIX}<policy>, or an in-process entry with replicas > 1)")
    single = Path(args.single) if args.single else singles[-1]
    model = fit_run(single)
    if args.adapter_slots is not None:
        if args.adapter_slots < 1:
            raise UsageError(f"--adapter-slots {args.adapter_slots}: must be >= 1")
        model = model.with_(adapter_slots=args.adapter_slots)
    replay = replay_run(single, model)
    single_step_ms = ms_per_step(load_run(single))
    rows = [compare_fleet(path, policy, model, policies, args.replicas) for path, policy in fleets]
    print_report(single, model, replay, rows, single_step_ms)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"single": str(single), "model": model.to_dict(),
                                              "single_replay": replay["compare"], "single_ms_per_step":
                                              single_step_ms, "fleets": rows},
                                             indent=1, default=float))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
