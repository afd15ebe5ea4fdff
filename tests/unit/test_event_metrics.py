"""Alarm hysteresis, event metrics and the threshold choice, on hand-built examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.alarm import alarm_active
from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import (
    AssetScores,
    choose_threshold,
    event_metrics,
)

H = 3600.0


def test_hysteresis_raises_at_threshold_and_clears_below_the_lower_level():
    # threshold 0.5, clear below 0.4
    p = np.array([0.1, 0.6, 0.5, 0.45, 0.3, 0.45, 0.7])
    active = alarm_active(p, np.ones(7, bool), 0.5, 0.8)
    assert active.tolist() == [False, True, True, True, False, False, True]


def test_an_unusable_tick_clears_the_alarm():
    p = np.array([0.9, 0.9, 0.9, 0.45, 0.9])
    usable = np.array([True, False, True, True, True])
    assert alarm_active(p, usable, 0.5, 0.8).tolist() == [True, False, True, True, True]


def _one_asset(p_false: float, p_true: float, p_base: float = 0.05) -> AssetScores:
    """Ticks every 600 s over 10 h; a fault at 18000–18600 s.

    A short alarm at t = 6000 (no fault follows within an hour: false) and one at
    15600–16200 (the fault starts 2400 s later: true, lead 2400 s).
    """
    ticks = np.arange(0.0, 36000.0 + 1, 600.0)
    starts, ends = np.array([18000.0]), np.array([18600.0])
    positive, usable = label_ticks(ticks, starts, ends, H)
    p = np.full(len(ticks), p_base)
    p[ticks == 6000.0] = p_false
    p[(ticks >= 15600.0) & (ticks <= 16200.0)] = p_true
    return AssetScores("a1", ticks, p, usable, positive, starts)


def test_event_metrics_by_hand():
    s = _one_asset(p_false=0.6, p_true=0.9)
    m = event_metrics([s], threshold=0.5, horizon_s=H)
    # Usable ticks: 61 ticks minus [18000, 18600 + 3600] = 18000…22200 → 8 ticks out.
    n_usable = 61 - 8
    assert s.usable.sum() == n_usable
    assert (m.faults, m.caught, m.recall) == (1, 1, 1.0)
    assert (m.episodes, m.false_episodes, m.episode_precision) == (2, 1, 0.5)
    assert m.median_lead_s == 2400.0
    weeks = n_usable * 600.0 / (7 * 86400)
    assert m.asset_weeks == pytest.approx(weeks)
    assert m.false_per_asset_week == pytest.approx(1 / weeks)
    # Positive ticks: [14400, 18000) → 6; two score 0.9, four 0.05.  Negatives: 47, one
    # at 0.6, 46 at 0.05.  Average precision = Σ ΔR·P: at 0.9, R 2/6 with P 1; at 0.6
    # R unchanged; at 0.05, R 6/6 with P 6/53  →  2/6 + (4/6)(6/53) = 1/3 + 4/53.
    assert m.pr_auc == pytest.approx(1 / 3 + 4 / 53)


def test_a_fault_in_the_first_horizon_is_not_counted():
    ticks = np.arange(0.0, 10000.0, 600.0)
    starts = np.array([1800.0])
    pos, ok = label_ticks(ticks, starts, np.array([2400.0]), H)
    m = event_metrics([AssetScores("a", ticks, np.full(len(ticks), 0.9), ok, pos, starts)],
                      0.5, H)
    assert m.faults == 0 and math.isnan(m.recall)


def test_only_faults_with_a_full_horizon_of_ticks_before_them_are_counted():
    # two stretches of activity with a day of silence between them (no ticks there)
    ticks = np.r_[np.arange(0.0, 20000.0, 600.0), np.arange(106400.0, 130000.0, 600.0)]
    starts = np.array([
        10000.0,            # mid-stretch: counted
        20100.0,            # the data ended 500 s before: a run-to-failure end, counted
        60000.0,            # in the silence, hours after the last tick: not counted
        107000.0,           # 600 s after the restart: no horizon of ticks, not counted
        125000.0,           # counted
    ])
    pos, ok = label_ticks(ticks, starts, starts + 60.0, H, cooldown_s=0.0)
    m = event_metrics([AssetScores("a", ticks, np.full(len(ticks), 0.9), ok, pos, starts)],
                      0.5, H)
    assert m.faults == 3


def test_missed_fault_and_no_alarm():
    m = event_metrics([_one_asset(p_false=0.05, p_true=0.05)], 0.5, H)
    assert (m.faults, m.caught, m.recall, m.episodes) == (1, 0, 0.0, 0)
    assert math.isnan(m.median_lead_s) and math.isnan(m.episode_precision)
    assert m.false_per_asset_week == 0.0


def test_threshold_choice_keeps_the_hit_and_drops_the_false_alarm():
    s = _one_asset(p_false=0.6, p_true=0.9)
    chosen, met = choose_threshold([s], H, max_false_per_asset_week=0.0)
    assert met
    assert 0.6 < chosen.threshold <= 0.9
    assert (chosen.recall, chosen.false_episodes) == (1.0, 0)


def test_threshold_choice_reports_an_unmet_budget():
    # The false alarm scores higher than any candidate threshold can reach.
    s = _one_asset(p_false=0.999, p_true=0.9)
    chosen, met = choose_threshold([s], H, max_false_per_asset_week=0.0, hi=0.99)
    assert not met
    assert chosen.false_episodes == 1
    assert chosen.threshold == 0.99


def test_as_dict_is_json_ready():
    import json

    d = event_metrics([_one_asset(0.05, 0.05)], 0.5, H).as_dict()
    assert d["median_lead_s"] is None
    json.dumps(d, allow_nan=False)
