"""Property-based tests (hypothesis): every kernel against its reference and its
streaming twin on NaNs, infinities, constant series, huge offsets, windows
longer than the series, single samples, irregular and duplicate timestamps."""

from __future__ import annotations

import math

import numpy as np
from appliance.kernels import filters, rolling
from appliance.kernels import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import CASES, Case, assert_matches, run_stream, tolerance

SETTINGS = settings(max_examples=60, deadline=None)

GAPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.0, 2.0, 5.0])
VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 1.0]),
)


@st.composite
def series(draw: st.DrawFn, max_n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, max_n))
    gaps = draw(st.lists(GAPS, min_size=n, max_size=n))
    ts = draw(st.sampled_from([0.0, 1.7e9])) + np.cumsum(gaps)
    kind = draw(st.sampled_from(["any", "constant", "offset"]))
    if kind == "constant":
        x = np.full(n, draw(st.floats(-1e6, 1e6)))
        x[np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))] = np.nan
    else:
        x = np.array(draw(st.lists(VALUES, min_size=n, max_size=n)))
        if kind == "offset":                      # 1e9 + small noise
            x = 1e9 + x * 1e-3
    return ts, x


WINDOWS = st.sampled_from([0.3, 1.0, 2.5, 10.0, 1e4])


@SETTINGS
@given(data=series(), window_s=WINDOWS, min_count=st.integers(1, 4), case=st.sampled_from(CASES))
def test_batch_matches_reference(data: tuple[np.ndarray, np.ndarray], window_s: float,
                                 min_count: int, case: Case) -> None:
    ts, x = data
    rtol, atol = tolerance(case, ts, x)
    want = case.reference(ts, x, window_s, min_count)
    got = case.batch(ts, x, window_s, min_count)
    assert_matches(got, want, rtol, atol, f"{case.name} window_s={window_s} min_count={min_count}")


@SETTINGS
@given(data=series(), window_s=WINDOWS, min_count=st.integers(1, 4), case=st.sampled_from(CASES))
def test_stream_equals_batch(data: tuple[np.ndarray, np.ndarray], window_s: float,
                             min_count: int, case: Case) -> None:
    ts, x = data
    batch = case.batch(ts, x, window_s, min_count)
    fin = np.abs(batch[np.isfinite(batch)])
    atol = 1e-12 * float(fin.max()) if fin.size else 0.0
    assert_matches(run_stream(case, ts, x, window_s, min_count), batch, 1e-9, atol,
                   f"{case.name} stream window_s={window_s} min_count={min_count}")


@SETTINGS
@given(n=st.integers(1, 40), c=st.floats(-1e12, 1e12), window_s=WINDOWS,
       gaps=st.lists(GAPS, min_size=40, max_size=40))
def test_constant_series_is_exact(n: int, c: float, window_s: float, gaps: list[float]) -> None:
    ts = np.cumsum(gaps[:n])
    x = np.full(n, c)
    inside = ~np.isnan(ref.ref_move_mean(ts, x, window_s))     # windows holding a sample
    for f, want in ((rolling.move_mean, c), (rolling.move_std, 0.0), (rolling.move_min, c),
                    (rolling.move_max, c), (rolling.move_median, c)):
        out = f(ts, x, window_s)
        assert np.all(out[inside] == want), f.__name__
        assert np.all(np.isnan(out[~inside])), f.__name__
    slope = rolling.move_slope(ts, x, window_s)
    assert np.all((slope == 0.0) | np.isnan(slope))
    assert np.all(rolling.ewma(ts, x, window_s) == c)


@SETTINGS
@given(data=series(), halflife=st.sampled_from([0.1, 1.0, 7.0, 1e5]))
def test_ewma_matches_reference_and_stream(data: tuple[np.ndarray, np.ndarray],
                                           halflife: float) -> None:
    ts, x = data
    got = rolling.ewma(ts, x, halflife)
    fin = np.abs(x[np.isfinite(x)])
    scale = float(fin.max()) if fin.size else 0.0
    assert_matches(got, ref.ref_ewma(ts, x, halflife), 1e-12, 1e-12 * scale, f"ewma h={halflife}")
    e = rolling.Ewma(halflife)
    stream = np.array([e.update(t, v).value for t, v in zip(ts, x, strict=True)])
    assert_matches(stream, got, 0.0, 0.0, "ewma stream")


@SETTINGS
@given(data=series(), lo=st.sampled_from([-math.inf, -10.0, 0.0]),
       hi=st.sampled_from([math.inf, 10.0, 1e9 + 0.5]), rate=st.sampled_from([math.inf, 1.0, 1e3]))
def test_validity_properties(data: tuple[np.ndarray, np.ndarray], lo: float, hi: float,
                             rate: float) -> None:
    ts, x = data
    got = filters.validity(ts, x, lo, hi, rate)
    np.testing.assert_array_equal(got, ref.ref_validity(ts, x, lo, hi, rate))
    assert not np.any(got[~np.isfinite(x)])
    v = filters.Validity(lo, hi, rate)
    np.testing.assert_array_equal([v.update(t, xi).value for t, xi in zip(ts, x, strict=True)],
                                  got.astype(bool))


@SETTINGS
@given(data=series(), window_s=WINDOWS, k=st.sampled_from([0.0, 2.0, 3.0]),
       min_count=st.integers(1, 4))
def test_hampel_properties(data: tuple[np.ndarray, np.ndarray], window_s: float, k: float,
                           min_count: int) -> None:
    ts, x = data
    cleaned, flags = filters.hampel(ts, x, window_s, k, min_count)
    wc, wf = ref.ref_hampel(ts, x, window_s, k, min_count)
    np.testing.assert_array_equal(flags, wf)
    assert_matches(cleaned, wc, 0.0, 0.0, "hampel cleaned")
    assert np.array_equal(np.isnan(cleaned), np.isnan(x))      # the median used is finite
    h = filters.Hampel(window_s, k, min_count)
    stream = np.array([h.update(t, v).value for t, v in zip(ts, x, strict=True)])
    assert_matches(stream, cleaned, 0.0, 0.0, "hampel stream")


@SETTINGS
@given(n=st.integers(1, 50), window_s=WINDOWS, min_count=st.integers(1, 4),
       gaps=st.lists(GAPS, min_size=50, max_size=50),
       levels=st.lists(st.sampled_from([0.0, 1.0, 2.0, math.nan, math.inf]),
                       min_size=50, max_size=50))
def test_stuck_properties(n: int, window_s: float, min_count: int, gaps: list[float],
                          levels: list[float]) -> None:
    ts = np.cumsum(gaps[:n])
    x = np.array(levels[:n])
    got = filters.stuck(ts, x, window_s, min_count)
    np.testing.assert_array_equal(got, ref.ref_stuck(ts, x, window_s, min_count))
    s = filters.Stuck(window_s, min_count)
    np.testing.assert_array_equal([s.update(t, v).value for t, v in zip(ts, x, strict=True)],
                                  got.astype(bool))


@SETTINGS
@given(data=series(), lag_s=WINDOWS)
def test_change_matches_reference_and_stream(data: tuple[np.ndarray, np.ndarray],
                                             lag_s: float) -> None:
    ts, x = data
    got = rolling.move_change(ts, x, lag_s)
    assert_matches(got, ref.ref_move_change(ts, x, lag_s), 0.0, 0.0, f"lag_s={lag_s}")
    s = rolling.MoveChange(lag_s)
    stream = [s.update(float(t), float(v)).value for t, v in zip(ts, x, strict=True)]
    assert_matches(np.array(stream), got, 0.0, 0.0, f"stream lag_s={lag_s}")


@SETTINGS
@given(data=series(), window_s=WINDOWS, min_count=st.integers(1, 4), case=st.sampled_from(CASES))
def test_sample_count_window_is_unit_spaced_ts(data: tuple[np.ndarray, np.ndarray],
                                               window_s: float, min_count: int,
                                               case: Case) -> None:
    _, x = data
    unit = np.arange(x.shape[0], dtype=np.float64)
    assert_matches(case.batch(None, x, window_s, min_count),
                   case.batch(unit, x, window_s, min_count), 0.0, 0.0,
                   f"{case.name} window_s={window_s} min_count={min_count}")
