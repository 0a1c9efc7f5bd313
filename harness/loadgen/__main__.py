"""`python -m harness.loadgen --trace T --url U --out records.jsonl ...`: replay a trace open-loop with Locust."""
from __future__ import annotations

import argparse
import os
import sys

# gevent's default resolver hands every lookup to a thread; the GIL hand-offs with it cost milliseconds of
# schedule lag. Targets are loopback or IP literals, which the blocking resolver answers at once.
os.environ.setdefault("GEVENT_RESOLVER", "block")

import locust  # noqa: F401  (monkey-patches for gevent before anything opens a socket)

from harness.loadgen.process import Options, configure_logging, run_local, run_master, run_worker


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m harness.loadgen", description=__doc__)
    p.add_argument("--trace", required=True, help="trace CSV (request_id, t, adapter, prompt_tokens, output_tokens)")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", required=True, help="records.jsonl to append to")
    p.add_argument("--base-model", required=True, help="model name for requests without an adapter")
    p.add_argument("--warmup-s", type=float, default=0.0)
    p.add_argument("--users", type=int, default=Options.users,
                   help="users per worker process (most requests in flight)")
    p.add_argument("--workers", type=int, default=Options.workers,
                   help="Locust worker processes (>1: master/worker mode)")
    p.add_argument("--request-timeout-s", type=float, default=Options.request_timeout_s)
    p.add_argument("--drain-timeout-s", type=float, default=Options.drain_timeout_s)
    p.add_argument("--api-key", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--master-port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.users < 1 or a.workers < 1:
        p.error("--users and --workers must be >= 1")
    return Options(trace=a.trace, url=a.url, out=a.out, base_model=a.base_model, warmup_s=a.warmup_s,
                   users=a.users, workers=a.workers, request_timeout_s=a.request_timeout_s,
                   drain_timeout_s=a.drain_timeout_s, api_key=a.api_key, master_port=a.master_port)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    opts = parse(argv)
    if opts.master_port:
        run_worker(opts)
        return 0
    result = run_master(opts) if opts.workers > 1 else run_local(opts)
    return 0 if result["reason"] in ("completed", "drain_timeout", "interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
