"""Predict: feature rows in, one onnxruntime call per tick for all assets, out.

The runner hands the stage the model chosen to serve (``models.watcher``), or
none when ``[model] required = false`` and none could be loaded: then rows
pass without predictions until a model is promoted.  Every ``poll_s`` the
stage asks its ``ModelWatcher`` for a newly promoted model and serves it from
the next tick; what the watcher saw (activations, candidates, refusals) goes
on to the record stage as ``ModelEvent``s.

Each prediction that could matter for an alert (probability at or above the
clearing level) is explained by occlusion (``models.explain``): its top features
and, per sensor, the reasons a line engineer reads.

Challengers (``appliance models shadow``; the watcher keeps them loaded) predict
on the very same ``FeatureRows`` after the champion, each through its own column
mapping; their ``Prediction``s carry ``role="challenger"`` and no explanations
(nobody reads a challenger's alert, the scores need only its probabilities).
``handle`` is a generator so the champion's predictions are on the queue before
any challenger runs: the champion never waits for one.  A challenger that raises
is dropped for good (one error line, a ``refused`` row in ``models``), the
others and the champion serve on.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from appliance.config import Config
from appliance.messages import FeatureRows, ModelEvent, Prediction, Predictions
from appliance.models.contract import LoadedModel
from appliance.models.explain import UNEXPLAINED, Explainer
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
        self._columns: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        #: the last tick's predict time of each challenger, ms (its cost, in the status)
        self._challenger_ms: dict[str, float] = {}
        self._next_poll = 0.0
        #: The model served before the current one: what serves again when the current
        #: one fails to predict.
        self._previous: LoadedModel | None = None
        self._refused = ""  # why the last champion was refused, while none serves
        if model is not None:
            self.use(model)
        else:
            self.counters.extra["rows_without_model"] = 0

    def use(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next tick on."""
        if self.model is not None and self.model.name != model.name:
            self._previous = self.model
        self.model = model
        self._refused = ""
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

    def handle(self, rows: FeatureRows) -> Iterator[Predictions]:
        if self.model is None:
            self.counters.bump("rows_without_model", len(rows.assets))
            return
        model = self.model
        X = self._model_matrix(rows, model)
        try:
            proba = model.predict_proba(X)
        except Exception as exc:  # onnxruntime raises its own types; a crash-loop helps none
            # Only the model's own call: a bug of ours (explaining, say) goes to the
            # supervisor with its traceback, not into refusing a good model.
            self._refuse_champion(exc)
            self.counters.bump("rows_without_model", len(rows.assets))
            return
        yield self.predictions(rows, X, proba)
        shadow = self.predict_challengers(rows, (model.feature_names, X))
        if shadow.items:
            yield shadow

    def status(self) -> dict[str, Any]:
        entry = {**super().status(), "model": self.model.name if self.model else None}
        if self.watcher.challengers:
            entry["challengers"] = {name: {"ms_per_tick": round(self._challenger_ms.get(name, 0),
                                                                  3)}
                                    for name in self.watcher.challengers}
        if self.model is None and self._refused:
            # a model failed where one served: the service is degraded until one is promoted
            entry["problem"] = (f"no model: {self._refused}; storing readings only, nothing "
                                f"is predicted until a model is promoted")
        elif self.model is None:
            entry["note"] = ("no model: storing readings only ([model] required = false); "
                             "nothing is predicted until a model is promoted")
        return entry

    def _refuse_champion(self, exc: Exception) -> None:
        """The serving model failed to predict: one error line, a ``refused`` event, and
        the model served before it serves again (none when there was none)."""
        model = self.model
        assert model is not None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        self.counters.bump("models_refused")
        self.watcher.record(model.name, model.path, model.sha256, model.spec_hash, "refused",
                            f"failed to predict: {reason}")
        # forget the refused model before going back, so it never becomes the previous
        previous, self._previous, self.model = self._previous, None, None
        if previous is not None:
            log.error("model %s refused, it failed to predict: %s; serving %s again",
                      model.name, reason, previous.name)
            self.use(previous)
            return
        log.error("model %s refused, it failed to predict: %s; serving NO model until one "
                  "is promoted", model.name, reason)
        self._explainer, self._columns = None, {}
        self._refused = f"model {model.name} refused (failed to predict: {reason})"

    def predictions(self, rows: FeatureRows, X: np.ndarray, proba: np.ndarray) -> Predictions:
        """The champion's predictions of ``rows`` (its matrix ``X`` and probabilities),
        those near the alarm level explained."""
        model, explainer = self.model, self._explainer
        assert model is not None and explainer is not None
        threshold = self.threshold
        explain = np.flatnonzero(proba >= threshold * self.cfg.alerts.clear_ratio)
        explained = explainer.explain(X[explain], proba[explain]) if len(explain) else []
        by_row = dict(zip(explain.tolist(), explained, strict=True))
        self.counters.processed += len(rows.assets)
        return Predictions(tuple(
            Prediction(rows.line[i], asset, rows.tick, float(proba[i]), threshold, model.name,
                       (e := by_row.get(i, UNEXPLAINED)).factors, reasons=e.reasons)
            for i, asset in enumerate(rows.assets)))

    def predict_challengers(self, rows: FeatureRows,
                            champion: tuple[tuple[str, ...], np.ndarray] | None = None
                            ) -> Predictions:
        """Every challenger's predictions for the rows the champion just had (``champion``:
        its features and matrix, taken as they are by a challenger of the same features)."""
        items: list[Prediction] = []
        for name, model in list(self.watcher.challengers.items()):
            started = time.perf_counter()
            try:
                X = champion[1] if champion and champion[0] == model.feature_names \
                    else self._model_matrix(rows, model)
                proba = model.predict_proba(X)
            except Exception as exc:  # onnxruntime raises its own types; any is fatal here
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                log.error("challenger %s dropped, the champion serves on: %s", name, reason)
                self.counters.bump("challengers_dropped")
                self.watcher.drop_challenger(name, f"failed to predict: {reason}")
                self._challenger_ms.pop(name, None)
                continue
            self._challenger_ms[name] = (time.perf_counter() - started) * 1e3
            threshold = self.cfg.alerts.threshold or model.threshold
            items.extend(Prediction(rows.line[i], asset, rows.tick, float(proba[i]), threshold,
                                    name, role="challenger")
                         for i, asset in enumerate(rows.assets))
        return Predictions(tuple(items))

    def _model_matrix(self, rows: FeatureRows, model: LoadedModel) -> np.ndarray:
        """The rows' features in ``model``'s input order; NaN where a feature is absent."""
        key = (model.name, rows.names)
        cols = self._columns.get(key)
        if cols is None:
            index = {n: i for i, n in enumerate(rows.names)}
            cols = np.array([index.get(n, -1) for n in model.feature_names], dtype=np.int64)
            self._columns[key] = cols
        X = rows.values[:, np.maximum(cols, 0)].astype(np.float32, copy=True)
        X[:, cols < 0] = np.nan
        return X
