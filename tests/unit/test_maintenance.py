"""The maintenance stage on real DuckDB files: retention, thinning, the disk budget and
checkpoints, with time driven by a manual clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from appliance.clock import ManualClock
from appliance.config import Config, ConfigError, StorageConfig, from_dict
from appliance.messages import DeadLetter, Prediction
from appliance.service.status import health_document, text
from appliance.stages import maintenance
from appliance.stages.maintenance import MaintenanceStage
from appliance.storage import tables
from appliance.storage.database import connect

DAY = 86400.0
T0 = 1_750_000_000.0


def _stage(tmp_path: Path, clock: ManualClock | None = None, **storage: object
           ) -> tuple[MaintenanceStage, object]:
    path = tmp_path / "m.duckdb"
    cfg = Config(storage=StorageConfig(path=str(path), **storage))
    db, _report = connect(path, "64MB")
    stage = MaintenanceStage(cfg, db, path)
    stage.use_clock(clock or ManualClock(T0 + 200 * DAY))
    stage.start()
    return stage, db


def _readings(db, ts: np.ndarray, series: int = 2, values: np.ndarray | None = None) -> None:
    sid = np.tile(np.arange(series, dtype=np.int32), len(ts))
    ts_us = np.repeat((ts * 1e6).astype(np.int64), series)
    v = values if values is not None else np.ones(len(ts_us))
    con = db.cursor()
    con.execute("INSERT INTO series SELECT range, 'l1', 'a' || range, 's' FROM range(?)",
                [series])
    tables.insert_readings(con, sid, ts_us, v)
    con.close()


def _drain(stage: MaintenanceStage, limit: int = 10_000) -> int:
    for n in range(limit):
        if not stage.maintain():
            return n + 1
    raise AssertionError("maintenance never caught up")


def _one(db, sql: str, *args: object):
    return db.execute(sql, list(args)).fetchone()


def test_readings_past_keep_days_are_deleted_in_slices_and_newer_ones_kept(tmp_path):
    stage, db = _stage(tmp_path, keep_readings_days=90.0)
    ts = T0 + np.arange(0, 120 * DAY, 600.0)  # 120 days, a reading per 10 min
    _readings(db, ts)
    newest = ts[-1]
    passes = _drain(stage)
    oldest, n = _one(db, "SELECT epoch(min(ts)), count(*) FROM readings_raw")
    assert oldest >= newest - 90 * DAY
    assert n == 2 * int((ts >= newest - 90 * DAY).sum())
    assert passes > 1  # in slices, not one long transaction
    assert stage.counters.extra["readings_deleted"] == 2 * int((ts < newest - 90 * DAY).sum())


def test_dead_letters_are_kept_for_their_days_by_the_wall_clock(tmp_path):
    clock = ManualClock(T0)
    stage, db = _stage(tmp_path, clock, keep_dead_letters_days=30.0)  # and no readings
    con = db.cursor()
    tables.insert_dead_letters(con, [DeadLetter(T0 - d * DAY, "plant/x", b"?", "bad")
                                     for d in (40, 31, 29, 1)])
    stage.maintain()
    kept = sorted(r[0] for r in db.execute(
        "SELECT round((? - epoch(received_at)) / 86400) FROM dead_letters", [T0]).fetchall())
    assert kept == [1, 29]


def _predictions(db, assets: tuple[str, ...], start: float, end: float, step: float,
                 proba) -> None:
    con = db.cursor()
    ticks = np.arange(start, end, step)
    tables.insert_predictions(con, [Prediction("l1", a, float(t), float(proba(a, t)), 0.5,
                                               "m1")
                                    for a in assets for t in ticks])


@pytest.mark.parametrize("thin_rows", [maintenance.THIN_ROWS, 500])
def test_predictions_are_thinned_except_near_alerts_faults_and_high_probabilities(
        tmp_path, monkeypatch, thin_rows):
    monkeypatch.setattr(maintenance, "THIN_ROWS", thin_rows)  # 500: slices of < 2 h
    stage, db = _stage(tmp_path)  # thin after 30 days, one per 600 s, horizon 1 h
    start, end = T0, T0 + 34 * DAY
    alert_at, fault_at, high_at = T0 + 1 * DAY, T0 + 2 * DAY, T0 + 3 * DAY

    def proba(asset: str, t: float) -> float:
        if asset == "a" and high_at <= t < high_at + 1800:
            return 0.45  # above threshold × clear_ratio (0.4): an alarm may be up
        return 0.01 + 0.001 * ((t // 10) % 7)  # a max per bucket to find

    _predictions(db, ("a", "b"), start, end, 10.0, proba)
    _readings(db, np.array([end]))
    con = db.cursor()
    con.execute("INSERT INTO alerts VALUES (to_timestamp(?), 'l1', 'a', 'raised', 0.6, 0.5, "
                "3600, 'm1', '[]', 'champion', '[]')", [alert_at])
    con.execute("INSERT INTO faults VALUES (to_timestamp(?), 'l1', 'b', 'start', 'X', 'mqtt')",
                [fault_at])
    before = {r[0]: r[1] for r in db.execute(
        "SELECT asset, count(*) FROM predictions GROUP BY asset").fetchall()}
    passes = _drain(stage)
    # 4 days to thin: 6 h slices, or slices of at most 500 rows (40 min of 2 assets)
    assert (passes >= 4 * 36) if thin_rows == 500 else (passes <= 4 * 4 + 2), passes
    thin_to = (end - 30 * DAY) // 600 * 600  # buckets are whole multiples of 600 s
    rows = db.execute("SELECT asset, epoch(ts), probability FROM predictions "
                      "ORDER BY asset, ts").fetchall()
    by = {a: [(t, p) for aa, t, p in rows if aa == a] for a in ("a", "b")}

    def count(asset: str, lo: float, hi: float) -> int:
        return sum(lo <= t < hi for t, _p in by[asset])

    # whole: after the thinning boundary, within a horizon of the alert / fault, high
    assert count("a", thin_to, end) == count("b", thin_to, end) == int((end - thin_to) / 10)
    assert count("a", alert_at - 3600, alert_at + 3600 + 1) == 721
    assert count("b", fault_at - 3600, fault_at + 3600 + 1) == 721
    assert count("a", high_at, high_at + 1800) == 180
    # elsewhere one per 600 s bucket, the highest of it
    for asset in ("a", "b"):
        far = [(t, p) for t, p in by[asset] if t < thin_to and abs(t - alert_at) > 3600
               and abs(t - fault_at) > 3600 and not high_at <= t < high_at + 1800]
        buckets = {}
        for t, p in far:
            buckets.setdefault(t // 600, []).append(p)
        assert all(len(v) == 1 for v in buckets.values())
        assert all(v == [0.016] for v in buckets.values()), set(map(tuple, buckets.values()))
    thinned = stage.counters.extra["predictions_thinned"]
    assert thinned == sum(before.values()) - len(rows) > 0
    assert _drain(stage) == 1 and _one(db, "SELECT count(*) FROM predictions")[0] == len(rows)


def test_at_the_disk_budget_the_oldest_readings_go_early_down_to_the_floor(tmp_path):
    rng = np.random.default_rng(3)
    stage, db = _stage(tmp_path, max_disk_mb=6, keep_readings_days=90.0,
                       min_keep_readings_days=3.0)
    ts = T0 + np.arange(0, 20 * DAY, 2.0)  # random values: ~16 bytes a reading
    _readings(db, ts, series=1, values=rng.normal(size=len(ts)))
    db.execute("CHECKPOINT")
    assert stage.measure().fraction > 0.9
    _drain(stage)
    disk = stage.measure()
    assert disk.fraction < 0.9
    oldest, newest = _one(db, "SELECT epoch(min(ts)), epoch(max(ts)) FROM readings_raw")
    assert newest == ts[-1] and oldest > ts[0]
    assert stage.counters.extra["readings_deleted_early"] > 0
    entry = stage.status()
    assert "problem" not in entry and entry["disk"]["budget_mb"] == 6.0


def test_a_budget_the_floor_cannot_meet_degrades_the_status_and_keeps_the_readings(tmp_path):
    rng = np.random.default_rng(4)
    stage, db = _stage(tmp_path, max_disk_mb=3, keep_readings_days=90.0,
                       min_keep_readings_days=30.0)
    ts = T0 + np.arange(0, 2 * DAY, 0.5)  # all within the floor
    _readings(db, ts, series=1, values=rng.normal(size=len(ts)))
    db.execute("CHECKPOINT")
    _drain(stage)
    assert _one(db, "SELECT count(*) FROM readings_raw")[0] == len(ts)
    entry = stage.status()
    assert "grows past the budget" in entry["problem"], entry
    doc = health_document({"ts": 1.0, "disk": entry["disk"], "stages": {"maintenance": entry}})
    assert doc is not None and doc["state"] == "critical" and "MB" in doc["message"]


def test_the_status_warns_from_80_percent_naming_the_figures(tmp_path):
    stage, db = _stage(tmp_path, max_disk_mb=64)
    _readings(db, np.array([T0]))
    stage.maintain()
    used = stage.measure().used
    stage._budget = int(used / 0.85)  # the same file against a smaller budget
    stage.maintain()
    entry = stage.status()
    assert entry["disk"]["state"] == "warning" and "problem" not in entry
    assert "at 90 % the oldest readings are deleted early" in entry["note"]
    doc = health_document({"ts": 1.0, "disk": entry["disk"], "stages": {"maintenance": entry}})
    assert doc is not None and doc["state"] == "warning"
    assert f"{entry['disk']['budget_mb']:,.0f} MB budget" in doc["message"]
    snap = {"state": "running", "version": "0", "model": None, "mqtt_connected": True,
            "problems": [], "notes": [entry["note"]], "disk": entry["disk"], "queues": {},
            "stages": {"maintenance": {**entry, "state": "running", "restarts": 0,
                                       "last_error": ""}}}
    shown = text(snap, 1.0, 5.0)
    assert f"of {entry['disk']['budget_mb']:,.0f} MB (85 %, warning; [storage] max_disk_mb)" \
        in shown, shown


def test_checkpoints_come_when_the_clock_says_and_the_log_limit_is_set(tmp_path):
    clock = ManualClock(T0)
    stage, db = _stage(tmp_path, clock, checkpoint_every_s=30.0, checkpoint_wal_mb=0.5)
    assert _one(db, "SELECT current_setting('checkpoint_threshold')")[0] == "512.0 KiB"
    wal = tmp_path / "m.duckdb.wal"
    stage.tick()  # the first pass; no checkpoint due yet
    _readings(db, T0 + np.arange(1000.0))
    assert wal.stat().st_size > 0
    clock.advance(29.0)
    stage.tick()
    assert wal.stat().st_size > 0 and "checkpoints" not in stage.counters.extra
    clock.advance(1.0)
    stage.tick()
    assert stage.counters.extra["checkpoints"] == 1
    assert not wal.exists() or wal.stat().st_size == 0
    assert stage.status()["last_checkpoint_at"] == clock.time()


def _cfg(**storage: object) -> dict:
    return {"storage": storage}


@pytest.mark.parametrize(("raw", "message"), [
    (_cfg(keep_readings_days=30.0), "keep_readings_days (30) is shorter than"),
    (_cfg(keep_readings_days=90.0, min_keep_readings_days=90.0), "min_keep_readings_days"),
    (_cfg(thin_predictions_after_days=7.0), "thin_predictions_after_days (7) must be at least"),
    (_cfg(keep_predictions_days=10.0), "keep_predictions_days (10) must be 0"),
    (_cfg(max_disk_mb=10), "max_disk_mb: expected 0"),
    ({"storage": {"thin_predictions_after_days": 40.0},
      "retrain": {"probation_days": 45.0}}, "must be at least 45"),
])
def test_storage_settings_are_checked_at_load(raw, message):
    with pytest.raises(ConfigError, match=r"cfg\.toml: \[storage\]") as err:
        from_dict(raw, source="cfg.toml")
    assert message in str(err.value)


def test_short_readings_retention_is_allowed_with_the_loop_off():
    cfg = from_dict({"storage": {"keep_readings_days": 7.0}, "retrain": {"enabled": False}})
    assert cfg.storage.keep_readings_days == 7.0
    assert dataclasses.asdict(from_dict({}).storage)["keep_readings_days"] == 90.0


def test_a_failing_pass_is_a_problem_and_the_next_one_retries(tmp_path):
    clock = ManualClock(T0)
    stage, db = _stage(tmp_path, clock)
    _readings(db, np.array([T0]))
    db.execute("DROP TABLE dead_letters")  # every pass now fails, as on a broken disk
    stage.tick()
    assert stage.status()["problem"].startswith("retention failing (CatalogException")
    assert stage.counters.errors == 1
    db.execute("CREATE TABLE dead_letters (received_at TIMESTAMP, topic VARCHAR, "
                "payload BLOB, reason VARCHAR)")
    clock.advance(10.0)
    stage.tick()
    assert "problem" not in stage.status() and stage.counters.errors == 1


def test_deleting_early_below_the_loops_history_says_so(tmp_path):
    stage, db = _stage(tmp_path, max_disk_mb=64)
    _readings(db, np.array([T0, T0 + 20 * DAY]))
    stage.maintain()
    stage._budget = int(stage.measure().used / 0.92)  # past the point of deleting early
    stage._disk = stage.measure()
    note = stage.status()["note"]
    assert "deleting the oldest readings early (kept 20.0 days)" in note, note
    assert "fewer than the 62 days the retraining loop trains on" in note, note
