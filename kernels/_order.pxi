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
    double *lov         # lov[i] = x[lo[i]]: the sifts compare without an
    double *hiv         # indirection (a dependent load per level saved)
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
    st.lov = <double *> malloc(cap * sizeof(double))
    st.hiv = <double *> malloc(cap * sizeof(double))
    if st.pos == NULL or st.lo == NULL or st.hi == NULL or st.lov == NULL or st.hiv == NULL:
        ord_free(st)
        return -1
    return 0


cdef inline void ord_free(OrderState *st) noexcept nogil:
    free(st.pos)
    free(st.lo)
    free(st.hi)
    free(st.lov)
    free(st.hiv)
    st.pos = NULL
    st.lo = NULL
    st.hi = NULL
    st.lov = NULL
    st.hiv = NULL
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
    cdef double *nlov = NULL
    cdef double *nhiv = NULL
    if newcap <= 0x40000000:    # slot ids must fit slot_t
        npos = <slot_t *> malloc(newcap * sizeof(slot_t))
        nlo = <slot_t *> malloc(newcap * sizeof(slot_t))
        nhi = <slot_t *> malloc(newcap * sizeof(slot_t))
        nlov = <double *> malloc(newcap * sizeof(double))
        nhiv = <double *> malloc(newcap * sizeof(double))
    if (nts == NULL or nx == NULL or npos == NULL or nlo == NULL or nhi == NULL
            or nlov == NULL or nhiv == NULL):
        free(nts)
        free(nx)
        free(npos)
        free(nlo)
        free(nhi)
        free(nlov)
        free(nhiv)
        return -1
    for i in range(size):
        old = (head + i) & oldmask
        nts[i] = win.ts[old]
        nx[i] = win.x[old]
        npos[i] = st.pos[old]
    for i in range(st.n_lo):
        nlo[i] = <slot_t> ((st.lo[i] - head) & oldmask)
        nlov[i] = st.lov[i]
    for i in range(st.n_hi):
        nhi[i] = <slot_t> ((st.hi[i] - head) & oldmask)
        nhiv[i] = st.hiv[i]
    free(win.ts)
    free(win.x)
    free(st.pos)
    free(st.lo)
    free(st.hi)
    free(st.lov)
    free(st.hiv)
    win.ts = nts
    win.x = nx
    win.head = 0
    win.mask = newcap - 1
    st.pos = npos
    st.lo = nlo
    st.hi = nhi
    st.lov = nlov
    st.hiv = nhiv
    st.cap = newcap
    return 0


cdef inline int ord_reserve_one(OrderState *st, Ring *win) noexcept nogil:
    if win.size > win.mask:
        return ord_grow(st, win)
    return 0


# --- heap primitives (each heap keeps its values beside its slots) -----------

cdef inline void lo_up(OrderState *st, Py_ssize_t i) noexcept nogil:
    cdef slot_t node = st.lo[i]
    cdef Py_ssize_t p
    cdef double v = st.lov[i]
    while i > 0:
        p = (i - 1) >> 1
        if st.lov[p] >= v:
            break
        st.lo[i] = st.lo[p]
        st.lov[i] = st.lov[p]
        st.pos[st.lo[i]] = <slot_t> i
        i = p
    st.lo[i] = node
    st.lov[i] = v
    st.pos[node] = <slot_t> i


cdef inline void lo_down(OrderState *st, Py_ssize_t i) noexcept nogil:
    cdef slot_t node = st.lo[i]
    cdef Py_ssize_t c, n = st.n_lo
    cdef double v = st.lov[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and st.lov[c + 1] > st.lov[c]:
            c += 1
        if st.lov[c] <= v:
            break
        st.lo[i] = st.lo[c]
        st.lov[i] = st.lov[c]
        st.pos[st.lo[i]] = <slot_t> i
        i = c
    st.lo[i] = node
    st.lov[i] = v
    st.pos[node] = <slot_t> i


cdef inline void hi_up(OrderState *st, Py_ssize_t i) noexcept nogil:
    cdef slot_t node = st.hi[i]
    cdef Py_ssize_t p
    cdef double v = st.hiv[i]
    while i > 0:
        p = (i - 1) >> 1
        if st.hiv[p] <= v:
            break
        st.hi[i] = st.hi[p]
        st.hiv[i] = st.hiv[p]
        st.pos[st.hi[i]] = <slot_t> (-1 - i)
        i = p
    st.hi[i] = node
    st.hiv[i] = v
    st.pos[node] = <slot_t> (-1 - i)


cdef inline void hi_down(OrderState *st, Py_ssize_t i) noexcept nogil:
    cdef slot_t node = st.hi[i]
    cdef Py_ssize_t c, n = st.n_hi
    cdef double v = st.hiv[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and st.hiv[c + 1] < st.hiv[c]:
            c += 1
        if st.hiv[c] >= v:
            break
        st.hi[i] = st.hi[c]
        st.hiv[i] = st.hiv[c]
        st.pos[st.hi[i]] = <slot_t> (-1 - i)
        i = c
    st.hi[i] = node
    st.hiv[i] = v
    st.pos[node] = <slot_t> (-1 - i)


cdef inline void lo_fix(OrderState *st, Py_ssize_t i) noexcept nogil:
    if i > 0 and st.lov[(i - 1) >> 1] < st.lov[i]:
        lo_up(st, i)
    else:
        lo_down(st, i)


cdef inline void hi_fix(OrderState *st, Py_ssize_t i) noexcept nogil:
    if i > 0 and st.hiv[(i - 1) >> 1] > st.hiv[i]:
        hi_up(st, i)
    else:
        hi_down(st, i)


cdef inline void lo_set(OrderState *st, Py_ssize_t i, Py_ssize_t node, double v) noexcept nogil:
    st.lo[i] = <slot_t> node
    st.lov[i] = v


cdef inline void hi_set(OrderState *st, Py_ssize_t i, Py_ssize_t node, double v) noexcept nogil:
    st.hi[i] = <slot_t> node
    st.hiv[i] = v


cdef inline Py_ssize_t lo_pop(OrderState *st, double *v) noexcept nogil:
    """Remove lo's top; returns its slot, its value in ``v``."""
    cdef Py_ssize_t top = st.lo[0]
    v[0] = st.lov[0]
    st.n_lo -= 1
    if st.n_lo > 0:
        lo_set(st, 0, st.lo[st.n_lo], st.lov[st.n_lo])
        lo_down(st, 0)
    return top


cdef inline Py_ssize_t hi_pop(OrderState *st, double *v) noexcept nogil:
    cdef Py_ssize_t top = st.hi[0]
    v[0] = st.hiv[0]
    st.n_hi -= 1
    if st.n_hi > 0:
        hi_set(st, 0, st.hi[st.n_hi], st.hiv[st.n_hi])
        hi_down(st, 0)
    return top


cdef inline void lo_push(OrderState *st, Py_ssize_t node, double v) noexcept nogil:
    lo_set(st, st.n_lo, node, v)
    st.n_lo += 1
    lo_up(st, st.n_lo - 1)


cdef inline void hi_push(OrderState *st, Py_ssize_t node, double v) noexcept nogil:
    hi_set(st, st.n_hi, node, v)
    st.n_hi += 1
    hi_up(st, st.n_hi - 1)


# --- window operations --------------------------------------------------------

cdef inline Py_ssize_t ord_target(OrderState *st, Py_ssize_t n) noexcept nogil:
    """Size of ``lo``: floor(q·(n - 1)) + 1 (0 for an empty window)."""
    if n == 0:
        return 0
    return <Py_ssize_t> floor(st.q * (n - 1)) + 1


cdef inline void ord_rebalance(OrderState *st) noexcept nogil:
    cdef Py_ssize_t target = ord_target(st, st.n_lo + st.n_hi), node
    cdef double v
    while st.n_lo > target:
        node = lo_pop(st, &v)
        hi_push(st, node, v)
    while st.n_lo < target:
        node = hi_pop(st, &v)
        lo_push(st, node, v)


cdef inline void ord_insert(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    cdef double v = x[node]
    if st.n_lo > 0 and v > st.lov[0]:
        hi_push(st, node, v)
    else:
        lo_push(st, node, v)
    ord_rebalance(st)


cdef inline void ord_remove(OrderState *st, const double *x, Py_ssize_t node) noexcept nogil:
    cdef Py_ssize_t p = st.pos[node], i
    if p >= 0:
        i = p
        st.n_lo -= 1
        if i < st.n_lo:
            lo_set(st, i, st.lo[st.n_lo], st.lov[st.n_lo])
            st.pos[st.lo[i]] = <slot_t> i
            lo_fix(st, i)
    else:
        i = -1 - p
        st.n_hi -= 1
        if i < st.n_hi:
            hi_set(st, i, st.hi[st.n_hi], st.hiv[st.n_hi])
            st.pos[st.hi[i]] = <slot_t> (-1 - i)
            hi_fix(st, i)
    ord_rebalance(st)


cdef inline void ord_replace(OrderState *st, const double *x, Py_ssize_t old,
                             Py_ssize_t new) noexcept nogil:
    """``new`` takes ``old``'s place (sizes unchanged, so no rebalancing)."""
    cdef Py_ssize_t p = st.pos[old], i
    cdef double v = x[new]
    if p >= 0:
        i = p
        if st.n_hi > 0 and v > st.hiv[0]:
            # the newcomer belongs above: hi's smallest moves down into its place
            lo_set(st, i, st.hi[0], st.hiv[0])
            lo_up(st, i)
            hi_set(st, 0, new, v)
            hi_down(st, 0)
        else:
            lo_set(st, i, new, v)
            lo_fix(st, i)
    else:
        i = -1 - p
        if v < st.lov[0]:
            hi_set(st, i, st.lo[0], st.lov[0])
            hi_up(st, i)
            lo_set(st, 0, new, v)
            lo_down(st, 0)
        else:
            hi_set(st, i, new, v)
            hi_fix(st, i)


cdef inline double lerp(double a, double b, double frac) noexcept nogil:
    """a + (b - a)·frac; equal ends give a (so +inf..+inf is +inf); with an
    infinite end the weighted form keeps the infinity's sign (-inf..1 is -inf,
    -inf..+inf is NaN)."""
    if a == b:
        return a
    if not (isfinite(a) and isfinite(b)):
        return (1.0 - frac) * a + frac * b
    return a + (b - a) * frac


cdef inline double ord_value(OrderState *st, Py_ssize_t min_count) noexcept nogil:
    cdef Py_ssize_t n = st.n_lo + st.n_hi
    cdef double pos, k, frac
    if n < min_count or n == 0:
        return NAN
    pos = st.q * (n - 1)
    k = floor(pos)
    frac = pos - k
    if frac == 0.0:
        return st.lov[0]
    return lerp(st.lov[0], st.hiv[0], frac)


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
