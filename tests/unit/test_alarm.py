"""The alarm rule: the service's streaming form and the backtest's batch form agree."""

import numpy as np
import pytest

from appliance.alarm import CLEARED, RAISED, AlarmState, alarm_active


def test_hysteresis_raises_once_and_clears_below_the_lower_level():
    s = AlarmState(clear_ratio=0.8)
    seq = [0.1, 0.5, 0.49, 0.45, 0.41, 0.39, 0.5, 0.2]
    changes = [s.update(p, threshold=0.5) for p in seq]
    # raised at 0.5; 0.49..0.41 stay raised (>= 0.4); cleared at 0.39; raised again at 0.5
    assert changes == [None, RAISED, None, None, None, CLEARED, RAISED, CLEARED]


def test_probability_hovering_at_threshold_does_not_flap():
    s = AlarmState(clear_ratio=0.8)
    changes = [s.update(p, 0.5) for p in [0.5, 0.48, 0.51, 0.47, 0.52]]
    assert changes.count(RAISED) == 1 and changes.count(CLEARED) == 0


def test_nan_neither_raises_nor_clears():
    s = AlarmState(clear_ratio=0.8)
    assert [s.update(p, 0.5) for p in [np.nan, 0.9, np.nan, np.nan, 0.1]] == \
        [None, RAISED, None, None, CLEARED]
    assert alarm_active(np.array([np.nan, 0.9, np.nan, np.nan, 0.1]), np.ones(5, bool),
                        0.5, 0.8).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("seed", range(20))
def test_streaming_and_batch_forms_agree_on_seeded_sequences_with_nan(seed):
    rng = np.random.default_rng(seed)
    n = 500
    p = rng.random(n)
    p[rng.random(n) < 0.15] = np.nan
    threshold, clear_ratio = rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.0)
    state = AlarmState(clear_ratio)
    streamed = []
    for x in p:
        state.update(float(x), threshold)
        streamed.append(state.raised)
    batch = alarm_active(p, np.ones(n, bool), threshold, clear_ratio)
    assert batch.tolist() == streamed
    assert any(streamed) and not all(streamed)  # the sequences exercise both states


def test_a_resumed_alarm_is_not_raised_again_and_clears_as_usual():
    s = AlarmState(clear_ratio=0.8, raised=True)
    assert s.update(0.9, 0.5) is None and s.raised
    assert s.update(0.39, 0.5) == CLEARED
    s = AlarmState(clear_ratio=0.8, raised=True)
    assert s.clear() == CLEARED and not s.raised
    assert s.clear() is None
    assert s.update(0.9, 0.5) == RAISED
