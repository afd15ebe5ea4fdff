"""Drift on a model's inputs: PSI, the live monitor against the batch, sensor health,
the calibration on held-out rows, and the simulator's recalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.config import DriftConfig, PipelineConfig
from appliance.features import health
from appliance.features.spec import PipelineSpec
from appliance.models import drift
from appliance.training.export import reference_distribution

SPEC = PipelineSpec.from_config(PipelineConfig())
DAY = 86400.0


def _reference(names, X):
    return reference_distribution(X, names)


def test_live_monitor_gives_the_batch_numbers_and_events_name_the_moved_feature():
    rng = np.random.default_rng(1)
    names = ("a__last", "b__last", "a__missing")
    train = rng.normal(size=(5000, 3))
    ref = drift.reference_of(names, _reference(names, train))
    assert ref.features == ("a__last", "b__last")  # health columns are not drift's
    window = drift.Window(window_s=3600.0, sample_s=60.0, persist_s=120.0)
    settings = drift.Settings(window, False, (None, None), 0.5, 1.0)
    ticks = np.arange(0, 4 * 3600, 10.0)
    X = rng.normal(size=(len(ticks), 2))
    X[ticks >= 2 * 3600, 0] += 3.0  # feature a moves at 2 h
    X[::7, 1] = np.nan
    mon = drift.DriftMonitor(ref, settings, "m", top_features=2)
    live, events = [], []
    for t, row in zip(ticks, X, strict=True):
        a = mon.assets_of([("l1", "x1")])
        sampled = mon.observe(float(t), a, row[None, :])
        if len(sampled):
            live.append(mon.psi[0].copy())
            events.extend(mon.events(float(t), sampled))
    _, batch = drift.psi_series(ref, window, ticks, X)
    np.testing.assert_array_equal(np.array(live), batch)
    started = [e for e in events if e.state == "started"]
    assert len(started) == 1 and started[0].features[0] == "a__last"
    # event time: PSI > 0.5 needs about a fifth of the 60-sample window shifted, then
    # 3 samples in a row
    assert 2 * 3600 < started[0].ts <= 2 * 3600 + 30 * 60
    shift = json.loads(started[0].detail)["features"]["a__last"]["shift"]
    assert 1.0 < shift < 3.5  # in the feature's units (an EWMA spanning the window)


def _rows(names, values):
    return np.array(values, dtype=np.float32).reshape(1, len(names))


def test_stuck_and_silent_sensors_are_sensor_events_and_live_equals_batch():
    names = ("s__last", "s__missing", "s__stuck", "s__mean_600s", "t__last", "t__missing",
             "t__stuck")
    h = health.SensorHealth(silent_s=60.0, level=0.5)
    ticks = np.arange(0.0, 600.0, 10.0)
    X = np.zeros((len(ticks), len(names)), dtype=np.float32)
    X[:, 0] = X[:, 4] = 1.0
    X[(ticks >= 100) & (ticks < 200), 2] = 1  # s stuck for 100 s
    X[ticks >= 300, 4] = np.nan  # t silent from 300 s
    X[ticks >= 300, 5] = 0.6
    events = []
    for t, row in zip(ticks, X, strict=True):
        _, ev = h.observe(float(t), [("l1", "x1")], names, row[None, :])
        events.extend(ev)
    got = [(e.kind, e.state, json.loads(e.detail)["sensor"], json.loads(e.detail)["kind"],
            e.ts) for e in events]
    assert got == [("sensor", "started", "s", "stuck", 100.0),
                   ("sensor", "ended", "s", "stuck", 200.0),
                   ("sensor", "started", "t", "silent", 360.0)]
    assert json.loads(events[-1].detail)["since"] == 300.0
    assert events[0].features == ("s__last", "s__missing", "s__stuck", "s__mean_600s")
    sensors, kinds = health.sensor_kinds(names, ticks, X, 60.0, 0.5)
    assert sensors == ("s", "t")
    assert (kinds[-1] == [0, health.SILENT]).all()
    assert h.faulty(np.array([0]), sensors).tolist() == [[False, True]]


@pytest.fixture(scope="module")
def month():
    """55 simulated days of 4 assets; lube_temp reads 10 °C high from day 50; a model
    trained on the first 20 days (its last 5 held out, and calibrated there)."""
    from appliance.devtools.simulator import Recalibration, SimParams, simulate_history
    from appliance.training import starter
    from appliance.training.families import TrainParams
    from appliance.training.fit import train

    params = SimParams(recalibrations=(Recalibration(50 * DAY, "lube_temp", 10.0),))
    sim = simulate_history(days=55, assets=4, hz=0.1, seed=11, params=params)
    result = train(SPEC, starter.histories_of(sim), sim.t_start, sim.t_start + 20 * DAY,
                   TrainParams(max_iter=20, stride=3, seed=1))
    return sim, result


def _run(sim, result, cfg: DriftConfig, t_from: float):
    """Per asset: sample ticks and the drifting state, as the live stage would decide."""
    from appliance.features.batch import asset_features

    ref = drift.reference_of(result.feature_names, result.reference)
    settings = drift.settings_for(
        ref, result.drift_calibration,
        window=drift.Window(cfg.window_s, cfg.sample_s, cfg.persist_s),
        uncalibrated_persist_s=cfg.uncalibrated_persist_s,
        uncalibrated_psi=cfg.uncalibrated_psi, max_false_per_month=cfg.max_false_per_month)
    thresholds = settings.thresholds(len(sim.assets))
    out = []
    for asset in sim.assets:
        names, ticks, X = asset_features(SPEC, sim.series(asset), t_from, sim.t_end)
        sensors, kinds = health.sensor_kinds(names, ticks, X, cfg.sensor_silent_s,
                                             cfg.sensor_missing)
        ex = (kinds != 0) @ health.feature_sensor_matrix(ref.features, sensors) > 0
        cols = [names.index(f) for f in ref.features]
        t, psi = drift.psi_series(ref, settings.window, ticks, X[:, cols], ex)
        out.append((t, drift.drifting_series(psi, thresholds, settings.window.persist)))
    return ref, out


@pytest.mark.slow
def test_calibration_holds_on_held_out_rows_and_a_stationary_month(month):
    sim, result = month
    cal = result.drift_calibration
    assert cal["assets"] == 4 and cal["window_s"] == DriftConfig().window_s
    fitted = [e for e in cal["features"].values() if "loc" in e]
    assert len(fitted) > 0.9 * len(cal["features"])
    # held out: the validation rows the calibration saw give no event at the budget
    _, held = _run(sim, result, DriftConfig(), result.validated_from)
    held = [(t[t <= result.validated_to], d[t <= result.validated_to]) for t, d in held]
    assert sum(drift.count_events(d.any(axis=1)) for _, d in held) == 0
    # the month after it (days 20 to 50), stationary: no drift event either
    _, rows = _run(sim, result, DriftConfig(), sim.t_start + 20 * DAY)
    end = sim.t_start + 50 * DAY
    line = np.zeros(0, dtype=bool)
    for t, d in rows:
        keep = t < end
        line = d[keep].any(axis=1) if not len(line) else line | d[keep].any(axis=1)[:len(line)]
    assert drift.count_events(line) == 0


@pytest.mark.slow
def test_recalibration_is_reported_as_drift_naming_its_sensor(month):
    """The line's drift event (its first drifting asset) comes within a day (the window)
    of a +10 °C lube_temp offset (2σ of the feature) and names lube_temp features.
    Measured: 17 h at a budget of 10 false events per month (0 false events in the month
    before); at the default budget of 1 the offset is not reported within 5 days: a 1-day
    window of one asset is too noisy against its thresholds (see the note)."""
    sim, result = month
    ref, rows = _run(sim, result, DriftConfig(max_false_per_month=10.0),
                     sim.t_start + 45 * DAY)
    at = sim.t_start + 50 * DAY
    first: list[tuple[float, set[str]]] = []
    for t, d in rows:
        assert not d[t < at].any()
        after = d[t >= at]
        hit = np.flatnonzero(after.any(axis=1))
        if len(hit):
            first.append((float(t[t >= at][hit[0]]),
                          {ref.features[j] for j in np.flatnonzero(after[hit[0]])}))
    assert first, "no drift after the recalibration"
    ts, moved = min(first, key=lambda x: x[0])
    assert ts - at <= DAY, (ts - at) / 3600
    assert moved and all(f.startswith("lube_temp__") for f in moved), moved
