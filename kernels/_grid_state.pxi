# The event-time grid's state and steps (textually included by grid.pyx and sensors.pyx;
# the algorithm is described in grid.pyx's "Design:" note).
#
# Needs _order.pxi (``lerp``) included first.  Every function is ``noexcept nogil``.

from libc.math cimport INFINITY, NAN, floor, isfinite
from libc.stdlib cimport calloc
from libc.string cimport memcpy


# Status of a closed cell (grid.pyx exports them as GRID_ABSENT ... GRID_FRESH).
cdef enum:
    ABSENT = 0
    MISSING = 1
    CARRIED = 2
    FRESH = 3


cdef struct GridState:
    double max_gap          # carry limit floor, seconds
    double gap_intervals    # carry limit in typical intervals (0 = max_gap alone)
    double *intervals       # ring of the last n_cap intervals between valid readings
    double *scratch         # n_cap doubles to sort them in
    Py_ssize_t n_cap
    Py_ssize_t n_intervals  # held, <= n_cap
    Py_ssize_t next_slot    # ring slot the next interval goes to
    double carry            # carry limit as of the newest valid reading
    double last_valid_t     # newest valid reading (-inf: none yet)
    double last_t           # newest reading, valid or not (-inf: none yet)
    double cell_sum         # the open cell's valid readings
    Py_ssize_t cell_count
    double last_fresh       # value of the last fresh cell (NaN: none yet)
    double value            # the last closed cell
    unsigned char status


cdef int grid_init(GridState *st, double max_gap, double gap_intervals,
                   Py_ssize_t n_cap) noexcept nogil:
    st.max_gap = max_gap
    st.gap_intervals = gap_intervals
    st.n_cap = n_cap
    # zeroed: the ring's unused slots are pickled too, so equal states pickle equal
    st.intervals = <double *> calloc(2 * n_cap, sizeof(double))
    if st.intervals == NULL:
        st.scratch = NULL
        return -1
    st.scratch = st.intervals + n_cap
    grid_clear(st)
    return 0


cdef inline void grid_clear(GridState *st) noexcept nogil:
    st.n_intervals = 0
    st.next_slot = 0
    st.carry = st.max_gap
    st.last_valid_t = -INFINITY
    st.last_t = -INFINITY
    st.cell_sum = 0.0
    st.cell_count = 0
    st.last_fresh = NAN
    st.value = NAN
    st.status = ABSENT


cdef inline double small_median(double *a, Py_ssize_t n) noexcept nogil:
    """Median of a[0:n] (n >= 1, NaN-free), sorting a in place; as ord_value (q = 0.5)."""
    cdef Py_ssize_t i, j
    cdef double v, pos, k, frac
    for i in range(1, n):       # insertion sort: n is a handful
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v
    pos = 0.5 * (n - 1)
    k = floor(pos)
    frac = pos - k
    if frac == 0.0:
        return a[<Py_ssize_t> k]
    return lerp(a[<Py_ssize_t> k], a[<Py_ssize_t> k + 1], frac)


cdef inline void grid_time(GridState *st, double t, bint valid) noexcept nogil:
    """The timing of one reading: presence, newest reading, interval and carry limit."""
    cdef double limit
    st.last_t = t
    if not valid:
        return
    if st.gap_intervals > 0.0 and st.last_valid_t > -INFINITY:
        st.intervals[st.next_slot] = t - st.last_valid_t
        st.next_slot = (st.next_slot + 1) % st.n_cap
        if st.n_intervals < st.n_cap:
            st.n_intervals += 1
        memcpy(st.scratch, st.intervals, st.n_intervals * sizeof(double))
        limit = st.gap_intervals * small_median(st.scratch, st.n_intervals)
        st.carry = limit if limit > st.max_gap else st.max_gap
    st.last_valid_t = t


cdef inline void grid_add(GridState *st, double t, double v) noexcept nogil:
    """One reading into the open cell (a non-finite v only times it)."""
    cdef bint valid = isfinite(v)
    grid_time(st, t, valid)
    if valid:
        st.cell_sum += v
        st.cell_count += 1


cdef inline void grid_discard(GridState *st) noexcept nogil:
    """Forget the open cell's values, keep its readings' timing (history before the grid)."""
    st.cell_sum = 0.0
    st.cell_count = 0


cdef inline void grid_close(GridState *st, double tick) noexcept nogil:
    """Close the open cell at ``tick``: its value and status; open the next one."""
    if st.cell_count > 0:
        st.value = st.last_fresh = st.cell_sum / st.cell_count
        st.status = FRESH
    elif st.last_fresh == st.last_fresh and tick - st.last_valid_t <= st.carry:
        st.value = st.last_fresh
        st.status = CARRIED
    else:
        st.value = NAN
        st.status = MISSING if st.last_t > -INFINITY else ABSENT
    grid_discard(st)
