# cython: language_level=3
# distutils: extra_compile_args = -O3 -fno-math-errno -ffp-contract=off
"""The event-time grid: readings onto ticks, the coarse grid of long windows, idle gaps.

Design:
    As in rolling.pyx and filters.pyx, each kernel is one C state struct with
    inline steps; the batch function runs the same steps over the arrays in a
    nogil loop and the streaming object calls them once per update, so batch
    and streaming give identical numbers by construction.

    to_grid O(1) per tick, O(c²) per reading (c = interval_count: an insertion
            sort of the last c intervals between valid readings).  Cell i is
            (ticks[i-1], ticks[i]] (the first one (ticks[0] - cadence_s,
            ticks[0]]); the streaming object's open cell is whatever was added
            since the last ``close``.  A closed cell shows
              fresh    the mean of its readings, else
              carried  the last fresh value while the newest valid reading is
                       at most the carry limit old, else
              missing  NaN, or
              absent   NaN before the series' first reading of any kind.
            Carry limit, as of the newest valid reading: max(max_gap_s,
            max_gap_intervals × median of the last interval_count intervals
            between valid readings) — one outage does not stretch it, and any
            rate from 10 Hz to hourly gets a sensible carry.  A non-finite x is
            a reading without a value (an invalid one): it makes the series
            present and nothing else.  Readings at or before the first cell
            (history before the ticks asked for) set the timing — carry limit,
            age, presence — but give no value.
    coarse  O(1) per tick and series: coarse cell c holds ticks (c·m − m, c·m]
            (m = stride) and closes at tick c·m with the mean of the finite tick
            values it saw (NaN with none); between closes a tick shows the last
            closed cell.  Long windows run on it, so a window holds ~w/m points.
    idle    O(1) per reading: a reading more than idle_gap_s after the newest
            earlier one starts the series' features afresh (0 = never).

    The median of the intervals interpolates as move_median does (``lerp``
    from _order.pxi), so the carry limit is the one a MoveMedian of the
    intervals would give, bit for bit.
"""

from libc.math cimport INFINITY, NAN, floor, isfinite
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

import numpy as np

include "_ring.pxi"
include "_checks.pxi"
include "_order.pxi"

__all__ = [
    "GRID_ABSENT",
    "GRID_CARRIED",
    "GRID_FRESH",
    "GRID_MISSING",
    "CoarseBank",
    "Grid",
    "IdleGap",
    "coarse_grid",
    "to_grid",
    "idle_restarts",
]

#: Status of a closed grid cell (``to_grid``'s second output, ``Grid.status``).
GRID_ABSENT = 0     # before the series' first reading
GRID_MISSING = 1    # no value: nothing to carry, or the carry limit passed
GRID_CARRIED = 2    # the last fresh value, carried forward
GRID_FRESH = 3      # the mean of the cell's readings

#: ``CoarseBank``'s last tick of a series that has none.
cdef Py_ssize_t NO_TICK = -(2 ** 62)

# ---------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------

# GridState, grid_add, grid_close and the cell status enum
include "_grid_state.pxi"




def _check_nonneg(name, value):
    """A real number >= 0 (inf allowed), returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not v >= 0.0:
        raise ValueError(f"{name} must be >= 0 (may be inf), got {value!r}")
    return v


def _check_carry(max_gap_s, max_gap_intervals, interval_count):
    return (_check_nonneg("max_gap_s", max_gap_s),
            _check_nonneg("max_gap_intervals", max_gap_intervals),
            _check_count("interval_count", interval_count))


def to_grid(ts, x, ticks, cadence_s, max_gap_s, max_gap_intervals, interval_count=5):
    """Readings (ts, x) onto the cells ending at ``ticks``: ``(values f64, status u8)``.

    Cell i is (ticks[i-1], ticks[i]], the first (ticks[0] - cadence_s, ticks[0]].
    ``status`` is ``GRID_FRESH`` (the mean of the cell's readings),
    ``GRID_CARRIED`` (the last fresh value: the newest valid reading is at most
    max(max_gap_s, max_gap_intervals × median of the last ``interval_count``
    intervals between valid readings) old), ``GRID_MISSING`` (NaN) or
    ``GRID_ABSENT`` (NaN, before the first reading).  A non-finite x is a
    reading without a value.  ts and ticks finite and non-decreasing.
    O(len(ts)·c² + len(ticks)), c = interval_count.  Same numbers as ``Grid``.

    >>> values, status = to_grid([1.0, 9.0, 12.0], [1.0, 3.0, 10.0], [10.0, 20.0, 30.0, 40.0],
    ...                       10.0, 25.0, 0.0)
    >>> values.tolist(), status.tolist()
    ([2.0, 10.0, 10.0, nan], [3, 3, 2, 1])
    """
    cdef GridState st
    ts64, x64 = _as_pair(ts, x)
    ticks64 = _as_series("ticks", ticks)
    _check_ts(ticks64)
    cdef double c = _check_positive("cadence_s", cadence_s)
    cdef double gap, per
    cdef Py_ssize_t count
    gap, per, count = _check_carry(max_gap_s, max_gap_intervals, interval_count)
    cdef Py_ssize_t i, j = 0, m = ts64.shape[0], n = ticks64.shape[0]
    values = np.empty(n, dtype=np.float64)
    status = np.empty(n, dtype=np.uint8)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef const double[::1] kv = ticks64
    cdef double[::1] vv = values
    cdef unsigned char[::1] sv = status
    cdef double before
    if n == 0:
        return values, status
    if grid_init(&st, gap, per, count) < 0:
        raise MemoryError("to_grid: cannot allocate the intervals")
    before = kv[0] - c
    with nogil:
        # history before the first cell: its timing counts, its values do not
        while j < m and tv[j] <= before:
            grid_add(&st, tv[j], xv[j])
            j += 1
        grid_discard(&st)
        for i in range(n):
            while j < m and tv[j] <= kv[i]:
                grid_add(&st, tv[j], xv[j])
                j += 1
            grid_close(&st, kv[i])
            vv[i] = st.value
            sv[i] = st.status
    free(st.intervals)
    return values, status


cdef class Grid:
    """Streaming ``to_grid``: ``add`` the readings of the open cell, ``close(tick)`` it.

    The caller decides the cells: every reading added since the last close
    belongs to the cell ``close`` ends, so it must not be later than ``tick``.
    ``value`` and ``status`` are the last closed cell's; ``fresh`` is
    ``status == GRID_FRESH``; ``last_ts`` is the newest reading, valid or not.
    ``to_grid``'s history before its first cell is ``add`` … ``discard()``.

    >>> g = Grid(max_gap_s=25.0, max_gap_intervals=0.0)
    >>> _ = g.add(1.0, 1.0).add(9.0, 3.0).close(10.0)
    >>> g.value, g.fresh, g.add(12.0, 10.0).close(20.0).close(30.0).status
    (2.0, True, 2)
    """

    cdef GridState _st
    cdef double _last_tick

    def __cinit__(self, *args, **kwargs):
        self._st.intervals = NULL

    def __dealloc__(self):
        free(self._st.intervals)

    def __init__(self, max_gap_s, max_gap_intervals, interval_count=5):
        gap, per, count = _check_carry(max_gap_s, max_gap_intervals, interval_count)
        free(self._st.intervals)
        self._st.intervals = NULL
        if grid_init(&self._st, gap, per, count) < 0:
            raise MemoryError("cannot allocate the intervals")
        self._last_tick = -INFINITY

    def reset(self):
        grid_clear(&self._st)
        self._last_tick = -INFINITY
        return self

    def add(self, double ts, double x):
        """One reading of the open cell (ts non-decreasing, after the last tick); self."""
        _check_stream_ts(ts, self._st.last_t)
        if ts <= self._last_tick:
            raise ValueError(f"ts {ts!r} is in a closed cell (the last tick was "
                             f"{self._last_tick!r})")
        grid_add(&self._st, ts, x)
        return self

    def discard(self):
        """Forget the open cell's values but keep its readings' timing (carry limit,
        age, presence): readings before the first cell wanted, as ``to_grid`` treats
        them; returns self."""
        grid_discard(&self._st)
        return self

    def close(self, double tick):
        """Close the open cell at ``tick`` (not before its readings); returns self."""
        _check_stream_ts(tick, self._st.last_t)
        if not tick > self._last_tick:
            raise ValueError(f"tick must increase, got {tick!r} after {self._last_tick!r}")
        grid_close(&self._st, tick)
        self._last_tick = tick
        return self

    @property
    def value(self) -> float:
        return self._st.value

    @property
    def status(self) -> int:
        return self._st.status

    @property
    def fresh(self) -> bool:
        return self._st.status == FRESH

    @property
    def last_ts(self) -> float:
        return self._st.last_t

    @property
    def carry_s(self) -> float:
        """The carry limit as of the newest valid reading."""
        return self._st.carry

    def _init_args(self):
        return (self._st.max_gap, self._st.gap_intervals, self._st.n_cap)

    def __getstate__(self):
        cdef GridState *s = &self._st
        intervals = [s.intervals[i] for i in range(s.n_cap)]
        return {"intervals": intervals, "n_intervals": s.n_intervals,
                "next_slot": s.next_slot, "carry": s.carry,
                "last_valid_t": s.last_valid_t, "last_t": s.last_t,
                "cell_sum": s.cell_sum, "cell_count": s.cell_count,
                "last_fresh": s.last_fresh, "value": s.value, "status": s.status,
                "last_tick": self._last_tick}

    def __setstate__(self, state):
        cdef GridState *s = &self._st
        cdef Py_ssize_t i
        # the ring's indices address C memory: a state from elsewhere is checked first
        if (len(state["intervals"]) != s.n_cap or not 0 <= state["n_intervals"] <= s.n_cap
                or not 0 <= state["next_slot"] < s.n_cap):
            raise ValueError(f"Grid state does not fit a ring of {s.n_cap} intervals")
        for i in range(s.n_cap):
            s.intervals[i] = state["intervals"][i]
        s.n_intervals = state["n_intervals"]
        s.next_slot = state["next_slot"]
        s.carry = state["carry"]
        s.last_valid_t = state["last_valid_t"]
        s.last_t = state["last_t"]
        s.cell_sum = state["cell_sum"]
        s.cell_count = state["cell_count"]
        s.last_fresh = state["last_fresh"]
        s.value = state["value"]
        s.status = state["status"]
        self._last_tick = state["last_tick"]

    def __reduce__(self):
        return (type(self), self._init_args(), self.__getstate__())

    def __repr__(self):
        return "Grid({!r}, {!r}, {!r})".format(*self._init_args())


# ---------------------------------------------------------------------------
# Coarse grid
# ---------------------------------------------------------------------------

cdef inline bint coarse_step(double *sum, Py_ssize_t *count, double *mean, Py_ssize_t k,
                             Py_ssize_t stride, double v) noexcept nogil:
    """One tick value of one series; True (and ``mean`` set, sums cleared) when tick
    k closes a coarse cell."""
    if isfinite(v):
        sum[0] += v
        count[0] += 1
    if k % stride != 0:
        return False
    mean[0] = sum[0] / count[0] if count[0] > 0 else NAN
    sum[0] = 0.0
    count[0] = 0
    return True


def coarse_grid(k_first, x, stride):
    """Tick values x at ticks k_first, k_first + 1, … onto the coarse grid of ``stride``.

    Returns ``(closes int64, means f64, shown int64)``: the tick index closing
    each coarse cell in the range (c·stride) and the mean of the finite tick
    values of that cell within the range (NaN with none); ``shown[i]`` is the
    coarse cell tick i shows — the last one closed at or before it — as an
    index into ``closes``, -1 before the first.  O(len(x)).  Same numbers as
    ``CoarseBank``.

    >>> closes, means, shown = coarse_grid(5, [1.0, 2.0, float("nan"), 4.0, 6.0], 3)
    >>> closes.tolist(), means.tolist(), shown.tolist()
    ([6, 9], [1.5, 5.0], [-1, 0, 0, 0, 1])
    """
    cdef Py_ssize_t k0 = _check_integer("k_first", k_first)
    cdef Py_ssize_t m = _check_count("stride", stride)
    x64 = _as_series("x", x)
    cdef Py_ssize_t i, n = x64.shape[0], n_closed = 0
    closes = np.empty(n // m + 1, dtype=np.intp)
    means = np.empty(n // m + 1, dtype=np.float64)
    shown = np.empty(n, dtype=np.intp)
    cdef const double[::1] xv = x64
    cdef Py_ssize_t[::1] cv = closes
    cdef double[::1] mv = means
    cdef Py_ssize_t[::1] wv = shown
    cdef double total = 0.0
    cdef Py_ssize_t count = 0
    with nogil:
        for i in range(n):
            if coarse_step(&total, &count, &mv[n_closed], k0 + i, m, xv[i]):
                cv[n_closed] = k0 + i
                n_closed += 1
            wv[i] = n_closed - 1
    return closes[:n_closed], means[:n_closed], shown


def _check_integer(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


cdef class CoarseBank:
    """Streaming ``coarse_grid`` for many series, updated one tick at a time.

    ``update(idx, k, x)`` takes tick k's value ``x[j]`` of series ``idx[j]`` (each
    series' ticks increasing by one; a series may skip ticks only across a
    ``reset``) and returns whether tick k closes a coarse cell (k a multiple of
    the stride: the same for every series); ``means(idx)`` gives the means of
    each listed series' last closed cell.  One nogil loop over the listed series.

    >>> c = CoarseBank(3, stride=3)
    >>> c.update([0, 2], 5, [1.0, 7.0])
    False
    >>> c.update([0, 2], 6, [2.0, float("nan")])
    True
    >>> c.means([0, 2]).tolist()
    [1.5, 7.0]
    """

    cdef Py_ssize_t _stride
    cdef object _sums
    cdef object _counts
    cdef object _means
    cdef object _last_k     # per series; NO_TICK before its first tick (or a reset)

    def __init__(self, n_series, stride):
        self._stride = _check_count("stride", stride)
        n = _check_count("n_series", n_series, 0)
        self._sums = np.zeros(n)
        self._counts = np.zeros(n, dtype=np.intp)
        self._means = np.full(n, np.nan)
        self._last_k = np.full(n, NO_TICK, dtype=np.intp)

    @property
    def stride(self) -> int:
        return self._stride

    @property
    def n_series(self) -> int:
        return self._sums.shape[0]

    def reset(self, idx=None):
        """Forget the listed series (all when idx is None); returns self."""
        sel = slice(None) if idx is None else _as_index("idx", idx, self._sums.shape[0])
        self._sums[sel] = 0.0
        self._counts[sel] = 0
        self._means[sel] = np.nan
        self._last_k[sel] = NO_TICK
        return self

    def update(self, idx, k, x):
        """Tick k's value ``x[j]`` of series ``idx[j]``; True when k closes a cell."""
        idx64 = _as_index("idx", idx, self._sums.shape[0])
        cdef Py_ssize_t kk = _check_integer("k", k)
        x64 = _as_series("x", x)
        cdef const Py_ssize_t[::1] iv = idx64
        cdef const double[::1] xv = x64
        cdef double[::1] sv = self._sums
        cdef Py_ssize_t[::1] cv = self._counts
        cdef double[::1] mv = self._means
        cdef Py_ssize_t[::1] lv = self._last_k
        cdef Py_ssize_t j, s, m = iv.shape[0], bad = -1
        if xv.shape[0] != m:
            raise ValueError(f"x must hold one value per listed series ({m}), got {xv.shape[0]}")
        if m > 1 and np.unique(idx64).shape[0] != m:
            raise ValueError("idx must list each series at most once")
        with nogil:
            # checked as a whole first: nothing is applied when a series' tick is off
            for j in range(m):
                if lv[iv[j]] != NO_TICK and kk != lv[iv[j]] + 1:
                    bad = iv[j]
                    break
            if bad < 0:
                for j in range(m):
                    s = iv[j]
                    coarse_step(&sv[s], &cv[s], &mv[s], kk, self._stride, xv[j])
                    lv[s] = kk
        if bad >= 0:
            raise ValueError(f"k must follow series {bad}'s previous tick {lv[bad]}, got {k!r}")
        return kk % self._stride == 0

    def means(self, idx):
        """The means of each listed series' last closed cell (NaN before its first)."""
        return self._means[_as_index("idx", idx, self._sums.shape[0])]


# ---------------------------------------------------------------------------
# Idle gaps
# ---------------------------------------------------------------------------

cdef inline bint idle_step(double *newest, double gap, double t) noexcept nogil:
    """True when t comes more than ``gap`` (> 0) after ``newest``; newest ← max."""
    cdef bint restart = 0.0 < gap < t - newest[0]
    if t > newest[0]:
        newest[0] = t
    return restart


def idle_restarts(ts, idle_gap_s):
    """1 where a reading comes more than ``idle_gap_s`` after the newest earlier one
    (it starts afresh), else 0 (uint8); ``idle_gap_s = 0`` never.  ts sorted.  O(n).

    >>> idle_restarts([0.0, 5.0, 20.0, 21.0], 10.0).tolist()
    [0, 0, 1, 0]
    """
    ts64 = _as_series("ts", ts)
    _check_ts(ts64)
    cdef double gap = _check_nonneg("idle_gap_s", idle_gap_s)
    cdef Py_ssize_t i, n = ts64.shape[0]
    flags = np.empty(n, dtype=np.uint8)
    cdef const double[::1] tv = ts64
    cdef unsigned char[::1] fv = flags
    cdef double newest = INFINITY if n == 0 else tv[0]
    with nogil:
        for i in range(n):
            fv[i] = idle_step(&newest, gap, tv[i])
    return flags


cdef class IdleGap:
    """Streaming ``idle_restarts``: ``update(ts)`` (any order); ``restart`` is 1 when
    that reading started afresh, ``previous_ts`` the newest reading before it.

    >>> g = IdleGap(10.0)
    >>> g.update(0.0).update(5.0).restart, g.update(20.0).restart, g.previous_ts
    (False, True, 5.0)
    """

    cdef double _gap
    cdef double _newest
    cdef double _previous
    cdef bint _restart

    def __init__(self, idle_gap_s):
        self._gap = _check_nonneg("idle_gap_s", idle_gap_s)
        self.reset()

    def reset(self):
        self._newest = -INFINITY
        self._previous = -INFINITY
        self._restart = False
        return self

    def update(self, double ts):
        """One reading; returns self."""
        if not isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts!r}")
        self._previous = self._newest
        if self._newest == -INFINITY:
            # the first reading starts nothing: there was no activity to be idle after
            self._newest = ts
            self._restart = False
        else:
            self._restart = idle_step(&self._newest, self._gap, ts)
        return self

    @property
    def restart(self) -> bool:
        return bool(self._restart)

    @property
    def previous_ts(self) -> float:
        return self._previous

    @property
    def idle_gap_s(self) -> float:
        return self._gap

    def __reduce__(self):
        return (type(self), (self._gap,),
                {"newest": self._newest, "previous": self._previous,
                 "restart": bool(self._restart)})

    def __setstate__(self, state):
        self._newest = state["newest"]
        self._previous = state["previous"]
        self._restart = state["restart"]
