"""Arrival processes: exact small cases, statistics with fixed seeds, determinism."""
import math

import numpy as np
import pytest

from workloads.arrivals import AllAtOnce, ConstantArrivals, GammaArrivals, PoissonArrivals, TraceArrivals


def _gaps_cv(arrival_s: np.ndarray) -> float:
    gaps_s = np.diff(arrival_s)
    return float(np.std(gaps_s) / np.mean(gaps_s))


def _measured_rate_rps(arrival_s: np.ndarray) -> float:
    return (len(arrival_s) - 1) / arrival_s[-1]


def test_constant_arrivals_are_exact():
    times_s = ConstantArrivals(rate_rps=4.0).sample(5, np.random.default_rng(0))
    np.testing.assert_array_equal(times_s, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_all_at_once_puts_every_arrival_at_zero():
    times_s = AllAtOnce().sample(4, np.random.default_rng(0))
    np.testing.assert_array_equal(times_s, [0.0, 0.0, 0.0, 0.0])
    assert times_s.dtype == np.float64


def test_trace_arrivals_rebase_and_scale():
    process = TraceArrivals(np.array([2.0, 3.0, 5.0, 9.0]), time_scale=0.5)
    np.testing.assert_array_equal(process.sample(3, np.random.default_rng(0)), [0.0, 0.5, 1.5])


def test_trace_arrivals_refuse_more_requests_than_recorded():
    with pytest.raises(ValueError, match="holds 2 arrivals, fewer than the 3 requested"):
        TraceArrivals(np.array([0.0, 1.0])).sample(3, np.random.default_rng(0))


def test_trace_arrivals_reject_decreasing_times():
    with pytest.raises(ValueError, match="non-decreasing"):
        TraceArrivals(np.array([0.0, 2.0, 1.0]))


@pytest.mark.parametrize("process", [
    PoissonArrivals(3.0), GammaArrivals(3.0, cv=2.0), ConstantArrivals(3.0), AllAtOnce(),
])
def test_first_arrival_is_zero_and_times_never_decrease(process):
    times_s = process.sample(100, np.random.default_rng(1))
    assert len(times_s) == 100
    assert times_s[0] == 0.0
    assert np.all(np.diff(times_s) >= 0)
    assert len(process.sample(0, np.random.default_rng(1))) == 0
    np.testing.assert_array_equal(process.sample(1, np.random.default_rng(1)), [0.0])


def test_poisson_rate_and_cv_match_with_fixed_seed():
    times_s = PoissonArrivals(rate_rps=4.0).sample(20_001, np.random.default_rng(7))
    assert _measured_rate_rps(times_s) == pytest.approx(4.0, rel=0.03)
    assert _gaps_cv(times_s) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_rate_and_cv_match_with_fixed_seed(cv):
    times_s = GammaArrivals(rate_rps=10.0, cv=cv).sample(50_001, np.random.default_rng(11))
    assert _measured_rate_rps(times_s) == pytest.approx(10.0, rel=0.05)
    assert _gaps_cv(times_s) == pytest.approx(cv, rel=0.10)


@pytest.mark.parametrize("process", [PoissonArrivals(2.0), GammaArrivals(2.0, cv=4.0)])
def test_same_seed_gives_identical_arrivals(process):
    first = process.sample(50, np.random.default_rng(42))
    again = process.sample(50, np.random.default_rng(42))
    other = process.sample(50, np.random.default_rng(43))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("make", [PoissonArrivals, ConstantArrivals, lambda rate: GammaArrivals(rate, 1.0)])
@pytest.mark.parametrize("rate_rps", [0.0, -1.0, math.nan, math.inf])
def test_bad_rates_are_rejected(make, rate_rps):
    with pytest.raises(ValueError, match="rate_rps must be a finite number > 0"):
        make(rate_rps)


def test_bad_gamma_cv_and_time_scale_are_rejected():
    with pytest.raises(ValueError, match="cv must be"):
        GammaArrivals(1.0, cv=0.0)
    with pytest.raises(ValueError, match="time_scale must be"):
        TraceArrivals(np.array([0.0, 1.0]), time_scale=0.0)


def test_negative_request_count_is_rejected():
    with pytest.raises(ValueError, match="num_requests must be >= 0"):
        PoissonArrivals(1.0).sample(-1, np.random.default_rng(0))
