"""Capacity search on synthetic monotone SLO curves with known answers."""
import math

import pytest

from harness.capacity import Probe, SearchConfig, bound_kind, bound_text, capacity_curve, search_max


def step_curve(threshold: float):
    """Attainment 1.0 up to the threshold, falling linearly after it; goodput grows with the rate."""
    calls = []

    def probe(rate: float) -> Probe:
        calls.append(rate)
        att = 1.0 if rate <= threshold else max(0.0, 1.0 - (rate - threshold))
        return Probe(attainment=att, goodput_tok_s=100.0 * rate, run=f"r{rate:g}")

    return probe, calls


@pytest.mark.parametrize("threshold", [0.37, 3.0, 7.3, 55.5, 1234.0])
def test_rate_search_finds_threshold_within_resolution(threshold):
    probe, calls = step_curve(threshold)
    cfg = SearchConfig(target=0.9, resolution=0.05, start=2.0, max_probes=40)
    res = search_max(probe, cfg)
    # attainment >= 0.9 holds exactly up to threshold + 0.1
    true = threshold + 0.1
    assert res.converged, res.reason
    assert res.best <= true + 1e-9 < res.upper
    assert res.upper - res.best <= 0.05 * res.best + 1e-12
    assert res.best >= true / 1.05 - 1e-9
    assert res.best_probe.goodput_tok_s == pytest.approx(100.0 * res.best)
    # bracketing then bisection: logarithmic, far fewer runs than a fine grid
    assert len(calls) == len(set(calls)) <= 25
    assert [t["load"] for t in res.tried] == calls


def test_rate_search_brackets_downward_when_start_fails():
    probe, calls = step_curve(0.2)
    res = search_max(probe, SearchConfig(target=0.95, resolution=0.1, start=8.0, max_probes=30))
    assert calls[:4] == [8.0, 4.0, 2.0, 1.0]
    assert 0.2 / 1.1 <= res.best <= 0.25 < res.upper


def test_nothing_passes_gives_zero_and_says_why():
    res = search_max(lambda r: Probe(attainment=0.5), SearchConfig(start=1.0, lowest=0.25, max_probes=10))
    assert res.best == 0.0 and res.best_probe is None and not res.converged
    assert "fails even at the lowest load" in res.reason
    assert [t["load"] for t in res.tried] == [1.0, 0.5, 0.25]


def test_everything_passes_stops_at_highest():
    res = search_max(lambda r: Probe(attainment=1.0), SearchConfig(start=1.0, highest=16.0, max_probes=10))
    assert res.best == 16.0 and math.isinf(res.upper) and not res.converged
    assert "highest load" in res.reason


def test_max_probes_bounds_the_runs():
    probe, calls = step_curve(1000.0)
    res = search_max(probe, SearchConfig(start=1.0, resolution=1e-6, max_probes=6))
    assert len(calls) == 6 and not res.converged and "max_probes=6" in res.reason


def test_failed_run_with_note_counts_as_failure():
    def probe(rate):
        return Probe(attainment=1.0, note="invalid: client fell behind") if rate > 3 else Probe(attainment=1.0)

    res = search_max(probe, SearchConfig(start=1.0, resolution=0.1, max_probes=20))
    assert 3 / 1.1 <= res.best <= 3.0 < res.upper
    assert any(t["note"] and not t["pass"] for t in res.tried)


def test_integer_search_over_adapter_counts():
    # attainment passes while n <= 37
    res = search_max(lambda n: Probe(attainment=1.0 if n <= 37 else 0.0), SearchConfig(start=4, resolution=1,
                                                                                          max_probes=30),
                     integer=True)
    assert res.best == 37 and res.upper == 38 and res.converged
    assert all(float(t["load"]).is_integer() for t in res.tried)


def test_capacity_curve_known_lambda_star():
    # λ*(N) = 20 / (1 + N/50): falls as adapters grow
    def truth(n):
        return 20.0 / (1.0 + n / 50.0)

    def probe(rate, n):
        return Probe(attainment=1.0 if rate <= truth(n) else 0.0, goodput_tok_s=rate * 50)

    pts = capacity_curve(probe, [100, 1, 30], SearchConfig(resolution=0.02, start=1.0, max_probes=40))
    assert [p.n for p in pts] == [1, 30, 100]
    for p in pts:
        assert truth(p.n) / 1.02 <= p.lambda_star <= truth(p.n)
        assert p.converged and p.goodput_tok_s == pytest.approx(p.lambda_star * 50)
    assert pts[0].lambda_star > pts[1].lambda_star > pts[2].lambda_star


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="target"):
        SearchConfig(target=1.5)
    with pytest.raises(ValueError, match="resolution"):
        SearchConfig(resolution=0)
    with pytest.raises(ValueError, match="start"):
        SearchConfig(start=0.0)


def test_limited_loads_are_neither_pass_nor_fail_and_give_a_lower_bound():
    # the server meets the SLO up to 10 req/s, but the client cannot send more than 6 on time
    def probe(rate):
        if rate > 6:
            return Probe(attainment=0.2, limited=True, note="load-generator-limited")
        return Probe(attainment=1.0 if rate <= 10 else 0.0)

    res = search_max(probe, SearchConfig(start=1.0, resolution=0.05, max_probes=20))
    assert res.bound == "lower" and res.best == 4.0 and math.isinf(res.upper)
    assert [t["limited"] for t in res.tried] == [False, False, False, True]
    assert "load generator" in res.reason
    assert bound_text(res.bound, res.best, None) == ">= 4"


def test_limited_start_looks_lower_and_a_limited_midpoint_keeps_the_bracket():
    def probe(rate):
        if 2.5 < rate < 3.5:
            return Probe(attainment=0.0, limited=True)
        return Probe(attainment=1.0 if rate <= 3 else 0.0)

    res = search_max(probe, SearchConfig(start=2.0, resolution=0.01, max_probes=20))
    assert res.bound == "bracket" and res.best == 2.0 and res.upper == 4.0 and not res.converged
    assert "could not send 3" in res.reason


def test_bound_kinds_and_texts():
    assert bound_kind(2.0, 3.0) == "bracket" and bound_text("bracket", 2.0, 3.0) == "[2, 3]"
    assert bound_kind(2.0, math.inf) == "lower"
    assert bound_kind(0.0, 0.5) == "upper" and bound_text("upper", 0.0, 0.5) == "< 0.5"
    assert bound_kind(0.0, math.inf) == "unknown" and bound_text("unknown", 0.0, None) == "?"
    res = search_max(lambda r: Probe(attainment=0.0), SearchConfig(start=1.0, lowest=0.25, max_probes=10))
    assert res.bound == "upper" and res.upper == 0.25
