# The cleaning kernels' states and steps: validity, Hampel, stuck (textually
# included by filters.pyx and sensors.pyx; the algorithms are described in
# filters.pyx's "Design:" note).
#
# Needs _ring.pxi and _order.pxi included first.  Every function is
# ``noexcept nogil``; allocation failure returns -1.

from libc.math cimport INFINITY, NAN, fabs, floor, isfinite
from libc.stdlib cimport free, malloc


# --- validity -----------------------------------------------------------------

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


# --- Hampel -------------------------------------------------------------------

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


# --- stuck --------------------------------------------------------------------

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
