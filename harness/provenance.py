"""What a sweep's capacity curves were measured on (machine, GPU, model, workload), read from its run directories."""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UsageError
from harness.schema import RUN_FILES


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def gpu_type(name: str | None, known: dict) -> str | None:
    """The key of `known` (e.g. "h100") that a device name ("NVIDIA H100 80GB HBM3") is; None if none is."""
    if not name:
        return None
    flat = "".join(c for c in name.lower() if c.isalnum())
    for key in sorted(known, key=len, reverse=True):
        if key.split("-")[0].replace("-", "") in flat:
            return key
    return None


def run_provenance(run_dir: Path) -> dict:
    """machine, GPU, model, workload and engine of one run directory (from env.json and config.json)."""
    env = _read(run_dir / RUN_FILES["env"])
    cfg = _read(run_dir / RUN_FILES["config"])
    workload = cfg.get("workload") or {}
    engine = cfg.get("engine") or {}
    gpu = env.get("gpu_name")
    return {"host": env.get("host"), "cpus": env.get("cpu_count"), "gpu": gpu,
            "machine": gpu or "CPU only",
            "model": workload.get("model"), "workload": workload.get("name"),
            "engine": engine.get("preset") or engine.get("name"), "engine_kind": engine.get("kind")}


def sweep_provenance(sweep_dir: str | Path, payload: dict) -> dict[str, list[dict]]:
    """Per engine of capacity.json, the distinct (host, machine, model, workload) its points were measured on,
    read from the run directories the points name; a curve whose runs are missing falls back to capacity.json."""
    sweep_dir = Path(sweep_dir)
    out: dict[str, list[dict]] = {}
    for engine, points in (payload.get("curves") or {}).items():
        seen: list[dict] = []
        for point in points:
            for tried in point.get("tried") or []:
                run = sweep_dir / str(tried.get("run", ""))
                if tried.get("run") and (run / RUN_FILES["env"]).is_file():
                    prov = run_provenance(run)
                    if prov not in seen:
                        seen.append(prov)
                    break
        if not seen:
            spec = payload.get("spec") or {}
            seen.append({"host": None, "cpus": None, "gpu": None, "engine": engine, "engine_kind": None,
                         "machine": "cuda (GPU not recorded)" if payload.get("machine") == "cuda" else "CPU only",
                         "model": spec.get("model"), "workload": payload.get("workload")})
        out[engine] = seen
    return out


def measured_gpu_types(provenance: dict[str, list[dict]], known: dict) -> set[str | None]:
    """The GPU types (keys of `known`) the curves were measured on; None stands for a CPU or an unknown GPU."""
    return {gpu_type(p.get("gpu"), known) for records in provenance.values() for p in records}


def check_gpu(gpu: str | None, provenance: dict[str, list[dict]], known: dict, allow_other: bool) -> tuple[str, str]:
    """The GPU type to price and "" (measured on it), or a label saying the price is an extrapolation.

    gpu None: the measured type. Pricing another type than the one measured, or a GPU from curves measured on
    a CPU, raises UsageError unless allow_other (then the label says what was extrapolated from what)."""
    measured = measured_gpu_types(provenance, known)
    machines = sorted({str(p.get("machine")) for records in provenance.values() for p in records})
    where = ", ".join(machines)
    if gpu is None:
        if len(measured) == 1 and None not in measured:
            return next(iter(measured)), ""
        raise UsageError(f"--gpu: the curves were measured on {where}, which has no default price; name the GPU "
                         f"to price with --gpu TYPE --allow-other-gpu (an extrapolation) or --gpu-price")
    key = gpu.lower()
    if measured == {key}:
        return key, ""
    if not allow_other:
        raise UsageError(f"--gpu {gpu}: the curves were measured on {where}, not on {gpu}; capacity does not "
                         "carry over between machines. Sweep on that GPU, or pass --allow-other-gpu to price "
                         "it anyway as an extrapolation")
    return key, f"EXTRAPOLATION: priced as {gpu} from curves measured on {where}"
