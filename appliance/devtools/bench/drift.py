"""``appliance bench drift``: the drift stage's cost per tick and its memory, N assets.

The stage itself (``stages.drift.DriftStage``) with the starter model (its
features, uncalibrated) is fed FeatureRows of ``assets`` assets of one line × the
pipeline's features (the windows are per line: a line's ring of [slots, features,
bins] counts is the same size whatever its assets; each asset adds an EWMA row), one
per 10 s tick, for a day and a half of event time (past the day-long
window, so every ring is full and PSI is computed at every sample).  Reported: the
mean and worst time of ``handle`` per tick (the worst is a sampling tick, once
per ``sample_s``), and the bytes the monitor's arrays hold plus the RSS the run
added.  Values are random normals around the reference medians (the sensors
healthy): the cost does not depend on them.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.config import Config
from appliance.devtools.bench.memory import rss_mb
from appliance.features.spec import PipelineSpec
from appliance.messages import FeatureRows
from appliance.models.contract import STARTER_MODEL, load_model
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher
from appliance.stages.drift import DriftStage

SENSORS = ("ambient_temp", "lube_temp", "motor_current", "oil_pressure", "vibration")


def run(json_output: bool = False, assets: int = 1000, hours: float = 26.0) -> int:
    cfg = Config()
    spec = PipelineSpec.from_config(cfg.pipeline)
    names = spec.feature_names(list(SENSORS))
    model = load_model(STARTER_MODEL, spec.hash)
    rss0 = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        watcher = ModelWatcher(Registry(Path(tmp)), spec.hash,
                               watch_files=False)
        stage = DriftStage(cfg, watcher, model, queue.Queue(), queue.Queue())
        rng = np.random.default_rng(0)
        center = np.array([(model.reference.get(n) or {}).get("median") or 0.0 for n in names])
        lines = ("line1",) * assets
        ids = tuple(f"a{i:05d}" for i in range(assets))
        ticks = int(hours * 3600 / cfg.pipeline.cadence_s)
        values = (center + rng.normal(size=(assets, len(names)))).astype(np.float32)
        health = [j for j, n in enumerate(names) if n.endswith(("__missing", "__stuck"))]
        values[:, health] = 0.0  # healthy sensors: the drift path is what is measured
        logging.getLogger("appliance.stages.drift").setLevel(logging.ERROR)
        times = np.empty(ticks)
        for k in range(ticks):
            rows = FeatureRows(k * cfg.pipeline.cadence_s, lines, ids, names, values)
            t0 = time.perf_counter()
            stage.handle(rows)
            times[k] = time.perf_counter() - t0
    monitor = stage.monitor
    assert monitor is not None
    steady = times[int(ticks * 0.9):]  # the window is full there
    result = {"assets": assets, "features_monitored": len(monitor.ref.features),
              "ticks": ticks, "ms_per_tick_mean": round(1e3 * steady.mean(), 3),
              "ms_per_tick_max": round(1e3 * steady.max(), 2),
              "ms_per_tick_median": round(1e3 * float(np.median(steady)), 3),
              "monitor_mb": round(monitor.nbytes() / 2**20, 1),
              "rss_added_mb": round(rss_mb() - rss0, 1)}
    print(json.dumps(result) if json_output else
          "\n".join(f"{k:>22}  {v}" for k, v in result.items()))
    return 0
