"""Live features: readings in one at a time, one feature row per asset per tick out.

The same steps as ``batch`` with the streaming halves of the same kernels:
``filters.Validity`` and ``grid.Grid`` per sensor on its readings, ``filters.Hampel``
and ``filters.Stuck`` per sensor on the grid, ``grid.CoarseGrid`` per asset for the
long windows, ``grid.IdleGap`` per asset for its fresh starts, and the rolling statistics of all
series in ``RollingBank`` chunks (one ring of samples per series and window,
shared by every statistic: ~6 KB per series and window instead of one ring per
statistic).
"""

from __future__ import annotations

import math

import numpy as np

from appliance.features.spec import INTERVAL_COUNT, STUCK_MIN_COUNT, PipelineSpec
from appliance.kernels import filters
from appliance.kernels.grid import CoarseGrid, Grid, IdleGap
from appliance.kernels.rolling import Ewma, RollingBank

#: Series per RollingBank; banks are added as series appear.
BANK_CHUNK = 256


class FeatureBanks:
    """The rolling state of every series: a row in one RollingBank per window."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._chunks: list[list[RollingBank]] = []
        self.n_series = 0
        #: One tuple of feature names per set of sensors, shared by every asset with
        #: that set: built per asset, ~100 names cost ~8 KB an asset.
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}

    def feature_names(self, sensors: tuple[str, ...]) -> tuple[str, ...]:
        """``spec.feature_names(sensors)``, the same object for the same sensors."""
        names = self._names.get(sensors)
        if names is None:
            names = self._names[sensors] = self.spec.feature_names(sensors)
        return names

    def allocate(self) -> int:
        """A row for a new series."""
        if self.n_series % BANK_CHUNK == 0:
            self._chunks.append([RollingBank(BANK_CHUNK, w, self.spec.halflife_s(w))
                                 for w in self.spec.windows_s])
        self.n_series += 1
        return self.n_series - 1

    def reset(self, rows: np.ndarray) -> None:
        """Forget the samples of these rows in every window."""
        for chunk in np.unique(rows // BANK_CHUNK).tolist():
            local = rows[rows // BANK_CHUNK == chunk] - chunk * BANK_CHUNK
            for bank in self._chunks[chunk]:
                bank.reset(local)

    def update(self, window: int, rows: np.ndarray, ts: float, values: np.ndarray
               ) -> np.ndarray:
        """Push one value per row into window ``window``; its statistics, (len(rows), S)."""
        chunk_of = rows // BANK_CHUNK
        first = int(chunk_of[0])
        if (chunk_of == first).all():  # the usual case: one asset's rows share a chunk
            bank = self._chunks[first][window]
            local = rows - first * BANK_CHUNK
            bank.update(local, np.full(len(rows), ts), values)
            return bank.values(local)
        out = np.empty((len(rows), len(self.spec.stats)))
        for chunk in np.unique(chunk_of).tolist():
            mine = chunk_of == chunk
            local = rows[mine] - chunk * BANK_CHUNK
            bank = self._chunks[chunk][window]
            bank.update(local, np.full(len(local), ts), values[mine])
            out[mine] = bank.values(local)
        return out


class SensorState:
    """One sensor of one asset: its validity check, its grid, its cleaning filter, its
    bank row."""

    __slots__ = ("baseline", "grid", "hampel", "missing", "row", "stuck", "validity")

    def __init__(self, spec: PipelineSpec, sensor: str, row: int,
                 validity: filters.Validity | None = None) -> None:
        settings = spec.sensor(sensor)
        # validity alone outlives an idle asset's fresh start (see spec)
        if validity is None:
            validity = filters.Validity(settings.valid_min, settings.valid_max,
                                        settings.max_rate_per_s)
        self.validity = validity
        self.grid = Grid(settings.max_gap_s, settings.max_gap_intervals, INTERVAL_COUNT)
        clean = settings.clean
        self.hampel = (filters.Hampel(clean.hampel_window_s, clean.hampel_k,
                                      clean.hampel_min_count) if clean else None)
        self.missing = Ewma(spec.missing_halflife_s)
        self.baseline = Ewma(spec.baseline_halflife_s)
        self.stuck = filters.Stuck(spec.stuck_window_s, STUCK_MIN_COUNT)
        self.row = row

    @property
    def last_ts(self) -> float:
        """The newest reading, valid or not: an older one is late."""
        return self.grid.last_ts

    def add(self, ts: float, value: float) -> bool:
        """Take one reading (not older than the last); False when it is invalid."""
        valid = self.validity.update(ts, value).value
        # an invalid reading goes in as NaN: it times nothing but the sensor's presence
        self.grid.add(ts, value if valid else math.nan)
        return valid

    def close(self, tick: float) -> tuple[float, float, float, float]:
        """(grid value, missing fraction, deviation from baseline, stuck flag) of the
        cell ending at ``tick``; opens the next cell.  The sensor exists from its
        first reading, so its grid is never ``GRID_ABSENT`` here (batch masks those
        ticks; live has no column for them)."""
        cell = self.grid.close(tick)
        grid = cell.value
        if self.hampel is not None:
            grid = self.hampel.update(tick, grid).value
        missing = self.missing.update(tick, 1.0 if math.isnan(grid) else 0.0).value
        return (grid, missing, grid - self.baseline.update(tick, grid).value,
                1.0 if self.stuck.update(tick, grid if cell.fresh else math.nan).value
                else 0.0)


class AssetFeatures:
    """Streaming feature rows of one asset.

    ``push`` readings in event-time order; it returns (tick, names, row) for
    every tick the reading completed.  A sensor joins the row from its first
    reading on (earlier ticks had it missing, as batch does).  A reading in a
    cell already emitted, or older than its sensor's previous reading, is late:
    not used, counted in ``late``.  A reading that fails its sensor's validity
    check is not used either, and counted in ``invalid``.  ``stuck`` names the
    sensors whose ``stuck`` feature was 1 at the last tick.  After a silence
    longer than ``spec.idle_gap_s`` the asset starts afresh (see ``spec``);
    ``restarts`` counts those.  The first ``spec.warmup_ticks`` ticks after each
    start are closed (the windows fill) but make no row; ``warmup`` counts them.
    """

    def __init__(self, spec: PipelineSpec, banks: FeatureBanks) -> None:
        self.spec = spec
        self.banks = banks
        #: A sensor keeps its bank row and its validity state across fresh starts.
        self._row_of: dict[str, int] = {}
        self._validity: dict[str, filters.Validity] = {}
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
        self._states: dict[str, SensorState] = {}
        self._rows = np.zeros(0, dtype=np.int64)
        self._names: tuple[str, ...] = ()
        #: Windows on a coarser grid: their coarse cells, and the statistics of each
        #: one's last closed cell (what every tick shows until the next closes).
        self._coarse = {w: CoarseGrid(0, self.spec.stride(ws))
                        for w, ws in enumerate(self.spec.windows_s)
                        if self.spec.stride(ws) > 1}
        self._held = {w: np.full((0, len(self.spec.stats)), np.nan) for w in self._coarse}
        self.stuck: frozenset[str] = frozenset()

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self._states)

    def push(self, sensor: str, ts: float, value: float
             ) -> list[tuple[float, tuple[str, ...], np.ndarray]]:
        rows: list[tuple[float, tuple[str, ...], np.ndarray]] = []
        c = self.spec.cadence_s
        if self._next_k is not None and ts <= (self._next_k - 1) * c:
            self.late += 1
            return rows
        restart = self._idle.update(ts).restart  # never at the first reading
        if self._next_k is None:
            self._begin(ts)
        elif restart:
            # the cell of the last reading closes, then everything starts afresh
            last_k = self.spec.tick_index(self._idle.previous_ts)
            while self._next_k <= last_k:
                self._close_next(rows)
            self.banks.reset(self._rows)
            self._start_afresh()
            self.restarts += 1
            self._begin(ts)
        while ts > self._next_k * c:
            self._close_next(rows)
        state = self._states.get(sensor)
        if state is None:
            state = self._add_sensor(sensor)
        elif ts < state.last_ts:
            self.late += 1
            return rows
        if not state.add(ts, value):
            self.invalid += 1
        return rows

    def _begin(self, ts: float) -> None:
        """A stretch of activity starts with the cell of the reading at ``ts``."""
        self._next_k = self.spec.tick_index(ts)
        self._warm_k = self._next_k + self.spec.warmup_ticks

    def _close_next(self, rows: list[tuple[float, tuple[str, ...], np.ndarray]]) -> None:
        k = self._next_k
        row = self._close(k)
        if k >= self._warm_k:
            rows.append((k * self.spec.cadence_s, self._names, row))
        else:
            self.warmup += 1
        self._next_k = k + 1

    def _add_sensor(self, sensor: str) -> SensorState:
        row = self._row_of.get(sensor)
        if row is None:
            row = self._row_of[sensor] = self.banks.allocate()
        state = SensorState(self.spec, sensor, row, self._validity.get(sensor))
        self._validity[sensor] = state.validity
        self._states = dict(sorted({**self._states, sensor: state}.items()))
        at = list(self._states).index(sensor)
        for w, coarse in self._coarse.items():
            coarse.insert(at)
            self._held[w] = np.insert(self._held[w], at, np.nan, axis=0)
        self._rows = np.array([s.row for s in self._states.values()], dtype=np.int64)
        self._names = self.banks.feature_names(tuple(self._states))
        return state

    def _close(self, k: int) -> np.ndarray:
        tick = k * self.spec.cadence_s
        closed = np.array([s.close(tick) for s in self._states.values()])
        grid = closed[:, 0]
        blocks = []
        for w in range(len(self.spec.windows_s)):
            coarse = self._coarse.get(w)
            if coarse is None:
                blocks.append(self.banks.update(w, self._rows, tick, grid))
                continue
            if coarse.update(k, grid).closed:
                self._held[w] = self.banks.update(w, self._rows, tick, coarse.means)
            blocks.append(self._held[w])
        stuck = closed[:, 3]
        if stuck.any() or self.stuck:
            self.stuck = frozenset(s for s, flag in zip(self._states, stuck, strict=True)
                                   if flag)
        per_sensor = np.column_stack([grid, closed[:, 1], stuck, closed[:, 2], *blocks]).ravel()
        if not self.spec.differences:
            return per_sensor
        position = {name: i for i, name in enumerate(self._states)}
        diffs = [grid[position[a]] - grid[position[b]] if a in position and b in position
                 else math.nan for a, b in self.spec.differences]
        return np.concatenate([per_sensor, diffs])
