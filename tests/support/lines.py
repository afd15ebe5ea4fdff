"""Small synthetic lines for the training and backtest tests.

Two sensors: ``good`` climbs over the hour before each fault (its precursor),
``noise`` does not.  ``histories`` gives readings at any interval, for the
pipeline; ``dataset`` gives the feature rows directly (``good__last``,
``noise__last``), for tests of the fit and the metrics alone; ``write_files``
writes histories as the files ``appliance import`` reads.  Faults starting at
or after ``quiet_after`` come without a precursor: no model can see them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from appliance.config import PipelineConfig
from appliance.features.spec import PipelineSpec
from appliance.storage.history import AssetHistory
from appliance.training.dataset import Dataset

H = 3600.0
START = 1735689600.0  # 2025-01-01T00:00:00Z


def _fault_starts(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.sort(rng.uniform(lo, hi, n))


def _good(rng: np.random.Generator, ticks: np.ndarray, starts: np.ndarray,
          quiet_after: float) -> np.ndarray:
    good = rng.normal(0, 1, len(ticks))
    for s in starts[starts < quiet_after]:
        before = (ticks > s - H) & (ticks <= s)
        good[before] += 6 * (1 - (s - ticks[before]) / H)
    return good


def histories(assets: int = 3, days: float = 8.0, interval_s: float = 600.0, seed: int = 0,
              faults: int = 6, faults_between: tuple[float, float] | None = None,
              quiet_after: float = math.inf) -> list[AssetHistory]:
    """Readings of ``good`` and ``noise`` every ``interval_s`` from ``START``; each fault
    lasts ten minutes and starts in ``faults_between`` (default: from 3 h to 2 h before
    the end).  Times are seconds from ``START``."""
    rng = np.random.default_rng(seed)
    ts = START + np.arange(0.0, days * 86400.0, interval_s)
    lo, hi = faults_between or (3 * H, days * 86400.0 - 2 * H)
    out = []
    for a in range(assets):
        starts = START + _fault_starts(rng, lo, hi, faults)
        good = _good(rng, ts, starts, START + quiet_after)
        out.append(AssetHistory(f"a{a}", {"good": (ts, good),
                                          "noise": (ts, rng.normal(0, 1, len(ts)))},
                                starts, starts + 600.0))
    return out


def dataset(seed: int = 3, assets: int = 3, days: float = 4.0, cadence: float = 60.0,
            faults: int = 6, faults_before: float | None = None,
            quiet_after: float = math.inf) -> tuple[Dataset, PipelineSpec]:
    """Feature rows at every ``cadence`` seconds from 0; fault starts in [3 h,
    ``faults_before``] (default: an hour before the end)."""
    rng = np.random.default_rng(seed)
    spec = PipelineSpec.from_config(PipelineConfig(cadence_s=cadence, clean=False))
    ticks_one = np.arange(1, int(days * 86400 / cadence) + 1) * cadence
    hi = ticks_one[-1] - H if faults_before is None else faults_before
    parts, fault_starts = [], {}
    for a in range(assets):
        starts = _fault_starts(rng, 3 * H, hi, faults)
        X = np.column_stack([_good(rng, ticks_one, starts, quiet_after),
                             rng.normal(0, 1, len(ticks_one))]).astype(np.float32)
        nxt = np.searchsorted(starts, ticks_one, side="right")
        pos = np.zeros(len(ticks_one), bool)
        has = nxt < len(starts)
        pos[has] = starts[nxt[has]] <= ticks_one[has] + H
        parts.append((X, pos))
        fault_starts[f"a{a}"] = starts
    ds = Dataset(names=("good__last", "noise__last"), assets=tuple(fault_starts),
                 ticks=np.tile(ticks_one, assets),
                 asset_index=np.repeat(np.arange(assets), len(ticks_one)),
                 X=np.concatenate([p[0] for p in parts]),
                 positive=np.concatenate([p[1] for p in parts]),
                 usable=np.ones(assets * len(ticks_one), bool), fault_starts=fault_starts)
    return ds, spec


def write_files(hists: Sequence[AssetHistory], folder: Path) -> tuple[Path, Path]:
    """``readings.csv`` (long form, Unix seconds) and ``faults.csv`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    readings, faults = folder / "readings.csv", folder / "faults.csv"
    with readings.open("w") as f:
        f.write("ts,asset,sensor,value\n")
        for h in hists:
            for sensor, (ts, values) in h.series.items():
                f.writelines(f"{t:.3f},{h.asset},{sensor},{v!r}\n"
                             for t, v in zip(ts.tolist(), values.tolist(), strict=True))
    with faults.open("w") as f:
        f.write("asset,ts_start,ts_end,code\n")
        for h in hists:
            f.writelines(f"{h.asset},{s:.3f},{e:.3f},F1\n"
                         for s, e in zip(h.fault_starts.tolist(), h.fault_ends.tolist(),
                                         strict=True))
    return readings, faults
