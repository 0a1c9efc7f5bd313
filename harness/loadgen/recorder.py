"""Append-only JSON-lines writer: one checked os.write per record on an O_APPEND file, safe across worker processes."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


SENT = "sent"  # the status of the line written when a request is sent; its final line follows when it ends


class Recorder:
    """Writes each request as one line of records.jsonl when it is sent (status "sent") and one when it ends
    (its final status; readers keep the last line of a request). A short or failed write raises OSError."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps({k: _clean(v) for k, v in record.items()}, separators=(",", ":")) + "\n").encode()
        done = os.write(self._fd, data)
        while done < len(data):  # a short write (a disk filling up) continues or raises OSError
            n = os.write(self._fd, data[done:])
            if n == 0:
                raise OSError(f"{self.path}: wrote {done} of {len(data)} bytes of a record")
            done += n
        if record.get("status") != SENT:
            self.written += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
