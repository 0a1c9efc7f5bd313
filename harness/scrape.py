"""Scraper of a server's Prometheus /metrics beside the load, stored long: one row per sample (t, metric, labels, value)."""
from __future__ import annotations

import math
import re
import threading
import time
import urllib.request

import pandas as pd

COLUMNS = ["t", "metric", "labels", "value"]
# histogram buckets are most of a vLLM page (hundreds of series) and no figure reads them; _sum and _count stay
SKIPPED = re.compile(r"_bucket$")


def parse_prometheus(text: str) -> list[tuple[str, str, float]]:
    """`name{labels} value [timestamp]` lines -> (name, labels as written inside the braces, value); comments,
    junk lines and histogram buckets are skipped."""
    out: list[tuple[str, str, float]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line and "}" in line:
            name, _, rest = line.partition("{")
            labels, _, rest = rest.rpartition("}")
        else:
            name, _, rest = line.partition(" ")
            labels = ""
        parts = rest.split()
        name = name.strip()
        if not parts or not name or SKIPPED.search(name):
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        out.append((name, labels.strip().rstrip(","), value if math.isfinite(value) else float("nan")))
    return out


class MetricsScraper:
    """GETs url every interval_s in a thread until stop(); finish() also takes one last scrape after the load,
    so counters include the last requests. t is time.monotonic()."""

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rows: list[tuple[float, str, str, float]] = []
        self.scrapes = 0
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def start(self) -> "MetricsScraper":
        self._thread.start()
        return self

    def scrape_once(self) -> bool:
        """One GET appended to rows; False (and counted as an error) when it failed."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                text = resp.read().decode(errors="replace")
        except OSError as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        t = time.monotonic()
        with self._lock:
            self.rows.extend((t, name, labels, value) for name, labels, value in parse_prometheus(text))
            self.scrapes += 1
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)

    def finish(self) -> bool:
        """Stop the loop, then scrape once more (the server must still be up); whether that last scrape worked."""
        self.stop()
        return self.scrape_once()

    def frame(self, t0: float = 0.0) -> pd.DataFrame:
        """Long table: t (s from t0), metric, labels, value."""
        with self._lock:
            df = pd.DataFrame(self.rows, columns=COLUMNS)
        df["t"] = df["t"] - t0
        return df
