"""`harness serve`: run the OpenAI-compatible server around an in-process engine (or N of them with --replicas)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from engines.fleet.cli import add_arguments as add_fleet_arguments
    from engines.server.cli import add_arguments

    parser = subparsers.add_parser("serve", help="serve an engine over an OpenAI-compatible HTTP API",
                                   description="Serve multilora, merged or peft over /v1/completions, "
                                   "/v1/chat/completions, /generate, /v1/models, /metrics and /health. "
                                   "Prints 'READY http://HOST:PORT' once it listens.")
    add_arguments(parser)
    add_fleet_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.replicas is not None:
        from engines.fleet.cli import run as serve_fleet

        return serve_fleet(args)
    from engines.server.cli import run as serve

    return serve(args)
