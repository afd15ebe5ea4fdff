"""Rolling kernels against their NumPy references, streaming against batch."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from appliance.kernels import reference as ref
from appliance.kernels import rolling
from kernel_cases import (
    CASES,
    PATTERNS,
    Case,
    assert_matches,
    make_ts,
    make_x,
    run_stream,
    tolerance,
)

WINDOWS = [0.5, 1.0, 3.0, 7.5, 40.0, 1e6]
MIN_COUNTS = [1, 2, 5]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_batch_matches_reference(case: Case, pattern: str) -> None:
    rng = np.random.default_rng(1234)
    n = 160
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, n, ts_kind)
        x64 = make_x(rng, n, pattern)
        for dtype in (np.float64, np.float32):
            x = x64.astype(dtype)
            xin = x.astype(np.float64)          # what the kernel computes on
            for window_s in WINDOWS:
                for min_count in MIN_COUNTS:
                    want = case.reference(ts, xin, window_s, min_count)
                    rtol, atol = tolerance(case, ts, xin)
                    for readonly in (False, True):
                        xa, ta = x.copy(), ts.copy()
                        if readonly:
                            xa.flags.writeable = False
                            ta.flags.writeable = False
                        got = case.batch(ta, xa, window_s, min_count)
                        what = (f"{case.name} pattern={pattern} ts={ts_kind} "
                                f"dtype={np.dtype(dtype).name} window_s={window_s} "
                                f"min_count={min_count} readonly={readonly}")
                        assert got.dtype == np.float64, what
                        assert_matches(got, want, rtol, atol, what)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_stream_equals_batch(case: Case, pattern: str) -> None:
    rng = np.random.default_rng(99)
    n = 400
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, n, ts_kind)
        x = make_x(rng, n, pattern)
        for window_s in (1.0, 7.5, 40.0):
            for min_count in (1, 3):
                batch = case.batch(ts, x, window_s, min_count)
                stream = run_stream(case, ts, x, window_s, min_count)
                fin = np.abs(batch[np.isfinite(batch)])
                scale = float(fin.max()) if fin.size else 0.0
                assert_matches(stream, batch, 1e-9, 1e-12 * scale,
                               f"{case.name} stream vs batch pattern={pattern} ts={ts_kind} "
                               f"window_s={window_s} min_count={min_count}")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_out_is_written_in_place_and_returned(case: Case) -> None:
    rng = np.random.default_rng(7)
    ts = make_ts(rng, 200, "irregular")
    x = make_x(rng, 200, "mixed")
    want = case.batch(ts, x, 9.0, 2)
    out = np.full(200, -123.0)
    got = case.batch(ts, x, 9.0, 2, out=out)
    assert got is out
    assert_matches(out, want, 0.0, 0.0, f"{case.name} out=")
    # the output may be the input itself (the kernel then copies what it reads behind i)
    xa = x.copy()
    got = case.batch(ts, xa, 9.0, 2, out=xa)
    assert got is xa
    assert_matches(xa, want, 0.0, 0.0, f"{case.name} out=x")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_bad_out_is_refused(case: Case) -> None:
    ts = np.arange(5.0)
    x = np.ones(5)
    with pytest.raises(ValueError, match=r"out must have shape \(5,\), got \(4,\)"):
        case.batch(ts, x, 2.0, 1, out=np.empty(4))
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        case.batch(ts, x, 2.0, 1, out=np.empty(5, dtype=np.float32))
    ro = np.empty(5)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        case.batch(ts, x, 2.0, 1, out=ro)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_arguments_checked_with_the_bad_value_quoted(case: Case) -> None:
    ts = np.arange(6.0)
    x = np.arange(6.0)
    with pytest.raises(ValueError, match=r"ts and x must have the same length, got 6 and 5"):
        case.batch(ts, x[:5], 2.0, 1)
    with pytest.raises(ValueError, match=r"x must be 1-D, got shape \(2, 3\)"):
        case.batch(ts, x.reshape(2, 3), 2.0, 1)
    with pytest.raises(ValueError, match=r"window_s must be finite and > 0, got -1.5"):
        case.batch(ts, x, -1.5, 1)
    with pytest.raises(ValueError, match=r"window_s must be finite and > 0, got inf"):
        case.batch(ts, x, math.inf, 1)
    with pytest.raises(ValueError, match=r"min_count must be >= 1, got 0"):
        case.batch(ts, x, 2.0, 0)
    with pytest.raises(TypeError, match=r"min_count must be an integer, got 1.5"):
        case.batch(ts, x, 2.0, 1.5)
    unsorted = r"ts must be non-decreasing, got ts\[3\]=1.5 < ts\[2\]=2.0"
    with pytest.raises(ValueError, match=unsorted):
        case.batch(np.array([0.0, 1.0, 2.0, 1.5, 4.0, 5.0]), x, 2.0, 1)
    with pytest.raises(ValueError, match=r"ts must be finite, got ts\[2\]=nan"):
        case.batch(np.array([0.0, 1.0, np.nan, 3.0, 4.0, 5.0]), x, 2.0, 1)
    with pytest.raises(TypeError, match=r"x must hold real numbers, got dtype complex128"):
        case.batch(ts, x + 1j, 2.0, 1)
    with pytest.raises(ValueError, match=r"window_s must be finite and > 0, got 0"):
        case.stream(0, 1)
    with pytest.raises(ValueError, match=r"min_count must be >= 1, got -2"):
        case.stream(1.0, -2)
    s = case.stream(5.0, 1)
    s.update(10.0, 1.0)
    with pytest.raises(ValueError, match=r"ts must be non-decreasing, got 9.5 after 10.0"):
        s.update(9.5, 1.0)
    with pytest.raises(ValueError, match=r"ts must be finite, got nan"):
        s.update(math.nan, 1.0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_empty_and_single_sample(case: Case) -> None:
    assert case.batch(np.array([]), np.array([]), 1.0, 1).shape == (0,)
    got = case.batch(np.array([5.0]), np.array([2.0]), 1.0, 1)
    want = case.reference(np.array([5.0]), np.array([2.0]), 1.0, 1)
    assert_matches(got, want, 0.0, 0.0, case.name)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_pickle_round_trip_continues_identically(case: Case) -> None:
    rng = np.random.default_rng(5)
    ts = make_ts(rng, 300, "irregular")
    x = make_x(rng, 300, "mixed")
    a = case.stream(12.0, 2)
    for i in range(150):
        a.update(ts[i], x[i])
    b = pickle.loads(pickle.dumps(a))
    assert type(b) is type(a)
    assert b.window_s == a.window_s and b.min_count == a.min_count
    va, vb = [a.value], [b.value]
    for i in range(150, 300):
        va.append(a.update(ts[i], x[i]).value)
        vb.append(b.update(ts[i], x[i]).value)
    assert_matches(np.array(vb), np.array(va), 0.0, 0.0, f"{case.name} after unpickling")
    with pytest.raises(ValueError, match="non-decreasing"):
        b.update(ts[0], 1.0)      # the last timestamp travelled too


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_reset_restores_the_initial_state(case: Case) -> None:
    rng = np.random.default_rng(11)
    ts = make_ts(rng, 100, "irregular")
    x = make_x(rng, 100, "mixed")
    s = case.stream(5.0, 1)
    assert s.update(ts[0], x[0]) is s
    for i in range(1, 100):
        s.update(ts[i], x[i])
    assert s.reset() is s
    assert math.isnan(s.value)
    fresh = run_stream(case, ts[:30] - 500.0, x[:30], 5.0, 1)
    again = np.array([s.update(t, v).value for t, v in zip(ts[:30] - 500.0, x[:30], strict=True)])
    assert_matches(again, fresh, 0.0, 0.0, f"{case.name} after reset")


def test_infinity_semantics_by_hand() -> None:
    ts = np.arange(6.0)
    x = np.array([1.0, np.inf, 3.0, -np.inf, 5.0, 7.0])
    # window_s=2 holds samples i-1 and i
    np.testing.assert_array_equal(rolling.move_mean(ts, x, 2.0),
                                  [1.0, np.inf, np.inf, -np.inf, -np.inf, 6.0])
    np.testing.assert_array_equal(rolling.move_std(ts, x, 2.0),
                                  [0.0, np.nan, np.nan, np.nan, np.nan, 1.0])
    np.testing.assert_array_equal(rolling.move_min(ts, x, 2.0),
                                  [1.0, 1.0, 3.0, -np.inf, -np.inf, 5.0])
    np.testing.assert_array_equal(rolling.move_max(ts, x, 2.0),
                                  [1.0, np.inf, np.inf, 3.0, 5.0, 7.0])
    np.testing.assert_array_equal(rolling.move_slope(ts, x, 2.0),
                                  [np.nan, np.nan, np.nan, np.nan, np.nan, 2.0])
    # window_s=3: +inf and -inf together give NaN for the mean
    np.testing.assert_array_equal(rolling.move_mean(ts, x, 3.0),
                                  [1.0, np.inf, np.inf, np.nan, -np.inf, -np.inf])


def test_nan_is_missing_and_min_count_counts_non_nan() -> None:
    ts = np.arange(6.0)
    x = np.array([1.0, np.nan, 3.0, np.nan, np.nan, 8.0])
    np.testing.assert_array_equal(rolling.move_mean(ts, x, 3.0, min_count=2),
                                  [np.nan, np.nan, 2.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(rolling.move_mean(ts, x, 3.0),
                                  [1.0, 1.0, 2.0, 3.0, 3.0, 8.0])
    np.testing.assert_array_equal(rolling.move_max(ts, x, 3.0),
                                  [1.0, 1.0, 3.0, 3.0, 3.0, 8.0])


def test_window_is_half_open_in_event_time() -> None:
    # samples exactly window_s old have left; duplicates are both in
    ts = np.array([0.0, 1.0, 1.0, 3.0, 4.0])
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(rolling.move_mean(ts, x, 2.0), [1.0, 1.5, 7.0 / 3.0, 8.0, 12.0],
                               rtol=1e-15)
    np.testing.assert_array_equal(rolling.move_min(ts, x, 3.0), [1.0, 1.0, 1.0, 2.0, 8.0])


def test_slope_by_hand() -> None:
    ts = np.array([0.0, 1.0, 3.0, 3.0, 10.0])
    x = np.array([1.0, 3.0, 7.0, 9.0, 0.0])
    got = rolling.move_slope(ts, x, 100.0)
    # least squares over the first k points, derived by hand
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(2.0, rel=1e-12)
    assert got[2] == pytest.approx(2.0, rel=1e-12)
    # (0,1) (1,3) (3,7) (3,9): tm=7/4, xm=5, Stx=(−7/4)(−4)+(−3/4)(−2)+(5/4)(2)+(5/4)(4)=16,
    # Stt=49/16+9/16+25/16+25/16=27/4 → 64/27
    assert got[3] == pytest.approx(64.0 / 27.0, rel=1e-12)
    # all timestamps equal → undefined
    same = rolling.move_slope(np.array([2.0, 2.0, 2.0]), np.array([1.0, 5.0, 3.0]), 5.0)
    assert np.isnan(same).all()


def test_std_on_huge_offset_with_small_noise() -> None:
    rng = np.random.default_rng(2024)
    n, w = 50_000, 200
    x = 1e9 + rng.normal(0.0, 1e-3, size=n)
    ts = np.arange(n, dtype=np.float64)
    got = rolling.move_std(ts, x, float(w))
    windows = np.lib.stride_tricks.sliding_window_view(x, w)
    shifted = windows - windows[:, :1]      # exact: every sample is within 2x of 1e9
    want = (shifted - shifted.mean(axis=1, keepdims=True)).std(axis=1)
    # the data are quantised at ulp(1e9) ~ 1.2e-7 but both sides use the same
    # doubles: the shifted two-pass answer is matched to 1e-9 relative
    np.testing.assert_allclose(got[w - 1:], want, rtol=1e-9)
    mean = rolling.move_mean(ts, x, float(w))
    np.testing.assert_allclose(mean[w - 1:], windows.mean(axis=1), rtol=1e-15)


def test_a_spike_that_left_the_window_leaves_no_trace() -> None:
    # running sums cannot forget 1e15 exactly; the periodic replay restores exactness
    n, w = 3000, 10
    x = np.full(n, 3.0)
    x[100] = 1e15
    ts = np.arange(n, dtype=np.float64)
    for f, clean in ((rolling.move_mean, 3.0), (rolling.move_std, 0.0), (rolling.move_slope, 0.0)):
        out = f(ts, x, float(w))
        settled = out[100 + 9 * w + 64 + w:]
        assert np.all(settled == clean), f"{f.__name__}: {settled[:3]}"


def test_window_longer_than_series_is_expanding() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=50)
    ts = np.cumsum(rng.random(50))
    np.testing.assert_allclose(rolling.move_mean(ts, x, 1e9),
                               np.cumsum(x) / np.arange(1, 51), rtol=1e-12)
    np.testing.assert_array_equal(rolling.move_max(ts, x, 1e9), np.maximum.accumulate(x))


def test_window_below_timestamp_resolution_holds_nothing() -> None:
    ts = np.array([1e9, 1e9 + 1.0, 1e9 + 2.0])
    x = np.array([1.0, 2.0, 3.0])
    # 1e9 - 1e-9 rounds to 1e9: no sample satisfies ts[i] - w < ts[j]
    for case in CASES:
        assert np.isnan(case.batch(ts, x, 1e-9, 1)).all(), case.name
        assert np.isnan(run_stream(case, ts, x, 1e-9, 1)).all(), case.name


# --- EWMA ---------------------------------------------------------------------

@pytest.mark.parametrize("pattern", PATTERNS)
def test_ewma_matches_reference_and_stream(pattern: str) -> None:
    rng = np.random.default_rng(17)
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, 300, ts_kind)
        x = make_x(rng, 300, pattern)
        for halflife in (0.3, 5.0, 1e4):
            for dtype in (np.float64, np.float32):
                xi = x.astype(dtype)
                got = rolling.ewma(ts, xi, halflife)
                want = ref.ref_ewma(ts, xi.astype(np.float64), halflife)
                fin = np.abs(xi[np.isfinite(xi)])
                scale = float(fin.max()) if fin.size else 0.0
                what = f"ewma pattern={pattern} ts={ts_kind} halflife={halflife} dtype={dtype}"
                assert_matches(got, want, 1e-12, 1e-12 * scale, what)
            s = rolling.Ewma(halflife)
            stream = np.array([s.update(t, v).value for t, v in zip(ts, x, strict=True)])
            assert_matches(stream, rolling.ewma(ts, x, halflife), 1e-9, 0.0,
                           f"ewma stream {pattern}")


def test_ewma_by_hand() -> None:
    ts = np.array([0.0, 0.0, 2.0, 2.0, 4.0, 5.0])
    x = np.array([4.0, 100.0, 0.0, np.nan, np.inf, 1.0])
    got = rolling.ewma(ts, x, 2.0)
    # a = 0.5 ** (dt / 2): same-time sample has weight 0; dt=2 → a=1/2
    np.testing.assert_array_equal(got, [4.0, 4.0, 2.0, 2.0, np.inf, np.inf])
    np.testing.assert_array_equal(rolling.ewma([0.0, 1.0], [np.inf, -np.inf], 1.0),
                                  [np.inf, np.nan])
    np.testing.assert_array_equal(rolling.ewma([0.0, 1.0, 3.0], [np.nan, 7.0, 7.0], 1.0),
                                  [np.nan, 7.0, 7.0])


def test_ewma_pickle_reset_and_checks() -> None:
    e = rolling.Ewma(3.0)
    e.update(0.0, 1.0).update(2.0, 5.0)
    f = pickle.loads(pickle.dumps(e))
    assert f.halflife_s == 3.0
    assert f.update(4.0, 2.0).value == e.update(4.0, 2.0).value
    with pytest.raises(ValueError, match="non-decreasing"):
        f.update(1.0, 0.0)
    assert math.isnan(e.reset().value)
    with pytest.raises(ValueError, match=r"halflife_s must be finite and > 0, got -3"):
        rolling.Ewma(-3)
    with pytest.raises(ValueError, match=r"halflife_s must be finite and > 0, got nan"):
        rolling.ewma([0.0], [1.0], math.nan)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_regular_fast_path_is_bit_identical_to_streaming(case: Case) -> None:
    # regular spacing takes the batch fast path (a fixed window of k samples);
    # long enough for several periodic and cancellation-triggered replays
    rng = np.random.default_rng(8)
    n = 3000
    ts = 1.7e9 + np.arange(n, dtype=np.float64)
    x = 1e3 + rng.normal(0.0, 1.0, size=n)
    x[rng.integers(0, n, size=5)] = 1e12              # spikes force cancellation replays
    for window_s in (5.0, 50.0):
        batch = case.batch(ts, x, window_s, 2)
        assert_matches(run_stream(case, ts, x, window_s, 2), batch, 0.0, 0.0,
                       f"{case.name} window_s={window_s}")
        # and the general driver agrees bit for bit: a NaN at the end defeats the fast path
        x2 = x.copy()
        x2[-1] = np.nan
        general = case.batch(ts, x2, window_s, 2)
        assert_matches(general[:-1], batch[:-1], 0.0, 0.0, f"{case.name} general vs fast")


UNIT_SPACED_WINDOWS = [(w, mc) for w in (0.5, 1.0, 2.5, 7.0, 60.0, 1e6) for mc in (1, 3)]


def _unit_spaced(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """(ts = 0, 1, 2, …, x) long enough for the fast path's periodic replays."""
    rng = np.random.default_rng(31)
    n = 1200
    return np.arange(n, dtype=np.float64), make_x(rng, n, pattern)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_sample_count_window_is_unit_spaced_ts(case: Case, pattern: str) -> None:
    # ts=None means ts = 0, 1, 2, …: the same bits as passing that ts, whether
    # the fast path (no ts to check) or the general driver (NaN, ±inf) ran
    ts, x = _unit_spaced(pattern)
    for window_s, min_count in UNIT_SPACED_WINDOWS:
        assert_matches(case.batch(None, x, window_s, min_count),
                       case.batch(ts, x, window_s, min_count), 0.0, 0.0,
                       f"{case.name} {pattern} window_s={window_s} min_count={min_count}")


@pytest.mark.slow  # the NumPy reference over 1,200 samples: ~20 s for all cases
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_sample_count_window_matches_the_reference(case: Case, pattern: str) -> None:
    ts, x = _unit_spaced(pattern)
    for window_s, min_count in UNIT_SPACED_WINDOWS:
        assert_matches(case.batch(None, x, window_s, min_count),
                       case.reference(ts, x, window_s, min_count), *tolerance(case, ts, x),
                       f"{case.name} {pattern} window_s={window_s} min_count={min_count} "
                       "vs reference")


@pytest.mark.parametrize("kernel", [rolling.move_min, rolling.move_max])
def test_min_max_blocks_pick_the_latest_of_equal_values(kernel) -> None:
    # van Herk / Gil-Werman on a fixed window must choose among equal values
    # as the streaming deque does (the latest), or a signed zero would differ
    rng = np.random.default_rng(5)
    n = 500
    x = rng.choice([0.0, -0.0, 1.0, -1.0, np.nan], size=n)
    ts = np.arange(n, dtype=np.float64)
    stream = rolling.MoveMin if kernel is rolling.move_min else rolling.MoveMax
    for window_s in (1.0, 2.0, 3.0, 16.0, 64.0):
        s = stream(window_s)
        want = np.array([s.update(float(t), float(v)).value for t, v in zip(ts, x, strict=True)])
        got = kernel(ts, x, window_s)
        assert np.array_equal(np.signbit(got), np.signbit(want)), window_s
        assert_matches(got, want, 0.0, 0.0, f"window_s={window_s}")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_change_over_a_lag(pattern: str) -> None:
    rng = np.random.default_rng(17)
    n = 300
    for ts_kind in ("regular", "irregular"):
        ts = make_ts(rng, n, ts_kind)
        x = make_x(rng, n, pattern)
        for lag_s in (0.25, 1.0, 5.0, 30.0, 1e6):
            what = f"{pattern} ts={ts_kind} lag_s={lag_s}"
            want = ref.ref_move_change(ts, x, lag_s)
            got = rolling.move_change(ts, x, lag_s)
            assert_matches(got, want, 0.0, 0.0, what)
            s = rolling.MoveChange(lag_s)
            stream = np.array([s.update(float(t), float(v)).value
                               for t, v in zip(ts, x, strict=True)])
            assert_matches(stream, got, 0.0, 0.0, what + " stream")
            assert_matches(rolling.move_change(None, x, lag_s),
                           rolling.move_change(np.arange(n, dtype=np.float64), x, lag_s),
                           0.0, 0.0, what + " sample count")


def test_change_pickles_mid_stream_and_checks_its_lag() -> None:
    s = rolling.MoveChange(2.0)
    for t, v in [(0.0, 1.0), (1.0, 4.0), (2.5, 9.0)]:
        s.update(t, v)
    assert s.value == 8.0                    # 9 - the sample at t=0 (<= 2.5 - 2)
    c = pickle.loads(pickle.dumps(s))
    assert c.lag_s == 2.0 and c.value == 8.0
    assert c.update(3.0, 10.0).value == s.update(3.0, 10.0).value == 6.0
    assert math.isnan(s.reset().value)
    with pytest.raises(ValueError, match=r"lag_s must be finite and > 0, got 0"):
        rolling.MoveChange(0)
    with pytest.raises(ValueError, match=r"lag_s must be finite and > 0, got -1"):
        rolling.move_change([0.0], [1.0], -1)


@pytest.mark.parametrize("kernel", [rolling.move_min, rolling.move_max, rolling.move_mean])
def test_a_window_below_the_resolution_of_ts_holds_no_sample(kernel) -> None:
    # ts a slice of a longer regular array: the fixed-window check must not
    # read beside it (it once did, and looped forever, when no sample fit)
    day = 1.7e9 + np.arange(100.0)
    x = np.arange(10.0)
    assert np.isnan(kernel(day[10:20], x, 1e-7)).all()
    # with ts=None the window counts samples: ceil(1e-7) = 1, the sample itself
    np.testing.assert_array_equal(kernel(None, x, 1e-7), x)
