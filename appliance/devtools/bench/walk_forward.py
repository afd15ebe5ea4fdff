"""Walk-forward against static on a recalibrated line: what the retraining loop buys.

    python -m appliance.devtools.bench.walk_forward [--days 45] [--assets 10] [--json]

``assets`` assets × ``days`` days of 1-minute readings (``simulator.simulate_history``,
as ``bench/train.py`` builds them, ``[pipeline] cadence_s = 60, hampel_window_s =
600``), with a recalibration after the split at day ``split_day``: the vibration
sensor reads ``scale`` × its value from then on.  (A +10 °C lubricant temperature
offset, tried first, leaves this history's gbt model unchanged: it does not split
on the lubricant temperature's level, so there is nothing for the loop to repair.)
``full`` is trained on days 0-``split_day``, then scored frozen (static) and walked
forward with the ``[retrain]`` below (event time, labels as they arrived).

Reported: recall at the model's own threshold and at <= 1 false alarm per
asset-week, false alarms, median lead, for both; the loop's trainings, promotions
and rollbacks; the event time from the recalibration to the first promoted model;
wall time and peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.config import from_dict
from appliance.console import Progress, fmt, minutes, table
from appliance.devtools import simulator
from appliance.storage.history import StoredHistory
from appliance.training import backtest, walk_forward
from appliance.training.starter import histories_of

DAY = 86400.0
#: The retrain settings of the run: the defaults, but a 2-day holdout (with 7 days
#: a candidate is trained on data before the recalibration for a week after it).
RETRAIN = {"holdout_days": 2.0}
CONFIG = {"pipeline": {"cadence_s": 60.0, "hampel_window_s": 600.0}, "retrain": RETRAIN}


def run(days: float = 45.0, assets: int = 10, split_day: float = 30.0, scale: float = 0.5,
        step_s: float | None = None, seed: int = 11, work: Path | None = None,
        json_output: bool = False, verbose: bool = True) -> dict[str, Any]:
    say = Progress(enabled=verbose)
    t_wall = time.perf_counter()
    cfg = from_dict(CONFIG, source="<bench>")
    params = simulator.SimParams(recalibrations=(
        simulator.Recalibration(at_s=split_day * DAY, sensor="vibration", scale=scale),))
    say(f"simulating {assets} assets × {days:g} days of 1-minute readings (vibration × "
        f"{scale:g} from day {split_day:g})")
    sim = simulator.simulate_history(days, assets, 1 / 60, seed, params=params)
    history = StoredHistory(tuple(histories_of(sim)), sim.t_start, sim.t_end,
                            sim.n_readings, len(sim.faults))
    del sim
    variants = backtest.resolve_variants(cfg, ["full"])
    split = history.t_start + split_day * DAY
    with tempfile.TemporaryDirectory(prefix="appliance-bench-wf-") as tmp:
        out = work or Path(tmp)
        result = walk_forward.run(cfg, history, variants, split, out_dir=out, step_s=step_s,
                                  progress=say, seed=seed)
        walk_forward.write_report(result, out)
    (walk,) = result.walks
    static = result.static.variants[0]
    promoted = walk.first("promote")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "assets": assets, "days": days, "split_day": split_day, "vibration_scale": scale,
        "retrain": RETRAIN, "step_s": walk.step_s,
        "static": _numbers(static.test, static.at_budget),
        "walk_forward": _numbers(walk.test, walk.at_budget),
        "loop": walk.counts(),
        "days_from_drift_to_promotion": None if promoted is None
        else round((promoted - split) / DAY, 2),
        "seconds": {"walk": round(walk.seconds, 1),
                    "total": round(time.perf_counter() - t_wall, 1)},
        "peak_rss_mb": round(peak_mb),
    }
    if json_output:
        print(json.dumps(summary, indent=2))
        return summary
    print(f"{assets} assets × {days:g} days, vibration × {scale:g} from day {split_day:g}; "
          f"test days {split_day:g}-{days:g}; [retrain] defaults with {RETRAIN}; step "
          f"{walk.step_s:g} s")
    rows = []
    for name, n in (("static", summary["static"]), ("walk-forward", summary["walk_forward"])):
        rows.append([name, fmt(n["recall"]), fmt(n["false_per_asset_week"]),
                     minutes(n["median_lead_s"]), fmt(n["recall_at_budget"]),
                     fmt(n["false_at_budget"])])
    print(table(["", "recall", "false/asset-wk", "median lead", "recall @ <=1 false/wk",
                 "false/wk there"], rows))
    c = summary["loop"]
    print(f"loop: {c['trigger']} triggers, {c['trained']} trainings ({c['training_failed']} "
          f"failed), {c['promote']} promotions, {c['reject']} rejections, {c['rollback']} "
          f"rollbacks; drift to first promotion: "
          f"{summary['days_from_drift_to_promotion']} days of event time")
    print(f"wall {summary['seconds']['total']} s (walk {summary['seconds']['walk']} s), "
          f"peak RSS {summary['peak_rss_mb']} MB")
    return summary


def _numbers(m: Any, at_budget: Any) -> dict[str, Any]:
    return {"recall": m.recall, "caught": m.caught, "faults": m.faults,
            "false_per_asset_week": m.false_per_asset_week, "median_lead_s": m.median_lead_s,
            "recall_at_budget": at_budget.recall,
            "false_at_budget": at_budget.false_per_asset_week}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m appliance.devtools.bench.walk_forward",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=float, default=45.0)
    ap.add_argument("--assets", type=int, default=10)
    ap.add_argument("--split-day", type=float, default=30.0)
    ap.add_argument("--scale", type=float, default=0.5,
                    help="vibration reads this × its value after the split (default 0.5)")
    ap.add_argument("--step", type=float, help="the loop's step, s (default [retrain] "
                    "check_every_s)")
    ap.add_argument("--work", help="keep the report, predictions and models here")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    run(args.days, args.assets, args.split_day, args.scale, args.step, args.seed,
        Path(args.work) if args.work else None, args.json, not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
