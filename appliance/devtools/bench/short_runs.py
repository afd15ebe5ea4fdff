"""Backtest memory on data in short bursts: 35 twenty-minute test runs over a month.

    python -m appliance.devtools.bench.short_runs [--runs 35] [--run-min 20] [--days 30]

The shape of a pump testbed: ``runs`` runs of ``run_min`` minutes at 1 Hz, 8
sensors each, one asset per run, spread evenly over ``days``; a fault induced
``fault_min`` minutes into every other run, after a precursor (one sensor
drifting) over the minutes before it.  The history goes through
``backtest.run`` with the pipeline such data needs (``cadence_s = 10``,
``horizon_s = 300``: a 1 h horizon would not fit in a 20-minute run), and the
peak RSS of the process is printed beside the number of feature rows.  An asset
has ticks only where it has data, so memory follows the ~35 × 90 real ticks, not
35 assets × a month of empty ones (9.1 M rows, > 20 GB, before).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import numpy as np

from appliance.config import from_dict
from appliance.storage.history import AssetHistory, StoredHistory
from appliance.training import backtest

DAY = 86400.0
SENSORS = ("Volume Flow RateRMS", "Pressure", "Motor Current", "Temperature", "Accel X",
           "Accel Y", "Accel Z", "Voltage")
CONFIG = {"pipeline": {"cadence_s": 10.0, "horizon_s": 300.0, "hampel_window_s": 30.0}}


def short_runs(runs: int = 35, run_min: float = 20.0, days: float = 30.0,
               fault_min: float = 12.0, seed: int = 5,
               t0: float = 1_700_000_000.0) -> StoredHistory:
    """The history described in the module docstring (sensor names as a testbed has
    them; this goes straight to the backtest, not through the importer)."""
    rng = np.random.default_rng(seed)
    starts = t0 + np.linspace(0.0, days * DAY, runs, endpoint=False)
    n = int(run_min * 60)
    histories = []
    for i, start in enumerate(starts.tolist()):
        ts = start + np.arange(n, dtype=np.float64)
        faulty = i % 2 == 1
        fault_at = start + fault_min * 60.0
        series = {}
        for j, sensor in enumerate(SENSORS):
            values = 10.0 * (j + 1) + rng.normal(0.0, 0.2, n)
            if faulty and j == 0:  # the flow drops over the 5 minutes before the fault
                values -= np.clip((ts - (fault_at - 300.0)) / 300.0, 0.0, None) * 3.0
            series[sensor] = (ts, values)
        f_start = np.array([fault_at]) if faulty else np.empty(0)
        f_end = f_start + 60.0
        histories.append(AssetHistory(f"run{i + 1:02d}", series, f_start, f_end))
    return StoredHistory(tuple(histories), float(starts[0]), float(starts[-1] + n - 1),
                         runs * n * len(SENSORS), runs // 2)


def run(runs: int = 35, run_min: float = 20.0, days: float = 30.0,
        verbose: bool = True) -> dict[str, Any]:
    cfg = from_dict(CONFIG, source="<bench>")
    history = short_runs(runs, run_min, days)
    variants = backtest.resolve_variants(cfg, ["full", "no_filter", "static_threshold"])
    t0 = time.perf_counter()
    result = backtest.run(history, variants, history.data_quantile(0.6, cfg.pipeline.cadence_s),
                          budget=cfg.alerts.max_false_per_asset_week,
                          clear_ratio=cfg.alerts.clear_ratio, training=cfg.training,
                          progress=print if verbose else None)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"runs": runs, "run_min": run_min, "days": days, "readings": history.readings,
            "test_ticks": int(sum(len(vr.pred_ts) for vr in result.variants[:1])),
            "asset_weeks_tested": round(result.variants[0].test.asset_weeks, 3),
            "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
            "table": backtest.terminal_table(result)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m appliance.devtools.bench.short_runs",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=35)
    ap.add_argument("--run-min", type=float, default=20.0)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = run(args.runs, args.run_min, args.days, verbose=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}, indent=2))
    else:
        print(out.pop("table"))
        print(", ".join(f"{k} {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
