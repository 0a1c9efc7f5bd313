"""`harness serve`: run the OpenAI-compatible server around an in-process engine."""
from __future__ import annotations

import argparse
import errno
import socket


def register(subparsers) -> None:
    from engines.server.cli import add_arguments
    from harness.errors import EXIT_CODES_HELP

    parser = subparsers.add_parser("serve", help="serve an engine over an OpenAI-compatible HTTP API",
                                   description="Serve multilora, merged or peft over /v1/completions, "
                                   "/v1/chat/completions, /generate, /v1/models, /metrics and /health. "
                                   "Prints 'READY http://HOST:PORT' once it listens.", epilog=EXIT_CODES_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """--port: refused in one line when it is out of range or another process listens there."""
    from harness.errors import UsageError

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be in [0, 65535] (0: a free port)")
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            why = "is in use by another process" if in_use else f"cannot be bound ({exc.strerror})"
            raise UsageError(f"--port {port}: {host}:{port} {why}; pick another port or --port 0") from None


def check_flags(args: argparse.Namespace) -> None:
    """The flags the server would refuse under their internal names, refused here under the flag as typed."""
    from engines.registry import ENGINES
    from harness.errors import UsageError

    if args.engine is not None and ":" not in args.engine and args.engine not in ENGINES:
        raise UsageError(f"--engine {args.engine}: not one of {', '.join(sorted(ENGINES))} "
                         "(or package.module:Class of a custom engine)")
    if args.max_queue is not None and args.max_queue < 1:
        raise UsageError(f"--max-queue {args.max_queue}: must be >= 1 (leave it out for no limit)")
    if args.max_body_bytes < 1024:
        raise UsageError(f"--max-body-bytes {args.max_body_bytes}: must be >= 1024")
    check_port(args.host, args.port)


def run(args: argparse.Namespace) -> int:
    from engines.base import AdapterFileError, EngineError
    from engines.server.cli import run as serve
    from harness.errors import UsageError

    check_flags(args)
    try:
        return serve(args)
    except AdapterFileError as exc:  # the engine reads the adapters at start
        raise UsageError(f"--adapters {args.adapters}: {' '.join(str(exc).split())}") from None
    except (EngineError, ValueError, OSError) as exc:  # the engine could not start; serving has not begun
        raise UsageError(f"the {args.engine or 'default'} engine could not start: {' '.join(str(exc).split())}") \
            from None
