"""`python -m engines.server.bench`: how many streamed tokens/s the HTTP server itself sustains (engine cost ~0).

The server runs as its own process around NullEngine (one token per running request per step, no compute);
this process opens N concurrent streaming /v1/completions requests with aiohttp, repeatedly, for each N.
Prints a table and writes JSON. The client shares the machine, so the numbers are a lower bound on the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from engines.base import Engine, Request, StepOutput
from engines.config import EngineConfig
from engines.model.config import ModelArgs


class NullEngine(Engine):
    """Every running request gets token 120 ('x') each step; costs nothing but Python bookkeeping."""

    name = "null"

    def __init__(self, config: EngineConfig) -> None:
        args = ModelArgs.from_name("tiny")
        self.eos_token_id, self.vocab_size = args.eos_token_id, args.vocab_size
        self.max_model_len = config.max_model_len
        self.base_model_name = config.model
        self.max_num_seqs = config.max_num_seqs
        self._live: dict[str, list] = {}  # id -> [request, tokens made]
        self.steps = self.tokens = self.batch = 0

    def add_request(self, request: Request) -> None:
        if request.adapter is not None:
            raise ValueError("the null engine serves no adapters")
        self._live[request.request_id] = [request, 0]

    def abort(self, request_id: str) -> None:
        self._live.pop(request_id, None)

    def step(self) -> list[StepOutput]:
        outs = []
        batch = list(self._live.items())[: self.max_num_seqs]
        for rid, entry in batch:
            entry[1] += 1
            done = entry[1] >= entry[0].params.max_tokens
            if done:
                del self._live[rid]
            outs.append(StepOutput(rid, [120], done, "length" if done else None, len(entry[0].prompt_ids), entry[1]))
        self.steps += 1
        self.tokens += len(outs)
        self.batch = len(outs)
        return outs

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def stats(self) -> dict[str, float]:
        return {"running": len(self._live), "batch_size": self.batch, "steps": self.steps, "tokens": self.tokens}

    def register_adapter(self, name: str, path: str) -> None:
        raise ValueError("the null engine serves no adapters")

    def unregister_adapter(self, name: str) -> None:
        raise ValueError("the null engine serves no adapters")

    def adapters(self) -> dict[str, str]:
        return {}


async def _one(session, url: str, max_tokens: int) -> tuple[int, int]:
    """Streams one request; (tokens, chunks) received."""
    body = {"model": "tiny", "prompt": [3, 4, 5, 6], "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = chunks = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"bench: HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if line.startswith(b"data: {"):
                obj = json.loads(line[6:])
                if obj["choices"]:
                    chunks += 1
                    tokens += len(obj["choices"][0]["token_ids"])
    return tokens, chunks


async def _level(url: str, concurrency: int, max_tokens: int, seconds: float) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds
        counts = {"tokens": 0, "chunks": 0, "requests": 0}

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t, c = await _one(session, url, max_tokens)
                counts["tokens"] += t
                counts["chunks"] += c
                counts["requests"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, "max_tokens": max_tokens, "wall_s": round(wall, 3),
            "requests": counts["requests"], "tokens": counts["tokens"],
            "tokens_per_s": round(counts["tokens"] / wall, 1), "requests_per_s": round(counts["requests"] / wall, 2),
            "us_per_token": round(1e6 * wall / max(counts["tokens"], 1), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.server.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16,64,256", help="comma-separated concurrent streams")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per concurrency level (bounded)")
    parser.add_argument("--out", default=f"docs/results/server-{platform.node() or 'host'}.json")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    if not levels or min(levels) < 1 or args.seconds <= 0 or args.max_tokens < 1:
        parser.error("--concurrency needs integers >= 1; --seconds and --max-tokens must be positive")
    cmd = [sys.executable, "-m", "engines.server", "--engine", "engines.server.bench:NullEngine", "--model", "tiny",
           "--port", "0", "--engine-config", json.dumps({"max_num_seqs": max(levels)})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=str(Path(__file__).resolve().parents[2]))
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"bench: the server did not start (exit code {proc.poll()})")
        url = line.split()[1]
        rows = [asyncio.run(_level(url, n, args.max_tokens, args.seconds)) for n in levels]
    finally:
        proc.terminate()
        proc.wait(30)
    header = ["concurrency", "requests", "tokens", "tokens_per_s", "requests_per_s", "us_per_token"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    result = {"host": platform.node(), "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
              "command": " ".join(["python -m engines.server.bench"] + (argv if argv is not None else sys.argv[1:])),
              "note": "server and client share the machine; NullEngine makes tokens for free", "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
