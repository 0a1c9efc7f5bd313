"""GPU sampler: utilisation, memory, power and energy of the NVIDIA GPUs a run may use (CUDA_VISIBLE_DEVICES, all
when unset) through NVML, in a background thread."""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import pandas as pd

GPU_COLUMNS = ["t", "gpu", "util_pct", "mem_used_gb", "power_w", "energy_j"]


def _nvml():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
        return None, f"no NVIDIA GPU: NVML did not start ({exc})"
    if pynvml.nvmlDeviceGetCount() == 0:
        return None, "no NVIDIA GPU: NVML sees 0 devices"
    return pynvml, ""


def visible_indices(count: int, visible: str | None, uuids: list[str]) -> list[int]:
    """NVML indices of the GPUs CUDA_VISIBLE_DEVICES (`visible`) lets a run use: all when unset, by index or by
    UUID (prefix, as CUDA accepts) in its order; CUDA's list ends at the first entry it cannot use. Indices assume
    CUDA numbers GPUs in NVML's (PCI bus) order, as on machines of one GPU model (CUDA_DEVICE_ORDER=PCI_BUS_ID
    makes it exact). On a machine of several GPUs, a run on one of them must not average in the others."""
    if visible is None:
        return list(range(count))
    out: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) < count:
            index = int(entry)
        else:
            matches = [i for i, u in enumerate(uuids) if entry and u.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in out:
            break
        out.append(index)
    return out


def _visible(nvml) -> list[int]:
    count = nvml.nvmlDeviceGetCount()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    uuids = []
    if visible is not None and not all(e.strip().isdigit() for e in visible.split(",")):
        for i in range(count):
            uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
    return visible_indices(count, visible, uuids)


def gpu_inventory() -> dict[str, Any]:
    """{"available": bool, "reason": str, "driver": str, "devices": [{"index", "name", "memory_gb", "visible"}]}
    (every GPU of the machine; "visible": in CUDA_VISIBLE_DEVICES, the ones a run samples)."""
    nvml, reason = _nvml()
    if nvml is None:
        return {"available": False, "reason": reason, "driver": None, "devices": []}
    devices, visible = [], set(_visible(nvml))
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        name = nvml.nvmlDeviceGetName(h)
        devices.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_gb": nvml.nvmlDeviceGetMemoryInfo(h).total / 1e9, "visible": i in visible})
    driver = nvml.nvmlSystemGetDriverVersion()
    return {"available": True, "reason": "", "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "devices": devices}


class GpuSampler:
    """Samples the visible GPUs every `interval_s` until stop(); t is time.monotonic(); a row's gpu is the NVML
    index. Without a GPU it records why, no rows."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.rows: list[dict[str, Any]] = []
        self.available = False
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: list[int] = []

    def start(self) -> "GpuSampler":
        nvml, self.reason = _nvml()
        self._gpus = _visible(nvml) if nvml is not None else []  # NVML indices, read once per run
        if nvml is not None and not self._gpus:
            nvml, self.reason = None, (f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} names no "
                                       "GPU that NVML lists (MIG instances are not sampled)")
        self.available = nvml is not None
        if self.available:
            self._thread = threading.Thread(target=self._loop, args=(nvml,), name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self, nvml, handles) -> None:
        now = time.monotonic()
        for i, h in handles:
            util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
            mem = nvml.nvmlDeviceGetMemoryInfo(h).used / 1e9
            try:
                power = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
            except nvml.NVMLError:
                power = float("nan")
            try:
                energy = nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0  # mJ -> J
            except nvml.NVMLError:
                energy = float("nan")
            self.rows.append({"t": now, "gpu": i, "util_pct": float(util), "mem_used_gb": mem,
                              "power_w": power, "energy_j": energy})

    def _loop(self, nvml) -> None:
        handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in self._gpus]
        while not self._stop.is_set():
            try:
                self._sample(nvml, handles)
            except nvml.NVMLError as exc:
                self.reason = f"NVML sampling stopped: {exc}"
                return
            self._stop.wait(self.interval_s)

    def stop(self) -> pd.DataFrame:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.frame()

    def frame(self, t0: float = 0.0) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=GPU_COLUMNS)
        df["t"] = df["t"] - t0
        return df
