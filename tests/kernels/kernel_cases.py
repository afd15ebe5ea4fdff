"""The rolling kernels under test, their references, and the test-data patterns.

Shared by the kernel test modules (imported by name: pytest puts this folder on
sys.path).  Every case binds the batch function, the NumPy reference and the
streaming class of one kernel behind the same call shape, so each test can
sweep all kernels with no exemption list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from appliance.kernels import reference as ref
from appliance.kernels import rolling

Array = np.ndarray


@dataclass(frozen=True)
class Case:
    name: str
    batch: Callable[..., Array]          # batch(ts, x, window_s, min_count, out=None)
    reference: Callable[..., Array]      # reference(ts, x, window_s, min_count)
    stream: Callable[[float, int], object]   # stream(window_s, min_count)
    tol: str                             # "exact", "mean", "spread" or "slope"

    def __repr__(self) -> str:
        return self.name


def _q(q: float) -> Case:
    return Case(
        f"quantile{q}",
        lambda ts, x, w, mc, out=None: rolling.move_quantile(ts, x, w, q, mc, out=out),
        lambda ts, x, w, mc: ref.ref_move_quantile(ts, x, w, q, mc),
        lambda w, mc: rolling.MoveQuantile(w, q, mc),
        "quantile",
    )


CASES: list[Case] = [
    Case("mean", rolling.move_mean, ref.ref_move_mean, rolling.MoveMean, "mean"),
    Case("std", rolling.move_std, ref.ref_move_std, rolling.MoveStd, "spread"),
    Case("min", rolling.move_min, ref.ref_move_min, rolling.MoveMin, "exact"),
    Case("max", rolling.move_max, ref.ref_move_max, rolling.MoveMax, "exact"),
    Case("slope", rolling.move_slope, ref.ref_move_slope, rolling.MoveSlope, "slope"),
    Case("median", rolling.move_median, ref.ref_move_median, rolling.MoveMedian, "quantile"),
    _q(0.0),
    _q(0.1),
    _q(0.9),
    _q(1.0),
]

PATTERNS = [
    "clean", "nan_sprinkle", "nan_runs", "pos_inf", "both_inf", "all_nan",
    "constant", "offset", "mixed",
]


def make_ts(rng: np.random.Generator, n: int, kind: str) -> Array:
    """Regular (1 s) or irregular timestamps with gaps and duplicates."""
    if kind == "regular":
        return np.arange(n, dtype=np.float64)
    gaps = rng.choice([0.0, 0.25, 0.5, 1.0, 1.0, 2.0, 7.0], size=n)
    return 1000.0 + np.cumsum(gaps)


def make_x(rng: np.random.Generator, n: int, pattern: str) -> Array:
    x = rng.normal(5.0, 3.0, size=n)
    if pattern == "nan_sprinkle":
        x[rng.random(n) < 0.25] = np.nan
    elif pattern == "nan_runs":
        for start in rng.integers(0, n, size=4):
            x[start:start + rng.integers(3, 30)] = np.nan
    elif pattern == "pos_inf":
        x[rng.integers(0, n, size=4)] = np.inf
        x[rng.random(n) < 0.1] = np.nan
    elif pattern == "both_inf":
        x[rng.integers(0, n, size=4)] = np.inf
        x[rng.integers(0, n, size=4)] = -np.inf
    elif pattern == "all_nan":
        x[:] = np.nan
    elif pattern == "constant":
        x[:] = 2.5
        x[rng.random(n) < 0.2] = np.nan
    elif pattern == "offset":
        x = 1e9 + rng.normal(0.0, 1e-3, size=n)
    elif pattern == "mixed":
        x[rng.random(n) < 0.15] = np.nan
        x[rng.integers(0, n, size=3)] = np.inf
        x[rng.integers(0, n, size=3)] = -np.inf
        x[rng.integers(0, n, size=3)] = 1e6
    return x


def tolerance(case: Case, ts: Array, x: Array) -> tuple[float, float]:
    """(rtol, atol) the kernel is held to on this input.

    The O(1) kernels keep running sums, so their absolute error scales with the
    magnitude of the finite data (mean) or its spread (std, slope), times a
    modest multiple of machine epsilon: 1e-9 of it is generous for windows of
    a few hundred samples.  min / max / quantiles select values: exact.
    """
    fin = x[np.isfinite(x)]
    if case.tol in ("exact", "quantile") or fin.size == 0:
        return 0.0, 0.0
    spread = float(fin.max() - fin.min())
    if case.tol == "mean":
        return 1e-9, 1e-9 * spread + 8 * np.finfo(float).eps * float(np.abs(fin).max())
    if case.tol == "spread":
        return 1e-9, 1e-9 * spread
    dt = np.diff(ts)
    dt = dt[dt > 0]
    return 1e-9, 1e-9 * spread / (float(dt.min()) if dt.size else 1.0)


def assert_matches(got: Array, want: Array, rtol: float, atol: float, what: str) -> None:
    """Equal NaN positions, equal infinities, finite values within tolerance."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_g, nan_w):
        i = int(np.flatnonzero(nan_g != nan_w)[0])
        raise AssertionError(f"{what}: NaN mismatch at {i}: got {got[i]!r}, want {want[i]!r}")
    inf_w = np.isinf(want) | np.isinf(got)
    if not np.array_equal(got[inf_w], want[inf_w]):
        i = int(np.flatnonzero(inf_w & (got != want))[0])
        raise AssertionError(f"{what}: inf mismatch at {i}: got {got[i]!r}, want {want[i]!r}")
    fin = ~nan_w & ~inf_w
    err = np.abs(got[fin] - want[fin])
    bound = atol + rtol * np.abs(want[fin])
    if np.any(err > bound):
        k = int(np.argmax(err - bound))
        i = int(np.flatnonzero(fin)[k])
        raise AssertionError(
            f"{what}: at {i} got {got[i]!r}, want {want[i]!r} "
            f"(|err| {err[k]:.3g} > {bound[k]:.3g} = atol {atol:.3g} + rtol {rtol:.3g}·|want|)")


def run_stream(case: Case, ts: Array, x: Array, window_s: float, min_count: int) -> Array:
    s = case.stream(window_s, min_count)
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = s.update(float(ts[i]), float(x[i])).value
    return out
