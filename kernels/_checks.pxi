# Argument checks shared by the kernel modules (textually included).
#
# Every public function checks its arguments here, once, before its nogil
# loop; the messages quote the offending value so a caller can find it.  The
# loops themselves never raise.

import numbers

import numpy as np

from libc.math cimport isfinite


cdef inline Py_ssize_t _first_unsorted(const double[::1] ts) noexcept nogil:
    """Index of the first ts that is NaN/Inf or smaller than its predecessor, or -1."""
    cdef Py_ssize_t i, n = ts.shape[0]
    cdef const double *p = &ts[0] if n > 0 else NULL
    cdef int bad = 0
    if n == 0:
        return -1
    # Branch-free (vectorisable) pass first, the common valid case; locate the
    # culprit only on failure.  Finite end points plus non-decreasing order
    # imply every ts is finite, and NaN fails the >= comparison.
    for i in range(1, n):
        bad |= not (p[i] >= p[i - 1])
    if not bad and isfinite(p[0]) and isfinite(p[n - 1]):
        return -1
    if not isfinite(ts[0]):
        return 0
    for i in range(1, n):
        if not (ts[i] >= ts[i - 1]) or not isfinite(ts[i]):
            return i
    return -1


def _as_series(name, a):
    """``a`` as a 1-D C-contiguous float64 array (no copy when it already is one)."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _as_index(name, idx, n):
    """``idx`` as a 1-D C-contiguous intp array of indices within [0, n)."""
    arr = np.asarray(idx)
    # a float would be truncated and a boolean mask read as indices 0 and 1: refused
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.intp)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] and (arr.min() < 0 or arr.max() >= n):
        j = int(np.flatnonzero((arr < 0) | (arr >= n))[0])
        raise ValueError(f"{name}[{j}]={arr[j]} is outside [0, {n})")
    return arr


def _as_pair(ts, x, check_ts=True):
    """Check and convert a (ts, x) pair: equal length, ts finite and non-decreasing."""
    ts64 = _as_series("ts", ts)
    x64 = _as_series("x", x)
    if ts64.shape[0] != x64.shape[0]:
        raise ValueError(
            f"ts and x must have the same length, got {ts64.shape[0]} and {x64.shape[0]}")
    if check_ts:
        _check_ts(ts64)
    return ts64, x64


def _check_ts(ts64):
    cdef const double[::1] tv = ts64
    cdef Py_ssize_t bad
    with nogil:
        bad = _first_unsorted(tv)
    if bad < 0:
        return
    cdef double now = ts64[bad]
    if not isfinite(now):
        raise ValueError(f"ts must be finite, got ts[{bad}]={now!r}")
    cdef double before = ts64[bad - 1]
    raise ValueError(f"ts must be non-decreasing, got ts[{bad}]={now!r} < ts[{bad - 1}]={before!r}")


def _check_positive(name, value):
    """A finite real number > 0, returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not (v > 0.0 and isfinite(v)):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _check_real(name, value):
    """A finite real number, returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _check_count(name, value, minimum=1):
    """An integer >= minimum, returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return v


def _check_q(q):
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise TypeError(f"q must be a real number, got {q!r}")
    v = float(q)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"q must be within [0, 1], got {q!r}")
    return v


def _prepare_out(out, n, name="out", dtype=np.float64):
    """A fresh array, or the caller's ``out`` after checking it fits."""
    if out is None:
        return np.empty(n, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def _unalias(out, *inputs):
    """Copies of the inputs that share memory with ``out`` (the loops read behind i)."""
    return tuple(a.copy() if np.may_share_memory(out, a) else a for a in inputs)


cdef inline int _check_stream_ts(double t, double last) except -1:
    """Streaming boundary check: t finite and not before the previous sample."""
    if not isfinite(t):
        raise ValueError(f"ts must be finite, got {t!r}")
    if t < last:
        raise ValueError(f"ts must be non-decreasing, got {t!r} after {last!r}")
    return 0
