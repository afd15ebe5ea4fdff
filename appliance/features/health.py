"""Sensor health from the feature row itself: stuck, silent, mostly missing.

A sensor fault is not drift: a stuck or silent sensor moves its features' distribution
as surely as a recalibration does, but the remedy is a technician, not a new model.  So
the drift stage asks this module first; a faulty sensor raises a ``sensor`` event
(asset, sensor, kind, since) and its features are left out of the drift decision
while the fault lasts.  Every rule reads the health columns the pipeline already
computes (``features.spec``), so nothing here touches readings:

* ``silent``: ``<s>__last`` is NaN — no valid reading within the sensor's carry
  limit — for ``silent_s`` of event time.  (Before this, only ``missing`` showed it.)
* ``stuck``: ``<s>__stuck`` is 1 (no change over the first window).
* ``missing``: ``<s>__missing`` (the EWMA missing fraction) reaches ``level`` while
  the sensor has a value: mostly invalid or dropped readings, not a silence (a value
  missing for less than ``silent_s`` may be the start of one).  It ends only below
  ``level × MISSING_CLEAR`` — the alert stage's hysteresis (``appliance.alarm``): a
  sensor half its readings invalid hovers at the level, and without it raised an
  event every few ticks (400 a day, each a row, a retained message and a log line).
  Right after a silence the fraction is still high although the sensor is back;
  that is not a new fault, so it is not raised until the fraction has once fallen
  below ``level``.

One kind per sensor at a time, in that order of precedence.  ``SensorHealth`` runs
live over many assets per tick; ``sensor_kinds`` computes the same kinds over one
asset's rows in batch (for the calibration on held-out rows), and a test holds the
two equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from appliance.alarm import alarm_active
from appliance.messages import DriftEvent

#: Kind codes; 0 = healthy.
KINDS: tuple[str, ...] = ("", "silent", "stuck", "missing")
SILENT, STUCK, MISSING = 1, 2, 3
#: A mostly missing sensor is well again below this fraction of ``level``.
MISSING_CLEAR = 0.8


def sensors_in(names: Sequence[str]) -> tuple[str, ...]:
    """Sensors that have a ``last`` column among ``names``, in order."""
    return tuple(n[:-len("__last")] for n in names if n.endswith("__last"))


def sensors_of_feature(name: str) -> tuple[str, ...]:
    """The sensor(s) a feature is computed from: ``<s>__…`` or ``diff__<a>__<b>``."""
    if name.startswith("diff__"):
        return tuple(name.split("__")[1:3])
    return (name.split("__", 1)[0],)


def feature_sensor_matrix(features: Sequence[str], sensors: Sequence[str]) -> np.ndarray:
    """(S, F) bool: feature f depends on sensor s."""
    pos = {s: i for i, s in enumerate(sensors)}
    out = np.zeros((len(sensors), len(features)), dtype=bool)
    for j, f in enumerate(features):
        for s in sensors_of_feature(f):
            if s in pos:
                out[pos[s], j] = True
    return out


def _columns(names: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    sensors = sensors_in(names)
    index = {n: i for i, n in enumerate(names)}
    cols = np.array([[index.get(f"{s}__{c}", -1) for c in ("last", "stuck", "missing")]
                     for s in sensors], dtype=np.intp).reshape(len(sensors), 3)
    return sensors, cols


def _take(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = values[:, np.maximum(cols, 0)].astype(np.float64)
    out[:, cols < 0] = np.nan
    return out


def sensor_kinds(names: Sequence[str], ticks: np.ndarray, X: np.ndarray, silent_s: float,
                 level: float) -> tuple[tuple[str, ...], np.ndarray]:
    """Batch, one asset's rows in tick order: (sensors, kind code (n, S))."""
    sensors, cols = _columns(names)
    n = len(ticks)
    idx = np.arange(n)[:, None]
    last, stuck, missing = (_take(X, cols[:, k]) for k in range(3))
    nan = ~np.isfinite(last)
    lastgood = np.maximum.accumulate(np.where(~nan, idx, -1), axis=0)
    start = np.minimum(lastgood + 1, n - 1)
    since = np.asarray(ticks, dtype=np.float64)[start]
    silent = nan & (np.asarray(ticks)[:, None] - since >= silent_s)
    last_silent = np.maximum.accumulate(np.where(silent, idx, -1), axis=0)
    last_low = np.maximum.accumulate(np.where(missing < level, idx, -1), axis=0)
    recovering = ~silent & (last_silent >= 0) & (last_low <= last_silent)
    # a missing value (not yet a silence) neither raises nor clears: NaN holds
    seen = np.where(nan, np.nan, missing)
    high = np.column_stack([alarm_active(seen[:, j], ~recovering[:, j], level, MISSING_CLEAR)
                            for j in range(len(sensors))]) if len(sensors) else \
        np.zeros((n, 0), dtype=bool)
    kind = np.where(silent, SILENT, np.where(stuck == 1, STUCK, np.where(high, MISSING, 0)))
    return sensors, kind.astype(np.int8)


class SensorHealth:
    """The kind of every (asset, sensor) as of its last row; events when one changes."""

    def __init__(self, silent_s: float, level: float) -> None:
        self.silent_s = silent_s
        self.level = level
        self.index: dict[tuple[str, str], int] = {}
        self.sensors: dict[str, int] = {}
        self.kind = np.zeros((16, 8), dtype=np.int8)
        self.since = np.full((16, 8), np.nan)
        self.nan_since = np.full((16, 8), np.nan)
        self.recovering = np.zeros((16, 8), dtype=bool)
        self.missing_on = np.zeros((16, 8), dtype=bool)
        self._cols: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, tuple[str, ...]]] = {}
        self._features: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}

    @property
    def active(self) -> int:
        return int(np.count_nonzero(self.kind))

    def _grow(self, assets: int, sensors: int) -> None:
        A, S = self.kind.shape
        if assets <= A and sensors <= S:
            return
        shape = (max(A, 2 * assets), max(S, 2 * sensors))

        def more(arr: np.ndarray, fill: object) -> np.ndarray:
            out = np.full(shape, fill, dtype=arr.dtype)
            out[:A, :S] = arr
            return out

        self.kind = more(self.kind, 0)
        self.since = more(self.since, np.nan)
        self.nan_since = more(self.nan_since, np.nan)
        self.recovering = more(self.recovering, False)
        self.missing_on = more(self.missing_on, False)

    def rows_of(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        out = np.empty(len(keys), dtype=np.intp)
        for i, key in enumerate(keys):
            a = self.index.get(key)
            if a is None:
                a = self.index[key] = len(self.index)
            out[i] = a
        self._grow(len(self.index), len(self.sensors))
        return out

    def _columns(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        cached = self._cols.get(names)
        if cached is None:
            sensors, cols = _columns(names)
            for s in sensors:
                self.sensors.setdefault(s, len(self.sensors))
            self._grow(len(self.index), len(self.sensors))
            scols = np.array([self.sensors[s] for s in sensors], dtype=np.intp)
            cached = self._cols[names] = (scols, cols, sensors)
            self._features[names] = {s: tuple(n for n in names if s in sensors_of_feature(n))
                                     for s in sensors}
        return cached

    def observe(self, tick: float, keys: Sequence[tuple[str, str]], names: tuple[str, ...],
                values: np.ndarray) -> tuple[np.ndarray, list[DriftEvent]]:
        """One tick's rows of many assets: (their rows in ``kind``, sensor events)."""
        scols, cols, sensors = self._columns(names)
        a = self.rows_of(keys)
        if not len(scols):
            return a, []
        last, stuck, missing = (_take(values, cols[:, k]) for k in range(3))
        grid = np.ix_(a, scols)
        nan = ~np.isfinite(last)
        ns = self.nan_since[grid]
        ns = np.where(nan, np.where(np.isnan(ns), tick, ns), np.nan)
        self.nan_since[grid] = ns
        silent = nan & (tick - ns >= self.silent_s)
        prev = self.kind[grid]
        rec = self.recovering[grid] | ((prev == SILENT) & ~silent)
        rec &= ~(missing < self.level)
        self.recovering[grid] = rec
        # ``appliance.alarm``'s rule, as ``sensor_kinds`` runs it: not usable clears,
        # NaN holds, on at ``level``, off below ``level × MISSING_CLEAR``
        on = self.missing_on[grid]
        high = np.where(rec, False, np.where(nan, on, np.where(
            on, missing >= self.level * MISSING_CLEAR, missing >= self.level)))
        self.missing_on[grid] = high
        kind = np.where(silent, SILENT, np.where(stuck == 1, STUCK,
                                                 np.where(high, MISSING, 0))).astype(np.int8)
        changed = np.argwhere(kind != prev)
        if not len(changed):
            return a, []
        since = self.since[grid]
        self.kind[grid] = kind
        started_at = np.where(kind == SILENT, ns, tick)
        self.since[grid] = np.where(kind != prev, np.where(kind != 0, started_at, np.nan),
                                    since)
        events = []
        features = self._features[names]
        for i, j in changed.tolist():
            line, asset = keys[i]
            sensor = sensors[j]
            if prev[i, j]:
                events.append(self._event(tick, line, asset, sensor, features[sensor],
                                          "ended", int(prev[i, j]), float(since[i, j]), a[i]))
            if kind[i, j]:
                events.append(self._event(tick, line, asset, sensor, features[sensor],
                                          "started", int(kind[i, j]),
                                          float(started_at[i, j]), a[i]))
        return a, events

    def _event(self, tick: float, line: str, asset: str, sensor: str,
               features: tuple[str, ...], state: str, kind: int, since: float,
               row: int) -> DriftEvent:
        active = {s: KINDS[self.kind[row, c]] for s, c in self.sensors.items()
                  if self.kind[row, c]}
        detail = {"sensor": sensor, "kind": KINDS[kind],
                  "since": since if math.isfinite(since) else None, "active": active}
        return DriftEvent(tick, line, asset, "sensor", state, features, None, None, None,
                          json.dumps(detail))

    def faulty(self, rows: np.ndarray, sensors: Sequence[str]) -> np.ndarray:
        """(n, len(sensors)) bool: the sensor of that row's asset is faulty now."""
        cols = np.array([self.sensors.get(s, -1) for s in sensors], dtype=np.intp)
        out = self.kind[np.ix_(rows, np.maximum(cols, 0))] != 0
        out[:, cols < 0] = False
        return out
