"""Batch features over stored history: arrays in, a feature matrix out."""

from __future__ import annotations

import numpy as np

from appliance.features.spec import (
    INTERVAL_COUNT,
    STUCK_MIN_COUNT,
    CleanSpec,
    PipelineSpec,
    SensorSpec,
)
from appliance.kernels import filters, rolling

#: The batch kernel of each RollingBank column (the live driver's numbers).
_BATCH = {
    "mean": rolling.move_mean,
    "std": rolling.move_std,
    "min": rolling.move_min,
    "max": rolling.move_max,
    "median": rolling.move_median,
    "slope": rolling.move_slope,
    "change": rolling.move_change,
}


def carry_limits(ts: np.ndarray, max_gap_s: float, gap_intervals: float) -> np.ndarray:
    """How long each reading's value may be carried forward (see ``spec``, step 1)."""
    limits = np.full(len(ts), max_gap_s)
    if gap_intervals > 0 and len(ts) > 1:
        typical = rolling.move_median(None, np.diff(ts), INTERVAL_COUNT)
        limits[1:] = np.maximum(max_gap_s, gap_intervals * typical)
    return limits


def grid_values(ts: np.ndarray, values: np.ndarray, ticks: np.ndarray, cadence_s: float,
                max_gap_s: float, gap_intervals: float) -> tuple[np.ndarray, np.ndarray]:
    """Place readings on the tick grid (see ``spec``): mean per cell, bounded carry-forward.

    ``ts`` must be sorted.  NaN readings count as absent.  Returns the grid and
    ``fresh``, True where the cell held a reading (its value is not carried).
    """
    ts = np.asarray(ts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    ts, values = ts[ok], values[ok]
    out = np.full(len(ticks), np.nan)
    if len(ticks) == 0 or len(ts) == 0:
        return out, np.zeros(len(ticks), dtype=bool)
    # Cell k is (ticks[k] - cadence, ticks[k]]: index of the first tick >= ts.
    cell = np.searchsorted(ticks, ts, side="left")
    inside = (cell < len(ticks)) & (ts > ticks[np.minimum(cell, len(ticks) - 1)] - cadence_s)
    sums = np.bincount(cell[inside], weights=values[inside], minlength=len(ticks))
    counts = np.bincount(cell[inside], minlength=len(ticks))
    has = counts > 0
    out[has] = sums[has] / counts[has]
    # Carry forward the last cell value while the last reading is within its carry limit.
    last_idx = np.searchsorted(ts, ticks, side="right") - 1  # last reading <= tick
    last = np.maximum(last_idx, 0)
    age = np.where(last_idx >= 0, ticks - ts[last], np.inf)
    filled_idx = np.maximum.accumulate(np.where(has, np.arange(len(ticks)), -1))
    carry = ~has & (filled_idx >= 0) & (age <= carry_limits(ts, max_gap_s, gap_intervals)[last])
    out[carry] = out[filled_idx[carry]]
    return out, has


def valid_readings(sensor: SensorSpec, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask of the readings that pass the sensor's validity check (``ts`` sorted)."""
    valid = filters.validity(ts, values, sensor.valid_min, sensor.valid_max,
                             sensor.max_rate_per_s)
    return valid.view(np.bool_)


def clean_values(clean: CleanSpec, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The cleaning step on one sensor's grid: Hampel outliers → window median."""
    if len(values) == 0:
        return np.asarray(values, dtype=np.float64)
    cleaned, _outlier = filters.hampel(ts, values, clean.hampel_window_s, clean.hampel_k,
                                       clean.hampel_min_count)
    return cleaned


def window_stats(spec: PipelineSpec, window_s: float, ticks: np.ndarray, k: np.ndarray,
                 grid: np.ndarray) -> list[np.ndarray]:
    """The STATS columns of one window at every tick (``k`` = global tick indices)."""
    m = spec.stride(window_s)
    if len(k) == 0:
        return [np.empty(0) for _ in spec.stats]
    if m == 1:
        pts, vals = ticks, grid
    else:
        cell = -(-k // m)  # coarse cell c holds ticks (c·m - m, c·m]
        cells = np.arange(cell[0], k[-1] // m + 1)  # cells closed within the range
        finite = np.isfinite(grid)
        idx = cell[finite] - cell[0]
        sums = np.bincount(idx, weights=grid[finite], minlength=len(cells))[:len(cells)]
        counts = np.bincount(idx, minlength=len(cells))[:len(cells)]
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        pts = cells * m * spec.cadence_s
    cols = []
    for stat in spec.stats:
        if stat == "ewma":
            cols.append(rolling.ewma(pts, vals, spec.halflife_s(window_s)))
        else:
            cols.append(_BATCH[stat](pts, vals, window_s))
    if m == 1:
        return cols
    # Each tick shows the statistics of the last closed coarse cell.
    last_closed = k // m - cells[0]
    held = last_closed >= 0
    out = []
    for col in cols:
        full = np.full(len(k), np.nan)
        full[held] = col[last_closed[held]]
        out.append(full)
    return out


def sensor_features(spec: PipelineSpec, ticks: np.ndarray, k: np.ndarray,
                    grid: np.ndarray, fresh: np.ndarray, first_ts: float) -> np.ndarray:
    """Feature columns of one sensor from its grid values, shape (len(ticks), n).

    ``fresh`` marks the ticks whose cell held a reading; ``first_ts`` is the
    sensor's first reading: the missing fraction counts from the tick that
    closes its cell on (before it, the sensor did not exist).
    """
    stats = [col for w in spec.windows_s for col in window_stats(spec, w, ticks, k, grid)]
    stuck = filters.stuck(ticks, np.where(fresh, grid, np.nan), spec.stuck_window_s,
                          STUCK_MIN_COUNT).astype(np.float64)
    # before its first reading the sensor has no column live: NaN here too
    stuck[ticks < first_ts] = np.nan
    absent = np.where(ticks >= first_ts, np.isnan(grid).astype(np.float64), np.nan)
    missing = rolling.ewma(ticks, absent, spec.missing_halflife_s)
    dev = grid - rolling.ewma(ticks, grid, spec.baseline_halflife_s)
    return np.column_stack([grid, missing, stuck, dev, *stats])


def asset_features(
    spec: PipelineSpec,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    t_start: float,
    t_end: float,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Feature rows of one asset at every tick in (t_start, t_end] while it is active.

    ``series`` maps sensor name to (sorted ts, values), invalid readings included
    (they are judged here, as live does).  Each stretch of activity between two
    silences longer than ``spec.idle_gap_s`` is computed on its own, as live
    starts afresh after one (see ``spec``).  Returns the feature names, the tick
    times and the matrix (ticks × features), NaN where missing.
    """
    c = spec.cadence_s
    first = spec.tick_index(t_start)
    if first * c <= t_start:
        first += 1
    last = spec.tick_index(t_end)
    if last * c > t_end:
        last -= 1
    sensors = sorted(series)
    names = spec.feature_names(sensors)
    arrays = {s: tuple(np.asarray(a, dtype=np.float64) for a in series[s]) for s in sensors}
    # validity runs over the whole series: live keeps its state across a silence
    valid = {s: valid_readings(spec.sensor(s), *arrays[s]) for s in sensors}
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for lo_ts, hi_ts, k_first, k_last in _stretches(spec, arrays, first, last):
        k = np.arange(k_first, k_last + 1, dtype=np.int64)
        stretch = {}
        for s in sensors:
            ts, values = arrays[s]
            inside = (ts >= lo_ts) & (ts <= hi_ts)
            stretch[s] = (ts[inside], values[inside], valid[s][inside])
        parts.append((k * c, _stretch_features(spec, stretch, k)))
    if not parts:
        return names, np.empty(0), np.empty((0, len(names)))
    return (names, np.concatenate([t for t, _ in parts]),
            np.vstack([m for _, m in parts]))


def _stretches(spec: PipelineSpec, arrays: dict[str, tuple[np.ndarray, np.ndarray]],
               first: int, last: int) -> list[tuple[float, float, int, int]]:
    """(first reading, last reading, first tick, last tick) of each stretch of
    activity, its ticks clipped to [first, last]; the first stretch takes every
    reading before it, the last every reading after."""
    every = np.sort(np.concatenate([ts for ts, _ in arrays.values()])) if arrays \
        else np.empty(0)
    cuts = (np.flatnonzero(np.diff(every) > spec.idle_gap_s) if spec.idle_gap_s > 0
            else np.empty(0, dtype=np.intp))
    if len(cuts) == 0:
        return [(-np.inf, np.inf, first, last)] if last >= first else []
    starts = [-np.inf, *every[cuts + 1].tolist()]
    ends = [*every[cuts].tolist(), np.inf]
    out = []
    for j, (lo_ts, hi_ts) in enumerate(zip(starts, ends, strict=True)):
        k_first = first if j == 0 else max(first, spec.tick_index(lo_ts))
        # live closes the cell of the last reading before it starts afresh
        k_last = last if j == len(ends) - 1 else min(last, spec.tick_index(hi_ts))
        if k_last >= k_first:
            out.append((lo_ts, hi_ts, k_first, k_last))
    return out


def _stretch_features(spec: PipelineSpec,
                      stretch: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                      k: np.ndarray) -> np.ndarray:
    """The feature matrix of one stretch: (ts, values, valid) per sensor, ticks k."""
    c = spec.cadence_s
    ticks = k * c
    n = len(k)
    blocks = []
    grids = {}
    for s, (ts, values, ok) in stretch.items():
        settings = spec.sensor(s)
        grid, fresh = grid_values(ts[ok], values[ok], ticks, c, settings.max_gap_s,
                                  settings.max_gap_intervals)
        if settings.clean is not None:
            grid = clean_values(settings.clean, ticks, grid)
        grids[s] = grid
        # Invalid readings included: the sensor exists from its first reading (see spec).
        first_ts = float(ts[0]) if len(ts) else np.inf
        blocks.append(sensor_features(spec, ticks, k, grid, fresh, first_ts))
    missing = np.full(n, np.nan)
    blocks.extend((grids.get(a, missing) - grids.get(b, missing))[:, None]
                  for a, b in spec.differences)
    return np.hstack(blocks) if blocks else np.empty((n, 0))
