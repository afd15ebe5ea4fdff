"""Live rows equal batch rows: the same grid, the same kernels (train/serve skew = 0)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from appliance.config import PipelineConfig
from appliance.pipeline.batch import asset_features, grid_values
from appliance.pipeline.live import AssetFeatures, FeatureBanks
from appliance.pipeline.spec import PipelineSpec

SPEC = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60))


def irregular_series(rng: np.random.Generator, t0: float, seconds: float, mean_dt: float,
                     drop: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    ts = t0 + np.cumsum(rng.exponential(mean_dt, int(seconds / mean_dt)))
    ts = ts[ts < t0 + seconds]
    values = 20 + np.cumsum(rng.normal(0, 0.1, len(ts)))
    values[rng.random(len(ts)) < drop] = np.nan
    ts[5:8] = ts[5]  # duplicate timestamps
    return ts, values


def live_rows(series: dict[str, tuple[np.ndarray, np.ndarray]], spec: PipelineSpec = SPEC):
    # Event-time order; equal timestamps keep their order within a sensor, as batch does.
    events = sorted((t, s, i, v) for s, (ts, vs) in series.items()
                    for i, (t, v) in enumerate(zip(ts, vs, strict=True)))
    state = AssetFeatures(spec, FeatureBanks(spec))
    rows = []
    for t, s, _i, v in events:
        rows.extend(state.push(s, t, v))
    return rows, state


#: Long windows run on a coarser grid (stride > 1): 3600 s at 10 s ticks → 60 s points.
LONG = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=3600, max_gap_s=60))


@pytest.mark.parametrize("spec", [SPEC, LONG], ids=["short-windows", "coarse-window"])
def test_live_rows_equal_batch_rows(spec):
    rng = np.random.default_rng(20260101)
    t0 = 1_700_000_003.7
    series = {
        "temp": irregular_series(rng, t0, 9000, 1.3),
        "vib": irregular_series(rng, t0 + 1, 9000, 7.0),
        "slow": irregular_series(rng, t0 + 2, 9000, 95.0, drop=0.0),  # sparser than max_gap
    }
    rows, state = live_rows(series, spec)
    assert state.late == 0
    first = min(ts[0] for ts, _ in series.values())
    last_tick = rows[-1][0]
    names, ticks, X = asset_features(spec, series, first - 1e-6, last_tick)
    assert [r[0] for r in rows] == ticks.tolist()
    # Every live row has all three sensors once they have appeared; compare the last 300.
    live = np.vstack([r[2] for r in rows[-300:]])
    assert rows[-1][1] == names
    np.testing.assert_allclose(live, X[-300:], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isfinite(X[-1]).sum() > len(names) // 2


def test_a_sensor_joining_late_has_missing_features_before_in_both_drivers():
    rng = np.random.default_rng(7)
    t0 = 1_700_000_000.0
    series = {"a": irregular_series(rng, t0, 2000, 2.0, drop=0),
              "b": irregular_series(rng, t0 + 1000, 1000, 2.0, drop=0)}
    rows, _ = live_rows(series)
    names, ticks, X = asset_features(SPEC, series, t0 - 1e-6, rows[-1][0])
    b_last = names.index("b__last")
    early = ticks < t0 + 990
    assert np.all(np.isnan(X[early, b_last])) and np.isfinite(X[-1, b_last])
    live_late = [r for r in rows if r[0] > t0 + 1100]
    np.testing.assert_allclose(np.vstack([r[2] for r in live_late]), X[-len(live_late):],
                               rtol=1e-9, equal_nan=True)


def test_grid_mean_per_cell_and_bounded_carry_forward():
    ticks = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    ts = np.array([1.0, 9.0, 10.0, 12.0])  # cell 10 holds 1, 9, 10; cell 20 holds 12
    values = np.array([1.0, 2.0, 3.0, 10.0])
    grid = grid_values(ts, values, ticks, cadence_s=10, max_gap_s=25)
    # 20 → 10; 30, 20 s after the last reading → carried; 40 → 28 s > 25 → missing
    np.testing.assert_array_equal(grid, [2.0, 10.0, 10.0, np.nan, np.nan, np.nan])


def test_late_readings_are_counted_not_used():
    state = AssetFeatures(SPEC, FeatureBanks(SPEC))
    state.push("a", 100.0, 1.0)
    assert len(state.push("a", 125.0, 2.0)) == 3  # ticks 100, 110, 120 close
    assert state.push("a", 105.0, 99.0) == []
    assert state.late == 1


def test_spec_hash_is_stable_and_changes_with_the_spec():
    assert SPEC.hash == PipelineSpec.from_config(
        PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60)).hash
    assert SPEC.hash != PipelineSpec.from_config(
        PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=61)).hash
    assert len(SPEC.hash) == 16


@pytest.mark.parametrize("sensors", [("b", "a"), ("a", "b")])
def test_feature_names_are_in_canonical_order(sensors):
    names = SPEC.feature_names(sensors)
    assert names[0] == "a__last" and names.index("b__last") == len(names) // 2


def test_cleaning_removes_a_spike_in_both_drivers():
    t0 = 1_700_000_000.0
    ts = t0 + np.arange(0, 600, 1.0)
    values = np.full(len(ts), 20.0) + np.sin(np.arange(len(ts)) / 7.0) * 0.1
    values[300] = 500.0  # one spike inside cell (t0+300-10, t0+300]
    series = {"temp": (ts, values)}
    raw = dataclasses.replace(SPEC, clean=None)
    for spec, spike_seen in ((SPEC, False), (raw, True)):
        names, _ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 590)
        last = X[:, names.index("temp__last")]
        assert (last.max() > 60) == spike_seen, spec.clean
        rows, _ = live_rows(series, spec)
        live_last = np.array([r[2][0] for r in rows])
        np.testing.assert_array_equal(live_last, last[:len(live_last)])
    assert SPEC.hash != raw.hash


def test_differences_stuck_and_missing_in_both_drivers():
    spec = PipelineSpec.from_config(PipelineConfig(
        cadence_s=10, horizon_s=600, max_gap_s=30, differences=(("lube", "ambient"),)))
    t0 = 1_700_000_000.0
    ts = t0 + np.arange(0, 3000, 2.0)
    rng = np.random.default_rng(5)
    lube = 60 + rng.normal(0, 0.5, len(ts))
    lube[(ts > t0 + 2000)] = 61.25  # stuck from t0 + 2000 on
    ambient = 20 + rng.normal(0, 0.5, len(ts))
    keep = (ts < t0 + 1000) | (ts > t0 + 1500)  # ambient drops out for 500 s
    series = {"lube": (ts, lube), "ambient": (ts[keep], ambient[keep])}
    names, ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 2990)
    rows, _ = live_rows(series, spec)
    live = np.vstack([r[2] for r in rows])
    np.testing.assert_allclose(live, X[:len(live)], rtol=1e-9, equal_nan=True)
    col = {n: X[:, i] for i, n in enumerate(names)}
    at = lambda t: int(np.searchsorted(ticks, t0 + t))  # noqa: E731
    assert names[-1] == "diff__lube__ambient"
    assert abs(col["diff__lube__ambient"][at(500)] - 40) < 2
    assert np.isnan(col["diff__lube__ambient"][at(1300)])  # ambient missing → no difference
    assert col["lube__stuck"][at(1900)] == 0 and col["lube__stuck"][at(2990)] == 1
    assert col["ambient__missing"][at(900)] == 0 and col["ambient__missing"][at(1490)] > 0.5
