"""Host memory available now (Linux MemAvailable): one reader for the server's load cap and the vLLM-CPU preset."""
from __future__ import annotations


def available_bytes() -> int | None:
    """Bytes of host memory available (MemAvailable of /proc/meminfo); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
