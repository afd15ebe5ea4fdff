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

cdef struct ValidityState:
    double lo
    double hi
    double max_rate
    double last_t
    double last_x
    bint has
    bint valid          # verdict on the latest sample
    Py_ssize_t n_invalid


cdef inline void validity_clear(ValidityState *st) noexcept nogil:
    st.has = False
    st.valid = False
    st.last_t = 0.0
    st.last_x = 0.0
    st.n_invalid = 0


cdef inline bint validity_step(ValidityState *st, double t, double v) noexcept nogil:
    cdef bint ok = isfinite(v) and st.lo <= v <= st.hi
    # max_rate = inf turns the rate check off, at dt = 0 too: with no limit set, two
    # different readings at one time (stored readings may repeat a time) both pass.
    if ok and st.has and st.max_rate < INFINITY:
        # fabs(v - last) <= rate * dt; at dt = 0 any change is a jump no finite rate allows
        if t > st.last_t:
            ok = fabs(v - st.last_x) <= st.max_rate * (t - st.last_t)
        else:
            ok = v == st.last_x
    if ok:
        st.has = True
        st.last_t = t
        st.last_x = v
    else:
        st.n_invalid += 1
    st.valid = ok
    return ok


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

cdef struct HampelState:
    OrderState ord      # rolling median (q = 0.5) over the ring
    double *scratch     # deviations for the MAD, capacity ord.cap
    double k            # threshold multiplier
    Py_ssize_t min_count
    double cleaned      # result for the latest sample
    bint outlier


cdef inline void _swap(double *a, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef double t = a[i]
    a[i] = a[j]
    a[j] = t


cdef double select_kth(double *a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """k-th smallest of a[0:n] (0-based), partially reordering a; NaN-free input.

    Quickselect with a median-of-three pivot; on return a[0:k] <= a[k] <= a[k+1:n].
    """
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid
    cdef double pivot
    while hi > lo:
        mid = lo + ((hi - lo) >> 1)
        if a[mid] < a[lo]:
            _swap(a, mid, lo)
        if a[hi] < a[lo]:
            _swap(a, hi, lo)
        if a[hi] < a[mid]:
            _swap(a, hi, mid)
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                _swap(a, i, j)
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


cdef double median_of(double *a, Py_ssize_t n) noexcept nogil:
    """Median of a[0:n] with the same interpolation as ord_value (q = 0.5)."""
    cdef double pos = 0.5 * (n - 1)
    cdef Py_ssize_t k = <Py_ssize_t> floor(pos)
    cdef double frac = pos - k, lo_v, hi_v
    cdef Py_ssize_t i
    lo_v = select_kth(a, n, k)
    if frac == 0.0:
        return lo_v
    hi_v = a[k + 1]
    for i in range(k + 2, n):
        if a[i] < hi_v:
            hi_v = a[i]
    return lerp(lo_v, hi_v, frac)


cdef int hampel_init(HampelState *st, Ring *win, double k, Py_ssize_t min_count) noexcept nogil:
    st.k = k
    st.min_count = min_count
    st.cleaned = NAN
    st.outlier = False
    if ord_init(&st.ord, win, 0.5) < 0:
        st.scratch = NULL
        return -1
    st.scratch = <double *> malloc(st.ord.cap * sizeof(double))
    if st.scratch == NULL:
        ord_free(&st.ord)
        return -1
    return 0


cdef void hampel_free(HampelState *st) noexcept nogil:
    ord_free(&st.ord)
    free(st.scratch)
    st.scratch = NULL


cdef int hampel_step(HampelState *st, Ring *win, double w, double t, double v) noexcept nogil:
    """Push one sample and judge it; -1 on allocation failure."""
    cdef Py_ssize_t cap = st.ord.cap, i, n
    cdef double med, mad
    cdef double *grown
    if ord_stream(&st.ord, win, w, t, v) < 0:
        return -1
    if st.ord.cap != cap:
        grown = <double *> malloc(st.ord.cap * sizeof(double))
        if grown == NULL:
            return -1
        free(st.scratch)
        st.scratch = grown
    st.cleaned = v
    st.outlier = False
    n = st.ord.n_lo + st.ord.n_hi
    if v != v or n < st.min_count or n == 0:
        return 0
    med = ord_value(&st.ord, 1)
    if not isfinite(med):
        return 0
    for i in range(n):
        st.scratch[i] = fabs(win.x[(win.head + i) & win.mask] - med)
    mad = median_of(st.scratch, n)
    if fabs(v - med) > st.k * 1.4826 * mad:
        st.cleaned = med
        st.outlier = True
    return 0


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

cdef struct StuckState:
    double run_value    # value of the current run of equal non-NaN samples
    double run_start    # time of its first sample
    bint has_run
    Py_ssize_t min_count
    double window_s
    double cutoff       # t - window_s of the latest sample


cdef inline void stuck_clear(StuckState *st) noexcept nogil:
    st.has_run = False
    st.run_value = NAN
    st.run_start = 0.0
    st.cutoff = -INFINITY


cdef inline int stuck_step(StuckState *st, Ring *win, double t, double v) noexcept nogil:
    """Push one sample; -1 (state untouched) on allocation failure.

    ``win`` keeps only the latest ``min_count`` non-NaN samples in the window:
    the window holds ``min_count`` or more exactly when they are all in it, so
    the state is O(min_count), not O(window).
    """
    cdef double cutoff = t - st.window_s
    if v == v and t > cutoff and ring_reserve_one(win) < 0:
        return -1
    st.cutoff = cutoff
    while win.size > 0 and ring_front_ts(win) <= cutoff:
        ring_pop_front(win)
    if v != v:
        return 0
    if not st.has_run or v != st.run_value:
        st.has_run = True
        st.run_value = v
        st.run_start = t
    if t > cutoff:
        ring_push_unchecked(win, t, v)
        if win.size > st.min_count:
            ring_pop_front(win)
    return 0


cdef inline bint stuck_value(StuckState *st, Ring *win) noexcept nogil:
    return st.has_run and win.size >= st.min_count and st.run_start <= st.cutoff


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
