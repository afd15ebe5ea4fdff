"""Replay: readings stored in a DuckDB file, read back, and pushed one by one through
the live driver give the batch driver's feature rows for the same readings.

The readings go through the store's own code (``storage.tables``) into a real
file; batch reads them back as training does (``history.load_histories``), live
in event-time order as the service sees them.  Per-sensor validity limits and
overrides are configured, and some stored readings break them.
"""

from __future__ import annotations

import numpy as np
import pytest
from appliance.kernels import reference as ref

from appliance import config
from appliance.devtools import simulator
from appliance.features.batch import asset_features
from appliance.features.live import AssetFeatures, FeatureBanks
from appliance.features.spec import PipelineSpec
from appliance.messages import SeriesKey
from appliance.storage import database, history, tables
from appliance.storage.database import connect
from appliance.timefmt import to_us

ASSETS = 3
HZ = 0.2  # one reading per sensor per 5 s: a day is ~86,000 readings per asset

CFG = config.from_dict({"pipeline": {"sensors": {
    # The simulated lube temperature jumps up to ~5 °C/s at times; 1 °C/s rejects those.
    "lube_temp": {"valid_min": 0.0, "valid_max": 80.0, "max_rate_per_s": 1.0,
                  "hampel_window_s": 300.0, "hampel_k": 4.0},
    # The simulated oil pressure dips below 0 at times: invalid for a pressure gauge.
    "oil_pressure": {"valid_min": 0.0, "valid_max": 10.0, "clean": False,
                     "max_gap_s": 60.0},
}}})


def store_a_day(path) -> None:
    day = simulator.simulate_history(1, ASSETS, HZ, seed=41)
    rng = np.random.default_rng(41)
    con, _ = connect(path)
    registry = tables.SeriesRegistry(con)
    for asset in day.assets:
        series = day.series(asset)
        ts, lube = series["lube_temp"]
        lube[rng.choice(len(lube), 30, replace=False)] = 250.0  # a glitching transmitter
        keys = [SeriesKey(day.line, asset, s) for s, (t, _) in series.items() for _ in t]
        ts = np.concatenate([t for t, _ in series.values()])
        values = np.concatenate([v for _, v in series.values()])
        con.execute("BEGIN")
        tables.insert_readings(con, registry.ids(con, keys), to_us(ts), values)
        con.execute("COMMIT")
    con.close()


@pytest.mark.slow
def test_live_replay_of_a_stored_day_equals_batch(tmp_path):
    path = tmp_path / "appliance.duckdb"
    store_a_day(path)
    spec = PipelineSpec.from_config(CFG.pipeline)
    con = database.open_offline(path, read_only=True)
    stored = history.load_histories(con)
    replay = con.execute("SELECT asset, sensor, epoch_us(ts) AS t, value FROM readings "
                         "ORDER BY ts, asset, sensor").fetchall()
    con.close()
    assert len(stored.histories) == ASSETS and stored.readings == len(replay)

    banks = FeatureBanks(spec)
    live = {h.asset: AssetFeatures(spec, banks) for h in stored.histories}
    rows: dict[str, list] = {a: [] for a in live}
    for asset, sensor, t_us, value in replay:
        # The same float seconds load_histories computes from epoch_us.
        rows[asset].extend(live[asset].push(sensor, float(np.float64(t_us) / 1e6), value))

    for h in stored.histories:
        state, got = live[h.asset], rows[h.asset]
        assert state.late == 0
        want_invalid = sum(int((ref.ref_validity(ts, v, s.valid_min, s.valid_max,
                                                 s.max_rate_per_s) == 0).sum())
                           for s, (ts, v) in ((spec.sensor(n), h.series[n]) for n in h.series))
        assert state.invalid == want_invalid >= 30, h.asset  # at least the injected ones
        first = min(ts[0] for ts, _ in h.series.values())
        names, ticks, X = asset_features(spec, h.series, first - 1e-6, got[-1][0])
        assert len(got) > 8000
        assert [tick for tick, _, _ in got] == ticks.tolist(), h.asset
        for i, (tick, live_names, row) in enumerate(got):
            # Before a sensor's first reading live has no columns for it; batch has NaN.
            cols = [names.index(n) for n in live_names]
            others = np.setdiff1d(np.arange(len(names)), cols)
            assert np.isnan(X[i, others]).all(), (h.asset, tick)
            np.testing.assert_allclose(row, X[i, cols], rtol=1e-9, atol=1e-12,
                                       equal_nan=True, err_msg=f"{h.asset} tick {tick}")
        assert got[-1][1] == names
        assert np.isfinite(X[-1]).sum() > len(names) // 2


def test_readings_at_one_timestamp_come_back_in_the_order_they_were_stored(tmp_path):
    # validity with a rate limit keeps the first of two readings at one timestamp,
    # as live does in arrival order: training must read them back in that order
    key = SeriesKey("l1", "a1", "temp")
    for order in ([10.0, 50.0, 30.0], [50.0, 30.0, 10.0]):
        path = tmp_path / f"{order[0]:g}.duckdb"
        con, _ = connect(path)
        registry = tables.SeriesRegistry(con)
        ts = np.array([1.7e9, 1.7e9 + 5, 1.7e9 + 5, 1.7e9 + 5, 1.7e9 + 10])
        values = np.array([20.0, *order, 21.0])
        con.execute("BEGIN")
        tables.insert_readings(con, registry.ids(con, [key] * 5), to_us(ts), values)
        con.execute("COMMIT")
        con.close()
        con = database.open_offline(path, read_only=True)
        (h,) = history.load_histories(con).histories
        con.close()
        np.testing.assert_array_equal(h.series["temp"][1], [20.0, *order, 21.0])
