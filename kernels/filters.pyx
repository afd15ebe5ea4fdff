# cython: language_level=3
# distutils: extra_compile_args = -O3 -fno-math-errno -ffp-contract=off
"""Cleaning kernels: validity, Hampel outliers, stuck sensors, event-time grid.

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
    grid      O(1) per sample: cell k of the grid covers (t_{k-1}, t_k],
              t_k = t0 + k·step_s; a closed cell holds the mean of its samples,
              or else the previous cell's value while the newest sample at or
              before t_k is at most max_gap_s old, or else NaN with missing = 1.
              Samples may come in any order while their cell is open; a sample
              for a cell already closed is dropped and counted (``n_late``).

    ±Inf: validity → invalid; hampel → ordered naturally (an infinite sample
    is an outlier whenever median and MAD are finite); stuck → equal
    infinities form a run; grid → cell mean as in move_mean (±inf, NaN if
    both signs).
"""

from libc.math cimport INFINITY, NAN, ceil, fabs, isfinite
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

include "_ring.pxi"
include "_checks.pxi"
include "_order.pxi"

__all__ = [
    "GridAccumulator",
    "Hampel",
    "Stuck",
    "Validity",
    "hampel",
    "stuck",
    "to_grid",
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


# ---------------------------------------------------------------------------
# Event-time grid
# ---------------------------------------------------------------------------

cdef struct GridCell:
    double sum          # finite values
    double max_t        # newest sample time in the cell
    Py_ssize_t n        # non-NaN samples
    Py_ssize_t n_pos    # +inf
    Py_ssize_t n_neg    # -inf


cdef struct GridState:
    double t0
    double step
    double max_gap
    Py_ssize_t next_k       # first cell not closed yet
    GridCell *cells         # ring of open cells: cell k at (head + k - next_k) & mask
    Py_ssize_t head
    Py_ssize_t mask
    Py_ssize_t span         # cells in use: k - next_k < span for every open sample
    Py_ssize_t limit        # cells at or beyond next_k + limit are refused (future)
    double last_value       # value of the last closed non-missing cell
    bint has_value
    double t_last           # newest sample time among closed cells
    Py_ssize_t n_late       # dropped: cell already closed
    Py_ssize_t n_outside    # dropped: before the grid, too far ahead, or past its end


cdef inline double grid_tk(GridState *st, Py_ssize_t k) noexcept nogil:
    return st.t0 + k * st.step


cdef inline Py_ssize_t grid_cell_of(GridState *st, double t) noexcept nogil:
    """k with t_{k-1} < t <= t_k, the boundaries computed exactly as grid_tk does."""
    cdef double r = ceil((t - st.t0) / st.step)
    cdef Py_ssize_t k
    if r > 4e18:
        return <Py_ssize_t> 4e18
    if r < -4e18:
        return <Py_ssize_t> -4e18
    k = <Py_ssize_t> r
    while t > grid_tk(st, k):
        k += 1
    while t <= grid_tk(st, k - 1):
        k -= 1
    return k


cdef int grid_init(GridState *st, double t0, double step, double max_gap,
                   Py_ssize_t cap, Py_ssize_t limit) noexcept nogil:
    cdef Py_ssize_t c = 16
    while c < cap:
        c <<= 1
    st.t0 = t0
    st.step = step
    st.max_gap = max_gap
    st.limit = limit
    st.cells = <GridCell *> malloc(c * sizeof(GridCell))
    if st.cells == NULL:
        st.mask = -1
        return -1
    st.mask = c - 1
    memset(st.cells, 0, c * sizeof(GridCell))
    grid_clear(st)
    return 0


cdef inline void grid_clear(GridState *st) noexcept nogil:
    st.next_k = 0
    st.head = 0
    st.span = 0
    st.has_value = False
    st.last_value = NAN
    st.t_last = -INFINITY
    st.n_late = 0
    st.n_outside = 0
    memset(st.cells, 0, (st.mask + 1) * sizeof(GridCell))


cdef int grid_grow(GridState *st, Py_ssize_t need) noexcept nogil:
    """Room for ``need`` open cells (relinearised); -1 on failure."""
    cdef Py_ssize_t cap = st.mask + 1, newcap = cap, i
    cdef GridCell *nc
    while newcap < need:
        newcap <<= 1
    if newcap == cap:
        return 0
    nc = <GridCell *> malloc(newcap * sizeof(GridCell))
    if nc == NULL:
        return -1
    memset(nc, 0, newcap * sizeof(GridCell))
    for i in range(st.span):
        nc[i] = st.cells[(st.head + i) & st.mask]
    free(st.cells)
    st.cells = nc
    st.head = 0
    st.mask = newcap - 1
    return 0


cdef int grid_add(GridState *st, double t, double v) noexcept nogil:
    """Accumulate one sample into its open cell; 1 when dropped, -1 on allocation failure."""
    cdef Py_ssize_t k, off
    cdef GridCell *c
    if v != v:
        return 0
    k = grid_cell_of(st, t)
    if k < st.next_k:
        if st.next_k == 0:
            st.n_outside += 1       # before the grid's first cell
        else:
            st.n_late += 1
        return 1
    off = k - st.next_k
    if off >= st.limit:
        st.n_outside += 1
        return 1
    if off >= st.mask + 1:
        if grid_grow(st, off + 1) < 0:
            return -1
    if off >= st.span:
        st.span = off + 1
    c = &st.cells[(st.head + off) & st.mask]
    c.n += 1
    if v == INFINITY:
        c.n_pos += 1
    elif v == -INFINITY:
        c.n_neg += 1
    else:
        c.sum += v
    if c.n == 1 or t > c.max_t:
        c.max_t = t
    return 0


cdef void grid_close_one(GridState *st, double *value, unsigned char *missing) noexcept nogil:
    """Close cell next_k, writing its value and missing flag."""
    cdef GridCell *c = &st.cells[st.head]
    cdef double tk = grid_tk(st, st.next_k), val
    cdef Py_ssize_t n_fin
    if c.n > 0:
        if c.n_pos > 0:
            val = NAN if c.n_neg > 0 else INFINITY
        elif c.n_neg > 0:
            val = -INFINITY
        else:
            n_fin = c.n - c.n_pos - c.n_neg
            val = c.sum / n_fin
        if c.max_t > st.t_last:
            st.t_last = c.max_t
        st.last_value = val
        st.has_value = True
        value[0] = val
        missing[0] = 0
    elif st.has_value and tk - st.t_last <= st.max_gap:
        value[0] = st.last_value
        missing[0] = 0
    else:
        value[0] = NAN
        missing[0] = 1
    memset(c, 0, sizeof(GridCell))
    st.head = (st.head + 1) & st.mask
    st.next_k += 1
    if st.span > 0:
        st.span -= 1


def _check_grid(t0, step_s, max_gap_s):
    return (_check_real("t0", t0), _check_positive("step_s", step_s),
            _check_nonneg("max_gap_s", max_gap_s))


def _check_nonneg(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not v >= 0.0:
        raise ValueError(f"{name} must be >= 0 (may be inf), got {value!r}")
    return v


def _check_finite_ts(ts64):
    bad = np.flatnonzero(~np.isfinite(ts64))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"ts must be finite, got ts[{i}]={float(ts64[i])!r}")


def to_grid(ts, x, t0, step_s, n, max_gap_s):
    """Place irregular samples on the regular grid t_k = t0 + k·step_s, k < n.

    Returns ``(grid float64[n], missing uint8[n])``: grid[k] is the mean of
    the non-NaN samples with t_{k-1} < ts <= t_k; with none, grid[k - 1]
    carried forward while the newest sample at or before t_k is at most
    ``max_gap_s`` old; else NaN and missing[k] = 1.  ts may be in any order
    (and repeat); samples outside the grid are ignored.  O(len(x) + n).
    Same numbers as ``GridAccumulator`` fed the samples and closed after.
    """
    cdef GridState st
    ts64, x64 = _as_series("ts", ts), _as_series("x", x)
    if ts64.shape[0] != x64.shape[0]:
        raise ValueError(
            f"ts and x must have the same length, got {ts64.shape[0]} and {x64.shape[0]}")
    _check_finite_ts(ts64)
    cdef double ct0, cstep, cgap
    ct0, cstep, cgap = _check_grid(t0, step_s, max_gap_s)
    cdef Py_ssize_t nn = _check_count("n", n, 0)
    grid = np.empty(nn, dtype=np.float64)
    missing = np.empty(nn, dtype=np.uint8)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef double[::1] gv = grid
    cdef unsigned char[::1] mv = missing
    cdef Py_ssize_t i, m = xv.shape[0]
    cdef int rc = 0
    if grid_init(&st, ct0, cstep, cgap, nn, nn) < 0:
        raise MemoryError("to_grid: cannot allocate the cells")
    try:
        with nogil:
            for i in range(m):
                if grid_add(&st, tv[i], xv[i]) < 0:
                    rc = -1
                    break
            if rc == 0:
                for i in range(nn):
                    grid_close_one(&st, &gv[i], &mv[i])
    finally:
        free(st.cells)
    if rc < 0:
        raise MemoryError("to_grid: cannot allocate the cells")
    return grid, missing


cdef class GridAccumulator:
    """Streaming ``to_grid``: ``add`` samples, ``close_until`` emits finished cells.

    Samples may arrive in any order while their cell is open; a sample for a
    closed cell is dropped and counted in ``n_late``; samples before the
    first cell, or more than ``max_open_cells`` cells ahead of the oldest open
    one, are dropped and counted in ``n_outside``.  Cells are closed only by
    ``close_until(t)``: every cell with t_k < t, so a sample stamped exactly
    t_k still lands in cell k when it arrives at or before time t_k.

    >>> g = GridAccumulator(t0=0.0, step_s=1.0, max_gap_s=2.0)
    >>> _ = g.add(0.5, 1.0).add(0.9, 3.0).add(3.2, 5.0)
    >>> values, missing = g.close_until(3.5)
    >>> values.tolist(), missing.tolist()
    ([nan, 2.0, 2.0, nan], [1, 0, 0, 1])
    """

    cdef GridState _st
    cdef Py_ssize_t _max_open

    def __cinit__(self, *args, **kwargs):
        self._st.cells = NULL

    def __dealloc__(self):
        free(self._st.cells)

    def __init__(self, t0, step_s, max_gap_s, max_open_cells=1 << 20):
        ct0, cstep, cgap = _check_grid(t0, step_s, max_gap_s)
        self._max_open = _check_count("max_open_cells", max_open_cells)
        free(self._st.cells)
        self._st.cells = NULL
        if grid_init(&self._st, ct0, cstep, cgap, 16, self._max_open) < 0:
            raise MemoryError("cannot allocate the cells")

    @property
    def t0(self) -> float:
        return self._st.t0

    @property
    def step_s(self) -> float:
        return self._st.step

    @property
    def max_gap_s(self) -> float:
        return self._st.max_gap

    @property
    def next_index(self) -> int:
        """Index k of the next cell ``close_until`` will emit."""
        return self._st.next_k

    @property
    def n_late(self) -> int:
        return self._st.n_late

    @property
    def n_outside(self) -> int:
        return self._st.n_outside

    def reset(self):
        grid_clear(&self._st)
        return self

    def add(self, double ts, double x):
        """Accumulate one sample (any order; NaN x is ignored); returns self."""
        if not isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts!r}")
        if grid_add(&self._st, ts, x) < 0:
            raise MemoryError("cannot grow the cells")
        return self

    def close_until(self, double t):
        """Close every cell with t_k < t; returns ``(values float64, missing uint8)``."""
        cdef Py_ssize_t i, count
        if t != t:
            raise ValueError("t must not be NaN")
        count = grid_cell_of(&self._st, t) - self._st.next_k   # cells with t_k < t
        if count <= 0:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.uint8)
        if count > (1 << 24):
            raise ValueError(
                f"close_until({t!r}) would emit {count} cells from index "
                f"{self._st.next_k}; close in smaller steps")
        values = np.empty(count, dtype=np.float64)
        missing = np.empty(count, dtype=np.uint8)
        cdef double[::1] vv = values
        cdef unsigned char[::1] mv = missing
        for i in range(count):
            grid_close_one(&self._st, &vv[i], &mv[i])
        return values, missing

    def __getstate__(self):
        cdef Py_ssize_t i
        cells = [self._st.cells[(self._st.head + i) & self._st.mask] for i in range(self._st.span)]
        scalars = {
            "next_k": self._st.next_k, "span": self._st.span,
            "last_value": self._st.last_value, "has_value": bool(self._st.has_value),
            "t_last": self._st.t_last, "n_late": self._st.n_late, "n_outside": self._st.n_outside,
        }
        return {"scalars": scalars, "cells": cells}

    def __setstate__(self, state):
        cdef Py_ssize_t i
        sc = state["scalars"]
        cells = state["cells"]
        grid_clear(&self._st)
        if grid_grow(&self._st, len(cells)) < 0:
            raise MemoryError("cannot grow the cells")
        for i in range(len(cells)):
            self._st.cells[i] = cells[i]
        self._st.head = 0
        self._st.span = sc["span"]
        self._st.next_k = sc["next_k"]
        self._st.last_value = sc["last_value"]
        self._st.has_value = sc["has_value"]
        self._st.t_last = sc["t_last"]
        self._st.n_late = sc["n_late"]
        self._st.n_outside = sc["n_outside"]

    def __reduce__(self):
        return (type(self), (self._st.t0, self._st.step, self._st.max_gap, self._max_open),
                self.__getstate__())
