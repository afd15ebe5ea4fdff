"""Labels of prediction ticks, on small examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.scoring.labels import label_ticks


def _ticks(lo: float, hi: float, step: float) -> np.ndarray:
    return np.arange(lo, hi + step / 2, step)


def test_positive_window_and_exclusion_by_hand():
    # Ticks 0, 10, …, 100; one fault [45, 55]; horizon 20, cool-down 10.
    # Positive: 45 in (t, t + 20]  ⇔  25 <= t < 45  →  ticks 30, 40.
    # Not usable: [45, 55 + 10] = [45, 65]  →  ticks 50, 60.
    ticks = _ticks(0, 100, 10)
    pos, ok = label_ticks(ticks, np.array([45.0]), np.array([55.0]), 20.0, 10.0)
    assert ticks[pos].tolist() == [30.0, 40.0]
    assert ticks[~ok].tolist() == [50.0, 60.0]


def test_boundaries_are_inclusive_where_the_definition_says():
    # Fault [50, 60], horizon 20, cool-down 5, ticks every 5 s.
    # t = 30: 50 in (30, 50]  → positive (the right end is included).
    # t = 50: the fault starts at t, not after it → not positive, and not usable.
    # t = 65 = end + cool-down → not usable; t = 70 → usable again.
    ticks = _ticks(0, 80, 5)
    pos, ok = label_ticks(ticks, np.array([50.0]), np.array([60.0]), 20.0, 5.0)
    assert ticks[pos].tolist() == [30.0, 35.0, 40.0, 45.0]
    assert ticks[~ok].tolist() == [50.0, 55.0, 60.0, 65.0]


def test_cooldown_defaults_to_the_horizon():
    ticks = _ticks(0, 100, 10)
    _, ok = label_ticks(ticks, np.array([20.0]), np.array([30.0]), horizon_s=30.0)
    # Occupied [20, 30 + 30] = [20, 60].
    assert ticks[~ok].tolist() == [20.0, 30.0, 40.0, 50.0, 60.0]


def test_open_fault_excludes_everything_after_its_start():
    ticks = _ticks(0, 100, 10)
    pos, ok = label_ticks(ticks, np.array([75.0]), np.array([np.nan]), 10.0, 0.0)
    assert ticks[pos].tolist() == [70.0]
    assert ticks[~ok].tolist() == [80.0, 90.0, 100.0]


def test_two_faults_given_out_of_order():
    # Faults [60, 62] and [20, 22]; horizon 15, cool-down 8.
    # Positive: 20 in (t, t+15] → t in [5, 20): 10; 60 in (t, t+15] → t in [45, 60): 50.
    # Not usable: [20, 30] → 20, 30;  [60, 70] → 60, 70.
    ticks = _ticks(0, 100, 10)
    pos, ok = label_ticks(ticks, np.array([60.0, 20.0]), np.array([62.0, 22.0]), 15.0, 8.0)
    assert ticks[pos].tolist() == [10.0, 50.0]
    assert ticks[~ok].tolist() == [20.0, 30.0, 60.0, 70.0]


def test_a_fault_nested_in_a_longer_one_does_not_end_the_exclusion():
    # [10, 50] and [20, 25], cool-down 0: everything in [10, 50] is out, 40 included.
    ticks = _ticks(0, 60, 10)
    _, ok = label_ticks(ticks, np.array([10.0, 20.0]), np.array([50.0, 25.0]), 5.0, 0.0)
    assert ticks[~ok].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_no_faults_means_all_negative_and_all_usable():
    ticks = _ticks(0, 50, 10)
    pos, ok = label_ticks(ticks, np.array([]), np.array([]), 10.0)
    assert not pos.any() and ok.all()


@pytest.mark.parametrize("starts, ends, horizon, message", [
    ([10.0], [5.0], 10.0, "ends"),
    ([np.nan], [5.0], 10.0, "NaN"),
    ([1.0, 2.0], [3.0], 10.0, "one length"),
    ([1.0], [2.0], 0.0, "horizon_s"),
])
def test_bad_input_is_refused(starts, ends, horizon, message):
    with pytest.raises(ValueError, match=message):
        label_ticks(np.arange(5.0), np.array(starts), np.array(ends), horizon)


def test_labels_agree_with_a_brute_force_definition():
    rng = np.random.default_rng(2024)
    ticks = np.sort(rng.uniform(0, 1000, 300))
    starts = rng.uniform(0, 1000, 6)
    ends = starts + rng.uniform(0, 40, 6)
    ends[2] = np.nan
    h, cd = 50.0, 20.0
    pos, ok = label_ticks(ticks, starts, ends, h, cd)
    for t, p, u in zip(ticks, pos, ok, strict=True):
        assert p == any(t < s <= t + h for s in starts)
        busy = any(s <= t <= (np.inf if np.isnan(e) else e + cd)
                   for s, e in zip(starts, ends, strict=True))
        assert u == (not busy)
