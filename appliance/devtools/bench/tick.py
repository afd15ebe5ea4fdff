"""``appliance bench tick``: one tick of a whole line, closed tick → features → predictions
→ alerts, in process, per stage.

A simulated line (``devtools.simulator``: wear, precursors and faults, so some assets
sit near the alarm level and are explained as the service would) of ``assets`` assets
× 5 sensors with one reading per sensor per tick is fed through the service's own
stage objects, one tick at a time: ``FeaturesStage.handle`` (the tick's readings →
its rows, every asset in one pass), ``PredictStage.handle`` (the champion, its
explanations, and ``challengers`` challengers — copies of the starter model under
other names), and ``AlertStage.handle`` (the alarm rule, and the alerts published to a
private mosquitto).  The windows fill first (the warm-up and the longest window); then
``ticks`` ticks are timed.  In the service the three stages run in threads of their
own with a queue between each; the queue hops (microseconds) are not counted here.
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import Config, from_dict
from appliance.devtools.mosquitto import PrivateBroker
from appliance.devtools.simulator import LineSimulator
from appliance.features.spec import PipelineSpec
from appliance.messages import SeriesKey, StoredReadings
from appliance.models.contract import STARTER_MODEL
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher
from appliance.stages.alert import AlertStage
from appliance.stages.features import FeaturesStage
from appliance.stages.predict import PredictStage

STAGES = ("features", "predict", "alert", "total")


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(max(ms), 2)}


def measure(assets: int = 1000, ticks: int = 200, challengers: int = 2,
            seed: int = 5) -> dict[str, Any]:
    """The per-stage times of ``ticks`` ticks of ``assets`` assets (see the module doc)."""
    spec = PipelineSpec.from_config(Config().pipeline)
    with tempfile.TemporaryDirectory() as tmp, PrivateBroker() as broker:
        registry = Registry(Path(tmp) / "models")
        models = []
        for i in range(1 + challengers):
            shutil.copyfile(STARTER_MODEL, Path(tmp) / f"m{i}.onnx")
            models.append(registry.add(Path(tmp) / f"m{i}.onnx", spec.hash))
        registry.promote(models[0].name, spec.hash)
        for m in models[1:]:
            registry.shadow(m.name, challengers, spec.hash)
        cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                                  "client_id": "bench-tick"},
                         "model": {"dir": str(registry.directory)}}, source="<bench>")
        features = FeaturesStage(cfg, queue.Queue(), queue.Queue())
        predict = PredictStage(cfg, ModelWatcher(registry, spec.hash, challengers),
                               models[0], queue.Queue(), queue.Queue())
        predict.periodic()  # loads the challengers
        alert = AlertStage(cfg, queue.Queue(), queue.Queue())
        alert.start()
        try:
            return _run(spec, features, predict, alert, assets, ticks, challengers, seed)
        finally:
            alert.close()


def _run(spec: PipelineSpec, features: FeaturesStage, predict: PredictStage,
         alert: AlertStage, assets: int, ticks: int, challengers: int, seed: int
         ) -> dict[str, Any]:
    cadence = spec.cadence_s
    sim = LineSimulator(assets, 1.0 / cadence, seed, start_ts=1.7e9 - 1.7e9 % cadence)
    keys = tuple(SeriesKey(sim.line, a, s) for a in sim.assets for s in sim.sensors)
    warm = spec.warmup_ticks + int(max(spec.windows_s) / cadence) + 2
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    explained: list[int] = []
    rows_per_tick: list[int] = []
    shadowed: list[int] = []  # challengers' predictions
    for i, step in enumerate(sim.steps(warm + ticks)):
        ts = np.repeat(step.ts, len(sim.sensors))
        values = step.values.ravel()
        keep = np.isfinite(values)
        batch = StoredReadings(tuple(k for k, kept in zip(keys, keep.tolist(), strict=True)
                                     if kept), ts[keep], values[keep])
        t0 = time.perf_counter()
        rows = features.handle(batch)
        t1 = time.perf_counter()
        out = [p for r in rows for p in predict.handle(r)]
        t2 = time.perf_counter()
        for predictions in out:
            alert.handle(predictions)
        t3 = time.perf_counter()
        if i < warm or not rows:
            continue
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            times[stage].append(seconds * 1e3)
        rows_per_tick.append(sum(len(r.assets) for r in rows))
        explained.append(sum(1 for p in out for x in p.items
                             if x.role == "champion" and x.top_factors))
        shadowed.append(sum(1 for p in out for x in p.items if x.role == "challenger"))
    return {"assets": assets, "sensors": len(sim.sensors), "challengers": challengers,
            "ticks": len(times["total"]),
            "rows_per_tick": round(float(np.mean(rows_per_tick)), 1) if rows_per_tick else 0,
            "explained_per_tick": round(float(np.mean(explained)), 1) if explained else 0,
            "explained_max": max(explained, default=0),
            "challenger_predictions_per_tick": round(float(np.mean(shadowed)), 1)
            if shadowed else 0,
            "alerts_raised": alert.counters.extra.get("alerts_raised", 0),
            **{stage: _percentiles(ms) for stage, ms in times.items() if ms}}


def run(json_output: bool = False, assets: int = 1000, ticks: int = 200) -> int:
    result = measure(assets, ticks)
    if json_output:
        print(json.dumps(result))
        return 0
    print(f"one tick of {result['assets']} assets × {result['sensors']} sensors, "
          f"{result['challengers']} challengers, {result['ticks']} ticks timed "
          f"({result['rows_per_tick']:g} rows a tick, {result['explained_per_tick']:g} "
          f"explained on average, {result['explained_max']} at most)")
    print(f"{'stage':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for stage in STAGES:
        if stage in result:
            r = result[stage]
            print(f"{stage:<10} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    return 0
