"""Batch features over stored history: arrays in, a feature matrix out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from appliance.features.spec import (
    INTERVAL_COUNT,
    STUCK_MIN_COUNT,
    CleanSpec,
    PipelineSpec,
    SensorSpec,
)
from appliance.kernels import filters, grid, rolling

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


def grid_values(ts: np.ndarray, values: np.ndarray, ticks: np.ndarray, cadence_s: float,
                max_gap_s: float, gap_intervals: float) -> tuple[np.ndarray, np.ndarray]:
    """Place readings on the tick grid (``spec``, step 1; ``appliance.kernels.grid.to_grid``).

    ``ts`` must be sorted.  A NaN reading (an invalid one) makes the sensor present
    and nothing else.  Returns the grid and each cell's status (``GRID_FRESH``: the
    cell held a reading, ``GRID_CARRIED``, ``GRID_MISSING``, ``GRID_ABSENT``: before
    the sensor's first reading).
    """
    return grid.to_grid(ts, values, ticks, cadence_s, max_gap_s, gap_intervals, INTERVAL_COUNT)


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
                 values: np.ndarray) -> list[np.ndarray]:
    """The STATS columns of one window at every tick (``k`` = global tick indices)."""
    m = spec.stride(window_s)
    if len(k) == 0:
        return [np.empty(0) for _ in spec.stats]
    if m == 1:  # every tick is a point of its own, as live feeds the bank directly
        return _window_columns(spec, window_s, ticks, values)
    closes, means, shown = grid.coarse_grid(int(k[0]), values, m)
    cols = _window_columns(spec, window_s, closes * spec.cadence_s, means)
    held = shown >= 0
    out = []
    for col in cols:
        full = np.full(len(k), np.nan)
        full[held] = col[shown[held]]
        out.append(full)
    return out


def _window_columns(spec: PipelineSpec, window_s: float, pts: np.ndarray,
                    vals: np.ndarray) -> list[np.ndarray]:
    """The batch kernel of every STATS column over the window's points."""
    return [rolling.ewma(pts, vals, spec.halflife_s(window_s)) if stat == "ewma"
            else _BATCH[stat](pts, vals, window_s) for stat in spec.stats]


def sensor_features(spec: PipelineSpec, ticks: np.ndarray, k: np.ndarray,
                    values: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Feature columns of one sensor from its grid values, shape (len(ticks), n).

    ``status`` is the grid's cell status (``grid_values``).  Before the sensor's
    first reading (``GRID_ABSENT``) live has no column for it, so missing and
    stuck are NaN here too; its other features are NaN there by themselves.
    """
    stats = [col for w in spec.windows_s for col in window_stats(spec, w, ticks, k, values)]
    present = status != grid.GRID_ABSENT
    fresh = status == grid.GRID_FRESH
    stuck = filters.stuck(ticks, np.where(fresh, values, np.nan), spec.stuck_window_s,
                          STUCK_MIN_COUNT).astype(np.float64)
    stuck[~present] = np.nan
    absent = np.where(present, np.isnan(values).astype(np.float64), np.nan)
    missing = rolling.ewma(ticks, absent, spec.missing_halflife_s)
    dev = values - rolling.ewma(ticks, values, spec.baseline_halflife_s)
    return np.column_stack([values, missing, stuck, dev, *stats])


def asset_features(
    spec: PipelineSpec,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    t_start: float,
    t_end: float,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Feature rows of one asset at its ticks in (t_start, t_end], as live makes them.

    ``series`` maps sensor name to (sorted ts, values), invalid readings included
    (they are judged here, as live does).  The asset has ticks only where it has
    data: each stretch of activity between two silences longer than
    ``spec.idle_gap_s`` runs from the tick of its first reading to the tick of
    its last, is computed on its own from its start (as live starts afresh after
    one), and makes no rows during its warm-up (see ``spec``).  Returns the
    feature names, the tick times (``asset_ticks``) and the matrix (ticks ×
    features), NaN where missing.
    """
    c = spec.cadence_s
    sensors = sorted(series)
    names = spec.feature_names(sensors)
    arrays = {s: tuple(np.asarray(a, dtype=np.float64) for a in series[s]) for s in sensors}
    # validity runs over the whole series: live keeps its state across a silence
    valid = {s: valid_readings(spec.sensor(s), *arrays[s]) for s in sensors}
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for lo_ts, hi_ts, k_first, k_rows, k_last in _row_ranges(spec, arrays, t_start, t_end):
        k = np.arange(k_first, k_last + 1, dtype=np.int64)
        stretch = {}
        for s in sensors:
            ts, values = arrays[s]
            inside = (ts >= lo_ts) & (ts <= hi_ts)
            stretch[s] = (ts[inside], values[inside], valid[s][inside])
        kept = k >= k_rows
        parts.append((k[kept] * c, _stretch_features(spec, stretch, k)[kept]))
    if not parts:
        return names, np.empty(0), np.empty((0, len(names)))
    return (names, np.concatenate([t for t, _ in parts]),
            np.vstack([m for _, m in parts]))


def asset_ticks(spec: PipelineSpec, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                t_start: float, t_end: float) -> np.ndarray:
    """The tick times of ``asset_features`` without its features (cheap): to plan a
    data set before the features are computed."""
    parts = [np.arange(k_rows, k_last + 1, dtype=np.int64) * spec.cadence_s
             for _lo, _hi, _k0, k_rows, k_last in _row_ranges(spec, series, t_start, t_end)]
    return np.concatenate(parts) if parts else np.empty(0)


def _row_ranges(spec: PipelineSpec, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                t_start: float, t_end: float) -> list[tuple[float, float, int, int, int]]:
    """Per stretch with rows in (t_start, t_end]: its first and last reading, the tick
    its features start from, its first row's tick (past the warm-up) and its last."""
    c = spec.cadence_s
    first = spec.tick_index(t_start)
    if first * c <= t_start:
        first += 1
    last = spec.tick_index(t_end)
    if last * c > t_end:
        last -= 1
    out = []
    for lo_ts, hi_ts, k_first, k_last in stretches(spec, series):
        # a stretch is computed from its start (its windows fill there) up to t_end
        k_rows = max(first, k_first + spec.warmup_ticks)
        k_last = min(last, k_last)
        if k_last >= k_rows:
            out.append((lo_ts, hi_ts, k_first, k_rows, k_last))
    return out


def stretches(spec: PipelineSpec, series: Mapping[str, tuple[np.ndarray, np.ndarray]]
              ) -> list[tuple[float, float, int, int]]:
    """(first reading, last reading, its tick, its tick) of each stretch of activity:
    the readings between two silences longer than ``spec.idle_gap_s``."""
    every = np.sort(np.concatenate([np.asarray(ts, dtype=np.float64)
                                    for ts, _ in series.values()])) if series \
        else np.empty(0)
    if len(every) == 0:
        return []
    cuts = np.flatnonzero(grid.idle_restarts(every, spec.idle_gap_s))
    starts = every[np.r_[0, cuts]].tolist()
    # live closes the cell of the last reading before it starts afresh
    ends = every[np.r_[cuts - 1, len(every) - 1]].tolist()
    return [(lo, hi, spec.tick_index(lo), spec.tick_index(hi))
            for lo, hi in zip(starts, ends, strict=True)]


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
        # invalid readings go in as NaN: the sensor exists from its first reading (see spec)
        tick_values, status = grid_values(ts, np.where(ok, values, np.nan), ticks, c,
                                          settings.max_gap_s, settings.max_gap_intervals)
        if settings.clean is not None:
            tick_values = clean_values(settings.clean, ticks, tick_values)
        grids[s] = tick_values
        blocks.append(sensor_features(spec, ticks, k, tick_values, status))
    missing = np.full(n, np.nan)
    blocks.extend((grids.get(a, missing) - grids.get(b, missing))[:, None]
                  for a, b in spec.differences)
    return np.hstack(blocks) if blocks else np.empty((n, 0))
