"""``appliance bench train``: import, training and backtest on a simulated history.

    appliance bench train [--days 45] [--assets 10] [--split-day 30] [--drift 4]
                          [--seed 11] [--work DIR] [--no-backtest] [--quiet] [--json]

1. ``simulator.to_files``: ``assets`` assets × ``days`` days of 1-minute readings
   (5 sensors, ~3.2 million rows for 10 × 45), with a recalibration of the
   lubricant temperature sensor (+``drift`` °C on every asset) at day 30;
2. import: ``import_into`` of ``readings.csv`` and ``faults.csv`` into a
   fresh DuckDB file (timed);
3. training: ``training.command.train_from_database`` (timed, per family and both
   families on one data set), each in a child process of its own (``spawn``) as the
   service's retrain would run it, so that its peak RSS (``ru_maxrss`` of the
   child) is the training's alone: the simulation and the import in this process
   are not counted.  The child's RSS after its imports, before it reads the
   database, is reported beside the peak;
4. backtest: ``full``, ``no_filter`` and ``static_threshold`` trained on days
   0–30 and scored on days 30–45 (``backtest.run``), report in ``<work>/backtest``.

The pipeline configuration is the one a site with 1-minute readings would use:
``cadence_s = 60`` (one prediction per reading) and a 10-minute Hampel window
(``hampel_window_s = 600``: ten readings; the default of 60 s would hold one
reading and never judge it).  Everything else is the default.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from appliance.config import from_dict
from appliance.console import Progress, fmt, minutes, table
from appliance.devtools import simulator
from appliance.importer.command import import_into
from appliance.scoring.metrics import best_within_budget
from appliance.storage import database, history
from appliance.training import backtest
from appliance.training import command as train_command

DAY = 86400.0

CONFIG = {
    "pipeline": {"cadence_s": 60.0, "hampel_window_s": 600.0},
}


def run(days: float = 45.0, assets: int = 10, drift: float = 4.0, split_day: float = 30.0,
        work: Path | None = None, json_output: bool = False, seed: int = 11,
        verbose: bool = True, backtest: bool = True) -> dict[str, Any]:
    say = Progress(enabled=verbose)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="appliance-bench-train-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(days, assets, drift, split_day, work, json_output, seed, say, backtest)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _run(days: float, assets: int, drift: float, split_day: float, work: Path,
         json_output: bool, seed: int, say: Progress, with_backtest: bool) -> dict[str, Any]:
    db = work / "appliance.duckdb"
    for p in work.glob("appliance.duckdb*"):
        p.unlink()
    shutil.rmtree(work / "models", ignore_errors=True)
    cfg = from_dict({**CONFIG, "storage": {"path": str(db)},
                     "model": {"dir": str(work / "models")}}, source="<bench>")
    params = simulator.SimParams(recalibrations=(
        simulator.Recalibration(at_s=split_day * DAY, sensor="lube_temp", offset=drift),))

    t0 = time.perf_counter()
    say(f"simulating {assets} assets × {days:g} days of 1-minute readings (lube_temp "
        f"+{drift:g} °C from day {split_day:g})")
    readings, faults = simulator.to_files(work / "history", days=days, assets=assets,
                                          hz=1 / 60, seed=seed, params=params)
    simulate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    reports = import_into(db, readings, faults, progress=say)
    import_s = time.perf_counter() - t0
    rows = reports[0].stored

    trained = {name: train_in_child(cfg, db, families, seed, say.enabled)
               for name, families in (("gbt", ["gbt"]), ("logistic", ["logistic"]),
                                      ("both", ["gbt", "logistic"]))}

    summary: dict[str, Any] = {
        "assets": assets, "days": days, "rows": rows, "drift_c": drift,
        "seconds": {"simulate": round(simulate_s, 1), "import": round(import_s, 1),
                    "train_gbt": trained["gbt"]["seconds"],
                    "train_logistic": trained["logistic"]["seconds"],
                    "train_both": trained["both"]["seconds"]},
        "train_wall_s": {name: t["wall_s"] for name, t in trained.items()},
        "train_peak_rss_mb": {name: t["peak_rss_mb"] for name, t in trained.items()},
        "train_start_rss_mb": {name: t["start_rss_mb"] for name, t in trained.items()},
        "import_rows_per_s": round(rows / import_s),
        "validation": {f: trained[f]["validation"][f] for f in ("gbt", "logistic")},
        "train_rows": {f: trained[f]["rows"][f] for f in ("gbt", "logistic")},
    }
    result = None
    if with_backtest:
        t0 = time.perf_counter()
        con = database.open_offline(db, read_only=True)
        try:
            stored = history.load_histories(con)
        finally:
            con.close()
        variants = backtest.resolve_variants(cfg, ["full", "no_filter", "static_threshold"])
        result = backtest.run(stored, variants, stored.t_start + split_day * DAY,
                              budget=cfg.alerts.max_false_per_asset_week,
                              clear_ratio=cfg.alerts.clear_ratio, training=cfg.training,
                              out_dir=work / "backtest", progress=say, seed=seed)
        from appliance.training.backtest_report import backtest_report

        backtest_report(result, work / "backtest")
        summary["seconds"]["backtest"] = round(time.perf_counter() - t0, 1)
        summary["backtest"] = result.as_dict()
        summary["recall_at_zero_false_alarms"] = {vr.variant.name: _recall_at(vr, 0.0)
                                                  for vr in result.variants}
        summary["report"] = str(work / "backtest" / "report.md")
    if json_output:
        print(json.dumps(summary, indent=2))
        return summary
    s = summary["seconds"]
    print(f"{assets} assets × {days:g} days of 1-minute readings: {rows} rows")
    peak, start, wall = (summary["train_peak_rss_mb"], summary["train_start_rss_mb"],
                         summary["train_wall_s"])
    rows_ = [["import (CSV → DuckDB)", fmt(s["import"], 1), "", "< 30", "", ""]]
    for name, label, target in (("gbt", "train gbt", "< 60"), ("logistic", "train logistic", ""),
                                ("both", "train both (one data set)", "")):
        rows_.append([label, fmt(s[f"train_{name}"], 1), fmt(wall[name], 1), target,
                      fmt(peak[name], 0), fmt(start[name], 0)])
    if result is not None:
        rows_.append(["backtest (3 variants)", fmt(s["backtest"], 1), "", "", "", ""])
    print(table(["step", "seconds", "wall s", "target", "peak RSS MB", "RSS after imports MB"],
                rows_))
    print("train: each in a child process of its own; seconds = train_from_database, wall = "
          "the child's spawn, imports and training; peak RSS = the child's ru_maxrss")
    print()
    headers = ["family", "recall", "caught", "false/asset-wk", "median lead", "PR-AUC"]
    print("validation (appliance train)")
    print(table(headers, [[f, fmt(v["recall"]), f"{v['caught']}/{v['faults']}",
                           fmt(v["false_per_asset_week"]), minutes(v["median_lead_s"]),
                           fmt(v["pr_auc"])]
                          for f, v in summary["validation"].items()]))
    if result is None:
        return summary
    print()
    headers = ["variant", "recall", "caught", "false/asset-wk", "median lead",
               "recall @ ≤1 false/asset-wk", "recall @ 0 false"]
    print(f"backtest: trained on days 0-{split_day:g}, tested on days {split_day:g}-{days:g} "
          f"(lube_temp recalibrated +{drift:g} °C at day {split_day:g})")
    print(table(headers, [[vr.variant.name, fmt(vr.test.recall),
                           f"{vr.test.caught}/{vr.test.faults}",
                           fmt(vr.test.false_per_asset_week), minutes(vr.test.median_lead_s),
                           fmt(vr.at_budget.recall), fmt(_recall_at(vr, 0.0))]
                          for vr in result.variants]))
    print(f"report: {summary['report']}")
    return summary


def train_in_child(cfg: Any, db: Path, families: list[str], seed: int,
                   verbose: bool) -> dict[str, Any]:
    """``train_from_database`` in a fresh (spawned) process: its seconds, the child's
    wall seconds (spawn, imports, training), peak RSS, RSS after the imports, and per
    family the validation metrics and the rows it fit on."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = pool.submit(_train_child, cfg, db, families, seed, verbose).result()
    return out | {"wall_s": round(time.perf_counter() - t0, 1)}


def _train_child(cfg: Any, db: Path, families: list[str], seed: int,
                 verbose: bool) -> dict[str, Any]:
    from appliance.devtools.bench.memory import rss_mb

    start = rss_mb()
    t0 = time.perf_counter()
    out = train_command.train_from_database(cfg, db, families, seed=seed,
                                            progress=Progress(enabled=verbose))
    seconds = time.perf_counter() - t0
    # ru_maxrss is in KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak), "start_rss_mb":
            round(start), "validation": {t.family: t.result.validation.as_dict() for t in out},
            "rows": {t.family: t.result.metrics["rows"] for t in out}}


def _recall_at(vr: backtest.VariantResult, false_per_asset_week: float) -> float:
    """The best test recall with at most this many false alarms per asset-week."""
    point, met = best_within_budget(vr.curve, false_per_asset_week)
    return point.recall if met else 0.0
