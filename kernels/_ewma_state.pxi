# The event-time EWMA's state and step (textually included by rolling.pyx and
# sensors.pyx; see rolling.pyx's "Design:" note and the README's semantics).

from libc.math cimport NAN, exp2, expm1, isfinite


cdef double LN2 = 0.6931471805599453


cdef struct EwmaState:
    double s            # current average (valid when has)
    double t_last       # time of the last non-NaN sample
    double halflife
    double last_r       # dt / halflife of the previous step and its decay,
    double last_a       # cached: regular sampling repeats it (saves exp2)
    bint has


cdef inline void ewma_clear(EwmaState *st) noexcept nogil:
    st.s = NAN
    st.t_last = 0.0
    st.last_r = 0.0
    st.last_a = 1.0
    st.has = False


cdef inline void ewma_add(EwmaState *st, double t, double v) noexcept nogil:
    """s <- a*s + (1 - a)*v with a = 0.5 ** ((t - t_last) / halflife)."""
    cdef double r, a
    if v != v:
        return
    if not st.has:
        st.s = v
        st.t_last = t
        st.has = True
        return
    r = (t - st.t_last) / st.halflife
    st.t_last = t
    if r == st.last_r:
        a = st.last_a
    else:
        a = exp2(-r)
        st.last_r = r
        st.last_a = a
    if a == 1.0:
        return      # no time has passed: the new sample has no weight
    if a == 0.0:
        st.s = v    # the old state's weight underflowed
    elif isfinite(st.s) and isfinite(v):
        st.s = v + a * (st.s - v)   # exact on a constant series
    else:
        st.s = a * st.s + (-expm1(-r * LN2)) * v
