"""Predict: feature rows in, one onnxruntime call per tick for all assets, out.

The model served is the registry's active one (``[model] path`` while there is
none).  Every ``poll_s`` the stage looks at the registry: a newly promoted model
is loaded and checked first and served from the next tick, while a model that
fails its checks is refused with an error line and the current one serves on.
A file dropped into the models folder is checked too, and announced as a
candidate or refused.

Each prediction that could matter for an alert (probability at or above the
clearing level) is explained by occlusion: every feature in turn is set to its
training median and the drop in probability is that feature's contribution.
All rows and all their occluded copies go through the model in one call.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import numpy as np

from appliance.config import Config
from appliance.messages import (
    EndOfStream,
    Factor,
    FeatureRows,
    ModelEvent,
    Prediction,
    Predictions,
)
from appliance.model import LoadedModel, ModelError, load_model
from appliance.pipeline.spec import PipelineSpec
from appliance.registry import Registry
from appliance.stages.base import POLL_S, Stage, StopSignals, put

log = logging.getLogger(__name__)

#: Rows explained per model call (bounds the occluded copies to ~0.6 MB at 67 features).
EXPLAIN_BLOCK = 32


class PredictStage(Stage):
    name = "predict"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = PipelineSpec.from_config(cfg.pipeline)
        self.inbox = inbox
        self.out = out
        self.registry = Registry(cfg.models_dir())
        self.model: LoadedModel | None = None
        self._columns: dict[tuple[str, ...], np.ndarray] = {}
        self._medians = np.zeros(0, dtype=np.float32)
        self._registry_version = -1
        self._files: dict[Path, int] = {}  # model files seen → mtime_ns
        self._next_poll = 0.0
        self._events: list[ModelEvent] = []

    def start(self) -> None:
        if self.model is not None:
            return
        self._registry_version = self.registry.version()
        self._files = self._model_files()
        active = self.registry.active_name()
        if active:
            try:
                self.use(load_model(self.registry.path_of(active), self.spec.hash))
                return
            except ModelError as exc:
                log.error("active model %s refused (%s); serving %s instead", active, exc,
                          self.cfg.model.path)
        self.use(load_model(self.cfg.resolve(self.cfg.model.path), self.spec.hash))

    def use(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next tick on."""
        self.model = model
        self._columns = {}
        self._medians = np.array([model.reference.get(n, {}).get("median", np.nan)
                                  for n in model.feature_names], dtype=np.float32)
        self._event(model.name, model.path, model.sha256, model.spec_hash, "active")
        log.info("serving model %s (%d features, threshold %.3f)", model.name,
                 len(model.feature_names), self.threshold)

    def _event(self, name: str, path: Path, sha256: str, spec_hash: str, status: str,
               detail: str = "") -> None:
        self._events.append(ModelEvent(time.time(), name, str(path), sha256, spec_hash,
                                       status, detail))

    def _model_files(self) -> dict[Path, int]:
        if not self.registry.directory.is_dir():
            return {}
        return {p: p.stat().st_mtime_ns for p in self.registry.directory.glob("*.onnx")}

    def poll_registry(self) -> None:
        """Switch to a newly promoted model; check files dropped into the folder."""
        version = self.registry.version()
        if version != self._registry_version:
            self._registry_version = version
            active = self.registry.active_name()
            if active and (self.model is None or active != self.model.name):
                try:
                    self.use(load_model(self.registry.path_of(active), self.spec.hash))
                except ModelError as exc:
                    log.error("promoted model %s refused, still serving %s: %s", active,
                              self.model.name if self.model else "none", exc)
                    self._event(active, self.registry.directory / f"{active}.onnx", "", "",
                                "refused", str(exc))
        files = self._model_files()
        for path, mtime in files.items():
            if self._files.get(path) == mtime:
                continue
            try:
                model = load_model(path, self.spec.hash)
                log.info("model file %s is a candidate: appliance models promote %s",
                         path.name, path.stem)
                self._event(path.stem, path, model.sha256, model.spec_hash, "candidate")
            except ModelError as exc:
                log.error("model file refused: %s", exc)
                self._event(path.stem, path, "", "", "refused", str(exc))
        self._files = files

    @property
    def threshold(self) -> float:
        assert self.model is not None
        return self.cfg.alerts.threshold or self.model.threshold

    def run(self, signals: StopSignals) -> None:
        while not signals.abort.is_set():
            if time.monotonic() >= self._next_poll:
                self._next_poll = time.monotonic() + self.cfg.model.poll_s
                self.poll_registry()
            while self._events:
                put(self.out, self._events.pop(0), signals.abort)
            try:
                item = self.inbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
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
        names = self.model.feature_names
        diag = np.arange(f)
        out = []
        # Occluded copies in blocks: n × f × f floats at once would be tens of MB.
        for start in range(0, n, EXPLAIN_BLOCK):
            block = X[start:start + EXPLAIN_BLOCK]
            m = len(block)
            occluded = np.repeat(block, f, axis=0).reshape(m, f, f)
            occluded[:, diag, diag] = self._medians
            p = self.model.predict_proba(occluded.reshape(m * f, f)).reshape(m, f)
            contribution = proba[start:start + m, None] - p
            for i in range(m):
                top = np.argsort(-contribution[i])[:k]
                out.append(tuple(Factor(names[j], float(block[i, j]), float(contribution[i, j]))
                                 for j in top))
        return out
