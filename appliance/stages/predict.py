"""Predict: feature rows in, one onnxruntime call per tick for all assets, out.

Each prediction that could matter for an alert (probability at or above the
clearing level) is explained by occlusion: every feature in turn is set to its
training median and the drop in probability is that feature's contribution.
All rows and all their occluded copies go through the model in one call.
"""

from __future__ import annotations

import logging
import queue

import numpy as np

from appliance.config import Config
from appliance.messages import EndOfStream, Factor, FeatureRows, Prediction, Predictions
from appliance.model import LoadedModel, load_model
from appliance.pipeline.spec import PipelineSpec
from appliance.stages.base import Stage, StopSignals, put, take

log = logging.getLogger(__name__)


class PredictStage(Stage):
    name = "predict"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = PipelineSpec.from_config(cfg.pipeline)
        self.inbox = inbox
        self.out = out
        self.model: LoadedModel | None = None
        self._columns: dict[tuple[str, ...], np.ndarray] = {}
        self._medians = np.zeros(0, dtype=np.float32)

    def start(self) -> None:
        if self.model is None:
            self.use(load_model(self.cfg.resolve(self.cfg.model.path), self.spec.hash))

    def use(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next tick on."""
        self.model = model
        self._columns = {}
        self._medians = np.array([model.reference.get(n, {}).get("median", np.nan)
                                  for n in model.feature_names], dtype=np.float32)
        log.info("serving model %s (%d features, threshold %.3f)", model.name,
                 len(model.feature_names), self.threshold)

    @property
    def threshold(self) -> float:
        assert self.model is not None
        return self.cfg.alerts.threshold or self.model.threshold

    def run(self, signals: StopSignals) -> None:
        while True:
            item = take(self.inbox, signals.abort)
            if item is None:
                return
            if isinstance(item, EndOfStream):
                put(self.out, item, signals.abort)
                return
            put(self.out, self.predict(item), signals.abort)

    def predict(self, rows: FeatureRows) -> Predictions:
        model = self.model
        assert model is not None
        X = self._model_matrix(rows)
        proba = model.predict_proba(X)
        threshold = self.threshold
        explain = np.flatnonzero(proba >= threshold * self.cfg.alerts.clear_ratio)
        factors = self._explain(X[explain], proba[explain]) if len(explain) else []
        by_row = dict(zip(explain.tolist(), factors, strict=True))
        self.counters.processed += len(rows.assets)
        return Predictions(tuple(
            Prediction(rows.line[i], asset, rows.tick, float(proba[i]), threshold, model.name,
                       by_row.get(i, ()))
            for i, asset in enumerate(rows.assets)))

    def _model_matrix(self, rows: FeatureRows) -> np.ndarray:
        """The rows' features in the model's input order; NaN where a feature is absent."""
        cols = self._columns.get(rows.names)
        if cols is None:
            index = {n: i for i, n in enumerate(rows.names)}
            cols = np.array([index.get(n, -1) for n in self.model.feature_names], dtype=np.int64)
            self._columns[rows.names] = cols
        X = rows.values[:, np.maximum(cols, 0)].astype(np.float32, copy=True)
        X[:, cols < 0] = np.nan
        return X

    def _explain(self, X: np.ndarray, proba: np.ndarray) -> list[tuple[Factor, ...]]:
        k = self.cfg.alerts.top_factors
        if k == 0:
            return [() for _ in range(len(X))]
        n, f = X.shape
        occluded = np.repeat(X, f, axis=0).reshape(n, f, f)
        diag = np.arange(f)
        occluded[:, diag, diag] = self._medians
        p = self.model.predict_proba(occluded.reshape(n * f, f)).reshape(n, f)
        contribution = proba[:, None] - p
        names = self.model.feature_names
        out = []
        for i in range(n):
            top = np.argsort(-contribution[i])[:k]
            out.append(tuple(Factor(names[j], float(X[i, j]), float(contribution[i, j]))
                             for j in top))
        return out
