"""Slow, obvious NumPy references for every kernel (tests compare against these).

Each function recomputes every output from scratch, O(n·w), straight from the
definition, so that it can be read and checked by eye:

* the window at sample ``i`` holds the samples ``j <= i`` with
  ``ts[i] - window_s < ts[j] <= ts[i]`` (the cut-off is computed as
  ``ts[i] - window_s`` in float64, exactly as the kernels do);
* NaN values are missing: dropped before anything else;
* the output is NaN while fewer than ``min_count`` values remain.

Sums use ``math.fsum`` (correctly rounded), so the references are at least as
accurate as the kernels they check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

__all__ = [
    "ref_coarse_grid",
    "ref_ewma",
    "ref_hampel",
    "ref_idle_restarts",
    "ref_move_change",
    "ref_move_max",
    "ref_move_mean",
    "ref_move_median",
    "ref_move_min",
    "ref_move_quantile",
    "ref_move_slope",
    "ref_move_std",
    "ref_quantile",
    "ref_stuck",
    "ref_to_grid",
    "ref_validity",
    "window_indices",
]


def _f64(a: ArrayLike) -> Array:
    return np.asarray(a, dtype=np.float64)


def window_indices(ts: Array, i: int, window_s: float) -> NDArray[np.intp]:
    """Indices j <= i with ts[i] - window_s < ts[j] <= ts[i]."""
    cutoff = ts[i] - window_s
    j = np.arange(i + 1)
    return j[(ts[: i + 1] > cutoff) & (ts[: i + 1] <= ts[i])]


def _rolling(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int,
             stat: Callable[[Array, Array], float]) -> Array:
    """Apply ``stat(window_ts, window_values)`` to the non-NaN samples of each window."""
    ts = _f64(ts)
    x = _f64(x)
    out = np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):
        j = window_indices(ts, i, window_s)
        keep = ~np.isnan(x[j])
        if keep.sum() >= min_count and keep.any():
            out[i] = stat(ts[j][keep], x[j][keep])
    return out


def _mean(v: Array) -> float:
    pos, neg = bool(np.any(v == np.inf)), bool(np.any(v == -np.inf))
    if pos and neg:
        return math.nan
    if pos:
        return math.inf
    if neg:
        return -math.inf
    return math.fsum(v) / v.shape[0]


def ref_move_mean(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, lambda t, v: _mean(v))


def _std(v: Array) -> float:
    if not np.all(np.isfinite(v)):
        return math.nan
    # shift by one sample first: on 1e9 + noise the mean itself is only known
    # to ulp(1e9), far too coarse to subtract from the samples
    w = v - v[0]
    m = math.fsum(w) / w.shape[0]
    return math.sqrt(math.fsum((w - m) ** 2) / w.shape[0])


def ref_move_std(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, lambda t, v: _std(v))


def ref_move_min(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, lambda t, v: float(np.min(v)))


def ref_move_max(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, lambda t, v: float(np.max(v)))


def _slope(t: Array, v: Array) -> float:
    if not np.all(np.isfinite(v)) or t.shape[0] < 2 or t[0] == t[-1]:
        return math.nan
    t = t - t[0]            # shifted, as in _std
    v = v - v[0]
    tm = math.fsum(t) / t.shape[0]
    vm = math.fsum(v) / v.shape[0]
    stt = math.fsum((t - tm) ** 2)
    if not stt > 0.0:
        return math.nan
    return math.fsum((t - tm) * (v - vm)) / stt


def ref_move_slope(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, _slope)


def ref_quantile(v: ArrayLike, q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's
    default method); equal neighbours give that value (so two +inf give +inf),
    an infinite neighbour wins over a finite one, -inf and +inf give NaN."""
    s = np.sort(_f64(v))
    if s.shape[0] == 0:
        return math.nan
    pos = q * (s.shape[0] - 1)
    lo = math.floor(pos)
    frac = pos - lo
    a = float(s[lo])
    if frac == 0.0:
        return a
    b = float(s[lo + 1])
    if a == b:
        return a
    if not (math.isfinite(a) and math.isfinite(b)):
        return (1.0 - frac) * a + frac * b     # keeps an infinity's sign
    return a + (b - a) * frac


def ref_move_quantile(ts: ArrayLike, x: ArrayLike, window_s: float, q: float,
                      min_count: int = 1) -> Array:
    return _rolling(ts, x, window_s, min_count, lambda t, v: ref_quantile(v, q))


def ref_move_median(ts: ArrayLike, x: ArrayLike, window_s: float, min_count: int = 1) -> Array:
    return ref_move_quantile(ts, x, window_s, 0.5, min_count)


def ref_move_change(ts: ArrayLike, x: ArrayLike, lag_s: float) -> Array:
    """x[i] minus the latest non-NaN x[j] with ts[j] <= ts[i] - lag_s, j < i."""
    ts = _f64(ts)
    x = _f64(x)
    out = np.full(x.shape[0], np.nan)
    with np.errstate(invalid="ignore"):     # inf - inf is NaN, as in the kernel
        for i in range(x.shape[0]):
            old = np.flatnonzero((ts[:i] <= ts[i] - lag_s) & ~np.isnan(x[:i]))
            if old.shape[0]:
                out[i] = x[i] - x[old[-1]]
    return out


def ref_ewma(ts: ArrayLike, x: ArrayLike, halflife_s: float) -> Array:
    """s <- a*s + (1 - a)*x, a = 0.5 ** (dt / halflife_s), dt since the last non-NaN sample."""
    ts = _f64(ts)
    x = _f64(x)
    out = np.full(x.shape[0], np.nan)
    s = math.nan
    t_last = None
    for i in range(x.shape[0]):
        v = float(x[i])
        if not math.isnan(v):
            if t_last is None:
                s = v
            else:
                a = 0.5 ** ((float(ts[i]) - t_last) / halflife_s)
                if a == 0.0:
                    s = v
                elif a < 1.0:
                    if math.isfinite(s) and math.isfinite(v):
                        s = v + a * (s - v)
                    else:
                        s = a * s + (1.0 - a) * v
            t_last = float(ts[i])
        out[i] = s
    return out


# --- cleaning filters --------------------------------------------------------

def ref_validity(ts: ArrayLike, x: ArrayLike, lo: float, hi: float,
                 max_rate: float) -> NDArray[np.uint8]:
    """1 where x is valid: finite, within [lo, hi], and |x - x_last| <= max_rate·dt
    against the last valid sample (at dt = 0 it must equal it); max_rate = inf: no
    rate check at all."""
    ts = _f64(ts)
    x = _f64(x)
    out = np.zeros(x.shape[0], dtype=np.uint8)
    last_t = last_x = None
    for i in range(x.shape[0]):
        t, v = float(ts[i]), float(x[i])
        if not math.isfinite(v) or not (lo <= v <= hi):
            continue
        if last_t is not None and max_rate != math.inf:
            if t > last_t:
                if not abs(v - last_x) <= max_rate * (t - last_t):
                    continue
            elif v != last_x:
                continue
        out[i] = 1
        last_t, last_x = t, v
    return out


def ref_hampel(ts: ArrayLike, x: ArrayLike, window_s: float, k: float = 3.0,
               min_count: int = 3) -> tuple[Array, NDArray[np.uint8]]:
    """Trailing-window Hampel filter: x[i] is an outlier when
    |x[i] - median| > k * 1.4826 * MAD over the window's non-NaN samples
    (x[i] included; at least min_count of them; finite median); an outlier is
    replaced by the median.  NaN stays NaN and is never an outlier."""
    ts = _f64(ts)
    x = _f64(x)
    cleaned = x.copy()
    flag = np.zeros(x.shape[0], dtype=np.uint8)
    for i in range(x.shape[0]):
        if math.isnan(x[i]):
            continue
        j = window_indices(ts, i, window_s)
        v = x[j][~np.isnan(x[j])]
        if v.shape[0] < min_count or v.shape[0] == 0:
            continue
        med = ref_quantile(v, 0.5)
        if not math.isfinite(med):
            continue
        mad = ref_quantile(np.abs(v - med), 0.5)
        if abs(float(x[i]) - med) > k * 1.4826 * mad:
            cleaned[i] = med
            flag[i] = 1
    return cleaned, flag


def ref_stuck(ts: ArrayLike, x: ArrayLike, window_s: float,
              min_count: int = 2) -> NDArray[np.uint8]:
    """1 when the run of equal non-NaN values ending at the latest non-NaN
    sample began at or before ts[i] - window_s, and the window holds at least
    min_count non-NaN samples."""
    ts = _f64(ts)
    x = _f64(x)
    out = np.zeros(x.shape[0], dtype=np.uint8)
    for i in range(x.shape[0]):
        cutoff = ts[i] - window_s
        j = window_indices(ts, i, window_s)
        if np.count_nonzero(~np.isnan(x[j])) < min_count:
            continue
        valid = np.flatnonzero(~np.isnan(x[: i + 1]))
        last = valid[-1]
        start = last
        for r in valid[::-1]:
            if x[r] != x[last]:
                break
            start = r
        if ts[start] <= cutoff:
            out[i] = 1
    return out


# --- event-time grid ---------------------------------------------------------

#: Cell status codes, as ``appliance.kernels.grid``.
ABSENT, MISSING, CARRIED, FRESH = 0, 1, 2, 3


def ref_to_grid(ts: ArrayLike, x: ArrayLike, ticks: ArrayLike, cadence_s: float,
                max_gap_s: float, max_gap_intervals: float, interval_count: int = 5
                ) -> tuple[Array, NDArray[np.uint8]]:
    """Cell i is (ticks[i-1], ticks[i]] (the first (ticks[0] - cadence_s, ticks[0]]).
    Fresh: the mean of its finite readings.  Carried: the last fresh value, while
    the newest finite reading at or before the tick is at most max(max_gap_s,
    max_gap_intervals × median of the last interval_count intervals between finite
    readings up to it) old.  Else missing (NaN), or absent (NaN) while no reading
    of any kind is at or before the tick."""
    ts, x, ticks = _f64(ts), _f64(x), _f64(ticks)
    values = np.full(ticks.shape[0], np.nan)
    status = np.zeros(ticks.shape[0], dtype=np.uint8)
    valid = np.isfinite(x)
    last_fresh = math.nan
    for i, tick in enumerate(ticks):
        lo = ticks[i - 1] if i else tick - cadence_s
        cell = valid & (ts > lo) & (ts <= tick)
        seen = ts[valid & (ts <= tick)]
        if cell.any():
            values[i] = last_fresh = math.fsum(x[cell]) / np.count_nonzero(cell)
            status[i] = FRESH
            continue
        limit = max_gap_s
        intervals = np.diff(seen)[-interval_count:]
        if max_gap_intervals > 0 and intervals.shape[0]:
            limit = max(max_gap_s, max_gap_intervals * ref_quantile(intervals, 0.5))
        if not math.isnan(last_fresh) and tick - seen[-1] <= limit:
            values[i] = last_fresh
            status[i] = CARRIED
        else:
            status[i] = MISSING if np.any(ts <= tick) else ABSENT
    return values, status


def ref_coarse_grid(k_first: int, x: ArrayLike, stride: int
                    ) -> tuple[NDArray[np.intp], Array, NDArray[np.intp]]:
    """Coarse cell c holds ticks (c·stride − stride, c·stride]; it closes at tick
    c·stride with the mean of its finite values within the range (NaN with none);
    tick i shows the last cell closed at or before it (-1: none yet)."""
    x = _f64(x)
    k = k_first + np.arange(x.shape[0])
    closes = k[k % stride == 0]
    means = np.full(closes.shape[0], np.nan)
    for j, c in enumerate(closes):
        v = x[(k > c - stride) & (k <= c)]
        v = v[np.isfinite(v)]
        if v.shape[0]:
            means[j] = math.fsum(v) / v.shape[0]
    shown = np.array([np.count_nonzero(closes <= ki) - 1 for ki in k], dtype=np.intp)
    return closes, means, shown


def ref_idle_restarts(ts: ArrayLike, idle_gap_s: float) -> NDArray[np.uint8]:
    """1 where a reading comes more than idle_gap_s (> 0) after every earlier one."""
    ts = _f64(ts)
    return np.array([idle_gap_s > 0 and i > 0 and ts[i] - ts[:i].max() > idle_gap_s
                     for i in range(ts.shape[0])], dtype=np.uint8)
