"""Live features: readings in one at a time, one feature row per asset per tick out.

The same steps as ``batch`` with the streaming halves of the same kernels:
``filters.Validity`` per sensor on its readings, the grid rule, ``filters.Hampel``
and ``filters.Stuck`` per sensor on the grid, and the rolling statistics of all
series in ``RollingBank`` chunks (one ring of samples per series and window,
shared by every statistic: ~6 KB per series and window instead of one ring per
statistic).
"""

from __future__ import annotations

import math

import numpy as np

from appliance.features.spec import INTERVAL_COUNT, STUCK_MIN_COUNT, PipelineSpec
from appliance.kernels import filters
from appliance.kernels.rolling import Ewma, MoveMedian, RollingBank

#: Series per RollingBank; banks are added as series appear.
BANK_CHUNK = 256


class FeatureBanks:
    """The rolling state of every series: a row in one RollingBank per window."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._chunks: list[list[RollingBank]] = []
        self.n_series = 0

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
    """One sensor of one asset: its validity check, the open grid cell, its cleaning
    filter, its bank row."""

    __slots__ = ("baseline", "carry_s", "cell_count", "cell_sum", "gap_intervals",
                 "hampel", "intervals", "last_grid", "last_ts", "last_valid_ts", "max_gap_s",
                 "missing", "n_intervals", "row", "stuck", "validity")

    def __init__(self, spec: PipelineSpec, sensor: str, row: int,
                 validity: filters.Validity | None = None) -> None:
        settings = spec.sensor(sensor)
        # validity alone outlives an idle asset's fresh start (see spec)
        if validity is None:
            validity = filters.Validity(settings.valid_min, settings.valid_max,
                                        settings.max_rate_per_s)
        self.validity = validity
        clean = settings.clean
        self.hampel = (filters.Hampel(clean.hampel_window_s, clean.hampel_k,
                                      clean.hampel_min_count) if clean else None)
        self.max_gap_s = settings.max_gap_s
        self.gap_intervals = settings.max_gap_intervals
        #: The last intervals between valid readings (a count window: "ts" is the
        #: interval's number), and the carry limit their median gives.
        self.intervals = MoveMedian(INTERVAL_COUNT)
        self.n_intervals = 0
        self.carry_s = settings.max_gap_s
        self.missing = Ewma(spec.missing_halflife_s)
        self.baseline = Ewma(spec.baseline_halflife_s)
        self.stuck = filters.Stuck(spec.stuck_window_s, STUCK_MIN_COUNT)
        self.row = row
        self.cell_sum = 0.0
        self.cell_count = 0
        self.last_grid = math.nan
        #: The newest reading, valid or not: an older one is late.
        self.last_ts = -math.inf
        #: The newest valid reading: the value is carried at most carry_s from it.
        self.last_valid_ts = -math.inf

    def add(self, ts: float, value: float) -> bool:
        """Take one reading (not older than the last); False when it is invalid."""
        self.last_ts = ts
        if not self.validity.update(ts, value).value:
            return False
        self.cell_sum += value
        self.cell_count += 1
        if self.gap_intervals > 0 and self.last_valid_ts > -math.inf:
            typical = self.intervals.update(self.n_intervals, ts - self.last_valid_ts).value
            self.n_intervals += 1
            self.carry_s = max(self.max_gap_s, self.gap_intervals * typical)
        self.last_valid_ts = ts
        return True

    def close(self, tick: float) -> tuple[float, float, float, float]:
        """(grid value, missing fraction, deviation from baseline, stuck flag) of the
        cell ending at ``tick``; opens the next cell."""
        fresh = self.cell_count > 0
        if fresh:
            grid = self.last_grid = self.cell_sum / self.cell_count
        elif tick - self.last_valid_ts <= self.carry_s:
            grid = self.last_grid
        else:
            grid = math.nan
        self.cell_sum = 0.0
        self.cell_count = 0
        if self.hampel is not None:
            grid = self.hampel.update(tick, grid).value
        missing = self.missing.update(tick, 1.0 if math.isnan(grid) else 0.0).value
        return (grid, missing, grid - self.baseline.update(tick, grid).value,
                1.0 if self.stuck.update(tick, grid if fresh else math.nan).value else 0.0)


class _CoarseWindow:
    """A window on a coarser grid (``spec.stride`` > 1) for one asset's sensors:
    sums of the finite tick values of the open coarse cell, and the statistics
    of the last closed one."""

    __slots__ = ("counts", "held", "stride", "sums")

    def __init__(self, stride: int, n_stats: int) -> None:
        self.stride = stride
        self.sums = np.zeros(0)
        self.counts = np.zeros(0, dtype=np.int64)
        self.held = np.full((0, n_stats), np.nan)

    def grow(self, at: int) -> None:
        """Insert a new (empty) sensor at position ``at``."""
        self.sums = np.insert(self.sums, at, 0.0)
        self.counts = np.insert(self.counts, at, 0)
        self.held = np.insert(self.held, at, np.nan, axis=0)


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
    ``restarts`` counts those.
    """

    def __init__(self, spec: PipelineSpec, banks: FeatureBanks) -> None:
        self.spec = spec
        self.banks = banks
        #: A sensor keeps its bank row and its validity state across fresh starts.
        self._row_of: dict[str, int] = {}
        self._validity: dict[str, filters.Validity] = {}
        self._next_k: int | None = None
        #: The newest reading of any sensor that was not late.
        self._last_ts = -math.inf
        self.late = 0
        self.invalid = 0
        self.restarts = 0
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._states: dict[str, SensorState] = {}
        self._rows = np.zeros(0, dtype=np.int64)
        self._names: tuple[str, ...] = ()
        self._coarse = {w: _CoarseWindow(self.spec.stride(ws), len(self.spec.stats))
                        for w, ws in enumerate(self.spec.windows_s)
                        if self.spec.stride(ws) > 1}
        self.stuck: frozenset[str] = frozenset()

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self._states)

    def push(self, sensor: str, ts: float, value: float
             ) -> list[tuple[float, tuple[str, ...], np.ndarray]]:
        rows: list[tuple[float, tuple[str, ...], np.ndarray]] = []
        c = self.spec.cadence_s
        if self._next_k is None:
            self._next_k = self.spec.tick_index(ts)
        elif ts <= (self._next_k - 1) * c:
            self.late += 1
            return rows
        elif 0 < self.spec.idle_gap_s < ts - self._last_ts:
            # the cell of the last reading closes, then everything starts afresh
            last_k = self.spec.tick_index(self._last_ts)
            while self._next_k <= last_k:
                rows.append((self._next_k * c, self._names, self._close(self._next_k)))
                self._next_k += 1
            self.banks.reset(self._rows)
            self._start_afresh()
            self.restarts += 1
            self._next_k = self.spec.tick_index(ts)
        while ts > self._next_k * c:
            rows.append((self._next_k * c, self._names, self._close(self._next_k)))
            self._next_k += 1
        state = self._states.get(sensor)
        if state is None:
            state = self._add_sensor(sensor)
        elif ts < state.last_ts:
            self.late += 1
            return rows
        self._last_ts = max(self._last_ts, ts)
        if not state.add(ts, value):
            self.invalid += 1
        return rows

    def _add_sensor(self, sensor: str) -> SensorState:
        row = self._row_of.get(sensor)
        if row is None:
            row = self._row_of[sensor] = self.banks.allocate()
        state = SensorState(self.spec, sensor, row, self._validity.get(sensor))
        self._validity[sensor] = state.validity
        self._states = dict(sorted({**self._states, sensor: state}.items()))
        at = list(self._states).index(sensor)
        for window in self._coarse.values():
            window.grow(at)
        self._rows = np.array([s.row for s in self._states.values()], dtype=np.int64)
        self._names = self.spec.feature_names(tuple(self._states))
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
            finite = np.isfinite(grid)
            coarse.sums[finite] += grid[finite]
            coarse.counts[finite] += 1
            if k % coarse.stride == 0:
                with np.errstate(invalid="ignore", divide="ignore"):
                    vals = np.where(coarse.counts > 0,
                                    coarse.sums / np.maximum(coarse.counts, 1), np.nan)
                coarse.held = self.banks.update(w, self._rows, tick, vals)
                coarse.sums[:] = 0.0
                coarse.counts[:] = 0
            blocks.append(coarse.held)
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
