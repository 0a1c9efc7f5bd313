"""A fleet replica's engine in a process of its own: `python -m engines.fleet.engine_proc JSON` serves one engine.

The Ray replica relays every token chunk of its requests (the server's HTTP stream in, Ray's streaming generator
out); with the engine in the same process that relay and the engine's Python step loop share one GIL: on an
H200 pair the replicas' steps then ran ~3x slower than the single server's (docs/fleet.md). Here the engine and the
single server's app run as `harness serve` runs them, in a child process of the replica, on a loopback port
(vLLM's AsyncLLM keeps its engine core in a process of its own for the same reason).
JSON: {"engine": EngineConfig fields, "server": ServerOptions fields, "threads": torch threads (0: default)}.
"""
from __future__ import annotations

import json
import os
import sys
from collections import deque


def main(argv: list[str]) -> int:
    from engines.config import EngineConfig
    from engines.registry import engine_class
    from engines.server.cli import serve_engine
    from engines.server.state import ServerOptions
    from engines.tokenizer import get_tokenizer

    spec = json.loads(argv[0])
    threads = int(spec.get("threads") or 0)
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # serve_engine leaves the count alone then
        torch.set_num_threads(threads)
    config = EngineConfig.from_dict(spec["engine"])
    server = dict(spec["server"])
    server["model_aliases"] = tuple(server.get("model_aliases") or ())
    serve_engine(engine_class(config.engine), config, ServerOptions(**server), get_tokenizer(config.model),
                 "127.0.0.1", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class EngineChild:
    """The replica's side: start `engines.fleet.engine_proc` (it inherits the GPU Ray gave the replica), wait for
    its READY line, pass its later output on to the replica's log, stop it (SIGTERM, then SIGKILL)."""

    def __init__(self, engine: dict, server: dict, threads: int = 0, ready_timeout_s: float = 1800.0) -> None:
        import subprocess
        import threading
        from pathlib import Path

        from engines.procs import ChildProcess

        root = str(Path(__file__).resolve().parents[2])  # the folder holding `engines`: the child imports it
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        spec = json.dumps({"engine": engine, "server": server, "threads": threads})
        self.proc = ChildProcess([sys.executable, "-m", "engines.fleet.engine_proc", spec], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.last_lines: deque[str] = deque(maxlen=8)  # of its output: the reason, if it dies at start
        self.proc.start()
        self.url = self._wait_ready(ready_timeout_s)
        threading.Thread(target=self._pass_output, name="engine-output", daemon=True).start()

    def _wait_ready(self, timeout_s: float) -> str:
        """The URL of the child's READY line. Reads the pipe's descriptor itself: a buffered readline can take
        the READY line into its buffer together with the line before it, and the descriptor then never turns
        readable again (a replica that waited its whole timeout for a line it had already read)."""
        import selectors
        import time

        fd = self.proc.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        pending = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=1.0):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the pipe closed: the process ended before it listened
                    self.last_lines.append(pending.decode(errors="replace"))
                    code = self.proc.wait(10.0)
                    lines = [x.strip() for x in self.last_lines if x.strip()] or ["(no output)"]
                    raise RuntimeError(f"the replica's engine process exited (code {code}) before it was ready: "
                                       f"{lines[-1]} (before it: {' | '.join(lines[-4:-1])})")
                *lines, pending = (pending + chunk).split(b"\n")
                for i, raw in enumerate(lines):
                    line = raw.decode(errors="replace") + "\n"
                    if line.startswith("READY "):
                        after = b"".join(x + b"\n" for x in lines[i + 1:]) + pending  # output past READY
                        sys.stderr.write(after.decode(errors="replace"))
                        return line.split()[1]
                    self.last_lines.append(line)
                    print(line, end="", file=sys.stderr, flush=True)
        self.stop()
        raise RuntimeError(f"the replica's engine process was not ready within {timeout_s:.0f} s")

    def _pass_output(self) -> None:
        for line in self.proc.proc.stdout:
            sys.stderr.write(line.decode(errors="replace"))

    def stop(self) -> None:
        self.proc.stop(grace_s=15.0)


class InlineEngine:
    """The engine and the single server's app in the replica's own process (`--replica-engine inline`): the
    layout measured on the H200 pair; one process less per replica, one GIL for the engine and the relay."""

    def __init__(self, engine: dict, server: dict, threads: int = 0) -> None:
        from engines.config import EngineConfig
        from engines.registry import engine_class
        from engines.server.app import build_app
        from engines.server.runner import ServerThread
        from engines.server.state import ServerOptions
        from engines.tokenizer import get_tokenizer

        if threads:
            import torch

            torch.set_num_threads(threads)
        config = EngineConfig.from_dict(engine)
        self.engine = engine_class(config.engine)(config)
        server = {**server, "model_aliases": tuple(server.get("model_aliases") or ())}
        app = build_app(self.engine, get_tokenizer(config.model), ServerOptions(**server))
        self.server = ServerThread(app).start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.engine.close()


REPLICA_ENGINES = {"process": EngineChild, "inline": InlineEngine}
