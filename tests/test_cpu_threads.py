"""Torch threads of a CPU server: one core left to the front end unless OMP_NUM_THREADS says otherwise."""
import torch

from engines import cpu_threads


def test_one_core_is_left_and_at_least_one_thread_runs():
    assert [cpu_threads.serving_threads(c) for c in (1, 2, 16)] == [1, 1, 15]
    assert cpu_threads.serving_threads() >= 1


def test_the_limit_applies_on_the_cpu_only_and_yields_to_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(cpu_threads, "serving_threads", lambda cores=None: 1)
        assert cpu_threads.limit_for_serving("cuda:0") is None
        assert cpu_threads.limit_for_serving("cpu") == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert cpu_threads.limit_for_serving("cpu") is None
    finally:
        torch.set_num_threads(before)
