"""Cleaning kernels against their NumPy references, streaming against batch."""

from __future__ import annotations

import doctest
import math
import pickle

import numpy as np
import pytest
from appliance.kernels import filters, grid, rolling
from appliance.kernels import reference as ref
from kernel_cases import PATTERNS, assert_matches, make_ts, make_x


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def test_docstring_examples() -> None:
    for mod in (filters, grid, rolling):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


# --- validity -----------------------------------------------------------------

VALIDITY_BOUNDS = [(-math.inf, math.inf, math.inf), (0.0, 10.0, math.inf),
                   (-math.inf, math.inf, 2.0), (1.0, 9.0, 0.5)]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_validity_matches_reference_and_stream(pattern: str) -> None:
    rng = np.random.default_rng(21)
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, 300, ts_kind)
        x64 = make_x(rng, 300, pattern)
        for dtype in (np.float64, np.float32):
            x = x64.astype(dtype)
            for lo, hi, rate in VALIDITY_BOUNDS:
                what = (f"validity {pattern} ts={ts_kind} {np.dtype(dtype).name} "
                        f"lo={lo} hi={hi} rate={rate}")
                want = ref.ref_validity(ts, x.astype(np.float64), lo, hi, rate)
                got = filters.validity(_readonly(ts), _readonly(x), lo, hi, rate)
                assert got.dtype == np.uint8, what
                np.testing.assert_array_equal(got, want, err_msg=what)
                v = filters.Validity(lo, hi, rate)
                stream = [v.update(t, xi).value for t, xi in zip(ts, x, strict=True)]
                np.testing.assert_array_equal(np.array(stream, dtype=np.uint8), want, err_msg=what)
                assert v.n_invalid == int((want == 0).sum()), what


def test_validity_by_hand_and_out_valid() -> None:
    ts = np.array([0.0, 1.0, 2.0, 2.0, 3.0, 10.0, 11.0])
    x = np.array([5.0, 6.0, 20.0, 6.0, 7.5, 8.0, np.nan])
    # rate 1.5/s against the last valid sample; 20 is out of [0, 10];
    # same time and equal value is fine; 7.5 after 6.0 at dt=2 is 0.75/s
    want = np.array([1, 1, 0, 1, 1, 1, 0], dtype=np.uint8)
    np.testing.assert_array_equal(filters.validity(ts, x, 0.0, 10.0, 1.5), want)
    out = np.zeros(7, dtype=np.bool_)
    assert filters.validity(ts, x, 0.0, 10.0, 1.5, out_valid=out) is out
    np.testing.assert_array_equal(out, want.astype(bool))
    with pytest.raises(ValueError, match=r"lo must be <= hi, got lo=3 > hi=1"):
        filters.validity(ts, x, 3, 1, 1.0)
    with pytest.raises(ValueError, match=r"max_rate must be > 0 \(may be inf\), got 0"):
        filters.Validity(0, 1, 0)
    with pytest.raises(ValueError, match=r"out_valid must have shape \(7,\), got \(3,\)"):
        filters.validity(ts, x, 0, 1, 1.0, out_valid=np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="non-decreasing"):
        filters.validity(ts[::-1], x, 0, 10, 1.0)
    v = filters.Validity(0.0, 10.0, 1.5)
    for t, xi in zip(ts[:4], x[:4], strict=True):
        v.update(t, xi)
    w = pickle.loads(pickle.dumps(v))
    rest = [w.update(t, xi).value for t, xi in zip(ts[4:], x[4:], strict=True)]
    assert rest == [True, True, False]
    assert w.n_invalid == 2
    assert v.reset().n_invalid == 0 and v.value is False


def test_validity_without_a_rate_limit_accepts_two_values_at_one_time() -> None:
    # Stored readings may repeat a time with another value; with max_rate = inf
    # (no limit set) both pass, with any finite rate the second is a jump.
    ts = np.array([0.0, 1.0, 1.0, 2.0])
    x = np.array([5.0, 6.0, 7.0, 7.5])
    for rate, want in ((math.inf, [1, 1, 1, 1]), (1e9, [1, 1, 0, 1])):
        np.testing.assert_array_equal(filters.validity(ts, x, -math.inf, math.inf, rate),
                                      want, err_msg=f"rate={rate}")
        np.testing.assert_array_equal(ref.ref_validity(ts, x, -math.inf, math.inf, rate),
                                      want, err_msg=f"reference rate={rate}")


# --- Hampel -------------------------------------------------------------------

@pytest.mark.parametrize("pattern", PATTERNS)
def test_hampel_matches_reference_and_stream(pattern: str) -> None:
    rng = np.random.default_rng(31)
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, 200, ts_kind)
        x = make_x(rng, 200, pattern)
        x[rng.integers(0, 200, size=6)] += 40.0           # some outliers to find
        for dtype in (np.float64, np.float32):
            xi = x.astype(dtype)
            for window_s, k, mc in ((5.0, 3.0, 3), (12.0, 2.0, 1), (40.0, 3.0, 5), (1.0, 0.0, 1)):
                what = (f"hampel {pattern} ts={ts_kind} {np.dtype(dtype).name} "
                        f"w={window_s} k={k} mc={mc}")
                want_c, want_f = ref.ref_hampel(ts, xi.astype(np.float64), window_s, k, mc)
                got_c, got_f = filters.hampel(_readonly(ts), _readonly(xi), window_s, k, mc)
                np.testing.assert_array_equal(got_f, want_f, err_msg=what)
                assert_matches(got_c, want_c, 0.0, 0.0, what)
                h = filters.Hampel(window_s, k, mc)
                sc, sf = [], []
                for t, v in zip(ts, xi, strict=True):
                    h.update(t, v)
                    sc.append(h.value)
                    sf.append(h.is_outlier)
                assert_matches(np.array(sc), got_c, 0.0, 0.0, what + " stream")
                np.testing.assert_array_equal(np.array(sf, dtype=np.uint8), got_f, err_msg=what)


def test_hampel_by_hand() -> None:
    ts = np.arange(7.0)
    x = np.array([1.0, 2.0, 1.0, 2.0, 50.0, 1.0, 2.0])
    cleaned, flags = filters.hampel(ts, x, 5.0, k=3.0, min_count=3)
    # at i=4 the window is [1, 2, 1, 2, 50]: median 2, |dev| = [1, 0, 1, 0, 48], MAD 1
    # 48 > 3 * 1.4826 → replaced by 2
    np.testing.assert_array_equal(flags, [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(cleaned, [1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0])
    h = filters.Hampel(5.0)
    for t, v in zip(ts[:4], x[:4], strict=True):
        h.update(t, v)
    g = pickle.loads(pickle.dumps(h))
    assert g.update(4.0, 50.0).value == 2.0 and g.is_outlier
    assert (g.window_s, g.k, g.min_count) == (5.0, 3.0, 3)
    with pytest.raises(ValueError, match=r"k must be >= 0, got -1"):
        filters.hampel(ts, x, 5.0, k=-1)


# --- stuck --------------------------------------------------------------------

def _stuck_data(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.round(rng.normal(0.0, 1.0, size=n), 0)      # few distinct values: long runs
    for start in rng.integers(0, n, size=5):
        x[start:start + rng.integers(5, 40)] = 3.0
    x[rng.random(n) < 0.1] = np.nan
    x[rng.integers(0, n, size=3)] = np.inf
    return x


def test_stuck_matches_reference_and_stream() -> None:
    rng = np.random.default_rng(41)
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, 300, ts_kind)
        x = _stuck_data(rng, 300)
        for window_s in (0.5, 3.0, 10.0, 40.0):
            for mc in (1, 2, 4):
                what = f"stuck ts={ts_kind} w={window_s} mc={mc}"
                want = ref.ref_stuck(ts, x, window_s, mc)
                got = filters.stuck(_readonly(ts), _readonly(x.astype(np.float32)), window_s, mc)
                np.testing.assert_array_equal(got, want, err_msg=what)
                s = filters.Stuck(window_s, mc)
                stream = np.array([s.update(t, v).value for t, v in zip(ts, x, strict=True)],
                                  dtype=np.uint8)
                np.testing.assert_array_equal(stream, want, err_msg=what)


def test_stuck_by_hand() -> None:
    ts = np.arange(8.0)
    x = np.array([1.0, 4.0, 4.0, np.nan, 4.0, 4.0, 5.0, 5.0])
    # window 3: the run of 4.0 starts at t=1; at t=4 the cutoff is 1 → stuck
    np.testing.assert_array_equal(filters.stuck(ts, x, 3.0), [0, 0, 0, 0, 1, 1, 0, 0])
    s = filters.Stuck(3.0)
    for t, v in zip(ts[:4], x[:4], strict=True):
        s.update(t, v)
    u = pickle.loads(pickle.dumps(s))
    rest = [u.update(t, v).value for t, v in zip(ts[4:], x[4:], strict=True)]
    assert rest == [True, True, False, False]
    assert s.reset().value is False
