"""The engine's pace in each run directory: per server (or fleet replica), ms per step and generated tokens/s from
its step and token counters over the measured window, and the mean of its running-sequences gauge there.

Usage: python scripts/step_pace.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import sys

from harness.server_metrics import parse_labels
from harness.simulate.samples import WHOLE, pace_by_replica
from harness.store import load_run


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print("| run | replica | ms per step | tokens/s | mean running |\n|---|---|---|---|---|")
    for path in argv:
        run = load_run(path)
        window = float(run.summary.get("measured_s") or 0.0)
        server = run.server
        running = server[(server["metric"] == "lora_fleet_running") & (server["t"] >= 0) & (server["t"] <= window)]
        replica = [parse_labels("" if not isinstance(x, str) else x).get("replica", WHOLE) for x in running["labels"]]
        mean_running = running.assign(replica=replica).groupby("replica")["value"].mean()
        for name, pace in pace_by_replica(server, 0.0, window).items():
            print(f"| {run.path.name} | {name or '-'} | {pace['ms_per_step']:.1f} | {pace['tok_s']:,.0f} | "
                  f"{mean_running.get(name, float('nan')):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
