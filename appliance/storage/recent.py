"""Reads for a service start: the recent readings that refill the feature windows, the
last tick predicted per asset, and the alerts still standing.

The readings are streamed in slices of event time (each slice one query, sorted as the
service first saw them), so a start never holds the whole span in memory: at 1,000
assets × 5 sensors at 1 Hz an hour is 18 M readings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import numpy as np

from appliance.messages import AlertEvent, Factor, SeriesKey, StoredReadings
from appliance.timefmt import from_us, to_us

#: Event-time seconds per query of the replay: ~300 k readings at 5,000 series at 1 Hz.
SLICE_S = 60.0


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What to replay: per series id, its readings after ``since_us[id]`` (its asset's
    last reading minus the span); ``first_us`` the earliest of those, ``last_us`` the
    newest reading stored, ``readings`` how many in all."""

    series: dict[int, SeriesKey]
    since_us: dict[int, int]
    first_us: int
    last_us: int
    readings: int


def replay_plan(con: duckdb.DuckDBPyConnection, span_s: float, idle_gap_s: float
                ) -> ReplayPlan | None:
    """The readings that rebuild each asset's windows: those within ``span_s`` before
    the asset's own last reading (so an asset silent for a while comes back with the
    state it had, as in a service that never stopped).  An asset whose last reading is
    more than ``idle_gap_s + span_s`` older than the newest one is left out: its next
    reading starts it afresh anyway (``idle_gap_s`` 0: nobody is left out).  None:
    nothing to replay.
    """
    (newest,) = con.execute("SELECT epoch_us(max(ts)) FROM readings_raw").fetchone()
    if newest is None or span_s <= 0:
        return None
    lookback_us = to_us(idle_gap_s + span_s) if idle_gap_s > 0 else newest + 1
    rows = con.execute(
        "WITH per AS (SELECT series_id, max(ts) AS last FROM readings_raw "
        "             WHERE ts >= make_timestamp(?) GROUP BY series_id) "
        "SELECT s.id, s.line, s.asset, s.sensor, "
        "       epoch_us(max(per.last) OVER (PARTITION BY s.line, s.asset)) "
        "FROM per JOIN series s ON s.id = per.series_id",
        [newest - lookback_us]).fetchall()
    span_us = to_us(span_s)
    series = {sid: SeriesKey(line, asset, sensor) for sid, line, asset, sensor, _ in rows}
    since = {sid: last - span_us for sid, *_key, last in rows}
    since_table = _since_table(since)  # noqa: F841 - scanned by DuckDB
    (n,) = con.execute("SELECT count(*) FROM readings_raw r JOIN since_table p "
                       "ON p.sid = r.series_id WHERE r.ts > make_timestamp(p.since_us) "
                       "AND r.ts >= make_timestamp(?)", [min(since.values())]).fetchone()
    return ReplayPlan(series, since, min(since.values()), newest, int(n))


def replay(con: duckdb.DuckDBPyConnection, plan: ReplayPlan, slice_s: float = SLICE_S
           ) -> Iterator[StoredReadings]:
    """The planned readings in slices of ``slice_s`` event-time seconds, each sorted by
    time and, at one time, in the order they were stored (as the service saw them)."""
    step = to_us(slice_s)
    since_table = _since_table(plan.since_us)  # noqa: F841 - scanned by DuckDB
    keys = plan.series
    lo = plan.first_us + 1  # a series' readings are those after its since_us
    while lo <= plan.last_us:
        hi = min(lo + step, plan.last_us + 1)
        # DuckDB finds ``since_table`` among this frame's locals: the statement must run here
        data = con.execute(
            "SELECT r.series_id, epoch_us(r.ts) AS t, r.value FROM readings_raw r "
            "JOIN since_table p ON p.sid = r.series_id "
            "WHERE r.ts >= make_timestamp(?) AND r.ts < make_timestamp(?) "
            "AND r.ts > make_timestamp(p.since_us) ORDER BY r.ts, r.rowid",
            [lo, hi]).fetchnumpy()
        lo = hi
        if len(data["t"]) == 0:
            continue
        yield StoredReadings(tuple(keys[s] for s in data["series_id"].tolist()),
                             from_us(np.asarray(data["t"])),
                             np.asarray(data["value"], dtype=np.float64))


def _since_table(since_us: dict[int, int]) -> dict[str, np.ndarray]:
    """The plan's (series id, since) pairs as columns DuckDB scans."""
    return {"sid": np.fromiter(since_us, dtype=np.int32, count=len(since_us)),
            "since_us": np.fromiter(since_us.values(), dtype=np.int64, count=len(since_us))}


def predicted_through(con: duckdb.DuckDBPyConnection, since_us: int
                      ) -> dict[tuple[str, str], float]:
    """The last tick the champion predicted per (line, asset), among ticks after
    ``since_us``: a replay must not predict those ticks a second time."""
    rows = con.execute("SELECT line, asset, epoch_us(max(ts)) FROM predictions "
                       "WHERE role = 'champion' AND ts > make_timestamp(?) GROUP BY ALL",
                       [since_us]).fetchall()
    return {(line, asset): from_us(t) for line, asset, t in rows}


@dataclass(frozen=True, slots=True)
class StandingAlert:
    """A champion alert whose last state is ``raised``, and when its asset last sent
    a reading (NaN: never)."""

    alert: AlertEvent
    last_reading: float


def standing_alerts(con: duckdb.DuckDBPyConnection) -> list[StandingAlert]:
    """Every asset whose last published alert is ``raised``, as it was published."""
    rows = con.execute(
        # the last alert as stored (rowid: alerts are only ever appended), not by ts:
        # a quiet clear is stamped with the wall clock, a raise with its event time
        "WITH last AS (SELECT line, asset, arg_max(state, rowid) AS state, "
        "  epoch_us(arg_max(ts, rowid)) AS t, arg_max(probability, rowid) AS p, "
        "  arg_max(threshold, rowid) AS thr, arg_max(horizon_s, rowid) AS h, "
        "  arg_max(model, rowid) AS model, arg_max(top_factors, rowid) AS factors "
        "  FROM alerts WHERE role = 'champion' GROUP BY line, asset) "
        "SELECT l.line, l.asset, l.t, l.p, l.thr, l.h, l.model, l.factors, "
        # bounded below by the alert: an unbounded max(ts) reads every reading
        "  (SELECT epoch_us(max(r.ts)) FROM readings_raw r JOIN series s "
        "   ON s.id = r.series_id WHERE s.line = l.line AND s.asset = l.asset "
        "   AND r.ts >= make_timestamp(l.t)) "
        "FROM last l WHERE l.state = 'raised' ORDER BY l.line, l.asset").fetchall()
    out = []
    for line, asset, t, p, thr, h, model, factors, last in rows:
        top = tuple(Factor(f["feature"], f["value"], f["contribution"])
                    for f in json.loads(factors))
        alert = AlertEvent(line, asset, from_us(t), "raised", p, thr, h,
                           model, top)
        out.append(StandingAlert(alert, math.nan if last is None
                                 else from_us(last)))
    return out
