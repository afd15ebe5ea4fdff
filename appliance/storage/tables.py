"""Typed, columnar writes to the tables of ``migrations/``.

Each function takes an open connection inside the caller's transaction.  Rows
go in as a dict of numpy arrays that DuckDB scans in one statement.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from appliance.messages import (
    AlertEvent,
    DeadLetter,
    DriftEvent,
    FaultEvent,
    LoopEvent,
    ModelEvent,
    Prediction,
    SeriesKey,
)
from appliance.mqtt.payloads import alert_document, drift_document, loop_document
from appliance.timefmt import to_us


class SeriesRegistry:
    """Maps (line, asset, sensor) to the integer id stored in ``readings_raw``."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._ids: dict[SeriesKey, int] = {
            SeriesKey(line, asset, sensor): sid
            for sid, line, asset, sensor in con.execute(
                "SELECT id, line, asset, sensor FROM series").fetchall()
        }

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, con: duckdb.DuckDBPyConnection, keys: list[SeriesKey]) -> np.ndarray:
        """Ids for ``keys``, inserting new series (inside the caller's transaction)."""
        ids = self._ids
        new = {k for k in set(keys) if k not in ids}
        if new:
            added = {k: len(ids) + i for i, k in enumerate(sorted(new, key=_key_order))}
            con.executemany("INSERT INTO series VALUES (?, ?, ?, ?)",
                            [(sid, k.line, k.asset, k.sensor) for k, sid in added.items()])
            ids.update(added)
        return np.fromiter((ids[k] for k in keys), dtype=np.int32, count=len(keys))

    def forget(self, keys: set[SeriesKey]) -> None:
        """Drop ids whose insert was rolled back."""
        for k in keys:
            self._ids.pop(k, None)

    def snapshot(self) -> set[SeriesKey]:
        return set(self._ids)


def _key_order(k: SeriesKey) -> tuple[str, str, str]:
    return (k.line, k.asset, k.sensor)


def insert_readings(con: duckdb.DuckDBPyConnection, series_id: np.ndarray, ts_us: np.ndarray,
                    value: np.ndarray) -> None:
    batch = {"series_id": series_id, "ts_us": ts_us, "value": value}  # noqa: F841 - scanned
    # DuckDB finds ``batch`` among this frame's locals: the statement must run here
    con.execute("INSERT INTO readings_raw SELECT make_timestamp(ts_us), series_id, value "
                "FROM batch")


def insert_readings_from(con: duckdb.DuckDBPyConnection, select: str) -> None:
    """Readings from a query of (series_id, ts_us, value) columns, in its order (an
    import's staging table: stays inside DuckDB, never through Python)."""
    con.execute(f"INSERT INTO readings_raw SELECT make_timestamp(ts_us), series_id, value "
                f"FROM ({select})")


def stored_already(con: duckdb.DuckDBPyConnection, series_id: np.ndarray,
                   ts_us: np.ndarray) -> np.ndarray:
    """Mask of candidates whose (series, ts) is already in ``readings_raw``."""
    if len(ts_us) == 0:
        return np.zeros(0, dtype=bool)
    cand = {"i": np.arange(len(ts_us), dtype=np.int64),  # noqa: F841 - scanned by DuckDB
            "series_id": series_id, "ts_us": ts_us}
    lo, hi = int(ts_us.min()), int(ts_us.max())
    hits = con.execute(
        "SELECT DISTINCT c.i FROM cand c JOIN readings_raw r "
        "ON r.series_id = c.series_id AND r.ts = make_timestamp(c.ts_us) "
        "WHERE r.ts BETWEEN make_timestamp(?) AND make_timestamp(?)", [lo, hi]).fetchnumpy()
    mask = np.zeros(len(ts_us), dtype=bool)
    mask[hits["i"].astype(np.int64)] = True
    return mask


def insert_faults_from(con: duckdb.DuckDBPyConnection, select: str, source: str) -> None:
    """Fault events from a query of (ts_us, line, asset, state, code) columns, in its order."""
    con.execute(f"INSERT INTO faults SELECT make_timestamp(ts_us), line, asset, state, code, "
                f"? FROM ({select})", [source])


def insert_faults(con: duckdb.DuckDBPyConnection, faults: list[FaultEvent],
                  source: str) -> None:
    if not faults:
        return
    con.executemany(
        "INSERT INTO faults VALUES (make_timestamp(?), ?, ?, ?, ?, ?)",
        [(to_us(f.ts), f.line, f.asset, f.state, f.code, source) for f in faults])


def insert_dead_letters(con: duckdb.DuckDBPyConnection, dead: list[DeadLetter]) -> None:
    if not dead:
        return
    batch = {  # noqa: F841 - scanned by DuckDB; columnar: executemany is ~100x slower
        "ts_us": to_us(np.array([d.received_at for d in dead])),
        "topic": np.array([d.topic for d in dead], dtype=object),
        "payload": np.array([d.payload for d in dead], dtype=object),
        "reason": np.array([d.reason for d in dead], dtype=object),
    }
    con.execute("INSERT INTO dead_letters SELECT make_timestamp(ts_us), topic, payload, reason "
                "FROM batch")


def insert_predictions(con: duckdb.DuckDBPyConnection, items: list[Prediction]) -> None:
    if not items:
        return
    batch = {  # noqa: F841 - scanned by DuckDB
        "ts_us": to_us(np.array([p.ts for p in items])),
        "line": np.array([p.line for p in items], dtype=object),
        "asset": np.array([p.asset for p in items], dtype=object),
        "probability": np.array([p.probability for p in items], dtype=np.float64),
        "threshold": np.array([p.threshold for p in items], dtype=np.float64),
        "model": np.array([p.model for p in items], dtype=object),
        "role": np.array([p.role for p in items], dtype=object),
    }
    con.execute("INSERT INTO predictions SELECT make_timestamp(ts_us), line, asset, "
                "probability, threshold, model, role FROM batch")


def insert_alerts(con: duckdb.DuckDBPyConnection, alerts: list[AlertEvent]) -> None:
    """The alerts as published: the numbers of ``payloads.alert_document``."""
    if not alerts:
        return
    docs = [alert_document(a) for a in alerts]
    con.executemany(
        "INSERT INTO alerts VALUES (make_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(to_us(d["ts"]), d["line"], d["asset"], d["state"], d["probability"], d["threshold"],
          d["horizon_s"], d["model"], json.dumps(d["top_factors"]), a.role,
          json.dumps(d["reasons"]))
         for a, d in zip(alerts, docs, strict=True)])


def insert_drift_events(con: duckdb.DuckDBPyConnection, events: list[DriftEvent]) -> None:
    """Drift and sensor events as published: the numbers of ``payloads.drift_document``."""
    if not events:
        return
    docs = [drift_document(e) for e in events]
    con.executemany(
        "INSERT INTO drift_events VALUES (make_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(to_us(d["ts"]), d["line"], d["asset"], d["kind"], d["state"],
          json.dumps(d["features"]), d["statistic"], d["threshold"], d["model"],
          json.dumps(d["detail"])) for d in docs])


def insert_model_event(con: duckdb.DuckDBPyConnection, event: ModelEvent) -> None:
    """One row per model the service activated, found or refused (``status``)."""
    insert_model(con, event.ts, event.name, event.sha256, event.path, event.spec_hash,
                 event.status, {"detail": event.detail} if event.detail else None)


def insert_model(con: duckdb.DuckDBPyConnection, ts: float, name: str, sha256: str, path: str,
                 spec_hash: str, status: str, metrics: dict[str, Any] | None) -> None:
    """A row of ``models``: created at ``ts``, and promoted then when ``status`` is active."""
    con.execute(
        "INSERT INTO models (name, sha256, path, spec_hash, created_at, promoted_at, status, "
        "metrics) VALUES (?, ?, ?, ?, make_timestamp(?), "
        "CASE WHEN ? = 'active' THEN make_timestamp(?) END, ?, ?)",
        [name, sha256, path, spec_hash, to_us(ts), status, to_us(ts), status,
         json.dumps(metrics) if metrics is not None else None])


def insert_training_run(con: duckdb.DuckDBPyConnection, started: float, ended: float,
                        model: str | None, status: str, detail: dict[str, Any]) -> None:
    con.execute("INSERT INTO training_runs VALUES (make_timestamp(?), make_timestamp(?), ?, ?, ?)",
                [to_us(started), to_us(ended), model, status, json.dumps(detail)])


def insert_loop_event(con: duckdb.DuckDBPyConnection, event: LoopEvent) -> None:
    """A row of ``model_history``: one step of the retraining loop and the roles after it."""
    d = loop_document(event)
    con.execute("INSERT INTO model_history VALUES (make_timestamp(?), make_timestamp(?), ?, ?, "
                "?, ?, ?, ?, ?)",
                [to_us(d["at"]), to_us(d["ts"]), d["event"], d["model"], d["other"],
                 d["reason"], json.dumps(d["detail"]), d["champion"],
                 json.dumps(d["challengers"])])


# -- retention (``stages/maintenance.py``): each deletes in the caller's transaction and
# -- returns the number of rows it deleted.


def delete_readings_before(con: duckdb.DuckDBPyConnection, ts_us: int) -> int:
    """Readings whose event time is before ``ts_us``."""
    return _deleted(con.execute("DELETE FROM readings_raw WHERE ts < make_timestamp(?)",
                                [ts_us]))


def delete_predictions_before(con: duckdb.DuckDBPyConnection, ts_us: int) -> int:
    """Predictions whose tick is before ``ts_us``."""
    return _deleted(con.execute("DELETE FROM predictions WHERE ts < make_timestamp(?)",
                                [ts_us]))


def delete_dead_letters_before(con: duckdb.DuckDBPyConnection, ts_us: int) -> int:
    """Dead letters received before ``ts_us``."""
    return _deleted(con.execute("DELETE FROM dead_letters WHERE received_at < "
                                "make_timestamp(?)", [ts_us]))


def thin_predictions(con: duckdb.DuckDBPyConnection, lo_us: int, hi_us: int, every_s: float,
                     near_s: float, clear_ratio: float) -> int:
    """Thin the predictions with ticks in [``lo_us``, ``hi_us``).

    Kept whole: every prediction within ``near_s`` of an alert row (raised or cleared,
    any model) or a fault row (start or end) of its asset, and every one at or above
    its threshold × ``clear_ratio`` (an alarm may be up there).  Of the rest, one per
    (line, asset, model, role) and ``every_s`` bucket of event time stays: the highest,
    so a near miss is never thinned away.  Doing it again
    deletes nothing more; ``lo_us`` and ``hi_us`` should be multiples of ``every_s``
    so that a bucket never straddles two calls.
    """
    every_us, near_us = int(every_s * 1e6), int(near_s * 1e6)
    # Lean for the service's 32 MB: the bucket winners are an aggregate (one row per
    # asset, model and bucket, not a window over every row), and the events are only
    # those near the slice (a few rows).
    return _deleted(con.execute(
        """
        DELETE FROM predictions p
        WHERE p.ts >= make_timestamp($lo) AND p.ts < make_timestamp($hi)
          AND p.probability < p.threshold * $ratio
          AND p.rowid NOT IN (
              SELECT arg_max(rowid, probability) FROM predictions
              WHERE ts >= make_timestamp($lo) AND ts < make_timestamp($hi)
              GROUP BY line, asset, model, role, epoch_us(ts) // $every)
          AND NOT EXISTS (
              SELECT 1 FROM (
                  SELECT line, asset, ts FROM alerts
                  WHERE ts BETWEEN make_timestamp($lo - $near) AND make_timestamp($hi + $near)
                  UNION ALL
                  SELECT line, asset, ts FROM faults
                  WHERE ts BETWEEN make_timestamp($lo - $near) AND make_timestamp($hi + $near)
              ) e
              WHERE e.line = p.line AND e.asset = p.asset
                AND e.ts BETWEEN p.ts - to_microseconds($near)
                             AND p.ts + to_microseconds($near))
        """, {"lo": lo_us, "hi": hi_us, "every": every_us, "near": near_us,
              "ratio": clear_ratio}))


def _deleted(result: duckdb.DuckDBPyConnection) -> int:
    row = result.fetchone()
    return int(row[0]) if row else 0
