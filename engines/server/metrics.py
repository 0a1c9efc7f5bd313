"""Server counters and the Prometheus text exposition of them plus every engine.stats() key as lora_fleet_<key>."""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

PREFIX = "lora_fleet_"


def metric_name(key: str) -> str:
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key)


@dataclass
class ServerMetrics:
    """Counted in the event loop thread only (no locks needed)."""

    requests: Counter = field(default_factory=Counter)  # HTTP status -> generation requests answered
    prompt_tokens: int = 0
    output_tokens: int = 0
    in_flight: int = 0  # admitted generation requests not yet finished
    aborted_by_client: int = 0
    rejected: int = 0  # 503s of a full queue

    def render(self, engine_stats: dict[str, float]) -> str:
        lines = [
            f"# HELP {PREFIX}requests_total Generation requests answered, by HTTP status.",
            f"# TYPE {PREFIX}requests_total counter",
        ]
        for status in sorted(self.requests):
            lines.append(f'{PREFIX}requests_total{{status="{status}"}} {self.requests[status]}')
        counters = {"prompt_tokens_total": (self.prompt_tokens, "Prompt tokens of finished requests."),
                    "output_tokens_total": (self.output_tokens, "Output tokens streamed to clients."),
                    "client_aborts_total": (self.aborted_by_client, "Requests aborted by a client disconnect."),
                    "rejected_total": (self.rejected, "Requests refused with 503 because the queue was full.")}
        for key, (value, help_text) in counters.items():
            lines += [f"# HELP {PREFIX}{key} {help_text}", f"# TYPE {PREFIX}{key} counter", f"{PREFIX}{key} {value}"]
        lines += [f"# HELP {PREFIX}server_in_flight Generation requests admitted and not finished.",
                  f"# TYPE {PREFIX}server_in_flight gauge", f"{PREFIX}server_in_flight {self.in_flight}"]
        for key in sorted(engine_stats):
            name = metric_name(key)
            lines += [f"# HELP {name} engine.stats()['{key}']", f"# TYPE {name} gauge",
                      f"{name} {_number(engine_stats[key])}"]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text page, keyed by name with labels (for tests and scrapers)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out
