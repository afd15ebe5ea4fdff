"""Live rows equal batch rows: the same grid, the same kernels (train/serve skew = 0)."""

from __future__ import annotations

import dataclasses
import queue

import numpy as np
import pytest
from appliance.kernels import reference as ref

from appliance import config
from appliance.config import PipelineConfig
from appliance.features.batch import asset_features, grid_values
from appliance.features.live import AssetFeatures, FeatureBanks
from appliance.features.spec import CleanSpec, PipelineSpec, SensorSpec
from appliance.messages import EndOfStream, SeriesKey, StoredReadings
from appliance.stages.base import StopSignals
from appliance.stages.features import FeaturesStage

#: Rows from the first tick on (no warm-up), so the tests can look at a start.
SPEC = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60,
                                               warmup_s=0))


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
    # every feature of b, stuck included, is NaN before b exists: live has no column
    b_cols = [i for i, n in enumerate(names) if n.startswith("b__") and n != "b__missing"]
    assert np.isnan(X[np.ix_(early, b_cols)]).all()
    live_late = [r for r in rows if r[0] > t0 + 1100]
    np.testing.assert_allclose(np.vstack([r[2] for r in live_late]), X[-len(live_late):],
                               rtol=1e-9, equal_nan=True)


def test_grid_mean_per_cell_and_bounded_carry_forward():
    ticks = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    ts = np.array([1.0, 9.0, 10.0, 12.0])  # cell 10 holds 1, 9, 10; cell 20 holds 12
    values = np.array([1.0, 2.0, 3.0, 10.0])
    grid, _ = grid_values(ts, values, ticks, cadence_s=10, max_gap_s=25, gap_intervals=0.0)
    # 20 → 10; 30, 20 s after the last reading → carried; 40 → 28 s > 25 → missing
    np.testing.assert_array_equal(grid, [2.0, 10.0, 10.0, np.nan, np.nan, np.nan])


def test_late_readings_are_counted_not_used():
    state = AssetFeatures(SPEC, FeatureBanks(SPEC))
    state.push("a", 100.0, 1.0)
    assert len(state.push("a", 125.0, 2.0)) == 3  # ticks 100, 110, 120 close
    assert state.push("a", 105.0, 99.0) == []
    assert state.late == 1


def test_assets_with_the_same_sensors_share_one_tuple_of_feature_names():
    banks = FeatureBanks(SPEC)
    rows = []
    for order in (("b", "a"), ("a", "b"), ("a",)):
        state = AssetFeatures(SPEC, banks)
        for sensor in order:
            state.push(sensor, 100.0, 1.0)
        rows.append(state.push(order[0], 125.0, 2.0)[-1][1])
    assert rows[0] is rows[1]  # one object for the whole line, not one per asset
    assert rows[0] == SPEC.feature_names(("a", "b"))
    assert rows[2] == SPEC.feature_names(("a",))


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


@pytest.mark.parametrize("horizon_s", [600.0, 3600.0], ids=["short-windows", "coarse-window"])
def test_change_over_each_window_in_both_drivers(horizon_s):
    # a ramp of 0.01 per second: the change over a window is 0.01 × window once a
    # point that old exists, NaN before
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=horizon_s,
                                                   max_gap_s=30, clean=False, warmup_s=0))
    lag = min(spec.windows_s)
    t0 = 1_700_000_000.0
    ts = t0 + np.arange(0, 9000, 2.0)
    series = {"temp": (ts, 20 + 0.01 * (ts - t0))}
    names, ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 8990)
    rows, _ = live_rows(series, spec)
    live = np.vstack([r[2] for r in rows])
    np.testing.assert_allclose(live, X[:len(live)], rtol=1e-9, equal_nan=True)
    change = X[:, names.index(f"temp__change_{lag:g}s")]
    assert np.isnan(change[ticks - lag < ticks[0]]).all()
    full_cell = ticks - lag >= ticks[1]         # the first cell holds only part of 10 s
    assert full_cell.sum() > 200
    np.testing.assert_allclose(change[full_cell], 0.01 * lag, rtol=1e-6)
    # the long window's change runs on its coarse grid: 0.01 × window all the same
    long = X[:, names.index(f"temp__change_{max(spec.windows_s):g}s")]
    settled = ticks - max(spec.windows_s) >= ticks[0] + 2 * spec.stride(max(spec.windows_s)) * 10
    np.testing.assert_allclose(long[settled], 0.01 * max(spec.windows_s), rtol=1e-6)


def test_an_idle_asset_makes_no_rows_and_starts_afresh_in_both_drivers():
    # a line that stops for a weekend: no rows for the silence, and the first rows
    # after it know nothing of before (a window mean of the new readings alone)
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60,
                                                   idle_gap_s=3600))
    rng = np.random.default_rng(12)
    t0 = 1_700_000_000.0
    before = irregular_series(rng, t0, 3000, 2.0, drop=0.0)
    after = irregular_series(rng, t0 + 3000 + 2 * 86400, 3000, 2.0, drop=0.0)
    series = {"temp": (np.r_[before[0], after[0]], np.r_[before[1], after[1] + 100]),
              "vib": (np.r_[before[0], after[0]], np.r_[before[1], after[1]])}
    names, ticks, X = asset_features(spec, series, before[0][0] - 1e-6, after[0][-1])
    rows, state = live_rows(series, spec)
    assert state.restarts == 1
    assert [r[0] for r in rows] == ticks[:len(rows)].tolist()
    assert len(rows) == len(ticks)
    np.testing.assert_allclose(np.vstack([r[2] for r in rows]), X[:len(rows)], rtol=1e-9,
                               equal_nan=True)
    gap = (ticks > before[0][-1] + 10) & (ticks < after[0][0] - 10)
    assert not gap.any() and len(ticks) < 700          # no rows for two days of silence
    resumed = np.searchsorted(ticks, after[0][0])
    mean = X[:, names.index(f"temp__mean_{min(spec.windows_s):g}s")]
    assert mean[resumed + 2] > 110                     # the old values (~20) are forgotten


def test_one_outage_does_not_stretch_the_carry_limit():
    # 1 Hz, a 30-minute outage, an hour of readings, then the sensor dies: its value
    # is carried max_gap_s (the median interval is still 1 s), not hours
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60))
    t0 = 1_700_000_000.0
    ts = t0 + np.r_[np.arange(0, 3000, 1.0), np.arange(4800, 8400, 1.0)]
    series = {"temp": (ts, 20 + np.sin(ts / 100))}
    names, ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 12000)
    last = X[:, names.index("temp__last")]
    assert np.isnan(last[(ticks > t0 + 3000 + 60 + 10) & (ticks < t0 + 4800)]).all()
    end = ts[-1]
    assert np.isnan(last[ticks > end + 60]).all()
    assert np.isfinite(last[(ticks > end) & (ticks <= end + 60)]).all()


@pytest.mark.parametrize("gap_intervals", [3.0, 0.0])
def test_an_hourly_sensor_is_carried_between_readings_and_not_stuck(gap_intervals):
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=60, horizon_s=3600, warmup_s=0,
                                                   max_gap_intervals=gap_intervals))
    t0 = 1_700_000_000.0
    rng = np.random.default_rng(9)
    hourly = t0 + np.arange(0, 86400, 3600.0) + rng.uniform(0, 60, 24)
    fast = t0 + np.arange(0, 86400, 5.0)
    series = {"level": (hourly, np.round(rng.normal(5, 1, 24), 1)),
              "speed": (fast, np.full(len(fast), 1500.0))}      # a fast sensor, stuck
    names, ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 86340)
    rows, _ = live_rows(series, spec)
    # rows once "level" has joined, at the ticks batch computed
    both = [r for r in rows if r[1] == names and r[0] <= ticks[-1]]
    assert len(both) > 1400
    at = np.searchsorted(ticks, [r[0] for r in both])
    np.testing.assert_allclose(np.vstack([r[2] for r in both]), X[at], rtol=1e-9,
                               equal_nan=True)
    col = {n: X[:, i] for i, n in enumerate(names)}
    later = ticks > t0 + 7200         # after the second reading: an interval is known
    missing_share = np.isnan(col["level__last"][later]).mean()
    if gap_intervals:
        assert missing_share == 0.0   # carried up to 3 hours
    else:
        assert missing_share > 0.9    # max_gap_s (300 s) alone: missing most of each hour
    assert (col["level__stuck"][ticks >= hourly[0]] == 0).all()
    assert col["speed__stuck"][ticks > t0 + 3700].min() == 1.0


# --- per-sensor settings: validity and overrides -------------------------------

def sensors_spec(**sensors: config.SensorConfig) -> PipelineSpec:
    return PipelineSpec.from_config(PipelineConfig(
        cadence_s=10, horizon_s=600, max_gap_s=60, warmup_s=0,
        sensors=tuple(sensors.items())))


#: temp: range and rate limits, its own Hampel; vib: a range, no cleaning, a short
#: gap; other: nobody configured it.
CONFIGURED = sensors_spec(
    temp=config.SensorConfig(valid_min=0.0, valid_max=100.0, max_rate_per_s=0.5,
                             hampel_window_s=60.0, hampel_k=2.5),
    vib=config.SensorConfig(valid_max=30.0, clean=False, max_gap_s=15.0))


def violating_series(rng: np.random.Generator, t0: float) -> dict:
    series = {"temp": irregular_series(rng, t0, 9000, 1.3),
              "vib": irregular_series(rng, t0 + 1, 9000, 7.0),
              "other": irregular_series(rng, t0 + 2, 9000, 3.0)}
    ts, temp = series["temp"]
    hit = rng.choice(len(temp), 200, replace=False)
    temp[hit[:80]] = rng.choice([-5.0, 150.0], 80)  # out of range
    temp[hit[80:]] += rng.choice([-1.0, 1.0], 120) * rng.uniform(3, 20, 120)  # too fast
    temp[(ts > t0 + 4000) & (ts < t0 + 4400)] = 500.0  # a stretch with nothing valid
    _, vib = series["vib"]
    vib[rng.random(len(vib)) < 0.05] = 31.0
    return series


@pytest.mark.parametrize("spec", [CONFIGURED,
                                  dataclasses.replace(CONFIGURED, windows_s=(100.0, 3600.0))],
                         ids=["short-windows", "coarse-window"])
def test_live_rows_equal_batch_rows_with_sensor_settings(spec):
    rng = np.random.default_rng(20260102)
    t0 = 1_700_000_003.7
    series = violating_series(rng, t0)
    rows, state = live_rows(series, spec)
    first = min(ts[0] for ts, _ in series.values())
    names, ticks, X = asset_features(spec, series, first - 1e-6, rows[-1][0])
    assert [r[0] for r in rows] == ticks.tolist()
    full = [i for i, r in enumerate(rows) if r[1] == names]
    np.testing.assert_allclose(np.vstack([rows[i][2] for i in full]), X[full],
                               rtol=1e-9, atol=1e-12, equal_nan=True)
    # The count is the NumPy reference's verdict, not the kernel's own.
    want = sum(int((ref.ref_validity(ts, vs, s.valid_min, s.valid_max, s.max_rate_per_s)
                    == 0).sum())
               for s, (ts, vs) in ((spec.sensor(n), series[n]) for n in series))
    assert state.invalid == want and state.late == 0
    assert want > 250  # the injected faults (and NaN) plus the 400 s stretch


def test_invalid_readings_are_left_out_of_the_features():
    t0 = 1_700_000_000.0
    ts = t0 + np.arange(0, 900, 1.0)
    values = np.full(len(ts), 20.0)
    values[(ts > t0 + 300) & (ts <= t0 + 400)] = 500.0  # 100 s out of range
    series = {"temp": (ts, values)}
    limited = sensors_spec(temp=config.SensorConfig(valid_max=100.0, clean=False,
                                                    max_gap_s=25.0))
    unlimited = sensors_spec(temp=config.SensorConfig(clean=False, max_gap_s=25.0))
    for spec, spike_seen in ((limited, False), (unlimited, True)):
        names, ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 890)
        last = X[:, names.index("temp__last")]
        at = (ticks > t0 + 300) & (ticks <= t0 + 400)
        assert (last[at] == 500.0).all() == spike_seen
        if not spike_seen:
            # Carried 25 s from the last valid reading, then missing until valid again.
            assert (last[at & (ticks <= t0 + 325)] == 20.0).all()
            assert np.isnan(last[at & (ticks > t0 + 325)]).all()
        assert (last[ticks > t0 + 410] == 20.0).all()
        rows, state = live_rows(series, spec)
        np.testing.assert_array_equal(np.array([r[2][0] for r in rows]), last[:len(rows)])
        assert state.invalid == (0 if spike_seen else 100)


def test_a_sensor_sending_only_invalid_readings_is_present_and_missing():
    t0 = 1_700_000_000.0
    ts = t0 + np.arange(0, 600, 1.0)
    series = {"a": (ts, np.full(len(ts), 1.0)), "b": (ts, np.full(len(ts), -1.0))}
    spec = sensors_spec(b=config.SensorConfig(valid_min=0.0, valid_max=10.0))
    names, _ticks, X = asset_features(spec, series, t0 - 1e-6, t0 + 590)
    rows, state = live_rows(series, spec)
    assert rows[-1][1] == names and "b__missing" in names
    assert np.isnan(X[:, names.index("b__last")]).all()
    assert X[-1, names.index("b__missing")] == pytest.approx(1.0)
    assert state.invalid == len(ts)
    np.testing.assert_allclose(rows[-1][2], X[len(rows) - 1], rtol=1e-9, equal_nan=True)


def test_an_unconfigured_sensor_gets_the_pipeline_defaults():
    assert CONFIGURED.sensor("pressure") == SensorSpec(max_gap_s=60.0, max_gap_intervals=3.0,
                                                       clean=CONFIGURED.clean)
    assert CONFIGURED.sensor("temp") != CONFIGURED.sensor("pressure")
    temp = CONFIGURED.sensor("temp")
    assert (temp.valid_min, temp.valid_max, temp.max_rate_per_s) == (0.0, 100.0, 0.5)
    assert temp.clean == CleanSpec(60.0, 2.5) and temp.max_gap_s == 60.0
    assert CONFIGURED.sensor("vib").clean is None and CONFIGURED.sensor("vib").max_gap_s == 15
    # An unconfigured sensor's features are those of a spec with no sensors configured,
    # its wild values (no limits) included.
    rng = np.random.default_rng(11)
    ts, values = irregular_series(rng, 1_700_000_000.0, 3000, 2.0)
    values[::50] = 1e6
    series = {"pressure": (ts, values)}
    plain = dataclasses.replace(CONFIGURED, sensors=())
    _, _, want = asset_features(plain, series, ts[0] - 1e-6, ts[-1])
    _, _, got = asset_features(CONFIGURED, series, ts[0] - 1e-6, ts[-1])
    np.testing.assert_array_equal(got, want)
    assert np.nanmax(want[:, 0]) > 1000  # the wild values were used, not judged invalid


def test_sensor_settings_enter_the_hash_only_when_they_change_something():
    plain = PipelineSpec.from_config(PipelineConfig())
    assert PipelineSpec.from_config(PipelineConfig(sensors=(
        ("temp", config.SensorConfig()),
        ("vib", config.SensorConfig(clean=True, max_gap_s=300.0, hampel_k=3.0)),
    ))).hash == plain.hash
    changed = [config.SensorConfig(valid_min=-1.0), config.SensorConfig(valid_max=1.0),
               config.SensorConfig(max_rate_per_s=1.0), config.SensorConfig(hampel_k=2.0),
               config.SensorConfig(hampel_window_s=60.0), config.SensorConfig(clean=False),
               config.SensorConfig(max_gap_s=30.0)]
    hashes = {PipelineSpec.from_config(PipelineConfig(sensors=(("temp", s),))).hash
              for s in changed}
    assert len(hashes) == len(changed) and plain.hash not in hashes
    # The same settings under another sensor name are another spec.
    assert PipelineSpec.from_config(PipelineConfig(sensors=(("vib", changed[0]),))).hash \
        not in hashes
    # File order does not matter: the spec sorts sensors by name.
    a, b = ("a", changed[0]), ("b", changed[1])
    assert PipelineSpec.from_config(PipelineConfig(sensors=(a, b))) == \
        PipelineSpec.from_config(PipelineConfig(sensors=(b, a)))


def test_features_stage_reports_invalid_and_late_readings():
    cfg = config.from_dict({"pipeline": {"sensors": {"temp": {"valid_max": 100.0}}}})
    inbox: queue.Queue = queue.Queue()
    out: queue.Queue = queue.Queue()
    stage = FeaturesStage(cfg, inbox, out)
    keys = (SeriesKey("l1", "a1", "temp"), SeriesKey("l1", "a2", "temp"),
            SeriesKey("l1", "a1", "temp"), SeriesKey("l1", "a2", "vib"),
            SeriesKey("l1", "a2", "temp"), SeriesKey("l1", "a1", "temp"))
    # a1: 20, 500 (out of range), then a late reading; a2: 101 (out of range), vib 500
    # (no limits), 30.
    inbox.put(StoredReadings(keys, np.array([10.0, 11.0, 12.0, 13.0, 14.0, 25.0]),
                             np.array([20.0, 101.0, 500.0, 500.0, 30.0, 1.0])))
    inbox.put(StoredReadings(keys[:1], np.array([5.0]), np.array([20.0])))
    inbox.put(EndOfStream())
    stage.run(StopSignals())
    # a1's tick 10 and 20 closed in its warm-up: counted, no rows for predict
    assert stage.counters.extra == {"invalid_readings": 2, "late_readings": 1,
                                    "stuck_sensors": 0, "idle_restarts": 0,
                                    "warmup_ticks": 2}
    assert [type(m) for m in out.queue] == [EndOfStream]


def test_features_stage_reports_a_stuck_sensor_and_its_recovery(caplog):
    cfg = config.from_dict({"pipeline": {"cadence_s": 10, "horizon_s": 600}})
    inbox: queue.Queue = queue.Queue()
    stage = FeaturesStage(cfg, inbox, queue.Queue())
    t0 = 1_700_000_000.0
    rng = np.random.default_rng(3)

    def send(start: float, end: float, temp: np.ndarray | None = None) -> None:
        ts = np.arange(start, end, 5.0) + t0
        temp = rng.normal(50, 1, len(ts)) if temp is None else temp
        keys = tuple(SeriesKey("l1", "a1", s) for _ in ts for s in ("temp", "vib"))
        values = np.column_stack([temp, rng.normal(3, 1, len(ts))]).ravel()
        inbox.put(StoredReadings(keys, np.repeat(ts, 2), values))

    send(0, 200)
    send(200, 1200, np.full(200, 42.0))          # temp repeats one value for 1000 s
    with caplog.at_level("INFO", logger="appliance.stages.features"):
        stage.handle(inbox.get())
        stage.handle(inbox.get())
        assert stage.counters.extra["stuck_sensors"] == 1
        assert "sensor l1/a1/temp is stuck: no change over 100 s" in caplog.text
        send(1200, 1400)
        stage.handle(inbox.get())
    assert stage.counters.extra["stuck_sensors"] == 0
    assert "sensor l1/a1/temp is no longer stuck" in caplog.text
    assert "vib" not in caplog.text


def test_an_asset_has_rows_only_from_its_first_reading_to_its_last():
    # the history spans a month; this asset has an hour of it
    rng = np.random.default_rng(21)
    t0 = 1_700_000_000.0
    series = {"temp": irregular_series(rng, t0 + 10 * 86400, 3600, 2.0, drop=0.0)}
    _names, ticks, _X = asset_features(SPEC, series, t0, t0 + 30 * 86400)
    ts = series["temp"][0]
    assert ticks[0] == SPEC.tick_index(ts[0]) * 10 and ticks[-1] == SPEC.tick_index(ts[-1]) * 10
    assert len(ticks) == SPEC.tick_index(ts[-1]) - SPEC.tick_index(ts[0]) + 1


def short_runs(rng: np.random.Generator, t0: float, runs: int, run_s: float, days: float
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``runs`` runs of ``run_s`` seconds at 1 Hz, spread evenly over ``days``."""
    starts = t0 + np.linspace(0, days * 86400, runs, endpoint=False)
    ts = np.concatenate([s + np.arange(0.0, run_s) for s in starts])
    return {"flow": (ts, 5 + rng.normal(0, 0.1, len(ts))),
            "pressure": (ts + 0.5, 2 + rng.normal(0, 0.1, len(ts)))}


def test_short_runs_spread_over_a_month_make_rows_for_their_data_alone():
    # a pump testbed: 35 twenty-minute runs at 1 Hz over 30 days (idle gaps between)
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=300))
    assert spec.warmup_s == max(spec.windows_s) + 10 == 310
    series = short_runs(np.random.default_rng(3), 1_700_000_000.0, 35, 1200.0, 30)
    every = np.concatenate([ts for ts, _ in series.values()])
    _names, ticks, X = asset_features(spec, series, every.min() - 1, every.max())
    # each run: ~121 ticks of data, less 31 of warm-up; a month would be 259,200
    assert 35 * 88 <= len(ticks) <= 35 * 92
    rows, state = live_rows(series, spec)
    assert state.restarts == 34 and state.warmup == 35 * 31
    assert [r[0] for r in rows] == ticks[:len(rows)].tolist() and len(rows) >= len(ticks) - 1
    np.testing.assert_allclose(np.vstack([r[2] for r in rows]), X[:len(rows)], rtol=1e-9,
                               equal_nan=True)


@pytest.mark.parametrize("spec", [
    PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60)),
    LONG], ids=["short-windows", "coarse-window"])
def test_no_row_of_a_healthy_asset_shows_a_window_still_filling(spec):
    # a start, an idle gap and a fresh start: every row after a warm-up holds every
    # feature, so nothing in a row tells the time since a start
    idle = dataclasses.replace(spec, idle_gap_s=3600.0)
    rng = np.random.default_rng(8)
    t0 = 1_700_000_000.0
    span = 3 * max(spec.windows_s)
    a = irregular_series(rng, t0, span, 1.5, drop=0.0)
    b = irregular_series(rng, t0 + span + 86400, span, 1.5, drop=0.0)
    series = {"temp": (np.r_[a[0], b[0]], np.r_[a[1], b[1]])}
    _names, ticks, X = asset_features(idle, series, t0 - 1, b[0][-1])
    rows, state = live_rows(series, idle)
    assert state.restarts == 1 and state.warmup == 2 * idle.warmup_ticks
    assert [r[0] for r in rows] == ticks[:len(rows)].tolist()
    # the first row of each stretch is the first tick after its warm-up
    starts = [idle.tick_index(a[0][0]), idle.tick_index(b[0][0])]
    for k0 in starts:
        assert (k0 + idle.warmup_ticks) * 10 in ticks
        assert not np.any((ticks >= k0 * 10) & (ticks < (k0 + idle.warmup_ticks) * 10))
    assert np.isfinite(X).all()
    no_warmup = dataclasses.replace(idle, warmup_s=0.0)
    _, _, cold = asset_features(no_warmup, series, t0 - 1, b[0][-1])
    assert np.isnan(cold).any(axis=1).sum() > 10  # what the warm-up keeps out


@pytest.mark.parametrize("cadence_s,horizon_s", [(10.0, 3600.0), (7.0, 5000.0),
                                                 (13.0, 7777.0)])
def test_the_warm_up_fills_every_window_whatever_the_phase_of_the_start(cadence_s, horizon_s):
    # long windows run on coarse cells aligned to the grid, not to the start, and a
    # window need not be a whole number of cells: the first row must still be full
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=cadence_s, horizon_s=horizon_s,
                                                   max_gap_s=60))
    for phase in np.linspace(0.0, 400.0, 9):
        t0 = 1_700_000_000.0 + phase
        ts = t0 + np.arange(0.0, 2.5 * horizon_s, 2.0)
        values = np.random.default_rng(int(phase)).normal(0.0, 1.0, len(ts))
        _names, _ticks, X = asset_features(spec, {"a": (ts, values)}, t0 - 1, ts[-1])
        assert len(X) and np.isfinite(X).all(), f"phase {phase}"


def test_the_stage_makes_every_assets_rows_in_one_pass_as_each_asset_alone():
    """The stage closes the ticks of all assets together (``FeatureBanks.flush``); its
    rows equal each asset's own, across sensor sets, a fresh start after a silence
    (with a sensor that comes back only later) and batches that cut ticks anywhere."""
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=3600,
                                                   max_gap_s=60, warmup_s=0,
                                                   idle_gap_s=900))
    cfg = config.from_dict({"pipeline": {"cadence_s": 10, "horizon_s": 3600, "max_gap_s": 60,
                                         "warmup_s": 0, "idle_gap_s": 900}})
    rng = np.random.default_rng(11)
    t0 = 1_700_000_001.0
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "a1": {"temp": irregular_series(rng, t0, 7200, 3.0),
               "vib": irregular_series(rng, t0 + 5, 7200, 4.0)},
        "a2": {"temp": irregular_series(rng, t0 + 2, 7200, 2.5)},   # another sensor set
        "a3": {"temp": irregular_series(rng, t0, 7200, 3.0),
               "vib": irregular_series(rng, t0 + 1, 7200, 5.0)},
    }
    # a3 falls silent for 30 min (a fresh start), and its vib comes back 10 min after temp
    for sensor, gap_end in (("temp", t0 + 4000), ("vib", t0 + 4600)):
        ts, vs = series["a3"][sensor]
        keep = (ts < t0 + 2200) | (ts > gap_end)
        series["a3"][sensor] = (ts[keep], vs[keep])
    events = sorted((t, a, s, v) for a, by_sensor in series.items()
                    for s, (ts, vs) in by_sensor.items() for t, v in zip(ts, vs, strict=True))
    alone: dict[tuple[float, str], np.ndarray] = {}
    names_of: dict[str, tuple[str, ...]] = {}
    for asset in series:
        state = AssetFeatures(spec, FeatureBanks(spec))
        for t, a, s, v in events:
            if a == asset:
                for tick, names, row in state.push(s, t, v):
                    alone[(tick, asset)] = row
                    names_of[(tick, asset)] = names
    assert state.restarts == 1  # a3, the last one
    stage = FeaturesStage(cfg, queue.Queue(), queue.Queue())
    together: dict[tuple[float, str], np.ndarray] = {}
    cuts = np.sort(rng.choice(len(events), 300, replace=False))
    for part in np.split(np.arange(len(events)), cuts):
        chunk = [events[i] for i in part]
        if not chunk:
            continue
        batch = StoredReadings(tuple(SeriesKey("l1", a, s) for _t, a, s, _v in chunk),
                               np.array([e[0] for e in chunk]),
                               np.array([e[3] for e in chunk]))
        for rows in stage.handle(batch):
            for i, asset in enumerate(rows.assets):
                assert rows.names == names_of[(rows.tick, asset)]
                together[(rows.tick, asset)] = rows.values[i]
    assert together.keys() == alone.keys() and len(together) > 1500
    for key, row in alone.items():
        np.testing.assert_array_equal(together[key], row.astype(np.float32), err_msg=str(key))
    assert stage.counters.extra["idle_restarts"] == 1


def test_push_returns_its_assets_rows_and_leaves_the_others_for_the_next_flush():
    banks = FeatureBanks(SPEC)
    a, b = AssetFeatures(SPEC, banks, "a"), AssetFeatures(SPEC, banks, "b")
    b.add("x", 100.0, 1.0)
    a.push("x", 100.0, 1.0)
    b.add("x", 125.0, 2.0)            # closes b's ticks 100, 110, 120: not flushed yet
    got = a.push("x", 125.0, 2.0)     # flushes a's and b's
    assert [tick for tick, _n, _r in got] == [100.0, 110.0, 120.0]
    left = banks.flush()
    assert [(r.tick, [x.key for x in r.assets]) for r in left] == [
        (100.0, ["b"]), (110.0, ["b"]), (120.0, ["b"])]
    np.testing.assert_array_equal(np.vstack([r.values for r in left]),
                                  np.vstack([row for _t, _n, row in got]))
