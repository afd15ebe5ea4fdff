# Shared C-level building block of the kernels: a growable FIFO/deque of
# (timestamp, value) pairs, textually included (``include "_ring.pxi"``) by
# rolling.pyx and filters.pyx; every helper is inline.
#
# Design: a power-of-two ring buffer (index & mask), grown by doubling with a
# checked malloc, so pushes are O(1) amortised.  Every function is
# ``noexcept nogil``; allocation failure is reported as -1 and the ring is
# left unchanged, so a caller can report MemoryError after its nogil loop.

from libc.stdlib cimport free, malloc


cdef struct Ring:
    double *ts          # timestamps
    double *x           # values
    Py_ssize_t head     # slot of the oldest element
    Py_ssize_t size     # number of elements held
    Py_ssize_t mask     # capacity - 1 (capacity is a power of two)


cdef inline int ring_init(Ring *r, Py_ssize_t cap) noexcept nogil:
    """Allocate room for at least ``cap`` elements; -1 on allocation failure."""
    cdef Py_ssize_t c = 16
    while c < cap:
        c <<= 1
    r.head = 0
    r.size = 0
    r.ts = <double *> malloc(c * sizeof(double))
    r.x = <double *> malloc(c * sizeof(double))
    if r.ts == NULL or r.x == NULL:
        free(r.ts)
        free(r.x)
        r.ts = NULL
        r.x = NULL
        r.mask = -1
        return -1
    r.mask = c - 1
    return 0


cdef inline void ring_free(Ring *r) noexcept nogil:
    free(r.ts)
    free(r.x)
    r.ts = NULL
    r.x = NULL
    r.size = 0
    r.head = 0
    r.mask = -1


cdef inline int ring_grow(Ring *r) noexcept nogil:
    """Double the capacity, keeping the order; -1 (ring untouched) on failure."""
    cdef Py_ssize_t newcap = 2 * (r.mask + 1)
    cdef Py_ssize_t i, j
    cdef double *nts = <double *> malloc(newcap * sizeof(double))
    cdef double *nx = <double *> malloc(newcap * sizeof(double))
    if nts == NULL or nx == NULL:
        free(nts)
        free(nx)
        return -1
    for i in range(r.size):
        j = (r.head + i) & r.mask
        nts[i] = r.ts[j]
        nx[i] = r.x[j]
    free(r.ts)
    free(r.x)
    r.ts = nts
    r.x = nx
    r.head = 0
    r.mask = newcap - 1
    return 0


cdef inline int ring_reserve_one(Ring *r) noexcept nogil:
    """Make sure one more push cannot fail; -1 on allocation failure."""
    if r.size > r.mask:
        return ring_grow(r)
    return 0


cdef inline void ring_push_unchecked(Ring *r, double t, double v) noexcept nogil:
    """Append at the back; the caller has called ring_reserve_one."""
    cdef Py_ssize_t j = (r.head + r.size) & r.mask
    r.ts[j] = t
    r.x[j] = v
    r.size += 1


cdef inline int ring_push(Ring *r, double t, double v) noexcept nogil:
    if r.size > r.mask:
        if ring_grow(r) < 0:
            return -1
    ring_push_unchecked(r, t, v)
    return 0


cdef inline void ring_pop_front(Ring *r) noexcept nogil:
    r.head = (r.head + 1) & r.mask
    r.size -= 1


cdef inline double ring_front_ts(Ring *r) noexcept nogil:
    return r.ts[r.head]


cdef inline double ring_front_x(Ring *r) noexcept nogil:
    return r.x[r.head]


cdef inline double ring_back_ts(Ring *r) noexcept nogil:
    return r.ts[(r.head + r.size - 1) & r.mask]


cdef inline double ring_back_x(Ring *r) noexcept nogil:
    return r.x[(r.head + r.size - 1) & r.mask]


cdef inline double ring_ts_at(Ring *r, Py_ssize_t i) noexcept nogil:
    """i-th element from the front (0 = oldest)."""
    return r.ts[(r.head + i) & r.mask]


cdef inline double ring_x_at(Ring *r, Py_ssize_t i) noexcept nogil:
    return r.x[(r.head + i) & r.mask]
