"""Features: committed readings in, one feature row per asset per tick out.

Readings of each asset go through that asset's ``features.live.AssetFeatures``
(grid + rolling kernels); the rows completed by one input batch are grouped by
tick so the predict stage makes one model call per tick for all assets.  An
asset's ticks in its warm-up make no rows (see ``features.spec``); the status
counts them (``warmup_ticks``), so a quiet predict stage after a start is
explained.  A sensor that becomes stuck (or moves again) is logged, and the status counts
the stuck ones: a stuck sensor is a fault of its own for the line engineer.

``tap``, when given, receives every FeatureRows too (the drift stage's inbox).  It is
offered without waiting: when it is full the rows are dropped for it and counted
(``drift_rows_dropped``), so watching the model never slows predicting it.
"""

from __future__ import annotations

import logging
import queue
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from appliance.config import Config
from appliance.features.live import AssetFeatures, FeatureBanks
from appliance.features.spec import PipelineSpec
from appliance.messages import EndOfStream, FeatureRows, StoredReadings
from appliance.stages.base import Stage, StopSignals, put

log = logging.getLogger(__name__)


class FeaturesStage(Stage):
    name = "features"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue,
                 tap: queue.Queue | None = None) -> None:
        super().__init__(inbox, out)
        self.tap = tap
        self.spec = PipelineSpec.from_config(cfg.pipeline)
        self.banks = FeatureBanks(self.spec)
        self._assets: dict[tuple[str, str], AssetFeatures] = {}
        for counter in ("late_readings", "invalid_readings", "idle_restarts", "stuck_sensors",
                        "warmup_ticks"):
            self.counters.extra[counter] = 0
        if tap is not None:
            self.counters.extra["drift_rows_dropped"] = 0

    def handle(self, batch: StoredReadings) -> list[FeatureRows]:
        by_tick: dict[tuple[float, tuple[str, ...]], list] = defaultdict(list)
        assets = self._assets
        #: The counters of each asset this batch touches, as they were before it:
        #: the status is kept up to date from these, not by summing over every asset.
        before: dict[tuple[str, str], tuple[int, int, int, int, frozenset[str]]] = {}
        for k, ts, value in zip(batch.keys, batch.ts.tolist(), batch.values.tolist(),
                                strict=True):
            key = (k.line, k.asset)
            state = assets.get(key)
            if state is None:
                state = assets[key] = AssetFeatures(self.spec, self.banks)
            if key not in before:
                before[key] = (state.late, state.invalid, state.restarts, state.warmup,
                               state.stuck)
            for tick, names, row in state.push(k.sensor, ts, value):
                by_tick[(tick, names)].append((key, row))
        self.counters.processed += len(batch.keys)
        self._report(before)
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

    def emit(self, items: Iterable[object] | None, signals: StopSignals) -> None:
        """Pass items on, and offer them to the tap: rows without waiting, the end of
        the stream (which the drift stage stops on) as any stage passes it on."""
        items = list(items or ())
        super().emit(items, signals)
        if self.tap is None:
            return
        for item in items:
            if isinstance(item, EndOfStream):
                put(self.tap, item, signals.abort)
                continue
            try:
                self.tap.put_nowait(item)
            except queue.Full:
                self.counters.bump("drift_rows_dropped")

    def _report(self,
                before: dict[tuple[str, str], tuple[int, int, int, int, frozenset[str]]]
                ) -> None:
        window = self.spec.stuck_window_s
        bump = self.counters.bump
        for key, (late, invalid, restarts, warmup, was) in before.items():
            state = self._assets[key]
            bump("late_readings", state.late - late)
            bump("invalid_readings", state.invalid - invalid)
            bump("idle_restarts", state.restarts - restarts)
            bump("warmup_ticks", state.warmup - warmup)
            bump("stuck_sensors", len(state.stuck) - len(was))
            for sensor in sorted(state.stuck - was):
                log.warning("sensor %s/%s/%s is stuck: no change over %g s",
                            *key, sensor, window)
            # it moved, or fell silent (then its missing feature says so)
            for sensor in sorted(was - state.stuck):
                log.info("sensor %s/%s/%s is no longer stuck", *key, sensor)
