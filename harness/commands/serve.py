"""`harness serve`: run the OpenAI-compatible server around an in-process engine."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from engines.server.cli import add_arguments

    parser = subparsers.add_parser("serve", help="serve an engine over an OpenAI-compatible HTTP API",
                                   description="Serve multilora, merged or peft over /v1/completions, "
                                   "/v1/chat/completions, /generate, /v1/models, /metrics and /health. "
                                   "Prints 'READY http://HOST:PORT' once it listens.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.server.cli import run as serve

    return serve(args)
