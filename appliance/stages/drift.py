"""Drift: the feature rows predict sees, compared with the serving model's reference.

Rows arrive on the features stage's tap (every ``FeatureRows``, dropped there when
this stage falls behind: drift is watching, never in the way of predicting).
Per tick, sensor health first (``features.health``): a stuck, silent or mostly
missing sensor is a ``sensor`` event and its features are excluded; then the
monitor (``models.drift``) samples each asset once per ``sample_s`` into its
line's window and decides per line.  Events go to the alert stage's inbox (published
retained there) and on to the record stage (``drift_events``); each is one log line.

The stage follows the champion with its own ``ModelWatcher`` (promotions only; the
predict stage announces dropped-in files).  A new model brings a new reference:
open drift events end (``why``: the model changed) and the windows start afresh.
It forwards no EndOfStream (``emit``): the alert stage's inbox has the predict stage
as its other producer, and only that one may end the stream there.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterable
from typing import Any

import numpy as np

from appliance.config import Config
from appliance.features.health import SensorHealth, feature_sensor_matrix
from appliance.messages import DriftEvent, DriftEvents, EndOfStream, FeatureRows
from appliance.models import drift
from appliance.models.contract import LoadedModel
from appliance.models.watcher import ModelWatcher
from appliance.stages.base import Stage, StopSignals

log = logging.getLogger(__name__)


class DriftStage(Stage):
    name = "drift"
    essential = False  # watching the model; predicting goes on without it

    def __init__(self, cfg: Config, watcher: ModelWatcher, model: LoadedModel | None,
                 inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__(inbox, out)
        self.cfg = cfg
        self.watcher = watcher
        self.model: LoadedModel | None = None
        self.monitor: drift.DriftMonitor | None = None
        self.health = SensorHealth(cfg.drift.sensor_silent_s, cfg.drift.sensor_missing)
        self._columns: dict[tuple[str, ...], np.ndarray] = {}
        #: sensors known to the health monitor → (S, F) which features each one feeds
        self._sensor_features: dict[tuple[str, ...], np.ndarray] = {}
        self._next_poll = 0.0
        self._tick = 0.0
        for counter in ("drift_events_started", "sensor_events_started"):
            self.counters.extra[counter] = 0
        if model is not None:
            self.use(model)

    def use(self, model: LoadedModel) -> None:
        """Measure against ``model``'s reference from the next row on."""
        d = self.cfg.drift
        ref = drift.reference_of(model.feature_names, model.reference)
        calibration = model.drift_calibration
        settings = drift.settings_for(
            ref, calibration, window=drift.Window(d.window_s, d.sample_s, d.persist_s),
            uncalibrated_persist_s=d.uncalibrated_persist_s,
            uncalibrated_psi=d.uncalibrated_psi, max_false_per_month=d.max_false_per_month)
        self.model = model
        self.monitor = drift.DriftMonitor(ref, settings, model.name, d.top_features)
        self._columns = {}
        self._sensor_features = {}
        w = settings.window
        log.info("drift: watching %d features of %s, %s, window %g s sampled every %g s, "
                 "persistence %g s, budget %g false events per month", len(ref.features),
                 model.name, "calibrated on its held-out period" if settings.calibrated
                 else f"NOT calibrated: PSI {d.uncalibrated_psi:g} for every feature",
                 w.window_s, w.sample_s, w.persist_s, d.max_false_per_month)

    def emit(self, items: Iterable[Any] | None, signals: StopSignals) -> None:
        """Never an EndOfStream, not even the one the supervisor passes on for a failed
        stage: the alert stage would stop before the predictions still queued for it."""
        super().emit([i for i in items or () if not isinstance(i, EndOfStream)], signals)

    def periodic(self) -> list[DriftEvents]:
        """Follow a newly promoted champion (every ``poll_s``)."""
        if self.clock.monotonic() < self._next_poll:
            return []
        self._next_poll = self.clock.monotonic() + self.cfg.model.poll_s
        promoted = self.watcher.poll(self.model)
        self.watcher.events.clear()  # the predict stage records what the watchers see
        if promoted is None:
            return []
        ended = self.monitor.end_all(self._tick, "model changed") if self.monitor else []
        self.use(promoted)
        return self._out(ended)

    def handle(self, rows: FeatureRows) -> list[DriftEvents]:
        self._tick = rows.tick
        keys = list(zip(rows.line, rows.assets, strict=True))
        hrows, events = self.health.observe(rows.tick, keys, rows.names, rows.values)
        self.counters.processed += len(rows.assets)
        monitor = self.monitor
        if monitor is not None:
            assets = monitor.assets_of(keys)
            due = monitor.due(rows.tick, assets)
            if due.any():  # most ticks sample no asset: they cost nothing more here
                X = self._matrix(rows, monitor, due)
                excluded = self._excluded(hrows[due], monitor)
                sampled = monitor.observe(rows.tick, assets[due], X, excluded)
                events.extend(monitor.events(rows.tick, sampled))
        return self._out(events)

    def _out(self, events: list[DriftEvent]) -> list[DriftEvents]:
        for e in events:
            self._log(e)
        return [DriftEvents(tuple(events))] if events else []

    def _log(self, e: DriftEvent) -> None:
        detail = json.loads(e.detail)
        if e.state == "started":
            self.counters.bump(f"{e.kind}_events_started")
        if e.kind == "sensor":
            say = log.warning if e.state == "started" else log.info
            say("sensor event %s: %s/%s/%s %s since %s", e.state, e.line, e.asset,
                detail["sensor"], detail["kind"], detail["since"])
            return
        moved = ", ".join(f"{f} {v['shift']:+g} (PSI {v['psi']:g})"
                          for f, v in detail.get("features", {}).items()
                          if v.get("shift") is not None)
        most = ", ".join(f"{a} {v:+g}" for a, v in detail.get("assets", {}).items()
                         if v is not None)
        say = log.warning if e.state == "started" else log.info
        say("drift event %s on %s/%s against %s: PSI %s, threshold %.3g%s%s%s", e.state,
            e.line, e.asset, e.model, "-" if e.statistic is None else f"{e.statistic:.3g}",
            e.threshold or 0.0, f"; moved: {moved}" if moved else "",
            f"; assets moved most: {most}" if most else "",
            f" ({detail['why']})" if detail.get("why") else "")

    def _matrix(self, rows: FeatureRows, monitor: drift.DriftMonitor,
                due: np.ndarray) -> np.ndarray:
        """The due rows' monitored features in the monitor's order; NaN where absent."""
        cols = self._columns.get(rows.names)
        if cols is None:
            index = {n: i for i, n in enumerate(rows.names)}
            cols = np.array([index.get(f, -1) for f in monitor.ref.features], dtype=np.int64)
            self._columns[rows.names] = cols
        X = rows.values[due][:, np.maximum(cols, 0)].astype(np.float64)
        X[:, cols < 0] = np.nan
        return X

    def _excluded(self, hrows: np.ndarray,
                  monitor: drift.DriftMonitor) -> np.ndarray:
        """(n, F): the monitored features of the rows' faulty sensors."""
        sensors = tuple(self.health.sensors)
        matrix = self._sensor_features.get(sensors)
        if matrix is None:
            matrix = self._sensor_features[sensors] = feature_sensor_matrix(
                monitor.ref.features, sensors)
        faulty = self.health.faulty(hrows, sensors)
        return (faulty.astype(np.uint8) @ matrix.astype(np.uint8)) > 0

    def status(self) -> dict[str, Any]:
        m = self.monitor
        entry = {**super().status(),
                 "drift_active": len(m.open) if m else 0,
                 "sensor_active": self.health.active}
        if m is None:
            entry["note"] = "drift is not watched: no model serves"
        return entry
