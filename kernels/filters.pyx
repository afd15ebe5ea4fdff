# cython: language_level=3
# distutils: extra_compile_args = -O3 -fno-math-errno -ffp-contract=off
"""Cleaning kernels: validity, Hampel outliers, stuck sensors.

Design:
    As in rolling.pyx, each kernel is one C state struct with an inline
    ``step`` that pushes one sample; the batch function runs the same step over
    the arrays in a nogil loop and the streaming object calls it once per
    ``update``, so batch and streaming give identical numbers by construction.

    validity  O(1): a sample is valid when it is finite, within [lo, hi], and
              |x - x_last| <= max_rate · (t - t_last) against the last *valid*
              sample (a sample at the same time as the last valid one must
              equal it; max_rate = inf skips the rate check, dt = 0 included).
              Invalid samples do not move the reference.
    hampel    O(log w) for the rolling median (two heaps, _order.pxi) plus
              O(w) for the MAD (quickselect on the window's deviations).  x is
              an outlier when |x - median| > k · 1.4826 · MAD over the trailing
              window (x included, NaN skipped, at least min_count samples, a
              finite median); an outlier is replaced by the median.
    stuck     O(1) amortised: 1 when the current value has not changed for at
              least window_s (the run of equal non-NaN values began at or before
              t - window_s, so the whole window holds it) and the window holds
              at least min_count samples.  NaN neither breaks nor extends a run.

    ±Inf: validity → invalid; hampel → ordered naturally (an infinite sample
    is an outlier whenever median and MAD are finite); stuck → equal
    infinities form a run.  The event-time grid is in grid.pyx.
"""

from libc.math cimport INFINITY, NAN, fabs, isfinite
from libc.stdlib cimport free, malloc

import numpy as np

include "_ring.pxi"
include "_checks.pxi"
include "_order.pxi"
include "_filters_state.pxi"

__all__ = [
    "Hampel",
    "Stuck",
    "Validity",
    "hampel",
    "stuck",
    "validity",
]


def _prepare_flags(out, n, name):
    """A fresh uint8 array, or the caller's uint8 / bool array viewed as uint8."""
    if out is None:
        return np.empty(n, dtype=np.uint8)
    if isinstance(out, np.ndarray) and out.dtype == np.bool_:
        res = _prepare_out(out, n, name, np.bool_)
        return res.view(np.uint8)
    return _prepare_out(out, n, name, np.uint8)


# ---------------------------------------------------------------------------
# Validity
# ---------------------------------------------------------------------------

# ValidityState, validity_step: _filters_state.pxi


def _check_bounds(lo, hi, max_rate):
    if isinstance(lo, bool) or not isinstance(lo, numbers.Real) or lo != lo:
        raise ValueError(f"lo must be a number (may be -inf), got {lo!r}")
    if isinstance(hi, bool) or not isinstance(hi, numbers.Real) or hi != hi:
        raise ValueError(f"hi must be a number (may be inf), got {hi!r}")
    if not float(lo) <= float(hi):
        raise ValueError(f"lo must be <= hi, got lo={lo!r} > hi={hi!r}")
    if isinstance(max_rate, bool) or not isinstance(max_rate, numbers.Real) \
            or not float(max_rate) > 0.0:
        raise ValueError(f"max_rate must be > 0 (may be inf), got {max_rate!r}")
    return float(lo), float(hi), float(max_rate)


def validity(ts, x, lo, hi, max_rate, out_valid=None):
    """1 where a reading is valid, 0 where not (uint8; ``out_valid`` may be uint8 or bool).

    Algorithm: one pass, O(1) per sample.  Invalid: NaN or ±inf, outside
    [lo, hi], or changing faster than ``max_rate`` (units per second) since
    the last valid sample.  ``lo=-inf, hi=inf, max_rate=inf`` disables a check.

    >>> validity([0.0, 1.0, 2.0], [5.0, 9.0, 6.0], 0.0, 10.0, 1.5).tolist()
    [1, 0, 1]
    """
    cdef ValidityState st
    ts64, x64 = _as_pair(ts, x)
    st.lo, st.hi, st.max_rate = _check_bounds(lo, hi, max_rate)
    res = _prepare_flags(out_valid, x64.shape[0], "out_valid")
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef unsigned char[::1] ov = res
    cdef Py_ssize_t i, n = xv.shape[0]
    validity_clear(&st)
    with nogil:
        for i in range(n):
            ov[i] = validity_step(&st, tv[i], xv[i])
    return out_valid if out_valid is not None else res


cdef class Validity:
    """Streaming validity check; ``value`` equals ``validity`` at the same sample.

    ``n_invalid`` counts the invalid samples seen since construction or reset.
    """

    cdef ValidityState _st
    cdef double _last_t

    def __init__(self, lo, hi, max_rate):
        self._st.lo, self._st.hi, self._st.max_rate = _check_bounds(lo, hi, max_rate)
        self.reset()

    def reset(self):
        validity_clear(&self._st)
        self._last_t = -INFINITY
        return self

    def update(self, double ts, double x):
        """Judge one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        validity_step(&self._st, ts, x)
        self._last_t = ts
        return self

    @property
    def value(self) -> bool:
        return bool(self._st.valid)

    @property
    def n_invalid(self) -> int:
        return self._st.n_invalid

    def __getstate__(self):
        return {"last_t": self._last_t, "acc": self._st}

    def __setstate__(self, state):
        self._st = state["acc"]
        self._last_t = state["last_t"]

    def __reduce__(self):
        return (type(self), (self._st.lo, self._st.hi, self._st.max_rate), self.__getstate__())


# ---------------------------------------------------------------------------
# Hampel
# ---------------------------------------------------------------------------

# HampelState, hampel_step: _filters_state.pxi


def hampel(ts, x, window_s, k=3.0, min_count=3):
    """Hampel outlier filter over the trailing event-time window.

    Returns ``(cleaned float64, is_outlier uint8)``.  x[i] is an outlier when
    |x[i] - median| > k · 1.4826 · MAD of the window's non-NaN samples (x[i]
    included; at least ``min_count`` of them; finite median); it is then
    replaced by the median.  Cost O(log w) for the median plus O(w) for the
    MAD per sample.
    """
    cdef HampelState st
    cdef Ring win
    ts64, x64 = _as_pair(ts, x)
    cdef double w = _check_positive("window_s", window_s)
    cdef double kk = _check_real("k", k)
    if kk < 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    cdef Py_ssize_t mc = _check_count("min_count", min_count)
    cdef Py_ssize_t i, n = x64.shape[0]
    cleaned = np.empty(n, dtype=np.float64)
    flags = np.empty(n, dtype=np.uint8)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef double[::1] cv = cleaned
    cdef unsigned char[::1] fv = flags
    cdef int rc = 0
    if ring_init(&win, 64) < 0:
        raise MemoryError("hampel: cannot allocate the window")
    if hampel_init(&st, &win, kk, mc) < 0:
        ring_free(&win)
        raise MemoryError("hampel: cannot allocate the heaps")
    try:
        with nogil:
            for i in range(n):
                if hampel_step(&st, &win, w, tv[i], xv[i]) < 0:
                    rc = -1
                    break
                cv[i] = st.cleaned
                fv[i] = st.outlier
    finally:
        hampel_free(&st)
        ring_free(&win)
    if rc < 0:
        raise MemoryError("hampel: cannot grow the window")
    return cleaned, flags


cdef class Hampel:
    """Streaming Hampel filter; ``value`` (cleaned) and ``is_outlier`` equal ``hampel``."""

    cdef HampelState _st
    cdef Ring _win
    cdef double _window_s
    cdef double _last_t

    def __cinit__(self, *args, **kwargs):
        if ring_init(&self._win, 16) < 0:
            raise MemoryError("cannot allocate the window buffer")
        if hampel_init(&self._st, &self._win, 3.0, 3) < 0:
            ring_free(&self._win)
            raise MemoryError("cannot allocate the heaps")

    def __dealloc__(self):
        hampel_free(&self._st)
        ring_free(&self._win)

    def __init__(self, window_s, k=3.0, min_count=3):
        self._window_s = _check_positive("window_s", window_s)
        kk = _check_real("k", k)
        if kk < 0:
            raise ValueError(f"k must be >= 0, got {k!r}")
        self._st.k = kk
        self._st.min_count = _check_count("min_count", min_count)
        self.reset()

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def k(self) -> float:
        return self._st.k

    @property
    def min_count(self) -> int:
        return self._st.min_count

    def reset(self):
        self._win.head = 0
        self._win.size = 0
        ord_clear(&self._st.ord)
        self._st.cleaned = NAN
        self._st.outlier = False
        self._last_t = -INFINITY
        return self

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if hampel_step(&self._st, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        """The cleaned latest sample (the median when it was an outlier)."""
        return self._st.cleaned

    @property
    def is_outlier(self) -> bool:
        return bool(self._st.outlier)

    def __getstate__(self):
        cdef Py_ssize_t i, n = self._win.size
        ts = np.empty(n, dtype=np.float64)
        xs = np.empty(n, dtype=np.float64)
        for i in range(n):
            ts[i] = ring_ts_at(&self._win, i)
            xs[i] = ring_x_at(&self._win, i)
        return {"last_t": self._last_t, "ts": ts, "x": xs,
                "cleaned": self._st.cleaned, "outlier": bool(self._st.outlier)}

    def __setstate__(self, state):
        cdef Py_ssize_t i
        ts = np.asarray(state["ts"], dtype=np.float64)
        xs = np.asarray(state["x"], dtype=np.float64)
        self.reset()
        for i in range(ts.shape[0]):
            if ord_reserve_one(&self._st.ord, &self._win) < 0:
                raise MemoryError("cannot grow the window buffer")
            ring_push_unchecked(&self._win, ts[i], xs[i])
            ord_insert(&self._st.ord, self._win.x, (self._win.head + i) & self._win.mask)
        free(self._st.scratch)
        self._st.scratch = <double *> malloc(self._st.ord.cap * sizeof(double))
        if self._st.scratch == NULL:
            raise MemoryError("cannot allocate the MAD buffer")
        self._st.cleaned = state["cleaned"]
        self._st.outlier = state["outlier"]
        self._last_t = state["last_t"]

    def __reduce__(self):
        return (type(self), (self._window_s, self._st.k, self._st.min_count), self.__getstate__())


# ---------------------------------------------------------------------------
# Stuck
# ---------------------------------------------------------------------------

# StuckState, stuck_step: _filters_state.pxi


def stuck(ts, x, window_s, min_count=2):
    """1 where the sensor is stuck: its value has not changed for window_s.

    Precisely: the run of equal non-NaN values that ends at the latest
    non-NaN sample began at or before ts[i] - window_s, and the window
    (ts[i] - window_s, ts[i]] holds at least ``min_count`` non-NaN samples.
    O(1) amortised per sample, O(min_count) memory.  Returns uint8.
    """
    cdef StuckState st
    cdef Ring win
    ts64, x64 = _as_pair(ts, x)
    st.window_s = _check_positive("window_s", window_s)
    st.min_count = _check_count("min_count", min_count)
    cdef Py_ssize_t i, n = x64.shape[0]
    flags = np.empty(n, dtype=np.uint8)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef unsigned char[::1] fv = flags
    cdef int rc = 0
    stuck_clear(&st)
    if ring_init(&win, 64) < 0:
        raise MemoryError("stuck: cannot allocate the window")
    try:
        with nogil:
            for i in range(n):
                if stuck_step(&st, &win, tv[i], xv[i]) < 0:
                    rc = -1
                    break
                fv[i] = stuck_value(&st, &win)
    finally:
        ring_free(&win)
    if rc < 0:
        raise MemoryError("stuck: cannot grow the window")
    return flags


cdef class Stuck:
    """Streaming stuck-sensor flag; ``value`` equals ``stuck`` at the same sample."""

    cdef StuckState _st
    cdef Ring _win
    cdef double _last_t

    def __cinit__(self, *args, **kwargs):
        if ring_init(&self._win, 16) < 0:
            raise MemoryError("cannot allocate the window buffer")

    def __dealloc__(self):
        ring_free(&self._win)

    def __init__(self, window_s, min_count=2):
        self._st.window_s = _check_positive("window_s", window_s)
        self._st.min_count = _check_count("min_count", min_count)
        self.reset()

    @property
    def window_s(self) -> float:
        return self._st.window_s

    @property
    def min_count(self) -> int:
        return self._st.min_count

    def reset(self):
        self._win.head = 0
        self._win.size = 0
        stuck_clear(&self._st)
        self._last_t = -INFINITY
        return self

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if stuck_step(&self._st, &self._win, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> bool:
        return bool(stuck_value(&self._st, &self._win))

    def __getstate__(self):
        cdef Py_ssize_t i, n = self._win.size
        ts = np.empty(n, dtype=np.float64)
        xs = np.empty(n, dtype=np.float64)
        for i in range(n):
            ts[i] = ring_ts_at(&self._win, i)
            xs[i] = ring_x_at(&self._win, i)
        return {"last_t": self._last_t, "ts": ts, "x": xs, "acc": self._st}

    def __setstate__(self, state):
        cdef Py_ssize_t i
        ts = np.asarray(state["ts"], dtype=np.float64)
        xs = np.asarray(state["x"], dtype=np.float64)
        self.reset()
        for i in range(ts.shape[0]):
            if ring_push(&self._win, ts[i], xs[i]) < 0:
                raise MemoryError("cannot grow the window buffer")
        self._st = state["acc"]
        self._last_t = state["last_t"]

    def __reduce__(self):
        return (type(self), (self._st.window_s, self._st.min_count), self.__getstate__())
