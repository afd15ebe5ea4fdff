# cython: language_level=3
# distutils: extra_compile_args = -O3 -fno-math-errno -ffp-contract=off
"""Rolling statistics over event-time windows: batch functions and streaming objects.

Design:
    Window.  At sample i the window holds the samples j <= i with
    ``ts[i] - window_s < ts[j] <= ts[i]`` (event time; irregular spacing and
    duplicate timestamps allowed; ts non-decreasing; a later sample with the
    same timestamp is not yet in sample i's window, as in streaming).  NaN
    values are missing: they never enter a window and are not counted.  The
    output is NaN while fewer than ``min_count`` non-NaN samples are in the
    window.

    One implementation, two drivers.  Each statistic is a small C state
    struct with inline ``add`` / ``remove`` / ``swap`` (remove-then-add fused)
    operations and a ``value``.  The *streaming* driver keeps the window's
    non-NaN samples in a ring buffer; the *batch* driver walks an index over
    the caller's arrays instead (no copy).  Both evict with the same predicate
    ``ts_j <= t - window_s`` in the same order, defer the last eviction so it
    can be fused with the incoming sample, and replay the window into a fresh
    state on the same schedule — so the sequence of floating-point operations
    on the state, and therefore every output bit, is the same in both (the
    tests compare bit for bit; ``-ffp-contract=off`` keeps the compiler from
    fusing differently in the two).  Median / quantile run the very same
    streaming step in both.

    Batch fast path.  When the window is a fixed count k of samples (regular
    sampling, checked first by one vectorised pass over ts) and, for mean /
    std / slope, every x is finite, the kernels run loops with no eviction
    search and no NaN branches; on failure the general driver reruns from
    scratch.  The mean runs the independent stretches between two replays
    interleaved (two dependency chains); min / max use van Herk / Gil-Werman
    blocks (NaN allowed) instead of the deque.

    Sample-count windows.  ``ts=None`` stands for ``ts = 0, 1, 2, …``: the
    window is then the last ``ceil(window_s)`` samples (bottleneck's and
    pandas' integer windows) with the very same results as passing that ts
    and ``ceil(window_s)`` as the window, and the fast paths skip the ts
    check.

    Costs per sample (w = samples in the window):
      mean    running sum of x - anchor (anchor = first value of the window),
              O(1); a steady-state step is one add.
      std     Welford add / remove / replace on x - anchor, O(1), population
              (ddof = 0).
      slope   Welford co-moments of (t - t_anchor, x - x_anchor), O(1).
      min/max monotonic deque of (t, x), O(1) amortised; on a fixed window
              van Herk / Gil-Werman, 3 compare-selects per sample.
      median/quantile  two heaps (max-heap below, min-heap above) with
              positions tracked so any element can be removed, O(log w).
      ewma    event-time exponential weights, O(1).
      change  x now minus the latest sample at least a lag old: a FIFO, O(1)
              amortised.
    Running sums drift and cannot recover from a huge value that has left the
    window, so mean / std / slope replay the window (O(w)) into a fresh state
    after every 8·w + 64 evictions — O(1) amortised — and std / slope also as
    soon as their second moment has shrunk below 1/1024 of its peak since the
    last replay (a cancellation), so the error stays relative to the values
    in the window, not to the whole history.

    ±Inf: counted in the window like any value.  mean → +inf / -inf while only
    one sign of infinity is in the window, NaN when both are; std and slope →
    NaN while any infinity is in the window; min / max / median / quantile
    order infinities naturally (interpolating between an infinity and a finite
    neighbour gives the infinity, between -inf and +inf NaN, equal neighbours
    that value); ewma follows IEEE (an infinity is never forgotten by
    exponential weights; both signs give NaN) until ``reset()``.
    Finite values beyond ~1e150 in magnitude may overflow the squares of std
    and slope; that range is not supported.

    RollingBank runs the streaming steps of mean, std, min, max, median,
    slope, change and EWMA for many series in one nogil loop sharing one ring
    per series (same numbers as the single objects).
"""

cimport cython
from libc.math cimport INFINITY, NAN, ceil, exp2, expm1, fabs, floor, isfinite, sqrt
from libc.stdlib cimport free, malloc, realloc

import numpy as np

include "_ring.pxi"
include "_checks.pxi"
include "_order.pxi"

__all__ = [
    "BANK_COLUMNS",
    "Ewma",
    "MoveChange",
    "MoveMax",
    "MoveMean",
    "MoveMedian",
    "MoveMin",
    "MoveQuantile",
    "MoveSlope",
    "MoveStd",
    "RollingBank",
    "ewma",
    "move_change",
    "move_max",
    "move_mean",
    "move_median",
    "move_min",
    "move_quantile",
    "move_slope",
    "move_std",
]


# ---------------------------------------------------------------------------
# Accumulator states: mean (running sum), std (Welford), slope (co-moments)
# ---------------------------------------------------------------------------

cdef struct SumState:
    double anchor       # first finite value of the current run; s is relative to it
    double s            # sum of (x - anchor) over the finite values in the window
    double inv_n        # 1 / n_fin, cached (a steady-state step does not change n)
    Py_ssize_t n_fin    # finite values in the window
    Py_ssize_t n_pos    # +inf in the window
    Py_ssize_t n_neg    # -inf in the window
    Py_ssize_t removed  # evictions since the last replay


cdef struct WelfordState:
    double anchor
    double mean         # mean of (x - anchor)
    double m2           # sum of squared deviations
    double peak         # largest m2 since the last replay
    double inv_n
    Py_ssize_t n_fin
    Py_ssize_t n_pos
    Py_ssize_t n_neg
    Py_ssize_t removed


cdef struct SlopeState:
    double ta           # time anchor
    double xa           # value anchor
    double mt           # mean of (t - ta)
    double mx           # mean of (x - xa)
    double ctt          # sum of (t - mt)^2
    double ctx          # sum of (t - mt)(x - mx)
    double peak         # largest ctt since the last replay
    Py_ssize_t n_fin
    Py_ssize_t n_inf
    Py_ssize_t removed


ctypedef fused Acc:
    SumState
    WelfordState
    SlopeState


cdef inline void acc_clear(Acc *st) noexcept nogil:
    st.n_fin = 0
    st.removed = 0
    if Acc is not SumState:
        st.peak = 0.0
    if Acc is SlopeState:
        st.ta = 0.0
        st.xa = 0.0
        st.mt = 0.0
        st.mx = 0.0
        st.ctt = 0.0
        st.ctx = 0.0
        st.n_inf = 0
    else:
        st.anchor = 0.0
        st.inv_n = 0.0
        st.n_pos = 0
        st.n_neg = 0
        if Acc is SumState:
            st.s = 0.0
        else:
            st.mean = 0.0
            st.m2 = 0.0


cdef inline Py_ssize_t acc_count(Acc *st) noexcept nogil:
    if Acc is SlopeState:
        return st.n_fin + st.n_inf
    else:
        return st.n_fin + st.n_pos + st.n_neg


cdef inline bint acc_replay_due(Acc *st) noexcept nogil:
    """Replay after 8·n + 64 evictions, or at once after a cancellation.

    Every add / remove commits a rounding error of at most a few ulp of the
    largest squared deviation seen since the last replay (``peak``); once the
    second moment has shrunk below 1/1024 of that, those errors could dominate
    it, so the window is summed afresh.  This keeps std and slope within
    ~2e3·ε·(evictions) relative, and exactly 0 on a window that became constant.
    """
    if Acc is SumState:
        return st.removed > 8 * st.n_fin + 64
    elif Acc is WelfordState:
        return st.removed > 8 * st.n_fin + 64 or st.m2 * 1024.0 < st.peak
    else:
        return st.removed > 8 * st.n_fin + 64 or st.ctt * 1024.0 < st.peak


cdef inline void acc_add(Acc *st, double t, double v) noexcept nogil:
    """Add one non-NaN sample."""
    cdef double y, d, u, du, dy, inv
    if Acc is SlopeState:
        if not isfinite(v):
            st.n_inf += 1
            return
        if st.n_fin == 0:
            st.ta = t
            st.xa = v
            st.mt = 0.0
            st.mx = 0.0
            st.ctt = 0.0
            st.ctx = 0.0
        st.n_fin += 1
        inv = 1.0 / st.n_fin
        u = t - st.ta
        y = v - st.xa
        du = u - st.mt
        st.mt += du * inv
        dy = y - st.mx
        st.mx += dy * inv
        st.ctt += du * (u - st.mt)
        st.ctx += du * (y - st.mx)
        if st.ctt > st.peak:
            st.peak = st.ctt
    else:
        if v == INFINITY:
            st.n_pos += 1
            return
        if v == -INFINITY:
            st.n_neg += 1
            return
        if st.n_fin == 0:
            st.anchor = v
            if Acc is SumState:
                st.s = 0.0
            else:
                st.mean = 0.0
                st.m2 = 0.0
        st.n_fin += 1
        st.inv_n = 1.0 / st.n_fin
        y = v - st.anchor
        if Acc is SumState:
            st.s += y
        else:
            d = y - st.mean
            st.mean += d * st.inv_n
            st.m2 += d * (y - st.mean)
            if st.m2 > st.peak:
                st.peak = st.m2


cdef inline void acc_remove(Acc *st, double t, double v) noexcept nogil:
    """Remove one non-NaN sample that is in the window."""
    cdef double y, d, u, du, dy, inv
    st.removed += 1
    if Acc is SlopeState:
        if not isfinite(v):
            st.n_inf -= 1
            return
        if st.n_fin == 1:
            st.n_fin = 0
            st.mt = 0.0
            st.mx = 0.0
            st.ctt = 0.0
            st.ctx = 0.0
            return
        st.n_fin -= 1
        inv = 1.0 / st.n_fin
        u = t - st.ta
        y = v - st.xa
        du = u - st.mt
        st.mt -= du * inv
        dy = y - st.mx
        st.mx -= dy * inv
        st.ctt -= du * (u - st.mt)
        st.ctx -= du * (y - st.mx)
        if st.n_fin == 1:
            st.ctt = 0.0
            st.ctx = 0.0
    else:
        if v == INFINITY:
            st.n_pos -= 1
            return
        if v == -INFINITY:
            st.n_neg -= 1
            return
        if st.n_fin == 1:
            st.n_fin = 0
            st.inv_n = 0.0
            if Acc is SumState:
                st.s = 0.0
            else:
                st.mean = 0.0
                st.m2 = 0.0
            return
        st.n_fin -= 1
        st.inv_n = 1.0 / st.n_fin
        y = v - st.anchor
        if Acc is SumState:
            st.s -= y
        else:
            d = y - st.mean
            st.mean -= d * st.inv_n
            st.m2 -= d * (y - st.mean)
            if st.n_fin == 1:
                st.m2 = 0.0


cdef inline void acc_swap(Acc *st, double told, double vold, double t, double v) noexcept nogil:
    """Remove (told, vold) and add (t, v) — one fused step when both are finite."""
    if Acc is not SlopeState:
        if not (isfinite(vold) and isfinite(v)):
            acc_remove(st, told, vold)
            acc_add(st, t, v)
            return
    acc_swap_finite(st, told, vold, t, v)


cdef inline void acc_swap_finite(Acc *st, double told, double vold, double t, double v) noexcept nogil:
    """acc_swap when vold and v are known to be finite."""
    cdef double yo, yn, d, mo
    if Acc is SlopeState:
        acc_remove(st, told, vold)
        acc_add(st, t, v)
    else:
        st.removed += 1
        if st.n_fin == 1:
            # a one-sample window: restart exactly at the new value
            st.anchor = v
            if Acc is SumState:
                st.s = 0.0
            else:
                st.mean = 0.0
                st.m2 = 0.0
            return
        if Acc is SumState:
            st.s += v - vold
        else:
            yo = vold - st.anchor
            yn = v - st.anchor
            d = yn - yo
            mo = st.mean
            st.mean = mo + d * st.inv_n
            st.m2 += d * ((yn - st.mean) + (yo - mo))
            if st.m2 > st.peak:
                st.peak = st.m2


cdef inline double sum_mean(SumState *st, Py_ssize_t min_count) noexcept nogil:
    if st.n_fin + st.n_pos + st.n_neg < min_count:
        return NAN
    if st.n_pos > 0:
        return NAN if st.n_neg > 0 else INFINITY
    if st.n_neg > 0:
        return -INFINITY
    return st.anchor + st.s * st.inv_n


cdef inline double welford_std(WelfordState *st, Py_ssize_t min_count) noexcept nogil:
    if st.n_fin + st.n_pos + st.n_neg < min_count:
        return NAN
    if st.n_pos > 0 or st.n_neg > 0:
        return NAN
    if st.m2 <= 0.0 or st.n_fin == 1:
        return 0.0
    return sqrt(st.m2 * st.inv_n)


cdef inline double slope_value(SlopeState *st, Py_ssize_t min_count,
                               double t_old, double t_new) noexcept nogil:
    """t_old / t_new: first / last timestamp of the non-NaN samples in the window."""
    if st.n_fin + st.n_inf < min_count or st.n_inf > 0:
        return NAN
    if st.n_fin < 2 or not (t_new > t_old) or not (st.ctt > 0.0):
        return NAN
    return st.ctx / st.ctt


cdef inline double acc_value(Acc *st, Py_ssize_t min_count, double t_old, double t_new) noexcept nogil:
    if Acc is SumState:
        return sum_mean(st, min_count)
    elif Acc is WelfordState:
        return welford_std(st, min_count)
    else:
        return slope_value(st, min_count, t_old, t_new)


cdef void acc_batch(Acc *st, const double *ts, const double *x, Py_ssize_t n, double w,
                    Py_ssize_t min_count, double *out) noexcept nogil:
    """Batch driver: the window is the index range [lo, i] of the caller's arrays."""
    cdef Py_ssize_t i, j, lo = 0, first = 0, last = 0
    cdef double t, cutoff, v, u, pt = 0.0, pv = 0.0
    cdef bint pending
    # Work on a local copy: the compiler can then keep the state in registers
    # (``out`` could alias ``*st`` as far as it knows).
    cdef Acc loc
    cdef Acc *sp = &loc
    acc_clear(sp)
    for i in range(n):
        t = ts[i]
        cutoff = t - w
        pending = False
        while lo < i and ts[lo] <= cutoff:
            u = x[lo]
            if u == u:
                if pending:
                    acc_remove(sp, pt, pv)
                pt = ts[lo]
                pv = u
                pending = True
            lo += 1
        v = x[i]
        if not (t > cutoff):
            # window_s is below the resolution of t: sample i is in no window
            lo = i + 1
            v = NAN
        if v == v:
            if pending:
                acc_swap(sp, pt, pv, t, v)
            else:
                acc_add(sp, t, v)
            last = i
        elif pending:
            acc_remove(sp, pt, pv)
        if acc_replay_due(sp):
            acc_clear(sp)
            for j in range(lo, i + 1):
                if x[j] == x[j]:
                    acc_add(sp, ts[j], x[j])
        if Acc is SlopeState:
            if first < lo:
                first = lo
            while first < i and x[first] != x[first]:
                first += 1
            if first <= i:
                out[i] = slope_value(sp, min_count, ts[first], ts[last])
            else:
                out[i] = NAN    # sample i was in no window (see above)
        else:
            out[i] = acc_value(sp, min_count, 0.0, 0.0)
    st[0] = loc


cdef inline Py_ssize_t count_at_end(const double *ts, Py_ssize_t n, double w) noexcept nogil:
    """Samples in the window of the last sample, by bisection (ts assumed sorted)."""
    cdef double cutoff = ts[n - 1] - w
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:          # first index with ts > cutoff
        mid = (lo + hi) >> 1
        if ts[mid] > cutoff:
            hi = mid
        else:
            lo = mid + 1
    return n - lo


cdef bint fixed_window(const double *ts, Py_ssize_t n, double w, Py_ssize_t k) noexcept nogil:
    """True when the window at every i is exactly the last min(i + 1, k) samples.

    That is: ts is finite and non-decreasing, sample 0 is in the window of
    every i < k, and for i >= k sample i - k has left the window of i while
    sample i - k + 1 is in it (the very predicates of the general drivers).
    Written so the compiler vectorises it (a count of failures in a double:
    GCC does not vectorise a compare into an integer flag), ~0.9 ns per
    sample; the fast paths' loops then need no checks of their own.
    False for k < 1 (a window_s below the resolution of ts holds no sample).
    """
    cdef Py_ssize_t i, m = k if k < n else n
    cdef double t0 = ts[0], c, bad = 0.0
    if k < 1 or not (isfinite(t0) and isfinite(ts[n - 1])):
        return False
    for i in range(1, m):
        bad += 1.0 if (ts[i] < ts[i - 1]) | (not (t0 > ts[i] - w)) else 0.0
    for i in range(m, n):
        c = ts[i] - w
        bad += 1.0 if (ts[i] < ts[i - 1]) | (ts[i - k] > c) | (not (ts[i - k + 1] > c)) else 0.0
    return bad == 0.0


cdef bint finite_values(const double *x, Py_ssize_t n) noexcept nogil:
    """True when every x is finite (a branch-free pass, vectorised)."""
    cdef Py_ssize_t i
    cdef int ok = 1
    for i in range(n):
        ok &= (x[i] - x[i]) == 0.0
    return ok


cdef inline bint finite_state(Acc *st) noexcept nogil:
    """No ±inf counted in the state and its sums finite.

    Once a NaN or an infinity enters a running sum it never leaves it (NaN
    stays NaN, inf + finite stays inf, inf - inf is NaN), so checking the
    state before each replay proves that every x the fast path met was finite.
    """
    if Acc is SumState:
        return st.n_pos == 0 and st.n_neg == 0 and isfinite(st.s)
    elif Acc is WelfordState:
        return st.n_pos == 0 and st.n_neg == 0 and isfinite(st.mean) and isfinite(st.m2)
    else:
        return st.n_inf == 0 and isfinite(st.ctt) and isfinite(st.ctx)


cdef inline void acc_replay(Acc *st, const double *ts, const double *x, Py_ssize_t lo,
                            Py_ssize_t hi) noexcept nogil:
    """A fresh state of the samples [lo, hi), all non-NaN; ts NULL = 0, 1, 2, …

    The mean's replay is ``acc_add`` with the count and 1 / count taken once
    at the end (the same bits for finite x; an infinity lands in ``s``, which
    ``finite_state`` then rejects).
    """
    cdef Py_ssize_t j
    cdef double anchor, s = 0.0
    acc_clear(st)
    if Acc is SumState:
        if hi > lo:
            anchor = x[lo]
            for j in range(lo, hi):
                s += x[j] - anchor
            st.anchor = anchor
            st.s = s
            st.n_fin = hi - lo
            st.inv_n = 1.0 / st.n_fin
    else:
        for j in range(lo, hi):
            acc_add(st, <double> j if ts == NULL else ts[j], x[j])


cdef int sum_fixed_steady(SumState *sp, const double *ts, const double *x, Py_ssize_t n,
                          Py_ssize_t k, Py_ssize_t min_count, double *out) noexcept nogil:
    """Steps k..n-1 of the mean's fast path; ``sp`` holds the state after step k - 1.

    In steady state a step is one fused swap, ``s += x[j] - x[j - k]``, and a
    replay falls due every ``lim + 1`` steps (``lim`` = 8k + 64 evictions).  A
    replay starts the state afresh from the window alone, so the runs between
    replays are independent: two run interleaved, two dependency chains where
    a sequential loop has one, with exactly the operations the streaming
    driver applies.  Returns 1 when a non-finite x was met, else 0.
    """
    cdef Py_ssize_t lim = 8 * k + 64, r = k + lim, j, a0 = k, b0, la, lb
    cdef double inv = 1.0 / k, sa = sp.s, ca = sp.anchor, sb = 0.0, cb = 0.0
    cdef SumState rs
    acc_clear(&rs)
    while a0 < n:
        la = min(lim, n - a0)
        lb = 0
        if r < n:
            acc_replay(&rs, ts, x, r - k + 1, r + 1)
            out[r] = sum_mean(&rs, min_count)
            sb = rs.s
            cb = rs.anchor
            b0 = r + 1
            lb = min(lim, n - b0)
            r += lim + 1
        for j in range(lb):
            sa += x[a0 + j] - x[a0 + j - k]
            out[a0 + j] = ca + sa * inv
            sb += x[b0 + j] - x[b0 + j - k]
            out[b0 + j] = cb + sb * inv
        for j in range(lb, la):
            sa += x[a0 + j] - x[a0 + j - k]
            out[a0 + j] = ca + sa * inv
        if not (isfinite(sa) and isfinite(sb) and finite_state(&rs)):
            return 1
        if r >= n:
            break
        acc_replay(sp, ts, x, r - k + 1, r + 1)
        out[r] = sum_mean(sp, min_count)
        sa = sp.s
        ca = sp.anchor
        a0 = r + 1
        r += lim + 1
    return 0 if finite_state(sp) else 1


cdef int acc_batch_fixed(Acc *st, const double *ts, const double *x, Py_ssize_t n, double w,
                         Py_ssize_t min_count, double *out, Py_ssize_t k) noexcept nogil:
    """Speculative fast path of ``acc_batch`` for the common case.

    Assumes every x is finite and the window at i is exactly the last
    min(i + 1, k) samples (e.g. regular sampling), so sample i - k, and only
    it, leaves as sample i enters: no eviction loop, no NaN / Inf branches,
    and in steady state the loop-invariant branches of the shared step are
    dropped (the arithmetic is the same, statement for statement).  The
    window assumption is checked first (``fixed_window``), the finiteness of x
    on the way (``finite_state``); returns 1 if either failed (``out`` is then
    garbage and the caller runs ``acc_batch``), else 0.  The state sees
    exactly the operations ``acc_batch`` and the streaming driver would apply
    (one fused swap per step, replays on the same schedule), so the outputs
    are identical to theirs — the tests compare them bit for bit.
    ``st`` only selects the statistic: the result is ``out`` (the mean's
    interleaved runs leave no single final state).
    Requires 2 <= k and min_count <= k.
    """
    cdef Acc loc
    cdef Acc *sp = &loc
    cdef Py_ssize_t i, j, m = k if k < n else n
    cdef Py_ssize_t lim = 8 * k + 64
    cdef double t, v, t0 = 0.0 if ts == NULL else ts[0]
    cdef double anchor, inv, mean, m2, peak, yo, yn, d, mo
    if ts != NULL and not fixed_window(ts, n, w, k):
        return 1
    if Acc is SlopeState:
        # an infinity counted in and out again leaves no trace in the slope's
        # state, so its x are checked up front
        if not finite_values(x, n):
            return 1
    acc_clear(sp)
    for i in range(m):
        t = <double> i if ts == NULL else ts[i]
        acc_add(sp, t, x[i])
        if acc_replay_due(sp):
            acc_replay(sp, ts, x, 0, i + 1)
        out[i] = acc_value(sp, min_count, t0, t)
    if not finite_state(sp):
        return 1
    if Acc is SumState:
        if sum_fixed_steady(sp, ts, x, n, k, min_count, out):
            return 1
    else:
        i = m
        while i < n:
            if Acc is WelfordState:
                # acc_swap_finite + welford_std with n_fin == k >= 2, no infinities
                anchor = sp.anchor
                inv = sp.inv_n
                mean = sp.mean
                m2 = sp.m2
                peak = sp.peak
                j = i
                while j < n:
                    v = x[j]
                    yo = x[j - k] - anchor
                    yn = v - anchor
                    d = yn - yo
                    mo = mean
                    mean = mo + d * inv
                    m2 += d * ((yn - mean) + (yo - mo))
                    if m2 > peak:
                        peak = m2
                    sp.removed += 1
                    if sp.removed > lim or m2 * 1024.0 < peak:
                        break                       # replay due: the general step below
                    out[j] = 0.0 if m2 <= 0.0 else sqrt(m2 * inv)
                    j += 1
                sp.mean = mean
                sp.m2 = m2
                sp.peak = peak
                if not finite_state(sp):
                    return 1
                if j == n:
                    break
                # step j has been applied; replay and emit it
                acc_replay(sp, ts, x, j - k + 1, j + 1)
                out[j] = acc_value(sp, min_count, 0.0, 0.0)
                i = j + 1
            else:
                # slope: the general step, every step
                t = ts[i]
                acc_swap_finite(sp, ts[i - k], x[i - k], t, x[i])
                if acc_replay_due(sp):
                    if not finite_state(sp):
                        return 1
                    acc_replay(sp, ts, x, i - k + 1, i + 1)
                out[i] = acc_value(sp, min_count, ts[i - k + 1], t)
                i += 1
    return 0 if finite_state(sp) else 1


cdef int acc_stream(Acc *st, Ring *win, double w, double t, double v) noexcept nogil:
    """Streaming driver: ``win`` holds the non-NaN samples of the window.

    Returns -1 (state untouched) when the ring cannot grow.
    """
    cdef double cutoff = t - w, pt = 0.0, pv = 0.0
    cdef bint pending = False
    cdef Py_ssize_t j
    if not (t > cutoff):
        v = NAN
    if v == v and ring_reserve_one(win) < 0:
        return -1
    while win.size > 0 and ring_front_ts(win) <= cutoff:
        if pending:
            acc_remove(st, pt, pv)
        pt = ring_front_ts(win)
        pv = ring_front_x(win)
        pending = True
        ring_pop_front(win)
    if v == v:
        ring_push_unchecked(win, t, v)
        if pending:
            acc_swap(st, pt, pv, t, v)
        else:
            acc_add(st, t, v)
    elif pending:
        acc_remove(st, pt, pv)
    if acc_replay_due(st):
        acc_clear(st)
        for j in range(win.size):
            acc_add(st, ring_ts_at(win, j), ring_x_at(win, j))
    return 0


cdef inline double acc_stream_value(Acc *st, Ring *win, Py_ssize_t min_count) noexcept nogil:
    if win.size == 0:
        return acc_value(st, min_count, 0.0, 0.0)
    return acc_value(st, min_count, ring_front_ts(win), ring_back_ts(win))


# ---------------------------------------------------------------------------
# Min / max: monotonic deque
# ---------------------------------------------------------------------------

cdef struct MinState:
    Ring dq             # (t, sign * x), values strictly increasing front to back
    double sign         # +1 for min, -1 for max (max(x) = -min(-x), exact)


cdef inline void minq_clear(MinState *st) noexcept nogil:
    st.dq.head = 0
    st.dq.size = 0


cdef inline void minq_expire(MinState *st, double cutoff) noexcept nogil:
    while st.dq.size > 0 and ring_front_ts(&st.dq) <= cutoff:
        ring_pop_front(&st.dq)


cdef inline void minq_push(MinState *st, double t, double v) noexcept nogil:
    """Push a non-NaN x (already multiplied by sign); room reserved by the caller."""
    while st.dq.size > 0 and ring_back_x(&st.dq) >= v:
        st.dq.size -= 1
    ring_push_unchecked(&st.dq, t, v)


cdef inline double minq_value(MinState *st, Py_ssize_t count, Py_ssize_t min_count) noexcept nogil:
    if count < min_count or st.dq.size == 0:
        return NAN
    return st.sign * ring_front_x(&st.dq)


cdef int minq_batch(MinState *st, const double *ts, const double *x, Py_ssize_t n, double w,
                    Py_ssize_t min_count, double *out) noexcept nogil:
    """Batch driver; -1 when the deque cannot grow."""
    cdef Py_ssize_t i, lo = 0, count = 0
    cdef double t, cutoff, v
    cdef double sign = st.sign
    minq_clear(st)
    for i in range(n):
        t = ts[i]
        cutoff = t - w
        if min_count > 1:
            # the deque holds only candidates, so count the window separately
            while lo < i and ts[lo] <= cutoff:
                if x[lo] == x[lo]:
                    count -= 1
                lo += 1
        minq_expire(st, cutoff)
        v = x[i]
        if t > cutoff:
            if v == v:
                if ring_reserve_one(&st.dq) < 0:
                    return -1
                minq_push(st, t, sign * v)
                count += 1
        else:
            lo = i + 1
        if st.dq.size == 0 or count < min_count:
            out[i] = NAN
        else:
            out[i] = sign * ring_front_x(&st.dq)
    return 0


cdef int minq_batch_fixed(double sign, const double *x, Py_ssize_t n, Py_ssize_t min_count,
                          double *out, Py_ssize_t k) noexcept nogil:
    """Fast path of ``minq_batch`` when the window at i is exactly the last
    min(i + 1, k) samples (the caller has checked that, see ``fixed_window``).

    Algorithm: van Herk / Gil-Werman.  Cut x into blocks of k samples; the
    window of i then spans the tail of the previous block (a suffix minimum,
    computed backwards once per block) and the head of its own (a running
    prefix minimum): three branch-free compare-selects per sample whatever k
    is, instead of the deque's data-dependent pops.  NaN is skipped (a NaN
    never compares smaller); a count of the non-NaN samples gives min_count.
    Among equal values the latest is chosen, as the deque does, so the bits
    match the streaming driver.  Returns -1 when out of memory, else 0.
    """
    cdef Py_ssize_t i, j, b, e, cnt = 0, mc = min_count if min_count > 1 else 1
    cdef double v, run, pre
    cdef double *suf = <double *> malloc((k + 1) * sizeof(double))
    if suf == NULL:
        return -1
    suf[k] = INFINITY           # the window of a block's last sample is that block
    e = k if k < n else n
    run = INFINITY
    for i in range(e):
        v = sign * x[i]
        run = v if v <= run else run
        cnt += x[i] == x[i]
        out[i] = sign * run if cnt >= mc else NAN
    b = k
    while b < n:
        run = INFINITY
        for j in range(k - 1, -1, -1):
            v = sign * x[b - k + j]
            run = v if v < run else run
            suf[j] = run
        e = b + k if b + k < n else n
        pre = INFINITY
        for i in range(b, e):
            v = sign * x[i]
            pre = v if v <= pre else pre
            run = suf[i - b + 1]
            cnt += (x[i] == x[i]) - (x[i - k] == x[i - k])
            out[i] = sign * (pre if pre <= run else run) if cnt >= mc else NAN
        b = e
    free(suf)
    return 0


cdef int minq_stream(MinState *st, Ring *win, double w, double t, double v) noexcept nogil:
    cdef double cutoff = t - w
    if not (t > cutoff):
        v = NAN
    if v == v and (ring_reserve_one(win) < 0 or ring_reserve_one(&st.dq) < 0):
        return -1
    while win.size > 0 and ring_front_ts(win) <= cutoff:
        ring_pop_front(win)
    minq_expire(st, cutoff)
    if v == v:
        ring_push_unchecked(win, t, v)
        minq_push(st, t, st.sign * v)
    return 0


# ---------------------------------------------------------------------------
# Median / quantile: two heaps over the ring (see _order.pxi)
# ---------------------------------------------------------------------------

cdef int ord_batch(OrderState *st, Ring *win, const double *ts, const double *x, Py_ssize_t n,
                   double w, Py_ssize_t min_count, double *out) noexcept nogil:
    """Batch driver: pushes every sample through the streaming step."""
    cdef Py_ssize_t i
    for i in range(n):
        if ord_stream(st, win, w, ts[i], x[i]) < 0:
            return -1
        out[i] = ord_value(st, min_count)
    return 0


# ---------------------------------------------------------------------------
# EWMA
# ---------------------------------------------------------------------------

include "_ewma_state.pxi"


cdef void ewma_batch(EwmaState *st, const double *ts, const double *x, Py_ssize_t n,
                     double *out) noexcept nogil:
    cdef Py_ssize_t i
    ewma_clear(st)
    for i in range(n):
        ewma_add(st, ts[i], x[i])
        out[i] = st.s


# ---------------------------------------------------------------------------
# Change over a lag
# ---------------------------------------------------------------------------

cdef int change_step(Ring *past, double lag, double t, double v, double *out) noexcept nogil:
    """x(t) minus the latest non-NaN sample at or before t - lag (NaN while none).

    ``past`` holds the non-NaN samples newer than the cutoff plus, at its
    front, the latest one at or before it; each sample is pushed and popped
    once, O(1) amortised.  -1 (nothing changed) when the ring cannot grow.
    """
    cdef double cutoff = t - lag
    if v == v and ring_reserve_one(past) < 0:
        return -1
    while past.size >= 2 and ring_ts_at(past, 1) <= cutoff:
        ring_pop_front(past)
    if past.size > 0 and ring_front_ts(past) <= cutoff:
        out[0] = v - ring_front_x(past)
    else:
        out[0] = NAN
    if v == v:
        ring_push_unchecked(past, t, v)
    return 0


cdef int change_batch(Ring *past, const double *ts, const double *x, Py_ssize_t n, double lag,
                      double *out) noexcept nogil:
    """Batch driver: every sample through the streaming step."""
    cdef Py_ssize_t i
    for i in range(n):
        if change_step(past, lag, ts[i], x[i], &out[i]) < 0:
            return -1
    return 0


# ---------------------------------------------------------------------------
# Python boundary: batch functions
# ---------------------------------------------------------------------------

cdef object _prepare(ts, x, out, bint check_ts=True, bint lazy_ts=False):
    """(ts64, x64, out64) checked, converted once, and un-aliased.

    ``ts=None`` means one sample per second, ``ts = 0, 1, 2, …``, so that
    ``window_s`` counts samples (bottleneck's and pandas' integer windows);
    with ``lazy_ts`` that ts is not built (ts64 is None: the caller's fast
    path needs none).  ``check_ts=False`` leaves the ts order check to a
    caller that verifies it inside its own first pass (and calls
    ``_check_ts`` when that fails).
    """
    if ts is None:
        x64 = _as_series("x", x)
        ts64 = None if lazy_ts else _sample_ts(x64.shape[0])
    else:
        ts64, x64 = _as_pair(ts, x, check_ts)
    res = _prepare_out(out, x64.shape[0])
    if ts64 is None:
        x64, = _unalias(res, x64)
    else:
        ts64, x64 = _unalias(res, ts64, x64)
    return ts64, x64, res


cdef object _sample_ts(Py_ssize_t n):
    return np.arange(n, dtype=np.float64)


cdef inline Py_ssize_t _samples_in(double w, Py_ssize_t n) noexcept nogil:
    """Samples in a full window of ``w`` when ts = 0, 1, 2, … (capped at n)."""
    return n if w >= n else <Py_ssize_t> ceil(w)


cdef inline double _count_window(double w, Py_ssize_t n) noexcept nogil:
    """The window (or lag) ``w`` of a ``ts=None`` call: ceil(w) samples, as a
    whole number of seconds of ts = 0, 1, 2, … (exact arithmetic there, so
    every window holds that many samples whatever rounding ``i - w`` would do)."""
    return <double> _samples_in(w, n)


cdef object _run_acc(int kind, ts, x, window_s, min_count, out):
    cdef SumState s_sum
    cdef WelfordState s_wel
    cdef SlopeState s_slope
    # the slope needs the times themselves; mean and std only the window
    ts64, x64, res = _prepare(ts, x, out, check_ts=False, lazy_ts=kind != 2)
    cdef double w = _check_positive("window_s", window_s)
    cdef Py_ssize_t mc = _check_count("min_count", min_count)
    cdef const double[::1] tv
    cdef const double[::1] xv = x64
    cdef double[::1] ov = res
    cdef const double *tp = NULL
    cdef Py_ssize_t n = xv.shape[0], k
    cdef int rc = 1
    if n == 0:
        return res
    if ts is None:
        w = _count_window(w, n)
    if ts64 is not None:
        tv = ts64
        tp = &tv[0]
    with nogil:
        k = _samples_in(w, n) if tp == NULL else count_at_end(tp, n, w)
        if k >= 2 and k >= mc:
            # fast path; it verifies ts (when given) and x
            if kind == 0:
                rc = acc_batch_fixed(&s_sum, tp, &xv[0], n, w, mc, &ov[0], k)
            elif kind == 1:
                rc = acc_batch_fixed(&s_wel, tp, &xv[0], n, w, mc, &ov[0], k)
            else:
                rc = acc_batch_fixed(&s_slope, tp, &xv[0], n, w, mc, &ov[0], k)
    if rc == 0:
        return res
    if ts64 is None:
        ts64 = _sample_ts(n)
    else:
        _check_ts(ts64)
    tv = ts64
    with nogil:
        if kind == 0:
            acc_batch(&s_sum, &tv[0], &xv[0], n, w, mc, &ov[0])
        elif kind == 1:
            acc_batch(&s_wel, &tv[0], &xv[0], n, w, mc, &ov[0])
        else:
            acc_batch(&s_slope, &tv[0], &xv[0], n, w, mc, &ov[0])
    return res


def move_mean(ts, x, window_s, min_count=1, out=None):
    """Rolling mean over the event-time window ``(ts[i] - window_s, ts[i]]``.

    ``ts=None`` means ``ts = 0, 1, 2, …``: the window is the last
    ``ceil(window_s)`` samples (so do all the batch functions here).

    Algorithm: running sum of ``x - anchor`` with the evicted and the new
    sample fused into one add; O(1) per sample (the window is replayed after
    every 8·w + 64 evictions to bound rounding drift).  NaN is skipped; +inf /
    -inf in the window give +inf / -inf, both together NaN.

    Returns ``out`` (a new float64 array when None), ``len(x)`` values.
    """
    return _run_acc(0, ts, x, window_s, min_count, out)


def move_std(ts, x, window_s, min_count=1, out=None):
    """Rolling population standard deviation (ddof = 0) over the event-time window.

    Algorithm: Welford add / remove / replace on ``x - anchor`` (stable on
    1e9 + small noise); O(1) per sample.  NaN is skipped; NaN while any ±inf
    is in the window; 0.0 for a single sample or a constant window.
    """
    return _run_acc(1, ts, x, window_s, min_count, out)


def move_slope(ts, x, window_s, min_count=1, out=None):
    """Rolling least-squares slope of x against ts (units of x per second).

    Algorithm: Welford co-moments of ``(ts - t_anchor, x - x_anchor)`` with
    add / remove; O(1) per sample.  NaN while fewer than two distinct
    timestamps (or fewer than ``min_count`` samples) are in the window, and
    while any ±inf is in it.
    """
    return _run_acc(2, ts, x, window_s, min_count, out)


cdef object _run_minmax(double sign, ts, x, window_s, min_count, out):
    cdef MinState st
    cdef Py_ssize_t k
    ts64, x64, res = _prepare(ts, x, out, check_ts=False, lazy_ts=True)
    cdef double w = _check_positive("window_s", window_s)
    cdef Py_ssize_t mc = _check_count("min_count", min_count)
    cdef const double[::1] tv
    cdef const double[::1] xv = x64
    cdef double[::1] ov = res
    cdef Py_ssize_t n = xv.shape[0]
    cdef int rc = 1
    if n == 0:
        return res
    if ts64 is None:
        k = _samples_in(w, n)       # the general driver is never needed: NaN is fine here
        rc = 0
    else:
        tv = ts64
        with nogil:
            k = count_at_end(&tv[0], n, w)
            if k >= 1 and fixed_window(&tv[0], n, w, k):
                rc = 0
    if rc == 0:
        with nogil:
            rc = minq_batch_fixed(sign, &xv[0], n, mc, &ov[0], k)
        if rc < 0:
            raise MemoryError("move_min/move_max: cannot allocate the block minima")
        return res
    _check_ts(ts64)
    if ring_init(&st.dq, 64) < 0:
        raise MemoryError("move_min/move_max: cannot allocate the deque")
    st.sign = sign
    try:
        with nogil:
            rc = minq_batch(&st, &tv[0], &xv[0], n, w, mc, &ov[0])
    finally:
        ring_free(&st.dq)
    if rc < 0:
        raise MemoryError("move_min/move_max: cannot grow the deque")
    return res


def move_min(ts, x, window_s, min_count=1, out=None):
    """Rolling minimum over the event-time window.

    Algorithm: monotonic deque of (t, x) candidates; O(1) amortised per
    sample.  When every window holds the last k samples (regular sampling,
    or ``ts=None``): van Herk / Gil-Werman block prefix / suffix minima,
    three branch-free compare-selects per sample.  NaN is skipped; ±inf are
    ordered naturally; among equal values the latest is returned.
    """
    return _run_minmax(1.0, ts, x, window_s, min_count, out)


def move_max(ts, x, window_s, min_count=1, out=None):
    """Rolling maximum over the event-time window (see ``move_min``)."""
    return _run_minmax(-1.0, ts, x, window_s, min_count, out)


cdef object _run_order(ts, x, window_s, q, min_count, out):
    cdef OrderState st
    cdef Ring win
    ts64, x64, res = _prepare(ts, x, out)
    cdef double w = _check_positive("window_s", window_s)
    cdef double qq = _check_q(q)
    cdef Py_ssize_t mc = _check_count("min_count", min_count)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef double[::1] ov = res
    cdef Py_ssize_t n = xv.shape[0]
    cdef int rc = 0
    if n == 0:
        return res
    if ts is None:
        w = _count_window(w, n)
    if ring_init(&win, 64) < 0:
        raise MemoryError("move_quantile: cannot allocate the window")
    if ord_init(&st, &win, qq) < 0:
        ring_free(&win)
        raise MemoryError("move_quantile: cannot allocate the heaps")
    try:
        with nogil:
            rc = ord_batch(&st, &win, &tv[0], &xv[0], n, w, mc, &ov[0])
    finally:
        ord_free(&st)
        ring_free(&win)
    if rc < 0:
        raise MemoryError("move_quantile: cannot grow the window")
    return res


def move_quantile(ts, x, window_s, q, min_count=1, out=None):
    """Rolling q-quantile over the event-time window.

    Algorithm: two heaps split at order statistic k = floor(q·(n - 1)), with
    positions tracked so any sample can leave; O(log w) per sample.  Linear
    interpolation between order statistics k and k + 1 (numpy's default
    method); NaN is skipped; ±inf are ordered naturally (see ``lerp``).
    """
    return _run_order(ts, x, window_s, q, min_count, out)


def move_median(ts, x, window_s, min_count=1, out=None):
    """Rolling median (``move_quantile`` with q = 0.5); O(log w) per sample."""
    return _run_order(ts, x, window_s, 0.5, min_count, out)


def move_change(ts, x, lag_s, out=None):
    """Change over a lag: ``x[i]`` minus the latest non-NaN sample at or
    before ``ts[i] - lag_s`` (event time; with ``ts=None`` the sample
    ``ceil(lag_s)`` places back).

    Algorithm: a FIFO of the samples younger than the lag plus the one just
    older; O(1) amortised per sample, memory the samples within one lag.
    NaN while no sample is old enough, and where ``x[i]`` is NaN; ±inf
    follow IEEE (inf - inf is NaN).
    """
    cdef Ring past
    ts64, x64, res = _prepare(ts, x, out)
    cdef double lag = _check_positive("lag_s", lag_s)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef double[::1] ov = res
    cdef Py_ssize_t n = xv.shape[0]
    cdef int rc = 0
    if n == 0:
        return res
    if ts is None:
        lag = _count_window(lag, n)
    if ring_init(&past, 64) < 0:
        raise MemoryError("move_change: cannot allocate the lag buffer")
    try:
        with nogil:
            rc = change_batch(&past, &tv[0], &xv[0], n, lag, &ov[0])
    finally:
        ring_free(&past)
    if rc < 0:
        raise MemoryError("move_change: cannot grow the lag buffer")
    return res


def ewma(ts, x, halflife_s, out=None):
    """Event-time exponentially weighted moving average.

    Algorithm: ``s <- a*s + (1 - a)*x`` with ``a = 0.5 ** (dt / halflife_s)``
    and dt the time since the previous non-NaN sample; O(1) per sample.  The
    first non-NaN sample starts the average; NaN samples are skipped (the
    output repeats the current average; NaN before the first sample).  A
    sample at the same timestamp as the previous one has weight 0.  ±inf
    follow IEEE: the average becomes ±inf and stays there (exponential
    weights never reach 0), NaN once both signs were seen.
    """
    cdef EwmaState st
    ts64, x64, res = _prepare(ts, x, out)
    st.halflife = _check_positive("halflife_s", halflife_s)
    cdef const double[::1] tv = ts64
    cdef const double[::1] xv = x64
    cdef double[::1] ov = res
    cdef Py_ssize_t n = xv.shape[0]
    if n == 0:
        return res
    with nogil:
        ewma_batch(&st, &tv[0], &xv[0], n, &ov[0])
    return res


# ---------------------------------------------------------------------------
# Python boundary: streaming objects
# ---------------------------------------------------------------------------

cdef class _Windowed:
    """Common part of the windowed streaming objects: the ring of in-window samples."""

    cdef Ring _win
    cdef double _window_s
    cdef Py_ssize_t _min_count
    cdef double _last_t

    def __cinit__(self, *args, **kwargs):
        if ring_init(&self._win, 16) < 0:
            raise MemoryError("cannot allocate the window buffer")
        self._last_t = -INFINITY

    def __dealloc__(self):
        ring_free(&self._win)

    cdef void _clear(self) noexcept:
        pass

    cdef object _acc_state(self):
        return None

    cdef int _set_acc_state(self, object acc) except -1:
        return 0

    cdef tuple _init_args(self):
        return (self._window_s, self._min_count)

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def min_count(self) -> int:
        return self._min_count

    def reset(self):
        """Forget every sample; the object is as new."""
        self._win.head = 0
        self._win.size = 0
        self._last_t = -INFINITY
        self._clear()
        return self

    def __getstate__(self):
        cdef Py_ssize_t i, n = self._win.size
        ts = np.empty(n, dtype=np.float64)
        xs = np.empty(n, dtype=np.float64)
        for i in range(n):
            ts[i] = ring_ts_at(&self._win, i)
            xs[i] = ring_x_at(&self._win, i)
        return {"last_t": self._last_t, "ts": ts, "x": xs, "acc": self._acc_state()}

    def __setstate__(self, state):
        cdef Py_ssize_t i
        ts = np.asarray(state["ts"], dtype=np.float64)
        xs = np.asarray(state["x"], dtype=np.float64)
        self.reset()
        for i in range(ts.shape[0]):
            if ring_push(&self._win, ts[i], xs[i]) < 0:
                raise MemoryError("cannot allocate the window buffer")
        self._last_t = state["last_t"]
        self._set_acc_state(state["acc"])

    def __reduce__(self):
        return (type(self), self._init_args(), self.__getstate__())

    def __repr__(self):
        args = ", ".join(repr(a) for a in self._init_args())
        return f"{type(self).__name__}({args})"


cdef class MoveMean(_Windowed):
    """Streaming rolling mean; ``value`` equals ``move_mean`` at the same sample.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = MoveMean(window_s=3.0)
    >>> for t, x in enumerate(rng.normal(size=5)):
    ...     _ = m.update(float(t), x)
    >>> round(m.value, 6)
    0.069884
    """

    cdef SumState _st

    def __init__(self, window_s, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._min_count = _check_count("min_count", min_count)
        self.reset()

    cdef void _clear(self) noexcept:
        acc_clear(&self._st)

    cdef object _acc_state(self):
        return self._st

    cdef int _set_acc_state(self, object acc) except -1:
        self._st = acc
        return 0

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if acc_stream(&self._st, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return acc_stream_value(&self._st, &self._win, self._min_count)


cdef class MoveStd(_Windowed):
    """Streaming rolling population std; ``value`` equals ``move_std``."""

    cdef WelfordState _st

    def __init__(self, window_s, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._min_count = _check_count("min_count", min_count)
        self.reset()

    cdef void _clear(self) noexcept:
        acc_clear(&self._st)

    cdef object _acc_state(self):
        return self._st

    cdef int _set_acc_state(self, object acc) except -1:
        self._st = acc
        return 0

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if acc_stream(&self._st, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return acc_stream_value(&self._st, &self._win, self._min_count)


cdef class MoveSlope(_Windowed):
    """Streaming rolling least-squares slope; ``value`` equals ``move_slope``."""

    cdef SlopeState _st

    def __init__(self, window_s, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._min_count = _check_count("min_count", min_count)
        self.reset()

    cdef void _clear(self) noexcept:
        acc_clear(&self._st)

    cdef object _acc_state(self):
        return self._st

    cdef int _set_acc_state(self, object acc) except -1:
        self._st = acc
        return 0

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if acc_stream(&self._st, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return acc_stream_value(&self._st, &self._win, self._min_count)


cdef class _MoveExtremum(_Windowed):
    cdef MinState _st

    def __cinit__(self, *args, **kwargs):
        if ring_init(&self._st.dq, 16) < 0:
            raise MemoryError("cannot allocate the deque")
        self._st.sign = 1.0

    def __dealloc__(self):
        ring_free(&self._st.dq)

    def __init__(self, window_s, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._min_count = _check_count("min_count", min_count)
        self.reset()

    cdef void _clear(self) noexcept:
        minq_clear(&self._st)

    cdef int _set_acc_state(self, object acc) except -1:
        # the deque is a function of the window's contents: rebuild it
        cdef Py_ssize_t i
        minq_clear(&self._st)
        for i in range(self._win.size):
            if ring_reserve_one(&self._st.dq) < 0:
                raise MemoryError("cannot grow the deque")
            minq_push(&self._st, ring_ts_at(&self._win, i),
                      self._st.sign * ring_x_at(&self._win, i))
        return 0

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if minq_stream(&self._st, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return minq_value(&self._st, self._win.size, self._min_count)


cdef class MoveMin(_MoveExtremum):
    """Streaming rolling minimum; ``value`` equals ``move_min``."""

    def __cinit__(self, *args, **kwargs):
        self._st.sign = 1.0


cdef class MoveMax(_MoveExtremum):
    """Streaming rolling maximum; ``value`` equals ``move_max``."""

    def __cinit__(self, *args, **kwargs):
        self._st.sign = -1.0


cdef class _MoveOrder(_Windowed):
    cdef OrderState _ost

    def __cinit__(self, *args, **kwargs):
        if ord_init(&self._ost, &self._win, 0.5) < 0:
            raise MemoryError("cannot allocate the heaps")

    def __dealloc__(self):
        ord_free(&self._ost)

    cdef void _clear(self) noexcept:
        ord_clear(&self._ost)

    cdef int _set_acc_state(self, object acc) except -1:
        # the heaps are a function of the window's contents: rebuild them
        cdef Py_ssize_t i
        cdef double q = self._ost.q
        ord_free(&self._ost)
        if ord_init(&self._ost, &self._win, q) < 0:
            raise MemoryError("cannot allocate the heaps")
        for i in range(self._win.size):
            ord_insert(&self._ost, self._win.x, (self._win.head + i) & self._win.mask)
        return 0

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if ord_stream(&self._ost, &self._win, self._window_s, ts, x) < 0:
            raise MemoryError("cannot grow the window buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return ord_value(&self._ost, self._min_count)


cdef class MoveMedian(_MoveOrder):
    """Streaming rolling median; ``value`` equals ``move_median``."""

    def __init__(self, window_s, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._min_count = _check_count("min_count", min_count)
        self._ost.q = 0.5
        self.reset()


cdef class MoveQuantile(_MoveOrder):
    """Streaming rolling q-quantile; ``value`` equals ``move_quantile``."""

    def __init__(self, window_s, q, min_count=1):
        self._window_s = _check_positive("window_s", window_s)
        self._ost.q = _check_q(q)
        self._min_count = _check_count("min_count", min_count)
        self.reset()

    @property
    def q(self) -> float:
        return self._ost.q

    cdef tuple _init_args(self):
        return (self._window_s, self._ost.q, self._min_count)


cdef class MoveChange(_Windowed):
    """Streaming change over a lag; ``value`` equals ``move_change`` at the same sample."""

    cdef double _value

    def __init__(self, lag_s):
        self._window_s = _check_positive("lag_s", lag_s)
        self._min_count = 1
        self.reset()

    cdef void _clear(self) noexcept:
        self._value = NAN

    cdef object _acc_state(self):
        return self._value

    cdef int _set_acc_state(self, object acc) except -1:
        self._value = acc
        return 0

    cdef tuple _init_args(self):
        return (self._window_s,)

    @property
    def lag_s(self) -> float:
        return self._window_s

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        if change_step(&self._win, self._window_s, ts, x, &self._value) < 0:
            raise MemoryError("cannot grow the lag buffer")
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return self._value


cdef class Ewma:
    """Streaming event-time EWMA; ``value`` equals ``ewma`` at the same sample."""

    cdef EwmaState _st
    cdef double _last_t

    def __init__(self, halflife_s):
        self._st.halflife = _check_positive("halflife_s", halflife_s)
        self.reset()

    @property
    def halflife_s(self) -> float:
        return self._st.halflife

    def reset(self):
        """Forget every sample; the object is as new."""
        ewma_clear(&self._st)
        self._last_t = -INFINITY
        return self

    def update(self, double ts, double x):
        """Push one sample (ts non-decreasing); returns self."""
        _check_stream_ts(ts, self._last_t)
        ewma_add(&self._st, ts, x)
        self._last_t = ts
        return self

    @property
    def value(self) -> float:
        return self._st.s

    def __getstate__(self):
        return {"last_t": self._last_t, "acc": self._st}

    def __setstate__(self, state):
        self._st = state["acc"]
        self._last_t = state["last_t"]

    def __reduce__(self):
        return (type(self), (self._st.halflife,), self.__getstate__())

    def __repr__(self):
        return f"Ewma({self._st.halflife!r})"


# ---------------------------------------------------------------------------
# Bank: the full feature set of many series, one vectorised update per tick
# ---------------------------------------------------------------------------

cdef struct SlotDeque:
    # The bank's min / max deque: the ring slots of the window's samples that are
    # still candidates (minq_push's rule), oldest first; 4 bytes an entry where
    # MinState keeps a (t, x) pair of 16.  The slots index the window ring, whose
    # samples stay in place until they leave the window (and the deque first).
    slot_t *s
    Py_ssize_t head
    Py_ssize_t size
    Py_ssize_t mask     # capacity - 1 (a power of two)


cdef struct SeriesState:
    Ring win            # the window's non-NaN samples, shared by every statistic
    SumState mean
    WelfordState std
    SlopeState slope
    SlotDeque mn        # min: x increasing front to back
    SlotDeque mx        # max: x decreasing front to back
    OrderState med
    EwmaState ew
    double last_t
    double last_x       # the latest sample, NaN included
    double old_x        # the latest sample to have left the window (NaN: none yet)
    double row[8]       # values after the latest step (BANK_COLUMNS order)


BANK_COLUMNS = ("mean", "std", "min", "max", "median", "slope", "change", "ewma")
cdef enum:
    N_COLS = 8


cdef int sdq_init(SlotDeque *d, Py_ssize_t cap) noexcept nogil:
    """Room for ``cap`` (a power of two) entries; -1 on allocation failure."""
    d.head = 0
    d.size = 0
    d.s = <slot_t *> malloc(cap * sizeof(slot_t))
    if d.s == NULL:
        d.mask = -1
        return -1
    d.mask = cap - 1
    return 0


cdef void sdq_free(SlotDeque *d) noexcept nogil:
    free(d.s)
    d.s = NULL
    d.head = 0
    d.size = 0
    d.mask = -1


cdef int sdq_reserve_one(SlotDeque *d) noexcept nogil:
    """Make sure one more push fits (doubling, in order); -1 (untouched) on failure."""
    cdef Py_ssize_t newcap, i
    cdef slot_t *ns
    if d.size <= d.mask:
        return 0
    newcap = 2 * (d.mask + 1)
    ns = <slot_t *> malloc(newcap * sizeof(slot_t))
    if ns == NULL:
        return -1
    for i in range(d.size):
        ns[i] = d.s[(d.head + i) & d.mask]
    free(d.s)
    d.s = ns
    d.head = 0
    d.mask = newcap - 1
    return 0


cdef inline void sdq_renumber(SlotDeque *d, Py_ssize_t head, Py_ssize_t oldmask) noexcept nogil:
    """The window ring grew (``bank_ord_grow``): its slot i is now (i - head) & oldmask."""
    cdef Py_ssize_t i, j
    for i in range(d.size):
        j = (d.head + i) & d.mask
        d.s[j] = <slot_t> ((d.s[j] - head) & oldmask)


cdef inline void sdq_expire(SlotDeque *d, Ring *win, double cutoff) noexcept nogil:
    while d.size > 0 and win.ts[d.s[d.head]] <= cutoff:
        d.head = (d.head + 1) & d.mask
        d.size -= 1


cdef inline void sdq_push(SlotDeque *d, const double *x, Py_ssize_t slot, bint is_max) noexcept nogil:
    """``minq_push`` of x[slot] (for the max: of -x[slot], whose ``back >= v`` is
    ``x[back] <= x[slot]``); room reserved by the caller."""
    cdef double v = x[slot]
    if is_max:
        while d.size > 0 and x[d.s[(d.head + d.size - 1) & d.mask]] <= v:
            d.size -= 1
    else:
        while d.size > 0 and x[d.s[(d.head + d.size - 1) & d.mask]] >= v:
            d.size -= 1
    d.s[(d.head + d.size) & d.mask] = <slot_t> slot
    d.size += 1


cdef inline double sdq_value(SlotDeque *d, Ring *win, Py_ssize_t min_count) noexcept nogil:
    """``minq_value``: the front's x (sign * (sign * x) is x, to the bit)."""
    if win.size < min_count or d.size == 0:
        return NAN
    return win.x[d.s[d.head]]


cdef int series_reserve_one(SeriesState *s) noexcept nogil:
    """Room for one more sample in the window, the median heaps and both deques."""
    cdef Py_ssize_t head = s.win.head, oldmask = s.win.mask
    if s.win.size > s.win.mask:
        if bank_ord_grow(&s.med, &s.win) < 0:
            return -1
        sdq_renumber(&s.mn, head, oldmask)
        sdq_renumber(&s.mx, head, oldmask)
    if sdq_reserve_one(&s.mn) < 0 or sdq_reserve_one(&s.mx) < 0:
        return -1
    return 0


cdef void series_free(SeriesState *s) noexcept nogil:
    ord_free(&s.med)
    sdq_free(&s.mn)
    sdq_free(&s.mx)
    ring_free(&s.win)


# The bank's median heaps are half-sized.  With q = 0.5, ``lo`` holds ceil(n/2) and
# ``hi`` floor(n/2) of the window's n <= capacity samples; between two operations
# one heap holds one node more (``ord_insert`` pushes before it rebalances), so
# capacity / 2 + 1 slots always suffice (+ 1 spare).  ``ord_init`` and ``ord_grow``
# size both heaps and their values at the full capacity: 28 bytes per ring slot,
# of which the bank needs 16.  The heap operations themselves are _order.pxi's,
# unchanged, so the median is the same to the bit.

cdef inline Py_ssize_t bank_heap_cap(Py_ssize_t cap) noexcept nogil:
    return cap // 2 + 2


cdef int bank_ord_init(OrderState *st, Ring *win) noexcept nogil:
    """``ord_init(st, win, 0.5)`` with half-sized heaps; -1 on failure (nothing held)."""
    cdef Py_ssize_t cap = win.mask + 1, h = bank_heap_cap(win.mask + 1)
    st.q = 0.5
    st.n_lo = 0
    st.n_hi = 0
    st.cap = cap
    st.pos = <slot_t *> malloc(cap * sizeof(slot_t))
    st.lo = <slot_t *> malloc(h * sizeof(slot_t))
    st.hi = <slot_t *> malloc(h * sizeof(slot_t))
    st.lov = <double *> malloc(h * sizeof(double))
    st.hiv = <double *> malloc(h * sizeof(double))
    if st.pos == NULL or st.lo == NULL or st.hi == NULL or st.lov == NULL or st.hiv == NULL:
        ord_free(st)
        return -1
    return 0


cdef int bank_ord_grow(OrderState *st, Ring *win) noexcept nogil:
    """``ord_grow`` with half-sized heaps: double the ring, renumbering the slots."""
    cdef Py_ssize_t oldmask = win.mask, head = win.head, size = win.size
    cdef Py_ssize_t newcap = 2 * (oldmask + 1), h = bank_heap_cap(2 * (oldmask + 1)), i, old
    cdef double *nts = <double *> malloc(newcap * sizeof(double))
    cdef double *nx = <double *> malloc(newcap * sizeof(double))
    cdef slot_t *npos = NULL
    cdef slot_t *nlo = NULL
    cdef slot_t *nhi = NULL
    cdef double *nlov = NULL
    cdef double *nhiv = NULL
    if newcap <= 0x40000000:    # slot ids must fit slot_t
        npos = <slot_t *> malloc(newcap * sizeof(slot_t))
        nlo = <slot_t *> malloc(h * sizeof(slot_t))
        nhi = <slot_t *> malloc(h * sizeof(slot_t))
        nlov = <double *> malloc(h * sizeof(double))
        nhiv = <double *> malloc(h * sizeof(double))
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


cdef int series_init(SeriesState *s, double halflife) noexcept nogil:
    s.win.ts = NULL
    s.win.x = NULL
    s.mn.s = NULL
    s.mx.s = NULL
    s.med.pos = NULL
    s.med.lo = NULL
    s.med.hi = NULL
    if (ring_init(&s.win, 16) < 0 or sdq_init(&s.mn, 16) < 0
            or sdq_init(&s.mx, 16) < 0 or bank_ord_init(&s.med, &s.win) < 0):
        series_free(s)
        return -1
    s.ew.halflife = halflife
    series_clear(s)
    return 0


cdef void series_clear(SeriesState *s) noexcept nogil:
    cdef int j
    s.win.head = 0
    s.win.size = 0
    acc_clear(&s.mean)
    acc_clear(&s.std)
    acc_clear(&s.slope)
    s.mn.head = 0
    s.mn.size = 0
    s.mx.head = 0
    s.mx.size = 0
    ord_clear(&s.med)
    ewma_clear(&s.ew)
    s.last_t = -INFINITY
    s.last_x = NAN
    s.old_x = NAN
    for j in range(N_COLS):
        s.row[j] = NAN


cdef int series_step(SeriesState *s, double w, double t, double v) noexcept nogil:
    """Every statistic's streaming step at once, sharing one window ring.

    Each statistic sees exactly the operations its own streaming driver
    (acc_stream, minq_stream, ord_stream, ewma_add) would apply, so the bank's
    values equal the single-series objects' and the batch functions'.  The
    change over the window needs no state of its own: the latest sample to
    leave the window is the latest at or before t - w (``change_step``'s).
    """
    cdef double cutoff = t - w, pt = 0.0, pv = 0.0, raw = v
    cdef bint pending = False
    cdef Py_ssize_t pslot = 0, slot, j
    cdef Ring *win = &s.win
    if not (t > cutoff):
        v = NAN
    if v == v and series_reserve_one(s) < 0:
        return -1
    while win.size > 0 and ring_front_ts(win) <= cutoff:
        if pending:
            acc_remove(&s.mean, pt, pv)
            acc_remove(&s.std, pt, pv)
            acc_remove(&s.slope, pt, pv)
            ord_remove(&s.med, win.x, pslot)
        pt = ring_front_ts(win)
        pv = ring_front_x(win)
        pslot = win.head
        pending = True
        ring_pop_front(win)
    if pending:
        s.old_x = pv
    sdq_expire(&s.mn, win, cutoff)
    sdq_expire(&s.mx, win, cutoff)
    if v == v:
        slot = (win.head + win.size) & win.mask
        ring_push_unchecked(win, t, v)
        if pending:
            acc_swap(&s.mean, pt, pv, t, v)
            acc_swap(&s.std, pt, pv, t, v)
            acc_swap(&s.slope, pt, pv, t, v)
            ord_replace(&s.med, win.x, pslot, slot)
        else:
            acc_add(&s.mean, t, v)
            acc_add(&s.std, t, v)
            acc_add(&s.slope, t, v)
            ord_insert(&s.med, win.x, slot)
        sdq_push(&s.mn, win.x, slot, False)
        sdq_push(&s.mx, win.x, slot, True)
    elif pending:
        acc_remove(&s.mean, pt, pv)
        acc_remove(&s.std, pt, pv)
        acc_remove(&s.slope, pt, pv)
        ord_remove(&s.med, win.x, pslot)
    if acc_replay_due(&s.mean):
        acc_clear(&s.mean)
        for j in range(win.size):
            acc_add(&s.mean, ring_ts_at(win, j), ring_x_at(win, j))
    if acc_replay_due(&s.std):
        acc_clear(&s.std)
        for j in range(win.size):
            acc_add(&s.std, ring_ts_at(win, j), ring_x_at(win, j))
    if acc_replay_due(&s.slope):
        acc_clear(&s.slope)
        for j in range(win.size):
            acc_add(&s.slope, ring_ts_at(win, j), ring_x_at(win, j))
    ewma_add(&s.ew, t, raw)
    s.last_t = t
    s.last_x = raw
    return 0


cdef void series_refresh(SeriesState *s, Py_ssize_t min_count) noexcept nogil:
    series_values(s, min_count, s.row)


cdef void series_values(SeriesState *s, Py_ssize_t min_count, double *row) noexcept nogil:
    cdef Ring *win = &s.win
    row[0] = acc_stream_value(&s.mean, win, min_count)
    row[1] = acc_stream_value(&s.std, win, min_count)
    row[2] = sdq_value(&s.mn, win, min_count)
    row[3] = sdq_value(&s.mx, win, min_count)
    row[4] = ord_value(&s.med, min_count)
    row[5] = acc_stream_value(&s.slope, win, min_count)
    row[6] = s.last_x - s.old_x
    row[7] = s.ew.s


cdef class RollingBank:
    """The rolling feature set of many series, updated one tick at a time.

    Per series: mean, std, min, max, median and slope over ``window_s``, the
    change over ``window_s`` (``move_change``), and an EWMA with
    ``halflife_s`` (``BANK_COLUMNS``).  ``update(idx, ts, x)``
    pushes one sample into each listed series in one nogil loop — the
    per-sample Python call of the single-series objects would dominate at
    10,000 series — and every value equals the single-series objects' and
    the batch functions' for the same samples.

    >>> bank = RollingBank(2, window_s=10.0, halflife_s=5.0)
    >>> _ = bank.update([0, 1], [0.0, 0.0], [1.0, 10.0]).update([0], [1.0], [3.0])
    >>> bank.values([0])[0, :5].tolist()
    [2.0, 1.0, 1.0, 3.0, 2.0]
    """

    cdef SeriesState *_s
    cdef Py_ssize_t _n
    cdef double _window_s
    cdef double _halflife_s
    cdef Py_ssize_t _min_count

    def __cinit__(self, *args, **kwargs):
        self._s = NULL
        self._n = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._s != NULL:
            for i in range(self._n):
                series_free(&self._s[i])
            free(self._s)
            self._s = NULL

    def __init__(self, n_series, window_s, halflife_s, min_count=1):
        cdef Py_ssize_t i, n = _check_count("n_series", n_series)
        cdef double hl = _check_positive("halflife_s", halflife_s)
        self._window_s = _check_positive("window_s", window_s)
        self._halflife_s = hl
        self._min_count = _check_count("min_count", min_count)
        if self._s != NULL:
            raise RuntimeError("RollingBank.__init__ called twice")
        self._s = <SeriesState *> malloc(n * sizeof(SeriesState))
        if self._s == NULL:
            raise MemoryError(f"cannot allocate {n} series")
        for i in range(n):
            if series_init(&self._s[i], hl) < 0:
                self._n = i
                raise MemoryError(f"cannot allocate series {i}")
        self._n = n

    columns = BANK_COLUMNS

    @property
    def n_series(self) -> int:
        return self._n

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def halflife_s(self) -> float:
        return self._halflife_s

    @property
    def min_count(self) -> int:
        return self._min_count

    def reset(self, idx=None):
        """Forget the samples of the listed series (all when idx is None); returns self."""
        cdef Py_ssize_t i
        if idx is None:
            for i in range(self._n):
                series_clear(&self._s[i])
            return self
        idx64 = np.ascontiguousarray(idx, dtype=np.intp).reshape(-1)
        if idx64.shape[0] and (idx64.min() < 0 or idx64.max() >= self._n):
            raise ValueError(f"idx must be within [0, {self._n})")
        for i in idx64.tolist():
            series_clear(&self._s[i])
        return self

    def update(self, idx, ts, x):
        """Push sample (ts[j], x[j]) into series idx[j], for every j in order; returns self.

        Checked first, as a whole: idx within [0, n_series), ts finite and not
        before that series' previous sample (an index may repeat); nothing is
        applied when a check fails.
        """
        idx64 = np.ascontiguousarray(idx, dtype=np.intp)
        ts64, x64 = _as_pair(np.ascontiguousarray(ts, dtype=np.float64).reshape(-1), x, False)
        if idx64.ndim != 1 or idx64.shape[0] != ts64.shape[0]:
            raise ValueError(f"idx must be 1-D with one entry per sample, got shape {idx64.shape}")
        cdef const Py_ssize_t[::1] iv = idx64
        cdef const double[::1] tv = ts64
        cdef const double[::1] xv = x64
        cdef Py_ssize_t j, s, m = iv.shape[0], bad = -1
        cdef double prev = 0.0
        cdef int rc = 0
        cdef double w = self._window_s
        if m == 0:
            return self
        if idx64.min() < 0 or idx64.max() >= self._n:
            j = int(np.flatnonzero((idx64 < 0) | (idx64 >= self._n))[0])
            raise ValueError(f"idx[{j}]={idx64[j]} is outside [0, {self._n})")
        last = np.empty(self._n, dtype=np.float64)
        cdef double[::1] lv = last
        with nogil:
            for j in range(m):
                s = iv[j]
                lv[s] = self._s[s].last_t
            for j in range(m):
                s = iv[j]
                if not (isfinite(tv[j]) and tv[j] >= lv[s]):
                    bad = j
                    prev = lv[s]
                    break
                lv[s] = tv[j]
        if bad >= 0:
            s = iv[bad]
            raise ValueError(f"ts must be finite and non-decreasing per series, got ts[{bad}]="
                             f"{tv[bad]!r} for series {s} after {prev!r}")
        cdef Py_ssize_t mc = self._min_count
        with nogil:
            for j in range(m):
                s = iv[j]
                if series_step(&self._s[s], w, tv[j], xv[j]) < 0:
                    rc = -1
                    break
                # computed while the series' memory is hot, so values() is a plain copy
                series_refresh(&self._s[s], mc)
        if rc < 0:
            raise MemoryError("cannot grow a series window")
        return self

    def values(self, idx=None, out=None):
        """Current values, shape (len(idx), 8) (all series when idx is None)."""
        idx64 = np.arange(self._n, dtype=np.intp) if idx is None else \
            np.ascontiguousarray(idx, dtype=np.intp).reshape(-1)
        if idx64.shape[0] and (idx64.min() < 0 or idx64.max() >= self._n):
            raise ValueError(f"idx must be within [0, {self._n})")
        cdef Py_ssize_t j, m = idx64.shape[0]
        if out is None:
            res = np.empty((m, N_COLS), dtype=np.float64)
        else:
            res = out
            if not (isinstance(res, np.ndarray) and res.dtype == np.float64
                    and res.shape == (m, N_COLS) and res.flags.c_contiguous and res.flags.writeable):
                raise ValueError(f"out must be a writeable C-contiguous float64 array of shape ({m}, {N_COLS})")
        cdef const Py_ssize_t[::1] iv = idx64
        cdef double[:, ::1] ov = res
        cdef Py_ssize_t c
        with nogil:
            for j in range(m):
                for c in range(N_COLS):
                    ov[j, c] = self._s[iv[j]].row[c]
        return res

    def __getstate__(self):
        cdef Py_ssize_t i, j
        cdef SeriesState *s
        series = []
        for i in range(self._n):
            s = &self._s[i]
            ts = np.array([ring_ts_at(&s.win, j) for j in range(s.win.size)], dtype=np.float64)
            xs = np.array([ring_x_at(&s.win, j) for j in range(s.win.size)], dtype=np.float64)
            series.append((ts, xs, s.mean, s.std, s.slope, s.ew, s.last_t, s.last_x, s.old_x))
        return {"series": series}

    def __setstate__(self, state):
        cdef Py_ssize_t i, j, slot
        cdef SeriesState *s
        for i, (ts, xs, mean, std, slope, ew, last_t, last_x, old_x) in enumerate(
                state["series"]):
            s = &self._s[i]
            series_clear(s)
            for j in range(len(ts)):
                if series_reserve_one(s) < 0:
                    raise MemoryError("cannot grow a series window")
                ring_push_unchecked(&s.win, ts[j], xs[j])
                slot = (s.win.head + j) & s.win.mask
                ord_insert(&s.med, s.win.x, slot)
                sdq_push(&s.mn, s.win.x, slot, False)
                sdq_push(&s.mx, s.win.x, slot, True)
            s.mean = mean
            s.std = std
            s.slope = slope
            s.ew = ew
            s.last_t = last_t
            s.last_x = last_x
            s.old_x = old_x
            series_refresh(s, self._min_count)

    def __reduce__(self):
        return (type(self), (self._n, self._window_s, self._halflife_s, self._min_count),
                self.__getstate__())
