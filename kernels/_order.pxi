# Rolling order statistics (textually included by rolling.pyx and filters.pyx).
#
# Design: the window's samples live in a Ring (see _ring.pxi); a ring slot is
# the node id of its sample.  Two binary heaps of slot ids split the window:
# ``lo`` (max-heap) holds the k + 1 smallest values, k = floor(q·(n - 1)),
# and ``hi`` (min-heap) the rest, so the order statistics k and k + 1 — the
# two neighbours the q-quantile interpolates between — are the two tops.
# ``pos[slot]`` records where each node sits (i >= 0: lo[i]; -1 - i: hi[i]),
# so any node can be removed in O(log w), which event-time windows need: the
# number of samples leaving per step varies.  When one sample leaves and one
# enters, the newcomer takes the leaver's heap position (one sift, no
# rebalancing), as bottleneck does for fixed windows.  Capacity follows the
# ring's: growing it re-numbers the slots, so the heaps are remapped.
# Every function is ``noexcept nogil``; allocation failure returns -1.

from libc.math cimport floor, isfinite
from libc.stdlib cimport free, malloc


ctypedef int slot_t     # 32-bit slot ids and heap positions: half the cache traffic

cdef struct OrderState:
    slot_t *pos         # per ring slot: heap position (see above)
    slot_t *lo          # max-heap of slots
    slot_t *hi          # min-heap of slots
    Py_ssize_t n_lo
    Py_ssize_t n_hi
    Py_ssize_t cap      # capacity of pos / lo / hi (== ring capacity)
    double q


cdef inline int ord_init(OrderState *st, Ring *win, double q) noexcept nogil:
    """Allocate for the ring's current capacity; -1 on failure (nothing held)."""
    cdef Py_ssize_t cap = win.mask + 1
    st.q = q
    st.n_lo = 0
    st.n_hi = 0
    st.cap = cap
    st.pos = <slot_t *> malloc(cap * sizeof(slot_t))
    st.lo = <slot_t *> malloc(cap * sizeof(slot_t))
    st.hi = <slot_t *> malloc(cap * sizeof(slot_t))
    if st.pos == NULL or st.lo == NULL or st.hi == NULL:
        ord_free(st)
        return -1
    return 0


cdef inline void ord_free(OrderState *st) noexcept nogil:
    free(st.pos)
    free(st.lo)
    free(st.hi)
    st.pos = NULL
    st.lo = NULL
    st.hi = NULL
    st.n_lo = 0
    st.n_hi = 0
    st.cap = 0


cdef inline void ord_clear(OrderState *st) noexcept nogil:
    st.n_lo = 0
    st.n_hi = 0


cdef int ord_grow(OrderState *st, Ring *win) noexcept nogil:
    """Double the ring and the heap arrays, renumbering slots; -1 on failure."""
    cdef Py_ssize_t oldmask = win.mask, head = win.head, size = win.size
    cdef Py_ssize_t newcap = 2 * (oldmask + 1), i, old
    cdef double *nts = <double *> malloc(newcap * sizeof(double))
    cdef double *nx = <double *> malloc(newcap * sizeof(double))
    cdef slot_t *npos = NULL
    cdef slot_t *nlo = NULL
    cdef slot_t *nhi = NULL
    if newcap <= 0x40000000:    # slot ids must fit slot_t
        npos = <slot_t *> malloc(newcap * sizeof(slot_t))
        nlo = <slot_t *> malloc(newcap * sizeof(slot_t))
        nhi = <slot_t *> malloc(newcap * sizeof(slot_t))
    if nts == NULL or nx == NULL or npos == NULL or nlo == NULL or nhi == NULL:
        free(nts)
        free(nx)
        free(npos)
        free(nlo)
        free(nhi)
        return -1
    for i in range(size):
        old = (head + i) & oldmask
        nts[i] = win.ts[old]
        nx[i] = win.x[old]
        npos[i] = st.pos[old]
    for i in range(st.n_lo):
        nlo[i] = <slot_t> ((st.lo[i] - head) & oldmask)
    for i in range(st.n_hi):
        nhi[i] = <slot_t> ((st.hi[i] - head) & oldmask)
    free(win.ts)
    free(win.x)
    free(st.pos)
    free(st.lo)
    free(st.hi)
    win.ts = nts
    win.x = nx
    win.head = 0
    win.mask = newcap - 1
    st.pos = npos
    st.lo = nlo
    st.hi = nhi
    st.cap = newcap
    return 0


cdef inline int ord_reserve_one(OrderState *st, Ring *win) noexcept nogil:
    if win.size > win.mask:
        return ord_grow(st, win)
    return 0


# --- heap primitives (values read through the ring) ---------------------------

cdef inline void lo_up(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t node = st.lo[i], p, pn
    cdef double v = x[node]
    while i > 0:
        p = (i - 1) >> 1
        pn = st.lo[p]
        if x[pn] >= v:
            break
        st.lo[i] = pn
        st.pos[pn] = i
        i = p
    st.lo[i] = node
    st.pos[node] = i


cdef inline void lo_down(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t node = st.lo[i], c, n = st.n_lo
    cdef double v = x[node]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and x[st.lo[c + 1]] > x[st.lo[c]]:
            c += 1
        if x[st.lo[c]] <= v:
            break
        st.lo[i] = st.lo[c]
        st.pos[st.lo[i]] = i
        i = c
    st.lo[i] = node
    st.pos[node] = i


cdef inline void hi_up(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t node = st.hi[i], p, pn
    cdef double v = x[node]
    while i > 0:
        p = (i - 1) >> 1
        pn = st.hi[p]
        if x[pn] <= v:
            break
        st.hi[i] = pn
        st.pos[pn] = -1 - i
        i = p
    st.hi[i] = node
    st.pos[node] = -1 - i


cdef inline void hi_down(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t node = st.hi[i], c, n = st.n_hi
    cdef double v = x[node]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and x[st.hi[c + 1]] < x[st.hi[c]]:
            c += 1
        if x[st.hi[c]] >= v:
            break
        st.hi[i] = st.hi[c]
        st.pos[st.hi[i]] = -1 - i
        i = c
    st.hi[i] = node
    st.pos[node] = -1 - i


cdef inline void lo_fix(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    if i > 0 and x[st.lo[(i - 1) >> 1]] < x[st.lo[i]]:
        lo_up(st, x, i)
    else:
        lo_down(st, x, i)


cdef inline void hi_fix(OrderState *st, const double *x, Py_ssize_t i) noexcept nogil:
    if i > 0 and x[st.hi[(i - 1) >> 1]] > x[st.hi[i]]:
        hi_up(st, x, i)
    else:
        hi_down(st, x, i)


cdef inline Py_ssize_t lo_pop(OrderState *st, const double *x) noexcept nogil:
    cdef Py_ssize_t top = st.lo[0]
    st.n_lo -= 1
    if st.n_lo > 0:
        st.lo[0] = st.lo[st.n_lo]
        lo_down(st, x, 0)
    return top


cdef inline Py_ssize_t hi_pop(OrderState *st, const double *x) noexcept nogil:
    cdef Py_ssize_t top = st.hi[0]
    st.n_hi -= 1
    if st.n_hi > 0:
        st.hi[0] = st.hi[st.n_hi]
        hi_down(st, x, 0)
    return top


cdef inline void lo_push(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    st.lo[st.n_lo] = node
    st.n_lo += 1
    lo_up(st, x, st.n_lo - 1)


cdef inline void hi_push(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    st.hi[st.n_hi] = node
    st.n_hi += 1
    hi_up(st, x, st.n_hi - 1)


# --- window operations --------------------------------------------------------

cdef inline Py_ssize_t ord_target(OrderState *st, Py_ssize_t n) noexcept nogil:
    """Size of ``lo``: floor(q·(n - 1)) + 1 (0 for an empty window)."""
    if n == 0:
        return 0
    return <Py_ssize_t> floor(st.q * (n - 1)) + 1


cdef inline void ord_rebalance(OrderState *st, const double *x) noexcept nogil:
    cdef Py_ssize_t target = ord_target(st, st.n_lo + st.n_hi)
    while st.n_lo > target:
        hi_push(st, x, lo_pop(st, x))
    while st.n_lo < target:
        lo_push(st, x, hi_pop(st, x))


cdef inline void ord_insert(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    if st.n_lo > 0 and x[node] > x[st.lo[0]]:
        hi_push(st, x, node)
    else:
        lo_push(st, x, node)
    ord_rebalance(st, x)


cdef inline void ord_remove(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    cdef Py_ssize_t p = st.pos[node], i, last
    if p >= 0:
        i = p
        st.n_lo -= 1
        if i < st.n_lo:
            last = st.lo[st.n_lo]
            st.lo[i] = last
            st.pos[last] = i
            lo_fix(st, x, i)
    else:
        i = -1 - p
        st.n_hi -= 1
        if i < st.n_hi:
            last = st.hi[st.n_hi]
            st.hi[i] = last
            st.pos[last] = -1 - i
            hi_fix(st, x, i)
    ord_rebalance(st, x)


cdef inline void ord_replace(OrderState *st, const double *x, Py_ssize_t old,
                             Py_ssize_t new) noexcept nogil:
    """``new`` takes ``old``'s place (sizes unchanged, so no rebalancing)."""
    cdef Py_ssize_t p = st.pos[old], i, other
    cdef double v = x[new]
    if p >= 0:
        i = p
        if st.n_hi > 0 and v > x[st.hi[0]]:
            # the newcomer belongs above: hi's smallest moves down into its place
            other = st.hi[0]
            st.lo[i] = other
            lo_up(st, x, i)
            st.hi[0] = new
            hi_down(st, x, 0)
        else:
            st.lo[i] = new
            lo_fix(st, x, i)
    else:
        i = -1 - p
        if v < x[st.lo[0]]:
            other = st.lo[0]
            st.hi[i] = other
            hi_up(st, x, i)
            st.lo[0] = new
            lo_down(st, x, 0)
        else:
            st.hi[i] = new
            hi_fix(st, x, i)


cdef inline double lerp(double a, double b, double frac) noexcept nogil:
    """a + (b - a)·frac; equal ends give a (so +inf..+inf is +inf); with an
    infinite end the weighted form keeps the infinity's sign (-inf..1 is -inf,
    -inf..+inf is NaN)."""
    if a == b:
        return a
    if not (isfinite(a) and isfinite(b)):
        return (1.0 - frac) * a + frac * b
    return a + (b - a) * frac


cdef inline double ord_value(OrderState *st, const double *x, Py_ssize_t min_count) noexcept nogil:
    cdef Py_ssize_t n = st.n_lo + st.n_hi
    cdef double pos, k, frac
    if n < min_count or n == 0:
        return NAN
    pos = st.q * (n - 1)
    k = floor(pos)
    frac = pos - k
    if frac == 0.0:
        return x[st.lo[0]]
    return lerp(x[st.lo[0]], x[st.hi[0]], frac)


cdef int ord_stream(OrderState *st, Ring *win, double w, double t, double v) noexcept nogil:
    """Push one sample (the shared driver of batch and streaming); -1 on allocation failure."""
    cdef double cutoff = t - w
    cdef Py_ssize_t pending = -1, slot
    if not (t > cutoff):
        v = NAN
    if v == v and ord_reserve_one(st, win) < 0:
        return -1
    while win.size > 0 and ring_front_ts(win) <= cutoff:
        if pending >= 0:
            ord_remove(st, win.x, pending)
        pending = win.head
        ring_pop_front(win)
    if v == v:
        slot = (win.head + win.size) & win.mask
        ring_push_unchecked(win, t, v)
        if pending >= 0:
            ord_replace(st, win.x, pending, slot)
        else:
            ord_insert(st, win.x, slot)
    elif pending >= 0:
        ord_remove(st, win.x, pending)
    return 0
