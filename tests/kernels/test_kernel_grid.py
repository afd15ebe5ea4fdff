"""The event-time grid kernels: batch == streaming == reference, and hand-derived cases."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from appliance.kernels import grid as kgrid
from appliance.kernels import reference as ref
from kernel_cases import assert_matches

CADENCE = 10.0
FRESH, CARRIED, MISSING, ABSENT = (kgrid.GRID_FRESH, kgrid.GRID_CARRIED, kgrid.GRID_MISSING,
                                   kgrid.GRID_ABSENT)


def _readings(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted readings of one sensor: 10 Hz, irregular every ~7 s, or hourly; with NaN
    readings, duplicate times, readings exactly on a tick and one long outage."""
    dt = {"10hz": 0.1, "irregular": 7.0, "hourly": 3600.0}[kind]
    n = {"10hz": 3000, "irregular": 400, "hourly": 12}[kind]
    ts = 1000.0 + np.cumsum(rng.exponential(dt, n))
    ts[n // 3:] += 40 * dt + 200.0                  # an outage longer than any carry
    on_tick = rng.random(n) < 0.1
    ts[on_tick] = np.ceil(ts[on_tick] / CADENCE) * CADENCE
    ts = np.sort(ts)
    ts[5:8] = ts[5]
    x = rng.normal(20.0, 2.0, n)
    x[rng.random(n) < 0.15] = np.nan
    return ts, x


def _ticks(ts: np.ndarray, start: str) -> np.ndarray:
    """Ticks over the readings: from the first reading's cell, or from the middle
    (history before the first cell), or from well before the first reading."""
    k_last = int(np.ceil(ts[-1] / CADENCE)) + 30
    k_first = {"first": int(np.ceil(ts[0] / CADENCE)),
               "middle": int(np.ceil(ts[len(ts) // 2] / CADENCE)),
               "before": int(np.ceil(ts[0] / CADENCE)) - 5}[start]
    return np.arange(k_first, k_last + 1) * CADENCE


def _stream(ts: np.ndarray, x: np.ndarray, ticks: np.ndarray, *args: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """The streaming object driven as the live service drives it."""
    g = kgrid.Grid(*args)
    j = 0
    while j < len(ts) and ts[j] <= ticks[0] - CADENCE:
        g.add(ts[j], x[j])
        j += 1
    g.discard()
    values, status = [], []
    for tick in ticks:
        while j < len(ts) and ts[j] <= tick:
            g.add(ts[j], x[j])
            j += 1
        g.close(tick)
        values.append(g.value)
        status.append(g.status)
        assert g.fresh == (g.status == FRESH)
    return np.array(values), np.array(status, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["10hz", "irregular", "hourly"])
@pytest.mark.parametrize("start", ["first", "middle", "before"])
@pytest.mark.parametrize(("max_gap_s", "intervals"), [(0.0, 3.0), (25.0, 0.0), (60.0, 3.0),
                                                      (30.0, 1.5)])
def test_grid_batch_stream_and_reference_agree(kind: str, start: str, max_gap_s: float,
                                               intervals: float) -> None:
    rng = np.random.default_rng(list((kind + start).encode()))
    ts, x = _readings(rng, kind)
    ticks = _ticks(ts, start)
    what = f"grid {kind} ticks from {start} max_gap_s={max_gap_s} intervals={intervals}"
    values, status = kgrid.to_grid(ts, x, ticks, CADENCE, max_gap_s, intervals, 5)
    want_v, want_s = ref.ref_to_grid(ts, x, ticks, CADENCE, max_gap_s, intervals, 5)
    np.testing.assert_array_equal(status, want_s, err_msg=what)
    assert_matches(values, want_v, 1e-13, 0.0, what)
    stream_v, stream_s = _stream(ts, x, ticks, max_gap_s, intervals, 5)
    np.testing.assert_array_equal(stream_s, status, err_msg=what)
    assert_matches(stream_v, values, 0.0, 0.0, what)          # bit for bit
    # every status occurs where it can: the outage ends any carry
    assert {FRESH, MISSING} <= set(status.tolist()), what
    assert (ABSENT in status) == (start == "before"), what


def test_grid_by_hand() -> None:
    ticks = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    # cell 10 holds 1, 9 and 10 (exactly on the tick); NaN at 15 is a reading
    # without a value; cell 20 holds 12
    ts = np.array([1.0, 9.0, 10.0, 12.0, 15.0])
    x = np.array([1.0, 2.0, 3.0, 10.0, np.nan])
    values, status = kgrid.to_grid(ts, x, ticks, CADENCE, 25.0, 0.0)
    # 30: 18 s after the last valid reading (12) → carried; 40: 28 s > 25 → missing
    np.testing.assert_array_equal(values, [2.0, 10.0, 10.0, np.nan, np.nan])
    np.testing.assert_array_equal(status, [FRESH, FRESH, CARRIED, MISSING, MISSING])
    # only a NaN reading: present (missing), not absent
    _, status = kgrid.to_grid([15.0], [np.nan], ticks, CADENCE, 25.0, 0.0)
    np.testing.assert_array_equal(status, [ABSENT, MISSING, MISSING, MISSING, MISSING])


def test_an_hourly_sensor_is_carried_by_its_typical_interval_and_an_outage_does_not_stretch_it(
) -> None:
    ts = np.array([0.0, 3600.0, 7200.0, 10800.0, 14400.0, 14400.0 + 8 * 3600.0])
    x = np.arange(6.0)
    ticks = np.arange(1, 6 * 3600 // 10 + 1) * CADENCE          # 0..6 h
    values, status = kgrid.to_grid(ts, x, ticks, CADENCE, 60.0, 3.0)
    # median interval 3600 s → carried up to 3 h after the last reading at 4 h
    after = ticks - 14400.0
    carried = (after > 0) & (after <= 3 * 3600)
    assert (status[carried] == CARRIED).all() and (values[carried] == 4.0).all()
    assert (status[after > 3 * 3600] == MISSING).all()
    _, plain = kgrid.to_grid(ts, x, ticks, CADENCE, 60.0, 0.0)
    assert (plain[(after > 60) & (after < 3 * 3600)] == MISSING).all()
    # after the 8 h outage the median of (3600 × 4, 28800) is still 3600
    g = kgrid.Grid(60.0, 3.0)
    for t, v in zip(ts, x, strict=True):
        g.add(t, v)
    assert g.carry_s == 3 * 3600.0


def test_a_10hz_sensor_keeps_a_short_carry() -> None:
    ts = np.arange(1, 101) * 0.1                                 # 10 s of 10 Hz
    ticks = np.arange(1, 20) * CADENCE
    _, status = kgrid.to_grid(ts, np.ones(100), ticks, CADENCE, 15.0, 3.0)
    # 3 × 0.1 s is below max_gap_s: the floor holds (15 s after the last reading)
    np.testing.assert_array_equal(status[:3], [FRESH, CARRIED, MISSING])


def test_grid_stream_checks_pickle_and_reset() -> None:
    g = kgrid.Grid(25.0, 3.0)
    g.add(1.0, 1.0).add(4.0, 2.0).close(10.0).add(13.0, 5.0)
    h = pickle.loads(pickle.dumps(g))
    for obj in (g, h):
        obj.add(17.0, 1.0).close(20.0).close(30.0)
    assert (h.value, h.status, h.carry_s, h.last_ts) == (g.value, g.status, g.carry_s, 17.0)
    assert g.value == 3.0 and g.status == CARRIED
    assert pickle.dumps(g) == pickle.dumps(h)  # unused ring slots are zero, not garbage
    state = g.__getstate__()
    with pytest.raises(ValueError, match="does not fit a ring of 5 intervals"):
        kgrid.Grid(25.0, 3.0).__setstate__({**state, "next_slot": 5})
    with pytest.raises(ValueError, match="in a closed cell"):
        g.add(30.0, 1.0)
    with pytest.raises(ValueError, match="tick must increase"):
        g.close(30.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        g.add(35.0, 1.0).add(34.0, 1.0)
    g.reset()
    assert g.status == ABSENT and math.isnan(g.value) and g.last_ts == -math.inf
    with pytest.raises(ValueError, match=r"max_gap_intervals must be >= 0 \(may be inf\), got -1"):
        kgrid.Grid(1.0, -1)
    with pytest.raises(ValueError, match="interval_count must be >= 1, got 0"):
        kgrid.to_grid([1.0], [1.0], [10.0], CADENCE, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        kgrid.to_grid([2.0, 1.0], [1.0, 1.0], [10.0], CADENCE, 1.0, 1.0)


# --- coarse grid --------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2, 6, 25])
@pytest.mark.parametrize("k_first", [0, 7, 360])
def test_coarse_grid_batch_bank_and_reference_agree(stride: int, k_first: int) -> None:
    rng = np.random.default_rng(stride * 1000 + k_first)
    x = rng.normal(size=(3, 200))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[1, 40:120] = np.nan                                  # whole coarse cells empty
    stream = kgrid.CoarseBank(4, stride)                   # row 3 is never listed
    shown_stream = np.full((3, 200), np.nan)
    for i in range(200):
        rows = [0, 1, 2] if i >= 50 else [0, 2]            # a sensor joining mid-stream
        if stream.update(rows, k_first + i, x[rows, i]):
            shown_stream[rows, i] = stream.means(rows)
        elif i:
            shown_stream[rows, i] = shown_stream[rows, i - 1]
    assert np.isnan(stream.means([3])).all()
    for s in range(3):
        start = 50 if s == 1 else 0
        what = f"coarse stride={stride} k_first={k_first} series={s}"
        closes, means, shown = kgrid.coarse_grid(k_first + start, x[s, start:], stride)
        want_c, want_m, want_w = ref.ref_coarse_grid(k_first + start, x[s, start:], stride)
        np.testing.assert_array_equal(closes, want_c, err_msg=what)
        np.testing.assert_array_equal(shown, want_w, err_msg=what)
        assert_matches(means, want_m, 1e-14, 1e-14 * np.nanmax(np.abs(x)), what)
        batch_shown = np.where(shown >= 0, means[np.maximum(shown, 0)], np.nan)
        assert_matches(shown_stream[s, start:], batch_shown, 0.0, 0.0, what)


def test_coarse_bank_checks_and_reset() -> None:
    c = kgrid.CoarseBank(2, 3)
    assert not c.update([0], 4, [1.0]) and not c.update([0], 5, [3.0])
    with pytest.raises(ValueError, match="k must follow series 0's previous tick 5, got 7"):
        c.update([0, 1], 7, [1.0, 2.0])
    assert c.update([1], 6, [8.0])                         # nothing of the refused call kept
    assert c.means([1]).tolist() == [8.0]
    with pytest.raises(ValueError, match="each series at most once"):
        c.update([0, 0], 6, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"x must hold one value per listed series \(1\), got 2"):
        c.update([0], 6, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"idx\[0\]=2 is outside \[0, 2\)"):
        c.update([2], 6, [1.0])
    with pytest.raises(TypeError, match="integer indices, got dtype float64"):
        c.update([0.9], 6, [1.0])
    with pytest.raises(TypeError, match="integer indices, got dtype bool"):
        c.reset(np.array([True, False]))
    assert c.update([0], 6, [np.nan]) and c.means([0]).tolist() == [2.0]
    # a reset series may start at any tick; the others keep their cells
    c.reset([0])
    assert np.isnan(c.means([0])).all() and c.means([1]).tolist() == [8.0]
    assert c.update([0], 9, [4.0]) and c.means([0]).tolist() == [4.0]


# --- idle restarts ------------------------------------------------------------

@pytest.mark.parametrize("gap", [0.0, 5.0, 60.0])
def test_idle_restarts_batch_stream_and_reference_agree(gap: float) -> None:
    rng = np.random.default_rng(int(gap) + 3)
    ts = np.sort(rng.exponential(3.0, 300).cumsum() + rng.choice([0, 100], 300).cumsum())
    got = kgrid.idle_restarts(ts, gap)
    np.testing.assert_array_equal(got, ref.ref_idle_restarts(ts, gap))
    assert (got.sum() > 0) == (gap > 0)
    idle = kgrid.IdleGap(gap)
    stream = [idle.update(t).restart for t in ts]
    np.testing.assert_array_equal(np.array(stream, dtype=np.uint8), got)
    # out of order (readings of several sensors): the newest reading counts
    idle = kgrid.IdleGap(10.0).update(0.0).update(30.0)
    assert idle.restart and not idle.update(25.0).restart and idle.previous_ts == 30.0
    assert not pickle.loads(pickle.dumps(idle)).update(39.0).restart
