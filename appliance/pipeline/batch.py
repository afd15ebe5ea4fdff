"""Batch features over stored history: arrays in, a feature matrix out."""

from __future__ import annotations

import numpy as np

from appliance.kernels import rolling
from appliance.pipeline.spec import PipelineSpec

_BATCH = {
    "mean": rolling.move_mean,
    "std": rolling.move_std,
    "min": rolling.move_min,
    "max": rolling.move_max,
    "slope": rolling.move_slope,
}


def grid_values(ts: np.ndarray, values: np.ndarray, ticks: np.ndarray, cadence_s: float,
                max_gap_s: float) -> np.ndarray:
    """Place readings on the tick grid (see ``spec``): mean per cell, bounded carry-forward.

    ``ts`` must be sorted.  NaN readings count as absent.
    """
    ts = np.asarray(ts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    ts, values = ts[ok], values[ok]
    out = np.full(len(ticks), np.nan)
    if len(ticks) == 0 or len(ts) == 0:
        return out
    # Cell k is (ticks[k] - cadence, ticks[k]]: index of the first tick >= ts.
    cell = np.searchsorted(ticks, ts, side="left")
    inside = (cell < len(ticks)) & (ts > ticks[np.minimum(cell, len(ticks) - 1)] - cadence_s)
    sums = np.bincount(cell[inside], weights=values[inside], minlength=len(ticks))
    counts = np.bincount(cell[inside], minlength=len(ticks))
    has = counts > 0
    out[has] = sums[has] / counts[has]
    # Carry forward the last cell value while the last reading is at most max_gap_s old.
    last_idx = np.searchsorted(ts, ticks, side="right") - 1  # last reading <= tick
    age = np.where(last_idx >= 0, ticks - ts[np.maximum(last_idx, 0)], np.inf)
    filled_idx = np.maximum.accumulate(np.where(has, np.arange(len(ticks)), -1))
    carry = ~has & (filled_idx >= 0) & (age <= max_gap_s)
    out[carry] = out[filled_idx[carry]]
    return out


def sensor_features(spec: PipelineSpec, ticks: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Feature columns of one sensor from its grid values, shape (len(ticks), n)."""
    cols = [grid]
    for w in spec.windows_s:
        cols.extend(_BATCH[stat](ticks, grid, w) for stat in spec.stats)
    return np.column_stack(cols)


def asset_features(
    spec: PipelineSpec,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    t_start: float,
    t_end: float,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Feature rows of one asset at every tick in (t_start, t_end].

    ``series`` maps sensor name to (sorted ts, values).  Returns the feature
    names, the tick times and the matrix (ticks × features), NaN where missing.
    """
    c = spec.cadence_s
    first = spec.tick_index(t_start)
    if first * c <= t_start:
        first += 1
    last = spec.tick_index(t_end)
    if last * c > t_end:
        last -= 1
    n = max(0, last - first + 1)
    ticks = np.arange(first, first + n, dtype=np.int64) * c
    sensors = sorted(series)
    names = spec.feature_names(sensors)
    blocks = [
        sensor_features(spec, ticks, grid_values(*series[s], ticks, c, spec.max_gap_s))
        for s in sensors
    ]
    matrix = np.hstack(blocks) if blocks else np.empty((n, 0))
    return names, ticks, matrix
