"""Predict: feature rows in, one onnxruntime call per tick for all assets, out.

The runner hands the stage the model chosen to serve (``models.watcher``), or
none when ``[model] required = false`` and none could be loaded: then rows
pass without predictions until a model is promoted.  Every ``poll_s`` the
stage asks its ``ModelWatcher`` for a newly promoted model and serves it from
the next tick; what the watcher saw (activations, candidates, refusals) goes
on to the record stage as ``ModelEvent``s.

Each prediction that could matter for an alert (probability at or above the
clearing level) is explained by occlusion (``models.explain``).
"""

from __future__ import annotations

import logging
import queue
from typing import Any

import numpy as np

from appliance.config import Config
from appliance.messages import FeatureRows, ModelEvent, Prediction, Predictions
from appliance.models.contract import LoadedModel
from appliance.models.explain import Explainer
from appliance.models.watcher import ModelWatcher
from appliance.stages.base import Stage

log = logging.getLogger(__name__)


class PredictStage(Stage):
    name = "predict"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, watcher: ModelWatcher, model: LoadedModel | None,
                 inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__(inbox, out)
        self.cfg = cfg
        self.watcher = watcher
        self.model: LoadedModel | None = None
        self._explainer: Explainer | None = None
        self._columns: dict[tuple[str, ...], np.ndarray] = {}
        self._next_poll = 0.0
        if model is not None:
            self.use(model)
        else:
            self.counters.extra["rows_without_model"] = 0

    def use(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next tick on."""
        self.model = model
        self._columns = {}
        self._explainer = Explainer(model, self.cfg.alerts.top_factors)
        self.watcher.activated(model)
        log.info("serving model %s (%d features, threshold %.3f)", model.name,
                 len(model.feature_names), self.threshold)

    @property
    def threshold(self) -> float:
        assert self.model is not None
        return self.cfg.alerts.threshold or self.model.threshold

    def periodic(self) -> list[ModelEvent]:
        """Look for a newly promoted model every ``poll_s``; what the watcher saw goes on."""
        if self.clock.monotonic() >= self._next_poll:
            self._next_poll = self.clock.monotonic() + self.cfg.model.poll_s
            promoted = self.watcher.poll(self.model)
            if promoted is not None:
                self.use(promoted)
        events = list(self.watcher.events)
        self.watcher.events.clear()
        return events

    def handle(self, rows: FeatureRows) -> tuple[Predictions, ...]:
        if self.model is None:
            self.counters.bump("rows_without_model", len(rows.assets))
            return ()
        return (self.predict(rows),)

    def status(self) -> dict[str, Any]:
        entry = {**super().status(), "model": self.model.name if self.model else None}
        if self.model is None:
            entry["note"] = ("running without a model ([model] required = false): readings "
                             "are stored, nothing is predicted until a model is promoted")
        return entry

    def predict(self, rows: FeatureRows) -> Predictions:
        model, explainer = self.model, self._explainer
        assert model is not None and explainer is not None
        X = self._model_matrix(rows)
        proba = model.predict_proba(X)
        threshold = self.threshold
        explain = np.flatnonzero(proba >= threshold * self.cfg.alerts.clear_ratio)
        factors = explainer.factors(X[explain], proba[explain]) if len(explain) else []
        by_row = dict(zip(explain.tolist(), factors, strict=True))
        self.counters.processed += len(rows.assets)
        return Predictions(tuple(
            Prediction(rows.line[i], asset, rows.tick, float(proba[i]), threshold, model.name,
                       by_row.get(i, ()))
            for i, asset in enumerate(rows.assets)))

    def _model_matrix(self, rows: FeatureRows) -> np.ndarray:
        """The rows' features in the model's input order; NaN where a feature is absent."""
        assert self.model is not None
        cols = self._columns.get(rows.names)
        if cols is None:
            index = {n: i for i, n in enumerate(rows.names)}
            cols = np.array([index.get(n, -1) for n in self.model.feature_names],
                            dtype=np.int64)
            self._columns[rows.names] = cols
        X = rows.values[:, np.maximum(cols, 0)].astype(np.float32, copy=True)
        X[:, cols < 0] = np.nan
        return X
