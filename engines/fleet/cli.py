"""`harness serve --replicas N`: the server's options, served by a fleet of N Ray Serve replicas."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from engines.fleet.relay import DEFAULT_STREAM_BATCH_MS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=None, metavar="N",
                        help="serve N replicas through Ray Serve with adapter-aware routing (one GPU each on CUDA, "
                             'CPU replicas otherwise; needs pip install -e ".[fleet]"); default: one server, no Ray')
    parser.add_argument("--max-adapters-per-replica", type=int, default=None, metavar="K",
                        help="adapters each replica keeps loaded (Ray Serve's multiplexed LRU; default: the "
                             "engine's gpu_slots)")
    parser.add_argument("--routing", choices=["affinity", "round_robin"], default="affinity",
                        help="affinity: Ray Serve's multiplexed routing (a replica holding the adapter unless it is "
                             "at max_ongoing_requests); round_robin: replicas in turn, the baseline (default: "
                             "%(default)s)")
    parser.add_argument("--replica-engine", choices=["process", "inline"], default="process",
                        help="where each replica runs its engine: process = a child process of the Ray replica "
                             "(the relay of token chunks keeps its own GIL), inline = in the replica's process "
                             "(default: %(default)s; docs/fleet.md)")
    parser.add_argument("--stream-batch-ms", type=float, default=DEFAULT_STREAM_BATCH_MS, metavar="MS",
                        help="each replica joins a stream's token chunks so that at most one item per MS goes "
                             "through Ray's relay (the first chunk, and one after a quiet MS, at once; 0: every "
                             "chunk; Ray Serve LLM's stream_batching_interval_ms; default: %(default)g)")
    parser.add_argument("--ingress-replicas", type=int, default=None, metavar="N",
                        help="replicas of the HTTP ingress that relays every chunk (default: 2 per engine "
                             "replica, as Ray Serve LLM)")


def run(args: argparse.Namespace) -> int:
    """Start the fleet, print READY http://HOST:PORT, serve until SIGINT/SIGTERM, then stop Ray."""
    from engines.fleet.launch import require_ray, start_fleet, stop_fleet
    from engines.server.cli import server_config

    try:
        if args.replicas < 1:
            raise ValueError(f"--replicas {args.replicas} must be >= 1")
        require_ray()
        config, options = server_config(args)
        if ":" in config.engine:
            raise ValueError(f"--engine {config.engine!r}: a fleet serves the registry's engines "
                             "(multilora, merged, peft)")
        k = args.max_adapters_per_replica or config.gpu_slots
        if k < 1:
            raise ValueError(f"--max-adapters-per-replica {k} must be >= 1")
        if args.stream_batch_ms < 0:
            raise ValueError(f"--stream-batch-ms {args.stream_batch_ms:g} must be >= 0 (0: every chunk as it comes)")
        if args.ingress_replicas is not None and args.ingress_replicas < 1:
            raise ValueError(f"--ingress-replicas {args.ingress_replicas} must be >= 1")
    except (ValueError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            url = start_fleet(config, options, args.replicas, k, args.host, args.port, routing=args.routing,
                              replica_engine=args.replica_engine, stream_batch_ms=args.stream_batch_ms,
                              ingress_replicas=args.ingress_replicas)
        except Exception as exc:  # a replica that cannot start: Ray's reason in one line, not its traceback
            print(f"serve: the fleet did not start: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
                  file=sys.stderr)
            return 1
        for sig in (signal.SIGINT, signal.SIGTERM):  # again: ray.init may have put its own handlers there
            signal.signal(sig, lambda *_: stop.set())
        print(f"READY {url}", flush=True)
        stop.wait()
    finally:
        stop_fleet()
    return 0
