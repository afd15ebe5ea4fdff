"""Features: committed readings in, one feature row per asset per tick out.

Readings of each asset go through that asset's ``features.live.AssetFeatures``
(grid + rolling kernels); the ticks completed by one input batch go through the
window statistics together (``FeatureBanks.flush``: one pass for all assets), and
their rows are grouped by tick so the predict stage makes one model call per tick
for all assets.  An
asset's ticks in its warm-up make no rows (see ``features.spec``); the status
counts them (``warmup_ticks``), so a quiet predict stage after a start is
explained.  A sensor that becomes stuck (or moves again) is logged, and the status counts
the stuck ones: a stuck sensor is a fault of its own for the line engineer.

At a service start the store sends a ``Resume`` and then replays stored readings
through the same path; rows for ticks at or before the last one predicted for the asset
before the stop are not made again (``ticks_not_repeated``), so the windows fill as a
service that never stopped filled them and no tick is predicted twice.  A tick the
replay completes after that one (readings stored but not predicted when the service
died) is predicted now.

``tap``, when given, receives every FeatureRows too (the drift stage's inbox).  It is
offered without waiting: when it is full the rows are dropped for it and counted
(``drift_rows_dropped``), so watching the model never slows predicting it.
"""

from __future__ import annotations

import logging
import math
import queue
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from appliance.config import Config
from appliance.features.live import AssetFeatures, FeatureBanks, TickRows
from appliance.features.spec import PipelineSpec
from appliance.messages import EndOfStream, FeatureRows, Resume, SeriesKey, StoredReadings
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
        #: series → its asset's state and the sensor's name: one lookup per reading
        self._route: dict[SeriesKey, tuple[AssetFeatures, str]] = {}
        #: (line, asset) → the last tick predicted before this start (see ``Resume``).
        self._predicted: dict[tuple[str, str], float] = {}
        for counter in ("late_readings", "invalid_readings", "idle_restarts", "stuck_sensors",
                        "warmup_ticks"):
            self.counters.extra[counter] = 0
        if tap is not None:
            self.counters.extra["drift_rows_dropped"] = 0

    def handle(self, batch: StoredReadings | Resume) -> list[FeatureRows]:
        if isinstance(batch, Resume):
            self._predicted = {(line, asset): tick
                               for line, asset, tick in batch.predicted_through}
            return []
        #: The counters of each asset this batch touches, as they were before it:
        #: the status is kept up to date from these, not by summing over every asset.
        before: dict[AssetFeatures, tuple[int, int, int, int, frozenset[str]]] = {}
        route = self._route
        for k, ts, value in zip(batch.keys, batch.ts.tolist(), batch.values.tolist(),
                                strict=True):
            entry = route.get(k)
            if entry is None:
                entry = route[k] = (self._asset(k), k.sensor)
            state, sensor = entry
            if state not in before:
                before[state] = (state.late, state.invalid, state.restarts, state.warmup,
                                 state.stuck)
            state.add(sensor, ts, value)
        self.counters.processed += len(batch.keys)
        # a forced flush (a sensor back after a fresh start) can split one tick's rows
        # of one set of sensors: merged again here
        by_tick: dict[tuple[float, tuple[str, ...]], list[TickRows]] = defaultdict(list)
        for rows in self.banks.flush():
            by_tick[(rows.tick, rows.names)].append(self._not_predicted(rows))
        self._report(before)
        out = []
        for (tick, names), parts in sorted(by_tick.items(), key=lambda kv: kv[0][0]):
            keys = [a.key for part in parts for a in part.assets]
            if keys:
                out.append(FeatureRows(
                    tick=tick, line=tuple(k[0] for k in keys),
                    assets=tuple(k[1] for k in keys), names=names,
                    values=np.vstack([p.values for p in parts]).astype(np.float32)))
        return out

    def _asset(self, k: SeriesKey) -> AssetFeatures:
        key = (k.line, k.asset)
        state = self._assets.get(key)
        if state is None:
            state = self._assets[key] = AssetFeatures(self.spec, self.banks, key)
        return state

    def _not_predicted(self, rows: TickRows) -> TickRows:
        """The rows of ticks not predicted before this start (see ``Resume``)."""
        if not self._predicted:
            return rows
        done = self._predicted
        keep = [rows.tick > done.get(a.key, -math.inf) for a in rows.assets]
        if all(keep):
            return rows
        self.counters.bump("ticks_not_repeated", keep.count(False))
        return TickRows(rows.tick, rows.names,
                        tuple(a for a, kept in zip(rows.assets, keep, strict=True) if kept),
                        rows.values[np.array(keep)])

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
                before: dict[AssetFeatures, tuple[int, int, int, int, frozenset[str]]]
                ) -> None:
        window = self.spec.stuck_window_s
        totals = [0, 0, 0, 0, 0]
        for state, (late, invalid, restarts, warmup, was) in before.items():
            totals[0] += state.late - late
            totals[1] += state.invalid - invalid
            totals[2] += state.restarts - restarts
            totals[3] += state.warmup - warmup
            if state.stuck is was:
                continue
            totals[4] += len(state.stuck) - len(was)
            for sensor in sorted(state.stuck - was):
                log.warning("sensor %s/%s/%s is stuck: no change over %g s",
                            *state.key, sensor, window)
            # it moved, or fell silent (then its missing feature says so)
            for sensor in sorted(was - state.stuck):
                log.info("sensor %s/%s/%s is no longer stuck", *state.key, sensor)
        for counter, total in zip(("late_readings", "invalid_readings", "idle_restarts",
                                   "warmup_ticks", "stuck_sensors"), totals, strict=True):
            if total:
                self.counters.bump(counter, total)
