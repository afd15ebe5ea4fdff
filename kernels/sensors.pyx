# cython: language_level=3
# distutils: extra_compile_args = -O3 -fno-math-errno -ffp-contract=off
"""The live per-sensor chain for many series at once: ``SensorBank``.

Design:
    The composition of existing kernels, not a new algorithm: per series,
    filters.pyx's validity, grid.pyx's streaming grid, filters.pyx's Hampel
    filter (optional per series) and stuck flag, and rolling.pyx's event-time
    EWMA (twice: the missing fraction and the baseline), chained as the live
    features run them per sensor (``appliance.features.live``; spec.py names
    the steps):

      reading (t, x)  valid = validity(t, x); grid.add(t, x if valid else NaN)
      tick close      g = grid.close(tick).value; g = hampel(tick, g) if any;
                      missing = ewma_m(tick, isnan(g)); dev = g - ewma_b(tick, g);
                      stuck = stuck(tick, g if the cell was fresh else NaN)

    The state structs and their inline steps are the very ones the single
    objects run (shared textually through _grid_state.pxi, _filters_state.pxi,
    _ewma_state.pxi), so the bank gives the same numbers bit for bit.  One
    C struct per series holds the whole chain (no pointer into itself, so the
    growable array of them may move on realloc); parameters are per series.
    ``close`` runs the chain of the listed series in one nogil loop, so a
    tick costs one Python call for all of them instead of ~six per series.

    Cost per reading: validity O(1) + grid O(c²) (c = interval_count, the
    insertion sort of the last c intervals).  Per tick and series: grid O(1),
    two EWMAs O(1), stuck O(1) amortised, Hampel (when set) O(log w) for the
    median plus O(w) for the MAD, w = samples in its window (one per tick).

    Restart (an asset's fresh start): everything afresh except the validity
    state, which outlives it (as live.py keeps its ``Validity`` objects).
"""

from libc.math cimport INFINITY, NAN, isfinite
from libc.stdint cimport int64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import numpy as np

include "_ring.pxi"
include "_checks.pxi"
include "_order.pxi"
include "_grid_state.pxi"
include "_filters_state.pxi"
include "_ewma_state.pxi"

from appliance.kernels.filters import _check_bounds
from appliance.kernels.grid import _check_carry

__all__ = ["SENSOR_COLUMNS", "SensorBank"]

#: The columns of ``SensorBank.close``'s output.
SENSOR_COLUMNS = ("grid", "missing", "dev", "stuck")

cdef enum:
    N_OUT = 4


cdef struct SensorRow:
    ValidityState val
    double val_last_t       # newest reading: the ordering check (outlives a restart)
    GridState grid
    double last_tick        # the last closed tick (-inf: none since the (re)start)
    bint has_hampel
    double hampel_window
    HampelState hampel
    Ring hampel_win
    EwmaState missing
    EwmaState baseline
    StuckState stuck
    Ring stuck_win


cdef void row_free(SensorRow *s) noexcept nogil:
    free(s.grid.intervals)
    s.grid.intervals = NULL
    if s.has_hampel:
        hampel_free(&s.hampel)
        ring_free(&s.hampel_win)
    ring_free(&s.stuck_win)


cdef void row_restart(SensorRow *s) noexcept nogil:
    """All but the validity state as newly constructed (the buffers keep their size)."""
    grid_clear(&s.grid)
    s.last_tick = -INFINITY
    if s.has_hampel:
        # as Hampel.reset
        s.hampel_win.head = 0
        s.hampel_win.size = 0
        ord_clear(&s.hampel.ord)
        s.hampel.cleaned = NAN
        s.hampel.outlier = False
    ewma_clear(&s.missing)
    ewma_clear(&s.baseline)
    s.stuck_win.head = 0
    s.stuck_win.size = 0
    stuck_clear(&s.stuck)


cdef inline int row_close(SensorRow *s, double tick, double *out) noexcept nogil:
    """One series' tick close; -1 on allocation failure (the row's state is then undefined)."""
    cdef double g
    grid_close(&s.grid, tick)
    s.last_tick = tick
    g = s.grid.value
    if s.has_hampel:
        if hampel_step(&s.hampel, &s.hampel_win, s.hampel_window, tick, g) < 0:
            return -1
        g = s.hampel.cleaned
    ewma_add(&s.missing, tick, 1.0 if g != g else 0.0)
    ewma_add(&s.baseline, tick, g)
    if stuck_step(&s.stuck, &s.stuck_win, tick, g if s.grid.status == FRESH else NAN) < 0:
        return -1
    out[0] = g
    out[1] = s.missing.s
    out[2] = g - s.baseline.s
    out[3] = 1.0 if stuck_value(&s.stuck, &s.stuck_win) else 0.0
    return 0


def _check_hampel(window_s, k, min_count):
    if isinstance(window_s, bool) or not isinstance(window_s, numbers.Real):
        raise TypeError(f"hampel_window_s must be a real number, got {window_s!r}")
    w = float(window_s)
    if w == 0.0:
        return 0.0, 3.0, 3
    if not (w > 0.0 and isfinite(w)):
        raise ValueError(f"hampel_window_s must be 0 (no Hampel filter) or finite and > 0, "
                         f"got {window_s!r}")
    kk = _check_real("hampel_k", k)
    if kk < 0:
        raise ValueError(f"hampel_k must be >= 0, got {k!r}")
    return w, kk, _check_count("hampel_min_count", min_count)


cdef class SensorBank:
    """The per-sensor chain of the live features for many series.

    ``add_series(...)`` appends a series (a row) with its own parameters and
    returns its row number; ``add(row, ts, value)`` takes one reading (its
    validity verdict is returned); ``close(rows, tick, out)`` closes the cell
    ending at ``tick`` for the listed rows and writes one row of
    ``SENSOR_COLUMNS`` (grid value, missing fraction, deviation from baseline,
    stuck flag) per listed row; ``restart(rows)`` starts them afresh but for
    their validity state.  Same numbers, bit for bit, as the single objects
    (``Validity``, ``Grid``, ``Hampel``, ``Ewma``, ``Stuck``) chained as above.  Not thread-safe (like every streaming object).

    >>> bank = SensorBank()
    >>> row = bank.add_series(0.0, 100.0, float("inf"), 30.0, 0.0, 5, 60.0, 600.0, 60.0, 2)
    >>> bank.add(row, 1.0, 50.0), bank.add(row, 2.0, 500.0)
    (True, False)
    >>> out = np.empty((1, 4))
    >>> bank.close(np.array([row]), 10.0, out).tolist()
    [[50.0, 0.0, 0.0, 0.0]]
    """

    cdef SensorRow *_rows
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap

    def __cinit__(self, *args, **kwargs):
        self._rows = NULL
        self._n = 0
        self._cap = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._rows != NULL:
            for i in range(self._n):
                row_free(&self._rows[i])
            free(self._rows)
            self._rows = NULL

    def __init__(self, capacity=16):
        cdef Py_ssize_t cap = _check_count("capacity", capacity, 0)
        if self._rows != NULL or self._n:
            raise RuntimeError("SensorBank.__init__ called twice")
        if cap > 0:
            self._reserve(cap)

    cdef int _reserve(self, Py_ssize_t cap) except -1:
        cdef SensorRow *grown
        if cap <= self._cap:
            return 0
        if cap > (<Py_ssize_t> 1 << 40) // <Py_ssize_t> sizeof(SensorRow):
            raise MemoryError(f"cannot allocate {cap} series")
        grown = <SensorRow *> realloc(self._rows, cap * sizeof(SensorRow))
        if grown == NULL:
            raise MemoryError(f"cannot allocate {cap} series")
        self._rows = grown
        self._cap = cap
        return 0

    def __len__(self):
        return self._n

    @property
    def capacity(self) -> int:
        """Series the bank holds room for (it grows by doubling)."""
        return self._cap

    def add_series(self, valid_min, valid_max, max_rate_per_s, max_gap_s, max_gap_intervals,
                   interval_count, missing_halflife_s, baseline_halflife_s,
                   stuck_window_s, stuck_min_count,
                   hampel_window_s=0.0, hampel_k=3.0, hampel_min_count=3):
        """A new series: ``Validity(valid_min, valid_max, max_rate_per_s)``,
        ``Grid(max_gap_s, max_gap_intervals, interval_count)``,
        ``Hampel(hampel_window_s, hampel_k, hampel_min_count)`` unless
        ``hampel_window_s`` is 0, ``Ewma(missing_halflife_s)``,
        ``Ewma(baseline_halflife_s)``, ``Stuck(stuck_window_s, stuck_min_count)``.
        Returns its row number (0, 1, 2, … in order)."""
        lo, hi, rate = _check_bounds(valid_min, valid_max, max_rate_per_s)
        gap, per, count = _check_carry(max_gap_s, max_gap_intervals, interval_count)
        cdef double missing_hl = _check_positive("missing_halflife_s", missing_halflife_s)
        cdef double baseline_hl = _check_positive("baseline_halflife_s", baseline_halflife_s)
        cdef double stuck_w = _check_positive("stuck_window_s", stuck_window_s)
        cdef Py_ssize_t stuck_mc = _check_count("stuck_min_count", stuck_min_count)
        hw, hk, hmc = _check_hampel(hampel_window_s, hampel_k, hampel_min_count)
        if self._n == self._cap:
            self._reserve(self._cap * 2 if self._cap else 16)
        cdef SensorRow *s = &self._rows[self._n]
        memset(s, 0, sizeof(SensorRow))     # every pointer NULL: row_free is safe at any point
        s.val.lo = lo
        s.val.hi = hi
        s.val.max_rate = rate
        validity_clear(&s.val)
        s.val_last_t = -INFINITY
        s.last_tick = -INFINITY
        if grid_init(&s.grid, gap, per, count) < 0:
            raise MemoryError("cannot allocate the grid's intervals")
        s.has_hampel = hw > 0.0
        s.hampel_window = hw
        if s.has_hampel:
            # as Hampel(window_s, k, min_count): a ring of 16 and its heaps
            if ring_init(&s.hampel_win, 16) < 0:
                s.has_hampel = False
                row_free(s)
                raise MemoryError("cannot allocate the Hampel window")
            if hampel_init(&s.hampel, &s.hampel_win, hk, hmc) < 0:
                ring_free(&s.hampel_win)
                s.has_hampel = False
                row_free(s)
                raise MemoryError("cannot allocate the Hampel heaps")
        s.missing.halflife = missing_hl
        ewma_clear(&s.missing)
        s.baseline.halflife = baseline_hl
        ewma_clear(&s.baseline)
        s.stuck.window_s = stuck_w
        s.stuck.min_count = stuck_mc
        stuck_clear(&s.stuck)
        if ring_init(&s.stuck_win, 16) < 0:
            row_free(s)
            raise MemoryError("cannot allocate the stuck window")
        self._n += 1
        return self._n - 1

    cdef inline SensorRow *_row(self, Py_ssize_t row) except NULL:
        if not 0 <= row < self._n:
            raise IndexError(f"row must be within [0, {self._n}), got {row}")
        return &self._rows[row]

    def add(self, Py_ssize_t row, double ts, double value):
        """One reading of series ``row`` (ts finite, not before its previous reading,
        after its last closed tick); True when it is valid (it then enters the open
        cell; an invalid one only times the series' presence)."""
        cdef SensorRow *s = self._row(row)
        cdef bint valid
        _check_stream_ts(ts, s.val_last_t)
        if ts <= s.last_tick:
            raise ValueError(f"ts {ts!r} is in a closed cell (the last tick was "
                             f"{s.last_tick!r})")
        valid = validity_step(&s.val, ts, value)
        s.val_last_t = ts
        grid_add(&s.grid, ts, value if valid else NAN)
        return True if valid else False

    def last_ts(self, Py_ssize_t row):
        """The newest reading of series ``row`` since its (re)start, valid or not
        (-inf: none)."""
        return self._row(row).grid.last_t

    def n_invalid(self, Py_ssize_t row):
        """Invalid readings of series ``row`` since it was added (restarts included)."""
        return self._row(row).val.n_invalid

    def has_hampel(self, Py_ssize_t row):
        return bool(self._row(row).has_hampel)

    def _rows_arg(self, rows):
        idx = np.ascontiguousarray(rows, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {idx.shape}")
        cdef const int64_t[::1] iv = idx
        cdef Py_ssize_t i, bad = -1, n = self._n
        with nogil:
            for i in range(iv.shape[0]):
                if not 0 <= iv[i] < n:
                    bad = i
                    break
        if bad >= 0:
            raise IndexError(f"rows[{bad}]={iv[bad]} is outside [0, {n})")
        return idx

    def close(self, rows, double tick, out=None):
        """Close the cell ending at ``tick`` for each series in ``rows`` (distinct row
        numbers); returns ``out`` (float64, C-contiguous, shape (len(rows), 4)):
        grid value, missing fraction, deviation from baseline, stuck flag (1.0 / 0.0)
        per listed row.  ``tick`` must be after the row's last tick and not before
        its newest reading.  Rows not listed are untouched."""
        idx = self._rows_arg(rows)
        cdef const int64_t[::1] iv = idx
        cdef Py_ssize_t m = iv.shape[0], i, j, bad = -1
        if out is None:
            out = np.empty((m, N_OUT), dtype=np.float64)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.float64
              or out.shape != (m, N_OUT) or not out.flags.c_contiguous
              or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous float64 array of shape "
                             f"({m}, {N_OUT})")
        cdef double[:, ::1] ov = out
        cdef SensorRow *s
        cdef int why = 0
        cdef int rc = 0
        if not isfinite(tick):
            raise ValueError(f"tick must be finite, got {tick!r}")
        if m == 0:
            return out
        with nogil:
            # every check before any state changes: a refused call closes nothing
            for i in range(m):
                s = &self._rows[iv[i]]
                if not tick > s.last_tick:
                    why = 1
                elif tick < s.grid.last_t:
                    why = 2
                if why:
                    bad = i
                    break
            if not why:
                # a row listed twice would be closed twice at one tick: mark each row's
                # last tick, the old one kept in out (overwritten below), undo on a repeat
                for i in range(m):
                    s = &self._rows[iv[i]]
                    if s.last_tick == tick:
                        why = 3
                        bad = i
                        for j in range(i - 1, -1, -1):
                            self._rows[iv[j]].last_tick = ov[j, 0]
                        break
                    ov[i, 0] = s.last_tick
                    s.last_tick = tick
        if why == 1:
            raise ValueError(f"tick must increase, got {tick!r} after "
                             f"{self._rows[iv[bad]].last_tick!r} (rows[{bad}]={iv[bad]})")
        if why == 2:
            raise ValueError(f"tick {tick!r} is before the newest reading "
                             f"{self._rows[iv[bad]].grid.last_t!r} (rows[{bad}]={iv[bad]})")
        if why == 3:
            raise ValueError(f"rows must be distinct, rows[{bad}]={iv[bad]} is listed twice")
        with nogil:
            for i in range(m):
                if row_close(&self._rows[iv[i]], tick, &ov[i, 0]) < 0:
                    rc = -1
                    bad = i
                    break
        if rc < 0:
            raise MemoryError(f"cannot grow a window of row {iv[bad]} (its state and "
                              f"those after it in rows are now undefined)")
        return out

    def restart(self, rows):
        """Start the listed series afresh (as newly added) but for their validity
        state, which they keep."""
        idx = self._rows_arg(rows)
        cdef const int64_t[::1] iv = idx
        cdef Py_ssize_t i
        with nogil:
            for i in range(iv.shape[0]):
                row_restart(&self._rows[iv[i]])

    def __repr__(self):
        return f"<SensorBank of {self._n} series>"
