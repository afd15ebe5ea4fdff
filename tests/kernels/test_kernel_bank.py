"""RollingBank: many series at once, equal to the single-series objects and to batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from appliance.kernels import rolling
from kernel_cases import assert_matches

BATCH = {
    "mean": rolling.move_mean, "std": rolling.move_std, "min": rolling.move_min,
    "max": rolling.move_max, "median": rolling.move_median, "slope": rolling.move_slope,
    "change": lambda ts, x, window, _min_count: rolling.move_change(ts, x, window),
}


def _ticks(rng: np.random.Generator, n_series: int, n_ticks: int):
    """Per tick: some series (an index may repeat) with their next timestamps and values."""
    clock = np.full(n_series, 100.0)
    for _ in range(n_ticks):
        idx = rng.integers(0, n_series, size=rng.integers(1, 2 * n_series))
        ts = np.empty(idx.shape[0])
        for j, s in enumerate(idx):
            clock[s] += rng.choice([0.0, 0.5, 1.0, 1.0, 3.0])
            ts[j] = clock[s]
        x = rng.normal(10.0, 4.0, size=idx.shape[0])
        x[rng.random(idx.shape[0]) < 0.1] = np.nan
        x[rng.random(idx.shape[0]) < 0.02] = np.inf
        x[rng.random(idx.shape[0]) < 0.02] = -np.inf
        yield idx, ts, x


@pytest.mark.parametrize("min_count", [1, 3])
def test_bank_equals_single_series_objects_and_batch(min_count: int) -> None:
    rng = np.random.default_rng(71)
    n_series, window, halflife = 6, 8.0, 4.0
    bank = rolling.RollingBank(n_series, window, halflife, min_count=min_count)
    singles = [[rolling.MoveMean(window, min_count), rolling.MoveStd(window, min_count),
                rolling.MoveMin(window, min_count), rolling.MoveMax(window, min_count),
                rolling.MoveMedian(window, min_count), rolling.MoveSlope(window, min_count),
                rolling.MoveChange(window), rolling.Ewma(halflife)] for _ in range(n_series)]
    history: list[list[tuple[float, float, np.ndarray]]] = [[] for _ in range(n_series)]
    for tick, (idx, ts, x) in enumerate(_ticks(rng, n_series, 150)):
        if tick == 75:
            bank = pickle.loads(pickle.dumps(bank))
        assert bank.update(idx, ts, x) is bank
        got = bank.values(idx)
        for j, s in enumerate(idx):
            want = [o.update(ts[j], x[j]).value for o in singles[s]]
            # later entries of a repeated index overwrite: compare the final state
            history[s].append((ts[j], x[j], np.array(want)))
        for j, s in enumerate(idx):
            final = history[s][-1][2]
            assert_matches(got[j], final, 0.0, 0.0, f"tick {tick} series {s}")
    cols = list(rolling.BANK_COLUMNS)
    for s in range(n_series):
        ts = np.array([h[0] for h in history[s]])
        x = np.array([h[1] for h in history[s]])
        rows = np.array([h[2] for h in history[s]])
        for c, name in enumerate(cols[:-1]):
            assert_matches(rows[:, c], BATCH[name](ts, x, window, min_count), 0.0, 0.0,
                           f"series {s} {name} vs batch")
        assert_matches(rows[:, -1], rolling.ewma(ts, x, halflife), 0.0, 0.0, f"series {s} ewma")
    np.testing.assert_array_equal(bank.values().shape, (n_series, len(cols)))


def test_bank_checks_the_whole_tick_before_applying_it() -> None:
    bank = rolling.RollingBank(3, 10.0, 5.0)
    bank.update([0, 1], [5.0, 5.0], [1.0, 2.0])
    before = bank.values()
    with pytest.raises(ValueError, match=r"idx\[1\]=3 is outside \[0, 3\)"):
        bank.update([0, 3], [6.0, 6.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"ts\[2\]=4.0 for series 1 after 5.0"):
        bank.update([0, 2, 1], [6.0, 6.0, 4.0], [9.0, 9.0, 9.0])
    with pytest.raises(ValueError, match=r"ts\[1\]=5.5 for series 0 after 6.0"):
        bank.update([0, 0], [6.0, 5.5], [9.0, 9.0])       # repeats are ordered too
    assert_matches(bank.values(), before, 0.0, 0.0, "untouched after refused ticks")
    with pytest.raises(ValueError, match=r"n_series must be >= 1, got 0"):
        rolling.RollingBank(0, 1.0, 1.0)
    assert bank.reset().values().shape == (3, len(rolling.BANK_COLUMNS))
    assert np.isnan(bank.values()).all()


@pytest.mark.parametrize("order", ["ascending", "descending", "zigzag", "equal", "random"])
def test_bank_order_statistics_with_every_ring_slot_in_use(order: str) -> None:
    # The bank's median heaps hold half the ring's capacity (+2), not all of it, and
    # its min / max deques hold ring slots (renumbered when the ring grows): a window
    # that fills its ring to the last slot (16, 32, 64, 128 samples, grown on the
    # way, wrapping round) with values in orders that push every newcomer into one
    # heap or keep the whole window in one deque must still give the single-series
    # objects' values, to the sign of a zero.
    rng = np.random.default_rng(3)
    cols = [rolling.BANK_COLUMNS.index(c) for c in ("min", "max", "median")]
    for cap in (16, 32, 64, 128):
        n = 4 * cap
        base = {"ascending": np.arange(n, dtype=np.float64),
                "descending": -np.arange(n, dtype=np.float64),
                "zigzag": np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * np.arange(n),
                "equal": np.where(rng.random(n) < 0.5, 0.0, -0.0),
                "random": rng.choice([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 2.5], n)}[order]
        ts = np.arange(n, dtype=np.float64)
        bank = rolling.RollingBank(2, float(cap), 1.0)      # cap samples in the window
        singles = [rolling.MoveMin(float(cap)), rolling.MoveMax(float(cap)),
                   rolling.MoveMedian(float(cap))]
        copy = None
        for j in range(n):
            if j == n // 2 + 3:
                copy = pickle.loads(pickle.dumps(bank))
            bank.update([0, 1], [ts[j], ts[j]], [base[j], -base[j]])
            want = np.array([o.update(ts[j], base[j]).value for o in singles])
            got = bank.values([0])[0, cols]
            assert np.array_equal(got, want, equal_nan=True), (cap, j, got, want)
            assert np.array_equal(np.signbit(got), np.signbit(want)), (cap, j, got, want)
            if copy is not None:
                # a reloaded bank rebuilds its heaps in another arrangement, so the sign
                # of a zero median may differ from then on (the deques are the same)
                copy.update([0, 1], [ts[j], ts[j]], [base[j], -base[j]])
                again = copy.values([0])[0, cols]
                assert np.array_equal(again, got, equal_nan=True), (cap, j, again, got)
                assert np.array_equal(np.signbit(again[:2]), np.signbit(got[:2]))
        got = bank.values([1])[0, cols]
        want = np.array([f(ts, -base, float(cap))[-1] for f in
                         (rolling.move_min, rolling.move_max, rolling.move_median)])
        assert np.array_equal(got, want, equal_nan=True), (cap, got, want)
