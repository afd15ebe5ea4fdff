"""Walk-forward backtest: the retraining loop replayed over a simulated test window.

Histories are small (4 assets, 1-minute readings, days not weeks) and trained with
few boosting iterations, so each test is a few tens of seconds on a slow machine.
"""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pytest

from appliance.config import from_dict
from appliance.devtools import simulator
from appliance.storage.history import AssetHistory, StoredHistory
from appliance.training import backtest, walk_forward
from appliance.training.starter import histories_of

DAY = 86400.0
ASSETS, SPLIT_DAY = 4, 7.0
PIPELINE = {"cadence_s": 60.0, "hampel_window_s": 600.0}


def _history(days: float, params: simulator.SimParams | None = None) -> StoredHistory:
    sim = simulator.simulate_history(days, ASSETS, 1 / 60, seed=5, params=params)
    return StoredHistory(tuple(histories_of(sim)), sim.t_start, sim.t_end, sim.n_readings,
                         len(sim.faults))


def _cfg(retrain: dict) -> object:
    return from_dict({"pipeline": PIPELINE, "training": {"max_iter": 40},
                      "retrain": retrain}, source="<test>")


def test_history_at_keeps_what_was_stored_by_then():
    ts = np.arange(10, dtype=np.float64) * 60.0
    h = StoredHistory((AssetHistory("a", {"s": (ts, ts * 2)}, np.array([120.0, 400.0]),
                                    np.array([300.0, 500.0])),), 0.0, 540.0, 10, 2)
    at = walk_forward.history_at(h, 330.0)
    (a,) = at.histories
    assert a.series["s"][0].tolist() == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    assert a.fault_starts.tolist() == [120.0] and a.fault_ends.tolist() == [300.0]
    at = walk_forward.history_at(h, 450.0)
    (a,) = at.histories
    assert a.fault_starts.tolist() == [120.0, 400.0]
    assert a.fault_ends[0] == 300.0 and math.isnan(a.fault_ends[1])  # still open at 450
    assert (at.t_end, at.readings, at.faults) == (420.0, 8, 2)


def test_the_step_is_check_every_s_and_at_least_one_cadence():
    cfg = _cfg({"check_every_s": 30.0})
    assert walk_forward.walk_step(cfg, None) == 60.0
    assert walk_forward.walk_step(cfg, 900.0) == 900.0
    with pytest.raises(ValueError, match="positive number of seconds"):
        walk_forward.walk_step(cfg, -5.0)


def test_with_no_trigger_the_walk_forward_is_the_static_backtest(tmp_path):
    # Stationary line; the triggers that need no data to fire are off, and so are the
    # ones a short history makes noisy (a few live faults against a validation of few).
    cfg = _cfg({"every_days": 0, "min_new_faults": 0, "score_drop": 0,
                "drift_persist_s": 0})
    history = _history(9.0)
    variants = backtest.resolve_variants(cfg, ["full", "static_threshold"])
    result = walk_forward.run(cfg, history, variants, history.t_start + SPLIT_DAY * DAY,
                              out_dir=tmp_path, step_s=900.0)
    (walk,) = result.walks
    static = next(vr for vr in result.static.variants if vr.variant.name == "full")
    assert walk.count("trigger") == 0 and walk.count("promote") == 0
    assert set(walk.pred_model.tolist()) == {walk.events[0]["model"]}
    # exactly the static backtest's predictions, tick for tick
    assert np.array_equal(walk.pred_asset, static.pred_asset)
    assert np.array_equal(walk.pred_ts, static.pred_ts)
    assert np.array_equal(walk.pred_probability, static.pred_probability, equal_nan=True)
    assert np.all(walk.pred_threshold == static.threshold)
    assert (walk.test.faults, walk.test.caught, walk.test.false_episodes) == (
        static.test.faults, static.test.caught, static.test.false_episodes)
    assert "static_threshold" in result.skipped and "static_threshold" not in {
        w.variant.name for w in result.walks}
    # files: the walk beside the static backtest
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM '{tmp_path / 'full' / 'predictions.parquet'}'")
    assert rel.columns == ["asset", "ts", "probability", "threshold", "model"]
    static_file = tmp_path / "static" / "full" / "predictions.parquet"
    assert con.execute(f"SELECT count(*) FROM '{static_file}'").fetchone()[0] == len(
        static.pred_ts)
    events = [json.loads(line) for line in
              (tmp_path / "full" / "loop_events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "champion"
    path = walk_forward.write_report(result, tmp_path)
    text = path.read_text()
    assert "| full | walk-forward |" in text and "| full | static |" in text
    assert "static_threshold: not walked forward" in text


@pytest.mark.slow  # about a minute: several trainings
def test_after_a_recalibration_the_loop_retrains_promotes_and_catches_more(tmp_path):
    # Vibration reads half from the split on: the static model, which announces faults
    # by vibration, misses them (checked below); the loop's live scores see that.
    params = simulator.SimParams(recalibrations=(
        simulator.Recalibration(at_s=SPLIT_DAY * DAY, sensor="vibration", scale=0.5),))
    cfg = _cfg({"holdout_days": 1, "every_days": 0, "min_new_faults": 0,
                "min_gap_s": 12 * 3600.0, "drift_shadow_days": 0.5, "shadow_faults": 3,
                # a small line: an asset-week of live ticks takes days here
                "min_asset_weeks": 0.0, "probation_days": 0})
    history = _history(10.0, params)
    variants = backtest.resolve_variants(cfg, ["full"])
    result = walk_forward.run(cfg, history, variants, history.t_start + SPLIT_DAY * DAY,
                              out_dir=tmp_path, step_s=900.0)
    (walk,) = result.walks
    static = result.static.variants[0]
    budget = cfg.alerts.max_false_per_asset_week
    assert static.test.recall < 0.2, static.test  # the drift hurts the frozen model
    counts = walk.counts()
    assert counts["trained"] >= 1 and counts["promote"] >= 1, counts
    assert len(set(walk.pred_model.tolist())) >= 2
    promoted = walk.first("promote")
    before = walk.pred_ts <= promoted
    assert np.array_equal(walk.pred_probability[before], static.pred_probability[before],
                          equal_nan=True)  # the static model served until the promotion
    # as each would have run (its own thresholds): more faults caught, within the budget
    # (on 3 test days the first promotion comes late in the window: few more; the
    # benchmark's 15 days show the size of the gain)
    assert walk.test.caught > static.test.caught, (walk.test, static.test)
    assert walk.test.false_per_asset_week <= budget
    kinds = [json.loads(line)["event"] for line in
             (tmp_path / "full" / "loop_events.jsonl").read_text().splitlines()]
    for kind in ("trigger", "trained", "gate", "shadow_started", "promote"):
        assert kind in kinds
