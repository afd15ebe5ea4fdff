"""Features: committed readings in, one feature row per asset per tick out.

Readings of each asset go through that asset's ``pipeline.live.AssetFeatures``
(grid + rolling kernels); the rows completed by one input batch are grouped by
tick so the predict stage makes one model call per tick for all assets.  A
sensor that becomes stuck (or moves again) is logged, and the status counts
the stuck ones: a stuck sensor is a fault of its own for the line engineer.
"""

from __future__ import annotations

import logging
import queue
from collections import defaultdict

import numpy as np

from appliance.config import Config
from appliance.messages import EndOfStream, FeatureRows, StoredReadings
from appliance.pipeline.live import AssetFeatures, FeatureBanks
from appliance.pipeline.spec import PipelineSpec
from appliance.stages.base import Stage, StopSignals, put, take

log = logging.getLogger(__name__)


class FeaturesStage(Stage):
    name = "features"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__()
        self.spec = PipelineSpec.from_config(cfg.pipeline)
        self.banks = FeatureBanks(self.spec)
        self.inbox = inbox
        self.out = out
        self._assets: dict[tuple[str, str], AssetFeatures] = {}

    def run(self, signals: StopSignals) -> None:
        while True:
            item = take(self.inbox, signals.abort)
            if item is None:
                return
            if isinstance(item, EndOfStream):
                put(self.out, item, signals.abort)
                return
            for rows in self._rows(item):
                put(self.out, rows, signals.abort)

    def _rows(self, batch: StoredReadings) -> list[FeatureRows]:
        by_tick: dict[tuple[float, tuple[str, ...]], list] = defaultdict(list)
        assets = self._assets
        stuck_before = {key: a.stuck for key, a in assets.items() if a.stuck}
        for k, ts, value in zip(batch.keys, batch.ts.tolist(), batch.values.tolist(),
                                strict=True):
            key = (k.line, k.asset)
            state = assets.get(key)
            if state is None:
                state = assets[key] = AssetFeatures(self.spec, self.banks)
            for tick, names, row in state.push(k.sensor, ts, value):
                by_tick[(tick, names)].append((key, row))
        self.counters.processed += len(batch.keys)
        self.counters.extra["late_readings"] = sum(a.late for a in assets.values())
        self.counters.extra["invalid_readings"] = sum(a.invalid for a in assets.values())
        self.counters.extra["idle_restarts"] = sum(a.restarts for a in assets.values())
        self._report_stuck(stuck_before)
        out = []
        for (tick, names), rows in sorted(by_tick.items(), key=lambda kv: kv[0][0]):
            out.append(FeatureRows(
                tick=tick,
                line=tuple(k[0] for k, _ in rows),
                assets=tuple(k[1] for k, _ in rows),
                names=names,
                values=np.vstack([row for _, row in rows]).astype(np.float32),
            ))
        return out

    def _report_stuck(self, before: dict[tuple[str, str], frozenset[str]]) -> None:
        now = {key: a.stuck for key, a in self._assets.items() if a.stuck}
        window = self.spec.stuck_window_s
        for key in before.keys() | now.keys():
            was, is_ = before.get(key, frozenset()), now.get(key, frozenset())
            for sensor in sorted(is_ - was):
                log.warning("sensor %s/%s/%s is stuck: no change over %g s",
                            *key, sensor, window)
            # it moved, or fell silent (then its missing feature says so)
            for sensor in sorted(was - is_):
                log.info("sensor %s/%s/%s is no longer stuck", *key, sensor)
        self.counters.extra["stuck_sensors"] = sum(len(s) for s in now.values())
