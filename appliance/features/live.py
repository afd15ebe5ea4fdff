"""Live features: readings in one at a time, the feature rows of every asset's closed
ticks out in one pass.

The same steps as ``batch`` with the streaming halves of the same kernels, each
holding many series: ``sensors.SensorBank`` runs every sensor's validity, grid,
Hampel, missing, baseline and stuck chain; ``grid.CoarseBank`` the coarse grid of
the long windows; ``rolling.RollingBank`` the rolling statistics (one ring of samples
per series and window, shared by every statistic: ~3 KB per series and window
instead of one ring per statistic); ``grid.IdleGap`` per asset its fresh starts.
A series is one row of each bank.

Two phases.  A reading that completes a tick closes that tick's cells of its asset at
once (``SensorBank.close`` of its sensors' rows), since the next reading goes into the
next cell; ``AssetFeatures.add`` does that and hands the closed tick to
``FeatureBanks``.  The windows and the rows wait for ``FeatureBanks.flush``, which
runs them for every asset that closed the same tick together: one bank call per
chunk and window, and the rows of all assets with the same sensors cut from one
matrix, instead of a dozen NumPy calls per asset.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter

import numpy as np

from appliance.features.spec import INTERVAL_COUNT, STUCK_MIN_COUNT, PipelineSpec
from appliance.kernels.grid import CoarseBank, IdleGap
from appliance.kernels.rolling import RollingBank
from appliance.kernels.sensors import SensorBank

#: Series per RollingBank; banks are added as series appear.
BANK_CHUNK = 256
#: The columns of a closed cell as ``SensorBank.close`` gives them, in the order of
#: the row's per-sensor features (last, missing, stuck, dev).
_ROW_ORDER = [0, 1, 3, 2]


@dataclass(frozen=True, slots=True)
class TickRows:
    """The rows of one tick for the assets with one set of sensors."""

    tick: float
    names: tuple[str, ...]
    assets: tuple[AssetFeatures, ...]
    values: np.ndarray  # (len(assets), len(names)), float64


class _ClosedTick:
    """One asset's tick, closed up to the windows (``FeatureBanks.flush``)."""

    __slots__ = ("asset", "cells", "emit", "k", "names", "rows", "sensors", "stretch")

    def __init__(self, asset: AssetFeatures, k: int, cells: np.ndarray, emit: bool) -> None:
        self.asset = asset
        self.k = k
        self.cells = cells  # (sensors, 4): SENSOR_COLUMNS
        self.emit = emit  # False in a warm-up: the windows fill, no row
        # the asset's layout when the tick closed (a sensor may join before the flush)
        self.rows = asset._rows
        self.names = asset._names
        self.sensors = asset._sensors
        self.stretch = asset.restarts


class _Chunk:
    """The window state of ``BANK_CHUNK`` series: per window a RollingBank, and for a
    window on a coarser grid its coarse cells and the statistics of each series' last
    closed cell (what every tick shows until the next closes)."""

    __slots__ = ("coarse", "held", "rolling")

    def __init__(self, spec: PipelineSpec) -> None:
        self.rolling = [RollingBank(BANK_CHUNK, w, spec.halflife_s(w)) for w in spec.windows_s]
        self.coarse = {w: CoarseBank(BANK_CHUNK, spec.stride(ws))
                       for w, ws in enumerate(spec.windows_s) if spec.stride(ws) > 1}
        self.held = {w: np.full((BANK_CHUNK, len(spec.stats)), np.nan) for w in self.coarse}

    def reset(self, local: np.ndarray) -> None:
        for bank in self.rolling:
            bank.reset(local)
        for w, coarse in self.coarse.items():
            coarse.reset(local)
            self.held[w][local] = np.nan

    def update(self, window: int, local: np.ndarray, k: int, tick: float,
               grid: np.ndarray) -> np.ndarray:
        """Tick k's grid values of these series into window ``window``; its
        statistics, (len(local), S)."""
        coarse = self.coarse.get(window)
        if coarse is None:
            return self._through(window, local, tick, grid)
        if coarse.update(local, k, grid):
            self.held[window][local] = self._through(window, local, tick,
                                                     coarse.means(local))
        return self.held[window][local]

    def _through(self, window: int, local: np.ndarray, tick: float,
                 points: np.ndarray) -> np.ndarray:
        bank = self.rolling[window]
        bank.update(local, np.full(len(local), tick), points)
        return bank.values(local)


class FeatureBanks:
    """The state of every series: its per-sensor chain (a row of ``sensors``) and its
    windows (the same row in each ``_Chunk``); and the ticks closed since the last
    ``flush``."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.sensors = SensorBank()
        self._chunks: list[_Chunk] = []
        self.n_series = 0
        #: One tuple of feature names per set of sensors, shared by every asset with
        #: that set: built per asset, ~100 names cost ~8 KB an asset.
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._closed: list[_ClosedTick] = []
        #: Rows made by a flush that an asset forced (``AssetFeatures``), not yet taken.
        self._ready: list[TickRows] = []

    def feature_names(self, sensors: tuple[str, ...]) -> tuple[str, ...]:
        """``spec.feature_names(sensors)``, the same object for the same sensors."""
        names = self._names.get(sensors)
        if names is None:
            names = self._names[sensors] = self.spec.feature_names(sensors)
        return names

    def allocate(self, sensor: str) -> int:
        """A row for a new series of ``sensor`` (its settings: ``spec.sensor``)."""
        if self.n_series % BANK_CHUNK == 0:
            self._chunks.append(_Chunk(self.spec))
        spec, settings = self.spec, self.spec.sensor(sensor)
        clean = settings.clean
        row = self.sensors.add_series(
            settings.valid_min, settings.valid_max, settings.max_rate_per_s,
            settings.max_gap_s, settings.max_gap_intervals, INTERVAL_COUNT,
            spec.missing_halflife_s, spec.baseline_halflife_s, spec.stuck_window_s,
            STUCK_MIN_COUNT, *((clean.hampel_window_s, clean.hampel_k,
                                clean.hampel_min_count) if clean else ()))
        assert row == self.n_series  # the two banks grow in step
        self.n_series += 1
        return row

    def restart(self, rows: np.ndarray) -> None:
        """These rows start afresh, their validity state alone kept (after a ``flush``:
        the ticks closed before are through the windows)."""
        self.sensors.restart(rows)
        for chunk in np.unique(rows // BANK_CHUNK).tolist():
            self._chunks[chunk].reset(rows[rows // BANK_CHUNK == chunk] - chunk * BANK_CHUNK)

    def defer(self, closed: _ClosedTick) -> None:
        self._closed.append(closed)

    def flush(self) -> list[TickRows]:
        """Run the window statistics of every tick closed since the last flush, in
        tick order, and return the rows made (with those of forced flushes before),
        one ``TickRows`` per tick and set of sensors."""
        closed, self._closed = self._closed, []
        out, self._ready = self._ready, []
        # stable: one asset's ticks stay in order, so each series' samples do
        closed.sort(key=attrgetter("k"))
        for k, same_tick in groupby(closed, key=attrgetter("k")):
            out.extend(self._through_windows(k, list(same_tick)))
        return out

    def _through_windows(self, k: int, ticks: list[_ClosedTick]) -> list[TickRows]:
        tick = k * self.spec.cadence_s
        rows = np.concatenate([t.rows for t in ticks])
        cells = np.concatenate([t.cells for t in ticks])
        grid = np.ascontiguousarray(cells[:, 0])
        n_windows, n_stats = len(self.spec.windows_s), len(self.spec.stats)
        stats = np.empty((len(rows), n_windows, n_stats))
        chunk_of = rows // BANK_CHUNK
        for chunk in np.unique(chunk_of).tolist():
            mine = chunk_of == chunk
            local = rows[mine] - chunk * BANK_CHUNK
            for w in range(n_windows):
                stats[mine, w] = self._chunks[chunk].update(w, local, k, tick, grid[mine])
        first_row = np.cumsum([0] + [len(t.rows) for t in ticks])
        self._note_stuck(ticks, cells[:, 3], first_row)
        # per series: last, missing, stuck, dev, then every window's statistics
        per_series = np.concatenate([cells[:, _ROW_ORDER], stats.reshape(len(rows), -1)],
                                    axis=1)
        # the assets with one set of sensors share one tuple of names (``feature_names``)
        by_layout: dict[int, list[int]] = {}
        for i, t in enumerate(ticks):
            if t.emit:
                by_layout.setdefault(id(t.names), []).append(i)
        out = []
        for mine in by_layout.values():
            first = ticks[mine[0]]
            n_sensors = len(first.rows)
            series = first_row[mine][:, None] + np.arange(n_sensors)  # (assets, sensors)
            values = per_series[series].reshape(len(mine), -1)
            if self.spec.differences:
                values = np.hstack([values, self._differences(first.sensors,
                                                              grid[series])])
            out.append(TickRows(tick, first.names, tuple(ticks[i].asset for i in mine),
                                values))
        return out

    @staticmethod
    def _note_stuck(ticks: list[_ClosedTick], stuck: np.ndarray, first_row: np.ndarray
                    ) -> None:
        """Each asset's ``stuck`` as of its tick (ticks of a stretch it has left, none)."""
        flagged = np.add.reduceat(stuck, first_row[:-1]) > 0
        for i, (t, any_stuck) in enumerate(zip(ticks, flagged.tolist(), strict=True)):
            asset = t.asset
            if (any_stuck or asset.stuck) and t.stretch == asset.restarts:
                flags = stuck[first_row[i]:first_row[i + 1]].tolist()
                asset.stuck = frozenset(s for s, f in zip(t.sensors, flags, strict=True) if f)

    def _differences(self, sensors: tuple[str, ...], grid: np.ndarray) -> np.ndarray:
        """grid(a) − grid(b) per configured pair, NaN where the asset lacks one."""
        position = {name: i for i, name in enumerate(sensors)}
        diffs = np.full((len(grid), len(self.spec.differences)), math.nan)
        for j, (a, b) in enumerate(self.spec.differences):
            if a in position and b in position:
                diffs[:, j] = grid[:, position[a]] - grid[:, position[b]]
        return diffs

    def put_back(self, rows: TickRows) -> None:
        """Rows a flush made that its caller does not take: the next flush returns them."""
        self._ready.append(rows)

    def force_flush(self) -> None:
        """Flush now (a series is about to start afresh); the rows wait for the next
        ``flush``."""
        self._ready = self.flush()  # the rows ready before are in it


class AssetFeatures:
    """Streaming feature rows of one asset.

    ``add`` readings in event-time order; the ticks they complete go to the banks,
    whose ``flush`` makes the rows of every asset at once.  ``push`` is ``add`` and a
    flush, for one asset on its own: it returns (tick, names, row) for every tick the
    reading completed.  A sensor joins the row from its first
    reading on (earlier ticks had it missing, as batch does).  A reading in a
    cell already emitted, or older than its sensor's previous reading, is late:
    not used, counted in ``late``.  A reading that fails its sensor's validity
    check is not used either, and counted in ``invalid``.  ``stuck`` names the
    sensors whose ``stuck`` feature was 1 at the last tick through a flush.  After a silence
    longer than ``spec.idle_gap_s`` the asset starts afresh (see ``spec``);
    ``restarts`` counts those.  The first ``spec.warmup_ticks`` ticks after each
    start are closed (the windows fill) but make no row; ``warmup`` counts them.
    ``key`` is the caller's name for the asset, carried to nothing but itself.
    """

    def __init__(self, spec: PipelineSpec, banks: FeatureBanks,
                 key: Hashable = None) -> None:
        self.spec = spec
        self.banks = banks
        self.key = key
        #: A sensor keeps its rows in the banks, and its validity state, across fresh
        #: starts.
        self._row_of: dict[str, int] = {}
        self._next_k: int | None = None
        #: The first tick of the current stretch that makes a row (see ``spec``).
        self._warm_k = 0
        #: The silences after which the asset starts afresh: every reading not in an
        #: emitted cell shows the asset alive (one late for its own sensor too).
        self._idle = IdleGap(spec.idle_gap_s)
        self.late = 0
        self.invalid = 0
        self.restarts = 0
        self.warmup = 0
        self._start_afresh()

    def _start_afresh(self) -> None:
        #: The sensors of the current stretch, sorted, and their rows in the banks.
        self._present: dict[str, int] = {}
        self._sensors: tuple[str, ...] = ()
        self._rows = np.zeros(0, dtype=np.int64)
        self._names: tuple[str, ...] = ()
        self.stuck: frozenset[str] = frozenset()

    @property
    def sensors(self) -> tuple[str, ...]:
        return self._sensors

    def push(self, sensor: str, ts: float, value: float
             ) -> list[tuple[float, tuple[str, ...], np.ndarray]]:
        """``add``, then a flush of the banks: this asset's rows (the other assets'
        wait for the banks' next flush)."""
        self.add(sensor, ts, value)
        mine = []
        for rows in self.banks.flush():
            own = np.array([asset is self for asset in rows.assets])
            mine.extend((rows.tick, rows.names, row) for row in rows.values[own])
            if not own.all():
                self.banks.put_back(TickRows(rows.tick, rows.names, tuple(
                    a for a in rows.assets if a is not self), rows.values[~own]))
        return mine

    def add(self, sensor: str, ts: float, value: float) -> None:
        c = self.spec.cadence_s
        if self._next_k is not None and ts <= (self._next_k - 1) * c:
            self.late += 1
            return
        restart = self._idle.update(ts).restart  # never at the first reading
        if self._next_k is None:
            self._begin(ts)
        elif restart:
            # the cell of the last reading closes, then everything starts afresh (each
            # sensor's rows as it comes back: ``_join``)
            last_k = self.spec.tick_index(self._idle.previous_ts)
            while self._next_k <= last_k:
                self._close_next()
            self._start_afresh()
            self.restarts += 1
            self._begin(ts)
        while ts > self._next_k * c:
            self._close_next()
        sensors = self.banks.sensors
        row = self._present.get(sensor)
        if row is None:
            row = self._join(sensor)
        elif ts < sensors.last_ts(row):
            self.late += 1
            return
        if not sensors.add(row, ts, value):
            self.invalid += 1

    def _begin(self, ts: float) -> None:
        """A stretch of activity starts with the cell of the reading at ``ts``."""
        self._next_k = self.spec.tick_index(ts)
        self._warm_k = self._next_k + self.spec.warmup_ticks

    def _close_next(self) -> None:
        k = self._next_k
        emit = k >= self._warm_k
        if not emit:
            self.warmup += 1
        cells = self.banks.sensors.close(self._rows, k * self.spec.cadence_s)
        self.banks.defer(_ClosedTick(self, k, cells, emit))
        self._next_k = k + 1

    def _join(self, sensor: str) -> int:
        """The sensor's first reading of this stretch: its rows join the asset's."""
        row = self._row_of.get(sensor)
        if row is None:
            row = self._row_of[sensor] = self.banks.allocate(sensor)
        else:
            # back after a fresh start: its ticks of the stretch before go through the
            # windows first, then it starts afresh
            self.banks.force_flush()
            self.banks.restart(np.array([row]))
        self._present = dict(sorted({**self._present, sensor: row}.items()))
        self._sensors = tuple(self._present)
        self._rows = np.fromiter(self._present.values(), dtype=np.int64,
                                 count=len(self._present))
        self._names = self.banks.feature_names(self._sensors)
        return row
