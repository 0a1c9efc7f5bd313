"""The harness's error kinds and exit codes: what every command returns, written once (EXIT_CODES_HELP is what
`harness --help` and the README state)."""
from __future__ import annotations

EXIT_CODES_HELP = """exit codes (the same in every command):
  0    every run valid / the command did what was asked
  1    a run failed or is invalid (the reason is printed per engine), or a gate found a regression
  2    bad input or usage: one line on stderr naming the file and key, or the flag as typed
  130  interrupted (Ctrl-C / SIGINT)"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input or usage. The message is one line that names where the user wrote it:
    `workloads/x.yaml: traffic.rate: -1 must be > 0`, or `--rate-per-adapter: -1 must be > 0`."""


class RunFailed(Exception):
    """A run could not be completed or is invalid; exit 1 with the message."""
