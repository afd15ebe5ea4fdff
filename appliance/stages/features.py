"""Features: committed readings in, one feature row per asset per tick out.

Readings of each asset go through that asset's ``pipeline.live.AssetFeatures``
(grid + rolling kernels); the rows completed by one input batch are grouped by
tick so the predict stage makes one model call per tick for all assets.
"""

from __future__ import annotations

import queue
from collections import defaultdict

import numpy as np

from appliance.config import Config
from appliance.messages import EndOfStream, FeatureRows, StoredReadings
from appliance.pipeline.live import AssetFeatures, FeatureBanks
from appliance.pipeline.spec import PipelineSpec
from appliance.stages.base import Stage, StopSignals, put, take


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
