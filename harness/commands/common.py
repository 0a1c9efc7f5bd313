"""Flags that read a workload (--set, --machine), shared by the commands that take one, and the spec they give."""
from __future__ import annotations

import argparse


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a workload field (VALUE is YAML), e.g. --set traffic.rate=4 --set duration_s=30; "
                        "applied after the file and its cpu: section, so it always wins")
    p.add_argument("--machine", choices=["auto", "cpu", "cuda"], default="auto",
                   help="apply the workload's cpu: section (cpu), ignore it (cuda), or decide from this machine "
                        "(auto: cpu when torch sees no CUDA)")


def workload_overrides(args: argparse.Namespace):
    """--set items, then --workers (where the command has it), as overrides; errors name the flag as typed."""
    from harness.spec import Override, parse_set

    sets = parse_set(args.set)
    if getattr(args, "workers", None) is not None:
        sets += (Override("loadgen.workers", args.workers, f"--workers {args.workers}"),)
    return sets


def load_spec(args: argparse.Namespace):
    """The workload of args.workload resolved once: file, then the cpu: section on this machine, then --set."""
    from harness.spec import load_workload

    return load_workload(args.workload, machine=args.machine, overrides=workload_overrides(args))
