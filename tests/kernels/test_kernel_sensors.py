"""SensorBank: the live per-sensor chain of many series, bit for bit the single objects."""

from __future__ import annotations

import doctest
import math
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from appliance.kernels import filters, sensors
from appliance.kernels.grid import Grid
from appliance.kernels.rolling import Ewma
from appliance.kernels.sensors import SENSOR_COLUMNS, SensorBank

CADENCE = 10.0


@dataclass(frozen=True)
class Params:
    lo: float
    hi: float
    rate: float
    gap: float
    gap_intervals: float
    interval_count: int
    missing_hl: float
    baseline_hl: float
    stuck_window: float
    stuck_min_count: int
    hampel_window: float = 0.0
    hampel_k: float = 3.0
    hampel_min_count: int = 3

    def args(self) -> tuple:
        return (self.lo, self.hi, self.rate, self.gap, self.gap_intervals, self.interval_count,
                self.missing_hl, self.baseline_hl, self.stuck_window, self.stuck_min_count)

    def kwargs(self) -> dict:
        return {"hampel_window_s": self.hampel_window, "hampel_k": self.hampel_k,
                "hampel_min_count": self.hampel_min_count}


PARAMS = [
    Params(-math.inf, math.inf, math.inf, 25.0, 0.0, 5, 60.0, 600.0, 30.0, 2),
    Params(0.0, 100.0, 8.0, 15.0, 3.0, 5, 120.0, 300.0, 40.0, 3, 60.0, 3.0, 3),
    Params(0.0, 100.0, math.inf, 0.0, 5.0, 3, 30.0, 60.0, 25.0, 2, 45.0, 2.0, 5),
    Params(-50.0, 50.0, 3.0, 35.0, 2.0, 4, 90.0, 900.0, 60.0, 2),
    Params(-math.inf, 80.0, 20.0, 12.0, 0.0, 1, 45.0, 200.0, 20.0, 4, 80.0, 1.5, 3),
]


class Chain:
    """The live per-sensor chain (see appliance/features/spec.py), composed of the single
    objects: what the live features ran before ``SensorBank``."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.validity = filters.Validity(p.lo, p.hi, p.rate)
        self.restart()

    def restart(self) -> None:
        """A fresh start: everything new but the validity state (live.py keeps it)."""
        p = self.p
        self.grid = Grid(p.gap, p.gap_intervals, p.interval_count)
        self.hampel = (filters.Hampel(p.hampel_window, p.hampel_k, p.hampel_min_count)
                       if p.hampel_window else None)
        self.missing = Ewma(p.missing_hl)
        self.baseline = Ewma(p.baseline_hl)
        self.stuck = filters.Stuck(p.stuck_window, p.stuck_min_count)

    def add(self, ts: float, value: float) -> bool:
        valid = self.validity.update(ts, value).value
        self.grid.add(ts, value if valid else math.nan)
        return valid

    def close(self, tick: float) -> tuple[float, float, float, float]:
        cell = self.grid.close(tick)
        g = cell.value
        if self.hampel is not None:
            g = self.hampel.update(tick, g).value
        missing = self.missing.update(tick, 1.0 if math.isnan(g) else 0.0).value
        return (g, missing, g - self.baseline.update(tick, g).value,
                1.0 if self.stuck.update(tick, g if cell.fresh else math.nan).value else 0.0)


class Source:
    """One sensor's readings: a random walk with NaN, out-of-range values, spikes,
    stuck runs, repeated timestamps and silences longer than any carry limit."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.level = 50.0
        self.stuck_left = 0
        self.silent_left = 0
        self.last = -math.inf

    def readings(self, start: float, end: float) -> list[tuple[float, float]]:
        """Readings in (start, end], sorted, none before the previous one."""
        rng = self.rng
        start = max(start, self.last)
        if self.silent_left > 0:
            self.silent_left -= 1
            return []
        if rng.random() < 0.03:
            self.silent_left = int(rng.integers(3, 12))
        if self.stuck_left == 0 and rng.random() < 0.04:
            self.stuck_left = int(rng.integers(5, 15))
            self.level = float(round(self.level))   # exact: a cell's mean stays equal
        n = int(rng.choice([0, 1, 1, 2, 3, 5]))
        ts = np.sort(start + (end - start) * (1.0 - rng.random(n)))
        if n > 1 and rng.random() < 0.2:
            ts[1] = ts[0]                           # a repeated timestamp
        if n and rng.random() < 0.1:
            ts[-1] = end                            # a reading right at the tick
        out = []
        for t in ts:
            if self.stuck_left:
                x = self.level
            else:
                self.level += float(rng.normal(0.0, 2.0))
                x = self.level
                u = rng.random()
                if u < 0.06:
                    x = math.nan
                elif u < 0.09:
                    x = float(rng.choice([math.inf, -math.inf, 1e3, -1e3]))
                elif u < 0.15:
                    x = x + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(15.0, 40.0))
            out.append((float(t), x))
        if self.stuck_left:
            self.stuck_left -= 1
        if out:
            self.last = out[-1][0]
        return out


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_array_equal(got, want, err_msg=what)
    # assert_array_equal treats NaN as equal to NaN; also hold the NaN positions
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)


def _run(seed: int, n_ticks: int, restarts: bool) -> dict:
    """Bank and chains through the same stream; returns counts of what was exercised."""
    rng = np.random.default_rng(seed)
    bank = SensorBank(capacity=1)
    chains: list[Chain] = []
    sources: list[Source] = []
    seen = {"valid": 0, "invalid": 0, "stuck": 0, "nan": 0, "outlier": 0, "restarted": 0,
            "grown": 0, "skipped": 0, "closed": 0}
    last_close = []                     # each row's last closed tick

    def new_row(k: int) -> None:
        p = PARAMS[len(chains) % len(PARAMS)]
        cap = bank.capacity
        row = bank.add_series(*p.args(), **p.kwargs())
        seen["grown"] += bank.capacity > cap
        assert row == len(chains)
        chains.append(Chain(p))
        sources.append(Source(np.random.default_rng([seed, row])))
        last_close.append((k - 1) * CADENCE)

    for _ in range(3):
        new_row(0)
    for k in range(1, n_ticks + 1):
        tick = k * CADENCE
        if k % 15 == 0 and len(chains) < 3 * len(PARAMS):
            new_row(k)                  # rows join mid-stream: the bank grows under them
        for row, src in enumerate(sources):
            for t, x in src.readings(last_close[row], tick):
                want = chains[row].add(t, x)
                got = bank.add(row, t, x)
                assert got is want, (k, row, t, x)
                seen["valid" if want else "invalid"] += 1
                assert bank.last_ts(row) == chains[row].grid.last_ts
        # close most rows; some skip this tick (their open cell runs on to a later one)
        keep = rng.random(len(chains)) < 0.9
        rows = np.flatnonzero(keep).astype(np.int64)
        seen["skipped"] += int((~keep).sum())
        out = np.full((len(rows), 4), -1.0)
        assert bank.close(rows, tick, out) is out
        want = np.array([chains[r].close(tick) for r in rows]).reshape(-1, 4)
        _assert_same(out, want, f"tick {k}")
        for r in rows:
            last_close[r] = tick
            h = chains[r].hampel
            seen["outlier"] += bool(h is not None and h.is_outlier)
        seen["closed"] += len(rows)
        seen["stuck"] += int((out[:, 3] == 1.0).sum())
        seen["nan"] += int(np.isnan(out[:, 0]).sum())
        if restarts and k % 7 == 0:
            pick = np.flatnonzero(rng.random(len(chains)) < 0.3).astype(np.int64)
            bank.restart(pick)
            for r in pick:
                chains[r].restart()
            seen["restarted"] += len(pick)
    for row, chain in enumerate(chains):
        assert bank.n_invalid(row) == chain.validity.n_invalid
        assert bank.has_hampel(row) == (chain.hampel is not None)
    assert len(bank) == len(chains)
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bank_equals_the_chain_of_single_objects(seed: int) -> None:
    seen = _run(seed, 400, restarts=False)
    # the stream exercised what it is meant to (else the equality above proves little)
    for key in ("valid", "invalid", "stuck", "nan", "outlier", "grown", "skipped"):
        assert seen[key] > 0, (key, seen)


@pytest.mark.parametrize("seed", [4, 5])
def test_bank_equals_the_chain_across_restarts(seed: int) -> None:
    seen = _run(seed, 400, restarts=True)
    assert seen["restarted"] > 0 and seen["stuck"] > 0 and seen["outlier"] > 0, seen


def test_restart_keeps_validity_only() -> None:
    p = Params(0.0, 100.0, 1.0, 30.0, 0.0, 5, 60.0, 600.0, 30.0, 2)
    bank = SensorBank()
    row = bank.add_series(*p.args())
    assert bank.add(row, 1.0, 50.0)
    out = bank.close(np.array([row]), 10.0)
    assert out[0, 0] == 50.0
    bank.restart(np.array([row]))
    assert bank.last_ts(row) == -math.inf
    # the rate check still refers to the reading before the restart: 50 -> 90 in 19 s
    assert not bank.add(row, 20.0, 90.0)
    assert bank.n_invalid(row) == 1
    with pytest.raises(ValueError, match="non-decreasing"):
        bank.add(row, 15.0, 50.0)           # validity's order outlives the restart
    # the grid is new: its cell holds only the invalid reading, nothing is carried
    out = bank.close(np.array([row]), 20.0)
    assert math.isnan(out[0, 0]) and out[0, 1] == 1.0


def test_closing_a_subset_leaves_the_others_untouched() -> None:
    rng = np.random.default_rng(8)
    a, b = SensorBank(), SensorBank()
    n = 2 * len(PARAMS)
    for i in range(n):
        p = PARAMS[i % len(PARAMS)]
        a.add_series(*p.args(), **p.kwargs())
        b.add_series(*p.args(), **p.kwargs())
    everything = np.arange(n, dtype=np.int64)
    subset = np.array([1, 4, 6], dtype=np.int64)
    others = np.setdiff1d(everything, subset)
    t = 0.0
    for k in range(1, 60):
        for row in range(n):
            for _ in range(int(rng.integers(0, 3))):
                t_row = (k - 1) * CADENCE + float(rng.uniform(1.5, CADENCE))
                x = float(rng.normal(50.0, 5.0))
                # readings per row must not go back in time
                t_row = max(t_row, a.last_ts(row))
                assert a.add(row, t_row, x) == b.add(row, t_row, x)
        t = k * CADENCE
        if k % 5 == 0:
            a.close(subset, t)                  # b skips it
        else:
            # (the subset's rows differ from the first extra close on)
            _assert_same(a.close(everything, t)[others], b.close(everything, t)[others],
                         f"tick {k}")
            continue
        got = a.close(others, t + 1.0)
        want = b.close(others, t + 1.0)
        _assert_same(got, want, f"tick {k} others")
        a.close(subset, t + 1.0)
        b.close(subset, t + 1.0)
    # the subset's rows did diverge (two closes against one): the check above could fail
    assert not np.array_equal(a.close(subset, t + 2.0), b.close(subset, t + 2.0),
                              equal_nan=True)


def test_growth_keeps_earlier_rows() -> None:
    p = PARAMS[1]
    bank = SensorBank(capacity=2)
    chains = [Chain(p) for _ in range(2)]
    for _ in range(2):
        bank.add_series(*p.args(), **p.kwargs())
    rows = np.arange(2, dtype=np.int64)

    def feed(k: int, n: int) -> None:
        for r in range(n):
            for j in range(3):
                t, x = (k - 1) * CADENCE + 2.0 + 2.0 * j, float(10 + (k * 7 + r * 3 + j) % 20)
                assert bank.add(r, t, x) is chains[r].add(t, x)

    for k in range(1, 30):
        feed(k, 2)
        _assert_same(bank.close(rows, k * CADENCE),
                     np.array([c.close(k * CADENCE) for c in chains]), f"tick {k}")
    for _ in range(40):
        bank.add_series(*p.args(), **p.kwargs())
        chains.append(Chain(p))
    assert bank.capacity >= 42 and len(bank) == 42
    rows = np.arange(42, dtype=np.int64)
    for k in range(30, 60):
        feed(k, 42)
        _assert_same(bank.close(rows, k * CADENCE),
                     np.array([c.close(k * CADENCE) for c in chains]), f"tick {k}")


def test_refused_close_changes_nothing() -> None:
    p = PARAMS[0]
    bank, chain = SensorBank(), [Chain(p), Chain(p)]
    for _ in range(2):
        bank.add_series(*p.args())
    for r in range(2):
        assert bank.add(r, 1.0, 5.0 + r) is chain[r].add(1.0, 5.0 + r)
    both = np.array([0, 1], dtype=np.int64)
    bank.close(np.array([0], dtype=np.int64), 10.0)
    chain[0].close(10.0)
    with pytest.raises(ValueError, match="tick must increase"):
        bank.close(np.array([1, 0], dtype=np.int64), 10.0)     # row 1 fine, row 0 not
    with pytest.raises(ValueError, match="distinct"):
        bank.close(np.array([1, 1], dtype=np.int64), 20.0)
    with pytest.raises(IndexError, match=r"rows\[1\]=2"):
        bank.close(np.array([1, 2], dtype=np.int64), 20.0)
    with pytest.raises(ValueError, match="before the newest reading"):
        bank.add(1, 25.0, 6.0)
        chain[1].add(25.0, 6.0)
        bank.close(both, 20.0)
    with pytest.raises(ValueError, match="shape"):
        bank.close(both, 30.0, np.empty((3, 4)))
    with pytest.raises(ValueError, match="finite"):
        bank.close(both, math.nan)
    # none of the refused calls closed anything: the next close matches the chain
    _assert_same(bank.close(both, 30.0), np.array([c.close(30.0) for c in chain]), "after")


def test_argument_checks() -> None:
    bank = SensorBank()
    args = PARAMS[1].args()
    with pytest.raises(ValueError, match="lo must be <= hi"):
        bank.add_series(5.0, 1.0, *args[2:])
    with pytest.raises(ValueError, match="max_gap_s must be >= 0"):
        bank.add_series(*args[:3], -1.0, *args[4:])
    with pytest.raises(ValueError, match="missing_halflife_s must be finite and > 0"):
        bank.add_series(*args[:6], 0.0, *args[7:])
    with pytest.raises(ValueError, match="stuck_min_count must be >= 1"):
        bank.add_series(*args[:9], 0)
    with pytest.raises(ValueError, match="hampel_window_s must be 0"):
        bank.add_series(*args, hampel_window_s=-3.0)
    with pytest.raises(ValueError, match="hampel_k must be >= 0"):
        bank.add_series(*args, hampel_window_s=30.0, hampel_k=-1.0)
    assert len(bank) == 0                   # a refused series takes no row
    row = bank.add_series(*args)
    assert row == 0 and not bank.has_hampel(0)
    with pytest.raises(IndexError):
        bank.add(1, 0.0, 1.0)
    with pytest.raises(IndexError):
        bank.last_ts(-1)
    with pytest.raises(ValueError, match="finite"):
        bank.add(0, math.inf, 1.0)
    bank.add(0, 5.0, 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        bank.add(0, 4.0, 1.0)
    bank.close(np.array([0]), 10.0)
    with pytest.raises(ValueError, match="closed cell"):
        bank.add(0, 10.0, 1.0)
    with pytest.raises(IndexError):
        bank.restart(np.array([3]))
    assert SENSOR_COLUMNS == ("grid", "missing", "dev", "stuck")
    with pytest.raises(TypeError):
        pickle.dumps(bank)                  # no pickling (rather than a silent empty copy)


def test_docstring_example() -> None:
    result = doctest.testmod(sensors)
    assert result.attempted > 0 and result.failed == 0
