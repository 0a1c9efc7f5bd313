"""harness/gpu.py on a machine of several GPUs: a run samples the GPUs CUDA_VISIBLE_DEVICES gives it, not all.
(On an H200 pair a one-GPU run's utilisation read 28% where its own GPU ran ~56%: the idle one was averaged in.)"""
from __future__ import annotations

import threading
import types

import pytest

from harness import gpu
from harness.gpu import GpuSampler, visible_indices

UUIDS = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]


@pytest.mark.parametrize("visible, expected", [
    (None, [0, 1, 2]),
    ("1", [1]),
    ("2,0", [2, 0]),
    ("GPU-bbbb", [1]),                # a UUID prefix, as CUDA takes it
    ("GPU-cccc-3333,0", [2, 0]),
    ("1,7,2", [1]),                   # CUDA stops at the first entry it cannot use
    ("1,1", [1]),
    ("GPU-", []),                     # ambiguous prefix
    ("", []),
    ("-1", []),
])
def test_visible_indices(visible, expected):
    assert visible_indices(3, visible, UUIDS) == expected


class FakeNVML:
    """Three GPUs whose utilisation is their index x 10 %."""
    NVMLError = RuntimeError

    def __init__(self):
        self.handles = [types.SimpleNamespace(i=i) for i in range(3)]

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.handles[i]

    def nvmlDeviceGetUUID(self, h):
        return UUIDS[h.i].encode()

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=10 * h.i)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=1e9, total=80e9)

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return 5_000_000

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlSystemGetDriverVersion(self):
        return "1.0"


def sampled_gpus(monkeypatch, visible):
    fake = FakeNVML()
    monkeypatch.setattr(gpu, "_nvml", lambda: (fake, ""))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sampler = GpuSampler()
    sampler.start()
    sampler.stop()
    if sampler.available:  # the loop once, in this thread: one sample of every GPU it chose, then its wait stops it
        sampler.rows.clear()
        sampler._stop = OneWait()
        sampler._loop(fake)
    return sampler, sampler.frame()


class OneWait(threading.Event):
    def wait(self, timeout=None):
        self.set()
        return True


def test_sampler_reads_only_the_visible_gpus(monkeypatch):
    _, frame = sampled_gpus(monkeypatch, "GPU-cccc,1")
    assert sorted(set(frame["gpu"])) == [1, 2]
    assert frame["util_pct"].mean() == pytest.approx(15.0)
    _, frame = sampled_gpus(monkeypatch, None)
    assert sorted(set(frame["gpu"])) == [0, 1, 2]


def test_no_visible_gpu_is_said_not_sampled(monkeypatch):
    sampler, frame = sampled_gpus(monkeypatch, "")
    assert not sampler.available and frame.empty
    assert "CUDA_VISIBLE_DEVICES=''" in sampler.reason


def test_inventory_marks_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(gpu, "_nvml", lambda: (FakeNVML(), ""))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    devices = gpu.gpu_inventory()["devices"]
    assert [d["visible"] for d in devices] == [False, False, True]
