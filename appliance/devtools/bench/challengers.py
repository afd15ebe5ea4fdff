"""Benchmark: what a challenger costs per tick, and what a rescore of the live scores costs.

    python -m appliance.devtools.bench.challengers [--assets 1000] [--score-assets 100]
                                                  [--score-days 7] [--json]

* ``challenger_ms``: ``PredictStage.handle`` on one ``FeatureRows`` of ``assets``
  rows (random features, so the champion explains the rows near its threshold as
  it would) with 0, 1 and 2 challengers, each a copy of the packaged starter model
  under another name; the median of interleaved repeats.  The cost of a challenger
  is the difference from 0 challengers.
* ``scores``: ``models.scores.score_models`` over ``score_assets`` assets ×
  ``score_days`` days of predictions 10 s apart, one model, in a DuckDB file (plus
  the rows' count and the time to write them, for scale).
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance import config
from appliance.features.spec import PipelineSpec
from appliance.messages import FeatureRows
from appliance.models import scores
from appliance.models.contract import STARTER_MODEL
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher
from appliance.stages.predict import PredictStage
from appliance.storage.database import connect


def challenger_cost(assets: int = 1000, repeats: int = 30) -> dict[str, float]:
    """Median ms of one tick of ``assets`` rows with 0, 1 and 2 challengers."""
    spec = PipelineSpec.from_config(config.PipelineConfig()).hash
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "models")
        models = []
        for i in range(3):
            shutil.copyfile(STARTER_MODEL, Path(tmp) / f"m{i}.onnx")
            models.append(registry.add(Path(tmp) / f"m{i}.onnx", spec))
        registry.promote(models[0].name, spec)
        cfg = config.from_dict({"model": {"dir": str(registry.directory)}})
        rng = np.random.default_rng(0)
        names = models[0].feature_names
        rows = FeatureRows(1.7e9, ("l1",) * assets, tuple(f"a{i}" for i in range(assets)),
                           names, rng.normal(0, 1, (assets, len(names))).astype(np.float32))
        stages = []
        for n in range(3):
            for m in models[1:1 + n]:
                registry.shadow(m.name, 2, spec)
            watcher = ModelWatcher(registry, spec, 2)
            stage = PredictStage(cfg, watcher, models[0], queue.Queue(), queue.Queue())
            stage.periodic()
            assert len(watcher.challengers) == n
            for m in models[1:1 + n]:
                registry.unshadow(m.name)
            stages.append(stage)
        times: list[list[float]] = [[] for _ in stages]
        for _ in range(repeats):  # interleaved: a busy machine slows all three alike
            for n, stage in enumerate(stages):
                started = time.perf_counter()
                list(stage.handle(rows))
                times[n].append((time.perf_counter() - started) * 1e3)
    med = [statistics.median(t) for t in times]
    return {"assets": assets, "tick_ms_0": med[0], "tick_ms_1": med[1], "tick_ms_2": med[2],
            "per_challenger_ms": (med[2] - med[0]) / 2}


def scores_refresh(assets: int = 100, days: float = 7.0, step_s: float = 10.0
                   ) -> dict[str, float]:
    """Seconds of one rescore over ``assets`` × ``days`` of predictions every ``step_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        con, _ = connect(Path(tmp) / "bench.duckdb", "1GB")
        rng = np.random.default_rng(1)
        ticks = np.arange(0, days * 86400, step_s)
        n = len(ticks) * assets
        started = time.perf_counter()
        batch = {  # noqa: F841 - scanned by DuckDB
            "ts_us": np.tile(((1.7e9 + ticks) * 1e6).astype(np.int64), assets),
            "asset": np.repeat(np.array([f"a{i}" for i in range(assets)], dtype=object),
                               len(ticks)),
            "p": rng.beta(1, 12, n),
        }
        con.execute("INSERT INTO predictions SELECT make_timestamp(ts_us), 'l1', asset, p, "
                    "0.6, 'm', 'champion' FROM batch ORDER BY ts_us")
        con.execute("INSERT INTO faults SELECT make_timestamp(CAST((1.7e9 + ? * random()) * 1e6 "
                    "AS BIGINT)), 'l1', 'a' || (i % ?), 'start', 'F', 'bench' "
                    "FROM range(?) t(i)", [days * 86400, assets, assets])
        con.execute("CHECKPOINT")
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        result = scores.score_models(con, 3600.0, 0.8)
        refresh_s = time.perf_counter() - started
        con.close()
    assert result
    return {"assets": assets, "days": days, "predictions": n, "insert_s": insert_s,
            "refresh_s": refresh_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.devtools.bench.challengers")
    ap.add_argument("--assets", type=int, default=1000)
    ap.add_argument("--score-assets", type=int, default=100)
    ap.add_argument("--score-days", type=float, default=7.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"challengers": challenger_cost(args.assets),
                           "scores": scores_refresh(args.score_assets, args.score_days)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    c, s = out["challengers"], out["scores"]
    print(f"tick of {c['assets']} assets: {c['tick_ms_0']:.1f} ms champion alone, "
          f"{c['tick_ms_1']:.1f} ms with 1 challenger, {c['tick_ms_2']:.1f} ms with 2: "
          f"{c['per_challenger_ms']:.1f} ms per challenger")
    print(f"rescore of {s['assets']} assets x {s['days']:g} days ({s['predictions']:,} "
          f"predictions): {s['refresh_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
