"""The timeline's row budget: merging adjacent rows keeps step-time-weighted
figures and the steps each row covers."""
from __future__ import annotations

import pytest

from sim.timeline import VALUE_COLUMNS, Timeline


def _snapshot(value: float) -> tuple:
    return (value,) * len(VALUE_COLUMNS)


def test_merging_weights_by_step_time_and_keeps_the_odd_row():
    """Five rows over a budget of four: the first two pairs merge (a timed
    pair into its step-time-weighted mean, a pair of zero-length steps into
    the plain mean), the fifth row stays as it is."""
    timeline = Timeline(max_rows=4)
    rows = [(0.0, 1.0, 10.0), (1.0, 3.0, 20.0), (4.0, 0.0, 5.0), (4.0, 0.0, 7.0), (4.0, 2.0, 9.0)]
    for t_s, step_s, value in rows:
        timeline.append(t_s, 0, step_s, _snapshot(value))
    frame = timeline.to_frame()
    assert frame["t_s"].tolist() == [0.0, 4.0, 4.0]
    assert frame["step_s"].tolist() == [4.0, 0.0, 2.0]
    assert frame["steps"].tolist() == [2, 2, 1]
    for column in VALUE_COLUMNS:
        assert frame[column].tolist() == pytest.approx([(10.0 * 1 + 20.0 * 3) / 4, (5.0 + 7.0) / 2, 9.0],
                                                       rel=1e-15)


def test_rows_merge_in_time_order_whatever_order_they_were_recorded_in():
    """Rows recorded out of order (a run through arrivals is recorded when
    it ends) pair with their neighbours in time."""
    timeline = Timeline(max_rows=2)
    for t_s, value in [(2.0, 30.0), (0.0, 10.0), (3.0, 40.0), (1.0, 20.0)]:
        timeline.append(t_s, 0, 1.0, _snapshot(value))
    frame = timeline.to_frame()
    assert frame["t_s"].tolist() == [0.0, 2.0]
    assert frame["running"].tolist() == [15.0, 35.0]


def test_a_long_run_keeps_rows_of_equal_steps_from_first_to_last():
    """20,000 steps recorded through several flushes into a budget of 100
    rows: every row but the last covers the same number of steps, in time
    order, and the step-time-weighted mean of a column is the full one's."""
    import numpy as np

    timeline = Timeline(max_rows=100)
    rng = np.random.default_rng(0)
    steps_s = rng.uniform(0.01, 0.05, 20_000)
    values = rng.integers(0, 500, 20_000).astype(float)
    starts = np.concatenate(([0.0], np.cumsum(steps_s)[:-1]))
    for t_s, step_s, value in zip(starts.tolist(), steps_s.tolist(), values.tolist()):
        timeline.append(t_s, 0, step_s, _snapshot(value))
    frame = timeline.to_frame()
    assert 50 <= len(frame) <= 100 and frame["steps"].sum() == 20_000
    assert frame["steps"].iloc[:-1].nunique() == 1 and frame["steps"].iloc[-1] <= frame["steps"].iloc[0]
    assert (frame["t_s"].diff().iloc[1:] > 0).all() and frame["t_s"].iloc[0] == 0.0
    weighted = (frame["running"] * frame["step_s"]).sum() / frame["step_s"].sum()
    assert weighted == pytest.approx((values * steps_s).sum() / steps_s.sum(), rel=1e-12)
