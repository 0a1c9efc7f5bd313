"""The simulated replica as engines/multilora runs: pinned device slots, max_loras, loads at step boundaries (async
on CUDA, inside the step on the CPU), mixed steps; the fit of mixed-step runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engines.config import EngineConfig
from harness.simulate.fleet import simulate
from harness.simulate.model import ServiceModel, fit_records
from tests.sim_runs import emulate

# decode: 10 ms + 1 ms/seq + 2 ms/adapter; prefill: 20 ms + 0.1 ms/token + 5 ms/seq
MODEL = ServiceModel(step_s=0.010, per_seq_s=0.001, per_adapter_s=0.002, prefill_s=0.020,
                     per_prompt_token_s=0.0001, per_prefill_seq_s=0.005, adapter_load_s=0.001, slots=8)


def trace(rows):
    """rows of (t, adapter, prompt, output)."""
    return pd.DataFrame(rows, columns=["t", "adapter", "prompt_tokens", "output_tokens"])


def test_a_cold_adapter_costs_the_step_its_load_starts_in_on_cuda():
    # request 0 (base) decodes from 0.035 in steps of 11 ms; request 1 arrives inside the first decode step
    rows = [(0.0, "", 100, 20), (0.036, "a", 100, 2)]
    r = simulate(trace(rows), MODEL, 1)
    assert r.first[0] == pytest.approx(0.035)
    # the load starts at the next step start (0.046), is done at 0.047; the prefill waits for the step boundary
    # after it (0.057), so the cold adapter costs one decode step more than a resident one
    assert r.first[1] == pytest.approx(0.057 + 0.035)
    warm = simulate(trace([(0.0, "", 100, 20), (0.036, "", 100, 2)]), MODEL, 1)
    assert r.first[1] - warm.first[1] == pytest.approx(0.011)


def test_on_the_cpu_a_load_runs_inside_the_step_that_prefills():
    rows = [(0.0, "", 100, 20), (0.036, "a", 100, 2)]
    r = simulate(trace(rows), MODEL.with_(async_loads=False), 1)
    assert r.first[1] == pytest.approx(0.046 + 0.001 + 0.035)


def test_at_most_max_loras_adapters_run_and_the_rest_wait_for_one_to_finish():
    model = MODEL.with_(max_loras=2, adapter_slots=8, adapter_load_s=0.0)
    # the base request holds the engine in its prefill while the others arrive (the base takes no adapter)
    rows = [(0.0, "", 10, 60), (0.001, "a", 10, 30), (0.002, "b", 10, 5), (0.003, "c", 10, 5), (0.004, "a", 10, 5)]
    r = simulate(trace(rows), model, 1)
    assert r.first[1] == r.first[2] == r.first[4]  # a, b and a second a share one prefill
    assert r.first[3] > r.end[2]  # c waits until b's request ends (a still runs)
    assert r.first[3] < r.end[1]


def test_a_load_waits_for_a_slot_no_running_request_pins():
    model = MODEL.with_(adapter_slots=2, adapter_load_s=0.5)
    rows = [(0.0, "a", 10, 200), (0.0, "b", 10, 3), (0.1, "c", 10, 3)]
    r = simulate(trace(rows), model, 1)
    assert r.loads == [3]
    assert r.first[2] >= r.end[1] + 0.5  # c's load took b's slot once b's request ended
    assert r.first[2] < r.end[0]  # a's slot stayed pinned


def test_mixed_steps_decode_the_running_requests_while_prefilling():
    model = MODEL.with_(mixed_steps=True)
    r = simulate(trace([(0.0, "", 100, 10), (0.05, "", 100, 3)]), model, 1)
    # idle: a mixed step of no running request is the step overhead plus the prefill (0.010 + 0.035)
    assert r.first[0] == pytest.approx(0.045)
    # request 1 arrives inside the first decode step (0.045 .. 0.056); the next step decodes request 0 and
    # prefills request 1: 0.011 + 0.035
    assert r.first[1] == pytest.approx(0.056 + 0.046)
    # request 0: 1 token at 0.045, 1 in the decode step, 1 in the mixed step, 2 with request 1, 5 alone
    assert r.end[0] == pytest.approx(0.102 + 2 * 0.012 + 5 * 0.011)
    prefill_first = simulate(trace([(0.0, "", 100, 10), (0.05, "", 100, 3)]), MODEL, 1)
    assert prefill_first.end[0] - prefill_first.first[0] > r.end[0] - r.first[0]  # no decode stall


def test_mixed_steps_admit_within_the_step_token_budget():
    model = MODEL.with_(mixed_steps=True, step_tokens=250)
    rows = [(0.0, "", 10, 50), (0.05, "", 100, 5), (0.051, "", 100, 5), (0.052, "", 100, 5)]
    r = simulate(trace(rows), model, 1)
    # the step after 0.05 decodes 1 token and may prefill 249: two prompts of 100 fit, the third waits
    assert r.first[1] == r.first[2] < r.first[3]


def arrivals(seed=7, n=600, gap=0.08):
    rng = np.random.default_rng(seed)
    return [(float(t), f"a{rng.integers(0, 12)}", int(rng.integers(20, 400)), int(rng.integers(10, 80)))
            for t in np.cumsum(rng.exponential(gap, n))]


def test_fit_recovers_the_costs_of_an_emulated_mixed_step_engine():
    truth = ServiceModel(step_s=0.008, per_seq_s=0.0005, per_adapter_s=0.0015, prefill_s=0.030,
                         per_prompt_token_s=0.0002, per_prefill_seq_s=0.006)
    records = emulate(truth, arrivals(), mixed=True)
    fit = fit_records(records, EngineConfig(), mixed_steps=True)
    assert fit.mixed_steps
    assert fit.step_s == pytest.approx(truth.step_s, rel=0.1)
    assert fit.per_seq_s == pytest.approx(truth.per_seq_s, rel=0.15)
    assert fit.per_adapter_s == pytest.approx(truth.per_adapter_s, rel=0.15)
    assert fit.prefill_s + fit.per_prefill_seq_s == pytest.approx(truth.prefill_s + truth.per_prefill_seq_s, rel=0.1)
    assert fit.per_prompt_token_s == pytest.approx(truth.per_prompt_token_s, rel=0.15)
    assert fit.latency_s < 0.01
