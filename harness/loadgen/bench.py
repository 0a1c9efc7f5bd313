"""Load-generator benchmark: the streamed requests/s that N Locust worker processes sustain with p99 lag <= 5 ms.

`python -m harness.loadgen.bench [--workers 1,2] [--duration-s 4] [--out docs/results/loadgen-HOST.json]`
For each worker count it offers evenly spaced streamed requests to the stub server at rising rates (doubling,
then bisecting), and calls a rate sustained when every request succeeds and the p99 schedule lag (actual minus
intended send) stays within the limit. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.loadgen.launch import LoadgenProcess
from harness.server_proc import ServerProcess
from harness.store import read_records_jsonl
from harness.trace import write_trace

REPO = Path(__file__).resolve().parents[2]


def trial(url: str, rate: float, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = max(1, int(rate * args.duration_s))
    df = pd.DataFrame({"request_id": np.arange(n), "t": np.arange(n) / rate,
                       "adapter": [f"adapter-{i % 8:04d}" for i in range(n)],
                       "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens})
    trace = write_trace(df, tmp / f"trace-{workers}-{rate:.0f}.csv")
    out = tmp / f"records-{workers}-{rate:.0f}.jsonl"
    lg = LoadgenProcess(trace, url, out, "stub", warmup_s=0.0, users=args.users, workers=workers,
                        request_timeout_s=30.0, drain_timeout_s=15.0, log_path=tmp / "loadgen.log").start()
    lg.wait(args.duration_s + 120)
    lg.interrupt()
    rec = read_records_jsonl(out)
    ok = rec[rec["status"] == "ok"] if not rec.empty else rec
    lag = (rec["actual_send"] - rec["intended_send"]).dropna().to_numpy() * 1000 if not rec.empty else np.empty(0)
    release = (rec["released"] - rec["intended_send"]).dropna().to_numpy() * 1000 if not rec.empty else np.empty(0)
    span = float(ok["end"].max() - ok["actual_send"].min()) if len(ok) else float("nan")
    p99 = float(np.percentile(lag, 99)) if len(lag) else float("inf")
    return {"workers": workers, "offered_req_s": rate, "requests": n, "ok": int(len(ok)),
            "errors": int(n - len(ok)), "achieved_req_s": len(ok) / span if span > 0 else 0.0,
            "lag_p50_ms": float(np.percentile(lag, 50)) if len(lag) else None, "lag_p99_ms": p99,
            "lag_max_ms": float(lag.max()) if len(lag) else None,
            "release_lag_p99_ms": float(np.percentile(release, 99)) if len(release) else None,
            "sustained": bool(len(ok) == n and p99 <= args.max_lag_ms)}


def search(url: str, workers: int, args: argparse.Namespace, tmp: Path, report) -> tuple[float, list[dict]]:
    """Double from --start-rate until the client saturates (achieved < 90% of offered, or errors) or two rates
    in a row miss the lag limit; then bisect between the best sustained rate and the next one that failed."""
    trials: list[dict[str, Any]] = []
    best, rate, misses, first_fail = 0.0, args.start_rate, 0, None

    def run(r: float) -> dict[str, Any]:
        t = trial(url, r, workers, args, tmp)
        trials.append(t)
        report(t)
        return t

    while rate <= args.max_rate:
        t = run(rate)
        if t["sustained"]:
            best, misses, first_fail = rate, 0, None
        else:
            misses += 1
            first_fail = first_fail or rate
        if t["achieved_req_s"] < 0.9 * rate or t["errors"] or misses >= 2:
            break
        rate *= 2
    low, high = best, first_fail
    for _ in range(args.bisect if high is not None and low > 0 else 0):
        mid = (low + high) / 2
        if run(mid)["sustained"]:
            low = best = max(best, mid)
        else:
            high = mid
    return best, trials


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.loadgen.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="comma-separated worker process counts")
    p.add_argument("--duration-s", type=float, default=4.0, help="seconds of load per trial")
    p.add_argument("--start-rate", type=float, default=100.0)
    p.add_argument("--max-rate", type=float, default=6400.0)
    p.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failing rate")
    p.add_argument("--max-lag-ms", type=float, default=5.0)
    p.add_argument("--users", type=int, default=256, help="users per worker process")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=8)
    p.add_argument("--token-delay-ms", type=float, default=1.0, help="stub: delay between streamed tokens")
    p.add_argument("--note", default="", help="free text saved with the result (e.g. the machine)")
    p.add_argument("--out", default=None, help="JSON path (default docs/results/loadgen-<host>.json)")
    p.add_argument("--workdir", default=None, help="keep traces, records and logs here (default: a temp folder)")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    host = socket.gethostname()
    out = Path(args.out) if args.out else REPO / "docs" / "results" / f"loadgen-{host}.json"
    header = f"{'workers':>7} {'offered/s':>9} {'achieved/s':>10} {'ok':>6} {'errors':>6} {'lag p50 ms':>10} " \
             f"{'lag p99 ms':>10} {'release p99':>11} {'sustained':>9}"
    print("lag = actual send - intended send; release = when the scheduler handed the request to a user")
    print(f"stub: {args.output_tokens} tokens per request, {args.token_delay_ms:g} ms apart; "
          f"{args.duration_s:g} s per trial; sustained = no error and p99 lag <= {args.max_lag_ms:g} ms")
    print(header)

    def report(t: dict[str, Any]) -> None:
        print(f"{t['workers']:>7} {t['offered_req_s']:>9.0f} {t['achieved_req_s']:>10.1f} {t['ok']:>6} "
              f"{t['errors']:>6} {t['lag_p50_ms'] or float('nan'):>10.2f} {t['lag_p99_ms']:>10.2f} "
              f"{t['release_lag_p99_ms'] or float('nan'):>11.2f} "
              f"{'yes' if t['sustained'] else 'no':>9}", flush=True)

    results: dict[str, Any] = {"max_sustained_req_s": {}, "max_achieved_req_s": {}, "trials": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(args.workdir or d)
        tmp.mkdir(parents=True, exist_ok=True)
        server = ServerProcess([sys.executable, "-m", "harness.loadgen.stub_server", "--port", "0", "--ttft-ms", "0",
                                "--token-delay-ms", str(args.token_delay_ms), "--model", "stub"],
                               tmp / "stub.log", ready_timeout_s=60)
        server.start()
        try:
            for w in workers:
                best, trials = search(server.url, w, args, tmp, report)
                results["max_sustained_req_s"][str(w)] = best
                results["max_achieved_req_s"][str(w)] = max(t["achieved_req_s"] for t in trials)
                results["trials"] += trials
        finally:
            server.stop()
    print()
    print(f"{'workers':>7} {'max sustained req/s (p99 lag <= limit)':>38} {'max achieved req/s':>19}")
    for w, r in results["max_sustained_req_s"].items():
        print(f"{w:>7} {r:>38.0f} {results['max_achieved_req_s'][w]:>19.0f}")
    result = {"host": host, "platform": platform.platform(), "cpu_count": os.cpu_count(),
              "python": sys.version.split()[0], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "note": args.note, "target_req_s": 500, "config": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
              **results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
