"""`python -m engines.server ...` is `harness serve ...`."""
import argparse
import sys

from engines.server.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m engines.server",
                                 description="Serve an in-process engine over an OpenAI-compatible HTTP API.")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
