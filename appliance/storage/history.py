"""Reading stored history back: one ``AssetHistory`` per asset, for training and backtests."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import duckdb
import numpy as np

from appliance.console import short_list
from appliance.timefmt import from_us

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, eq=False)
class AssetHistory:
    """One asset's stored readings ({sensor: (sorted ts, values)}) and its faults."""

    asset: str
    series: Mapping[str, tuple[np.ndarray, np.ndarray]]
    fault_starts: np.ndarray
    fault_ends: np.ndarray  # NaN = still open


@dataclass(frozen=True, eq=False)
class StoredHistory:
    """Every asset's readings and faults, as training and backtests take them."""

    histories: tuple[AssetHistory, ...]
    t_start: float  # first reading
    t_end: float  # last reading
    readings: int
    faults: int
    notes: tuple[str, ...] = ()

    def fault_starts(self) -> dict[str, np.ndarray]:
        return {h.asset: np.sort(np.asarray(h.fault_starts, dtype=np.float64))
                for h in self.histories}

    def since(self, t: float) -> StoredHistory:
        """The readings and faults from event time ``t`` on (``backtest --since``: an
        import years older than the live data left out); ValueError if none are."""
        kept = []
        for h in self.histories:
            series = {s: (ts[ts >= t], v[ts >= t]) for s, (ts, v) in h.series.items()
                      if len(ts) and ts[-1] >= t}
            if series:
                starts = np.asarray(h.fault_starts, dtype=np.float64)
                ends = np.asarray(h.fault_ends, dtype=np.float64)
                # a fault still going on at t stays: its ticks after t are in a fault
                keep = (starts >= t) | np.isnan(ends) | (ends >= t)
                kept.append(AssetHistory(h.asset, series, starts[keep], ends[keep]))
        if not kept:
            raise ValueError(f"no readings from {t} (--since) on")
        series = [ts for h in kept for ts, _ in h.series.values()]
        return replace(self, histories=tuple(kept), t_start=min(float(ts[0]) for ts in series),
                       t_end=max(float(ts[-1]) for ts in series),
                       readings=sum(len(ts) for ts in series),
                       faults=sum(len(h.fault_starts) for h in kept))

    def longest_gap(self) -> tuple[float, float]:
        """(from, to) of the longest time without a reading of any asset."""
        ts = np.unique(np.concatenate([ts for h in self.histories
                                       for ts, _ in h.series.values()]))
        if len(ts) < 2:
            return self.t_start, self.t_start
        i = int(np.argmax(np.diff(ts)))
        return float(ts[i]), float(ts[i + 1])

    def data_quantile(self, q: float, cadence_s: float) -> float:
        """The time before which a fraction ``q`` of the data lies, counted in cells
        of ``cadence_s`` in which an asset has a reading: a quantile of the real
        ticks, not of the calendar (data in bursts leaves data on both sides)."""
        cells = [np.unique(np.ceil(np.concatenate([ts for ts, _ in h.series.values()])
                                   / cadence_s))
                 for h in self.histories if h.series]
        if not cells:
            return self.t_start + q * (self.t_end - self.t_start)
        return float(np.quantile(np.concatenate(cells), q)) * cadence_s


def load_histories(con: duckdb.DuckDBPyConnection, progress: Say | None = None
                   ) -> StoredHistory:
    """Read every stored reading and fault, one ``AssetHistory`` per asset.

    Assets are keyed by name; an asset name on two lines is one asset.  Fault
    events are paired per asset in time order: a start opens a fault, the next
    end closes it (a start and an end at one time: a fault of length 0); a fault
    still open at the end of the log has no end (NaN).
    """
    say = progress or (lambda _m: None)
    series = {sid: (asset, sensor) for sid, _line, asset, sensor in
              con.execute("SELECT id, line, asset, sensor FROM series").fetchall()}
    data = con.execute("SELECT series_id, epoch_us(ts) AS t, value FROM readings_raw "
                       # rowid: readings at one timestamp in the order they were
                       # stored, as the service saw them (validity depends on it)
                       "ORDER BY series_id, ts, rowid").fetchnumpy()
    sid = np.asarray(data["series_id"], dtype=np.int64)
    ts = from_us(np.asarray(data["t"]))
    values = np.asarray(data["value"], dtype=np.float64)
    if len(ts) == 0:
        raise ValueError("no readings stored: import a history first (appliance import)")
    bounds = np.flatnonzero(np.diff(sid)) + 1
    per_asset: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(sid)], strict=True):
        asset, sensor = series[int(sid[lo])]
        per_asset.setdefault(asset, {}).setdefault(sensor, []).append((ts[lo:hi],
                                                                       values[lo:hi]))
    events = con.execute("SELECT asset, state, epoch_us(ts) FROM faults "
                         "ORDER BY asset, ts").fetchall()
    faults, notes = _pair_faults(events)
    histories = []
    for asset in sorted(per_asset):
        sensors = {}
        for sensor, parts in per_asset[asset].items():
            if len(parts) == 1:
                sensors[sensor] = parts[0]
            else:  # the same asset and sensor on two lines
                t = np.concatenate([p[0] for p in parts])
                order = np.argsort(t, kind="stable")
                sensors[sensor] = (t[order], np.concatenate([p[1] for p in parts])[order])
        starts, ends = faults.get(asset, ([], []))
        histories.append(AssetHistory(asset, sensors, np.asarray(starts, dtype=np.float64),
                                      np.asarray(ends, dtype=np.float64)))
    orphan = sorted(set(faults) - set(per_asset))
    if orphan:
        notes.append(f"faults of assets without readings ignored: {short_list(orphan)}")
    n_faults = sum(len(h.fault_starts) for h in histories)
    say(f"history: {len(histories)} assets, {len(ts)} readings, {n_faults} faults")
    return StoredHistory(tuple(histories), float(ts.min()), float(ts.max()), len(ts),
                         n_faults, tuple(notes))


def stored_faults(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every asset's faults, paired as ``load_histories`` pairs them: asset → (starts,
    ends), NaN end = still open.  Keyed by asset name, as the histories are."""
    events = con.execute("SELECT asset, state, epoch_us(ts) FROM faults "
                         "ORDER BY asset, ts").fetchall()
    pairs, _ = _pair_faults(events)
    return {asset: (np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64))
            for asset, (starts, ends) in pairs.items()}


def _pair_faults(events: Sequence[tuple[str, str, int]]
                 ) -> tuple[dict[str, tuple[list[float], list[float]]], list[str]]:
    """Pair start and end events, given in (asset, ts) order.

    At one time, an end closes the fault open before it and a start opens the next
    (one fault ends as the next begins); with no fault open, the start comes first,
    so a start and an end at one time are a fault of length 0, not an end without
    a start followed by a fault that never ends.
    """
    out: dict[str, tuple[list[float], list[float]]] = {}
    unmatched_end = restarted = 0
    open_at: dict[str, float] = {}
    for (asset, ts_us), group in itertools.groupby(events, key=lambda e: (e[0], e[2])):
        t = from_us(ts_us)
        starts, ends = out.setdefault(asset, ([], []))
        for state in _one_time_order([state for _, state, _ in group], asset in open_at):
            if state == "start":
                if asset in open_at:  # a start while open: the end was never logged
                    restarted += 1
                    ends[-1] = starts[-1]
                starts.append(t)
                ends.append(math.nan)
                open_at[asset] = t
            elif state == "end":
                if asset in open_at:
                    ends[-1] = t
                    del open_at[asset]
                else:
                    unmatched_end += 1
    notes: list[str] = []
    if unmatched_end:
        notes.append(f"{unmatched_end} fault end events without a start were ignored")
    if restarted:
        notes.append(f"{restarted} faults started again before an end was logged; the "
                     f"earlier one is taken to end where it started")
    return out, notes


def _one_time_order(states: Sequence[str], open_before: bool) -> list[str]:
    """The events at one time in the order that pairs them: an end first when a fault
    is open (it closes that one), then start, end, start, ... (faults of length 0)."""
    starts, ends = states.count("start"), states.count("end")
    order = []
    if open_before and ends:
        order.append("end")
        ends -= 1
    while starts or ends:
        if starts:
            order.append("start")
            starts -= 1
        if ends:
            order.append("end")
            ends -= 1
    return order
