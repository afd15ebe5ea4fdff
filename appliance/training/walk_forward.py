"""Walk-forward backtest: the retraining loop replayed over the test window by event time.

``appliance backtest --walk-forward`` first runs the static backtest
(``training.backtest.run``, written under ``DIR/static/``); each model variant's
static model is then the walk-forward's first champion, and from the same
feature rows (built once: features do not depend on the model) the loop steps
through (``train_until``, ``test_until``] every ``step_s`` of event time:

1. **drift** — the feature rows of the ticks since the last step go, tick by tick,
   through the service's own drift stage (``stages.drift.DriftStage.handle``: sensor
   health, then ``models.drift.DriftMonitor`` against the serving champion's
   reference and calibration, ``[drift]``).  A promotion or a rollback ends the open
   events and starts the windows afresh (``end_all`` + ``use``), as the stage does
   when it sees a new champion.  All assets are one line (a stored history does not
   keep lines; the calibration pools the assets the same way).
2. **review** — ``Lifecycle.review`` on the challengers in shadow and the promotion on
   probation; promote / reject / rollback / end_probation are carried out and the
   state moves with ``Lifecycle.applied``.
3. **trigger** — ``Lifecycle.trigger`` on a ``Watch`` of that moment: the fault starts
   known so far, the oldest open drift event, the champion's live standing over its
   last 30 days and its validated recall.  On a trigger, ``candidate.train_candidate``
   trains on the history as stored at ``now`` (readings up to ``now``; faults that
   started by then, one that ends later still open), ``Lifecycle.gate`` judges the two
   holdout standings, and an accepted candidate shadows from ``now`` on.

*Live standings* of a model over (since, until] are ``scoring.metrics.event_metrics``
of its replayed predictions at its serving threshold, labelled with the faults that
started by ``now`` only (labels arrive as they happened): what the service's live
scores (``models.scores``) would have said then.

What the same-code guarantee covers: the decisions (``models.lifecycle``), the
candidate's training and holdout (``training.candidate``), the drift stage, the
labels and event metrics, the ONNX models as exported.  What it does not: the
service's plumbing around them (queues, the training child process, the registry
file, MQTT); training takes no event time here (a candidate shadows from the
moment it was triggered, where the service would have served the old champion a few
more minutes); the loop looks every ``step_s`` (default ``[retrain] check_every_s``,
at least one cadence), and a model is scored on every tick, where the service's
feature stage may drop rows for drift when it falls behind.

A model is fixed once trained, so each model predicts all its remaining test rows
in one call when it enters (the loop reads only the rows up to ``now``): the same
numbers as tick by tick, at a fraction of the cost.  With no trigger firing, the
champion's predictions are the static backtest's, exactly.

Scoring the walk-forward over the whole test window: models may have different
thresholds, and the alarm rule is scale-invariant (raise at >= threshold, clear
below threshold × clear_ratio), so probability / threshold × 0.5 at 0.5 reproduces
each model's own alarm; ``recall @ budget`` moves every model's threshold by the
same factor.  ``DIR/<variant>/predictions.parquet`` keeps the real probability,
with the serving ``threshold`` and ``model`` per row; ``DIR/<variant>/loop_events.jsonl``
is the loop's event log (trigger, training, gate, shadow, promote, reject,
rollback, end of probation, drift events), each with its event time.
The static_threshold variant has no model to retrain and is not walked forward.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import queue
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import STATIC_FAMILY, Config
from appliance.console import fmt, markdown_table, minutes, table
from appliance.messages import DriftEvent, FeatureRows
from appliance.models.contract import LoadedModel, load_model
from appliance.models.lifecycle import DAY_S, Action, Lifecycle, LoopState, Standing, Watch
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher
from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import (
    AssetScores,
    EventMetrics,
    best_within_budget,
    event_metrics,
    metrics_curve,
    threshold_candidates,
)
from appliance.stages.drift import DriftStage
from appliance.storage.history import AssetHistory, Say, StoredHistory
from appliance.timefmt import rfc3339
from appliance.training import backtest
from appliance.training.backtest import BacktestResult, Variant, VariantResult
from appliance.training.candidate import serving_threshold, train_candidate
from appliance.training.dataset import Dataset

#: ``Watch.champion_live``: the champion's live scores over this many days.
LIVE_DAYS = 30.0
#: The line every asset is put on for the drift windows.
LINE = "line"
#: Counters of the loop's events, in the order the report shows them.
COUNTED = ("trigger", "trained", "training_failed", "shadow_started", "promote", "reject",
           "rollback", "end_probation", "drift_started")


@dataclass(frozen=True, eq=False)
class WalkResult:
    """One variant walked forward: what served each test tick, and what the loop did."""

    variant: Variant
    static: VariantResult
    step_s: float
    test: EventMetrics  # every tick by the model serving it, at its own threshold
    at_budget: EventMetrics
    budget_reachable: bool
    curve: list[EventMetrics] = field(repr=False)
    events: tuple[dict[str, Any], ...] = ()
    pred_asset: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object),
                                   repr=False)
    pred_ts: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    pred_probability: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    pred_threshold: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    pred_model: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object),
                                   repr=False)
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e["event"] == kind)

    def counts(self) -> dict[str, int]:
        return {k: self.count(k) for k in COUNTED}

    def first(self, kind: str) -> float | None:
        return next((e["t"] for e in self.events if e["event"] == kind), None)

    def as_dict(self) -> dict[str, Any]:
        return {"step_s": self.step_s, "test": self.test.as_dict(),
                "recall_at_budget": self.at_budget.as_dict(),
                "budget_reachable": self.budget_reachable, "counts": self.counts(),
                "models_served": sorted(set(self.pred_model.tolist())),
                "seconds": round(self.seconds, 2)}


@dataclass(frozen=True, eq=False)
class WalkForwardResult:
    static: BacktestResult
    walks: list[WalkResult]
    #: Variants not walked forward → why.
    skipped: Mapping[str, str]
    retrain: Mapping[str, Any]

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        """Static and walk-forward side by side, two rows per variant."""
        headers = ["variant", "loop", "recall", "caught", "false/asset-wk", "median lead",
                   "recall @ budget", "trainings", "promotions", "rollbacks"]
        walks = {w.variant.name: w for w in self.walks}
        rows = []
        for vr in self.static.variants:
            name = vr.variant.name
            t = vr.test
            rows.append([name, "static", fmt(t.recall), f"{t.caught}/{t.faults}",
                         fmt(t.false_per_asset_week), minutes(t.median_lead_s),
                         fmt(vr.at_budget.recall) + ("" if vr.budget_reachable else " (!)"),
                         "", "", ""])
            w = walks.get(name)
            if w is None:
                rows.append([name, "walk-forward", *[""] * 7,
                             f"skipped: {self.skipped.get(name, 'not run')}"])
                continue
            t, c = w.test, w.counts()
            rows.append([name, "walk-forward", fmt(t.recall), f"{t.caught}/{t.faults}",
                         fmt(t.false_per_asset_week), minutes(t.median_lead_s),
                         fmt(w.at_budget.recall) + ("" if w.budget_reachable else " (!)"),
                         f"{c['trained']}" + (f" (+{c['training_failed']} failed)"
                                              if c["training_failed"] else ""),
                         str(c["promote"]), str(c["rollback"])])
        return headers, rows

    def as_dict(self) -> dict[str, Any]:
        return {"static": self.static.as_dict(), "retrain": dict(self.retrain),
                "skipped": dict(self.skipped),
                "walk_forward": {w.variant.name: w.as_dict() for w in self.walks}}


@dataclass(eq=False)
class _Model:
    name: str
    model: LoadedModel
    threshold: float
    validated_recall: float | None
    entered: float
    p: np.ndarray  # over the test rows; NaN before it entered


class _Walk:
    """The loop over one variant's test rows (grouped by asset, by tick within one)."""

    def __init__(self, cfg: Config, v: Variant, test: Dataset, history: StoredHistory,
                 t0: float, model_dir: Path, say: Say, seed: int) -> None:
        self.cfg, self.v, self.test, self.history = cfg, v, test, history
        self.say, self.seed, self.model_dir = say, seed, model_dir
        self.horizon = v.spec.horizon_s
        self.clear_ratio = cfg.alerts.clear_ratio
        self.lifecycle = Lifecycle(cfg.retrain, cfg.alerts.max_false_per_asset_week)
        self.events: list[dict[str, Any]] = []
        self.models: dict[str, _Model] = {}
        self.champion = ""
        n = len(test.ticks)
        self.out_p = np.full(n, np.nan)
        self.out_thr = np.full(n, np.nan)
        self.out_model = np.full(n, "", dtype=object)
        # rows of each asset: a contiguous, tick-sorted slice
        self.slices = []
        for i in range(len(test.assets)):
            rows = np.flatnonzero(test.asset_index == i)
            self.slices.append((int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0))
        by_asset = {h.asset: h for h in history.histories}
        self.faults = [(np.sort(by_asset[a].fault_starts), by_asset[a].fault_ends[
            np.argsort(by_asset[a].fault_starts, kind="stable")]) for a in test.assets]
        self.all_starts = np.sort(np.concatenate([s for s, _ in self.faults]))
        self._labels_at: float | None = None
        self._pos = np.zeros(n, dtype=bool)
        self._ok = np.ones(n, dtype=bool)
        # tick order for the drift stage
        self.order = np.lexsort((test.asset_index, test.ticks))
        sorted_ticks = test.ticks[self.order]
        self.tick_bounds = np.r_[0, np.flatnonzero(np.diff(sorted_ticks)) + 1, n]
        self.tick_values = sorted_ticks[self.tick_bounds[:-1]] if n else np.empty(0)
        self.next_tick = 0
        self.asset_names = np.asarray(test.assets, dtype=object)
        self.drift_open: dict[str, float] = {}
        self.stage: DriftStage | None = None
        self.state = LoopState()
        self.now = t0
        self.t0 = t0

    # -- models ------------------------------------------------------------------

    def enter(self, model: LoadedModel, now: float, validated: float | None) -> _Model:
        """``model`` predicts the test rows after ``now`` (in one call: it is fixed)."""
        rows = self.test.ticks > now
        p = np.full(len(self.test.ticks), np.nan)
        X = self.test.X[rows][:, model.column_index(self.test.names)]
        p[rows] = model.predict_proba(X)
        m = _Model(model.name, model, serving_threshold(self.cfg, model.threshold),
                   validated, now, p)
        self.models[m.name] = m
        return m

    def serve(self, name: str, now: float) -> None:
        """``name`` serves the ticks after ``now``; the drift windows start afresh."""
        m = self.models[name]
        rows = self.test.ticks > now
        self.out_p[rows], self.out_thr[rows], self.out_model[rows] = m.p[rows], m.threshold, \
            m.name
        self.champion = name
        if self.stage is not None:
            monitor = self.stage.monitor
            if monitor is not None:
                for e in monitor.end_all(now, "model changed"):
                    self._drift_event(e)
            self.stage.use(m.model)

    def forget(self) -> None:
        """Drop the models the loop no longer watches (rejected, rolled back, retired)."""
        keep = {self.champion, *self.state.shadow_since}
        if self.state.probation:
            keep |= {self.state.probation["champion"], self.state.probation["previous"]}
        for name in [n for n in self.models if n not in keep]:
            del self.models[name]

    # -- what the loop sees at now -----------------------------------------------

    def fault_count(self, now: float) -> int:
        return int(np.searchsorted(self.all_starts, now, side="right"))

    def _labels(self, now: float) -> None:
        """Labels of the rows up to ``now`` with the faults stored by ``now``."""
        if self._labels_at == now:
            return
        for i, (lo, hi) in enumerate(self.slices):
            starts, ends = self._known(i, now)
            b = lo + int(np.searchsorted(self.test.ticks[lo:hi], now, side="right"))
            pos, ok = label_ticks(self.test.ticks[lo:b], starts, ends, self.horizon,
                                  self.cfg.training.cooldown_s)
            self._pos[lo:b], self._ok[lo:b] = pos, ok
        self._labels_at = now

    def _known(self, i: int, now: float) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = self.faults[i]
        k = int(np.searchsorted(starts, now, side="right"))
        return starts[:k], np.where(ends[:k] > now, np.nan, ends[:k])

    def standing(self, name: str, since: float, until: float) -> Standing:
        """``name``'s live standing over (since, until] as known at ``self.now``."""
        now = self.now
        until = min(until, now)
        self._labels(now)
        m = self.models[name]
        scores = []
        for i, (lo, hi) in enumerate(self.slices):
            t = self.test.ticks[lo:hi]
            a = lo + int(np.searchsorted(t, since, side="right"))
            b = lo + int(np.searchsorted(t, until, side="right"))
            scores.append(AssetScores(self.test.assets[i], self.test.ticks[a:b], m.p[a:b],
                                      self._ok[a:b], self._pos[a:b], self._known(i, now)[0]))
        return Standing.of(event_metrics(scores, m.threshold, self.horizon, self.clear_ratio,
                                         pr_auc=math.nan))

    @property
    def drift_since(self) -> float | None:
        return min(self.drift_open.values()) if self.drift_open else None

    # -- the loop ----------------------------------------------------------------

    def log(self, now: float, event: str, **detail: Any) -> None:
        self.events.append({"ts": rfc3339(now), "t": now, "event": event, **detail})

    def start(self, champion: LoadedModel, validated: float | None) -> None:
        t0 = self.t0
        self.enter(champion, t0, validated)
        if self.cfg.drift.enabled:
            with tempfile.TemporaryDirectory(prefix="appliance-wf-") as tmp:
                watcher = ModelWatcher(Registry(Path(tmp)), self.v.spec.hash,
                                       watch_files=False)
            self.stage = DriftStage(self.cfg, watcher, None, queue.Queue(), queue.Queue())
        self.serve(champion.name, t0)
        # The first champion was trained on the history up to t0, with the faults of then.
        self.state = Lifecycle.trained(Lifecycle.began(LoopState(), t0, 0), t0,
                                       self.fault_count(t0))
        self.log(t0, "champion", model=champion.name, threshold=self.models[champion.name]
                 .threshold, why="the static backtest's model, trained up to here")

    def step(self, now: float) -> None:
        self.now = now
        self.feed_drift(now)
        if self.cfg.retrain.enabled:
            self.review(now)
            self.maybe_train(now)

    def feed_drift(self, now: float) -> None:
        """The drift stage sees every tick up to ``now``, in order."""
        stage = self.stage
        k = self.next_tick
        while k < len(self.tick_values) and self.tick_values[k] <= now:
            rows = self.order[self.tick_bounds[k]:self.tick_bounds[k + 1]]
            if stage is not None:
                assets = tuple(self.asset_names[self.test.asset_index[rows]].tolist())
                batch = _feature_rows(float(self.tick_values[k]), assets, self.test.names,
                                      self.test.X[rows])
                for out in stage.handle(batch):
                    for e in out.items:
                        self._drift_event(e)
            k += 1
        self.next_tick = k

    def _drift_event(self, e: DriftEvent) -> None:
        if e.kind != "drift":
            return  # sensor events: the stage leaves their features out; not drift
        if e.state == "started":
            self.drift_open.setdefault(e.line, e.ts)
            self.log(e.ts, "drift_started", model=e.model, features=list(e.features),
                     statistic=e.statistic, threshold=e.threshold)
        else:
            self.drift_open.pop(e.line, None)
            self.log(e.ts, "drift_ended", model=e.model,
                     why=json.loads(e.detail).get("why", ""))

    def review(self, now: float) -> None:
        actions = self.lifecycle.review(self.state, now, self.champion,
                                        self.drift_since is not None, self.standing)
        for a in actions:
            before = self.champion
            self.state = self.lifecycle.applied(self.state, a, before, now)
            if a.kind in ("promote", "rollback"):
                self.serve(a.model, now)
            self.log(now, a.kind, model=a.model, champion_before=before,
                     champion=self.champion, reason=a.reason,
                     standings=_standings(a))
            self.say(f"{self.v.name} {rfc3339(now)}: {a.kind} {a.model}: {a.reason}")
        if actions:
            self.forget()

    def maybe_train(self, now: float) -> None:
        champ = self.models[self.champion]
        live = None
        if self.cfg.retrain.score_drop:
            live = self.standing(champ.name, max(champ.entered, now - LIVE_DAYS * DAY_S), now)
        faults = self.fault_count(now)
        watch = Watch(now, faults, self.drift_since, live, champ.validated_recall)
        trigger = self.lifecycle.trigger(self.state, watch)
        if trigger is None:
            return
        self.log(now, "trigger", kind=trigger.kind, reason=trigger.reason)
        self.say(f"{self.v.name} {rfc3339(now)}: trigger ({trigger.kind}): {trigger.reason}")
        self.state = Lifecycle.trained(self.state, now, faults)
        n = sum(1 for e in self.events if e["event"] == "trigger")
        path = self.model_dir / f"candidate-{n:03d}.onnx"
        t0 = time.perf_counter()
        try:
            report = train_candidate(self.cfg, history_at(self.history, now), now,
                                     champ.model, path, seed=self.seed, family=self.v.family)
        except ValueError as exc:
            self.log(now, "training_failed", reason=str(exc),
                     wall_s=round(time.perf_counter() - t0, 2))
            self.say(f"{self.v.name} {rfc3339(now)}: training failed: {exc}")
            return
        wall = time.perf_counter() - t0
        self.log(now, "trained", window=report.window, wall_s=round(wall, 2),
                 timings_s={k: round(s, 2) for k, s in report.timings_s.items()},
                 problems=list(report.problems), threshold=report.metrics.get("threshold"))
        gate = self.lifecycle.gate(report.candidate, report.champion) \
            if report.candidate is not None else None
        self.log(now, "gate", accepted=bool(gate and gate.accepted),
                 reason=gate.reason if gate else "no candidate",
                 candidate=report.candidate.as_dict() if report.candidate else None,
                 champion=report.champion.as_dict() if report.champion else None,
                 champion_name=report.champion_name)
        self.say(f"{self.v.name} {rfc3339(now)}: trained in {wall:.0f} s; gate: "
                 f"{'accepted' if gate and gate.accepted else 'refused'}: "
                 f"{gate.reason if gate else 'no candidate'}")
        if gate is None or not gate.accepted or report.path is None:
            return
        model = load_model(report.path, self.v.spec.hash)
        validated = (report.metrics.get("validation") or {}).get("recall")
        self.enter(model, now, validated)
        self.state = Lifecycle.shadowed(self.state, model.name, now)
        self.log(now, "shadow_started", model=model.name,
                 threshold=self.models[model.name].threshold)


def _feature_rows(tick: float, assets: tuple[str, ...], names: tuple[str, ...],
                  X: np.ndarray) -> FeatureRows:
    return FeatureRows(tick, (LINE,) * len(assets), assets, names, X)


def _standings(a: Action) -> dict[str, Any]:
    return {name: s.as_dict() for name, s in a.standings.items()}


def history_at(history: StoredHistory, now: float) -> StoredHistory:
    """The history as stored at ``now``: readings up to it, the faults started by then
    (one that ends later is still open: NaN end)."""
    out, readings, faults = [], 0, 0
    t_end = history.t_start
    for h in history.histories:
        series = {}
        for sensor, (ts, values) in h.series.items():
            k = int(np.searchsorted(ts, now, side="right"))
            series[sensor] = (ts[:k], values[:k])
            readings += k
            if k:
                t_end = max(t_end, float(ts[k - 1]))
        keep = h.fault_starts <= now
        ends = h.fault_ends[keep]
        out.append(AssetHistory(h.asset, series, h.fault_starts[keep],
                                np.where(ends > now, np.nan, ends)))
        faults += int(keep.sum())
    return StoredHistory(tuple(out), history.t_start, t_end, readings, faults, history.notes)


def walk_variant(cfg: Config, v: Variant, ds: Dataset, history: StoredHistory,
                 static: VariantResult, model_dir: Path, train_until: float,
                 test_until: float, *, step_s: float | None = None,
                 out_dir: Path | None = None, progress: Say | None = None,
                 seed: int = 0) -> WalkResult:
    """Walk ``v`` forward from its static model (``model_dir/model.onnx``, the one
    ``static`` was scored with) over the test rows of ``ds``."""
    say = progress or (lambda _m: None)
    t_wall = time.perf_counter()
    if v.pipeline is None:
        raise ValueError(f"variant {v.name}: its [pipeline] is not known, so candidates "
                         f"cannot be trained with it")
    vcfg = dataclasses.replace(cfg, pipeline=v.pipeline)
    step = walk_step(vcfg, step_s)
    test = ds.take((ds.ticks > train_until) & (ds.ticks <= test_until))
    champion = load_model(model_dir / "model.onnx", v.spec.hash)
    candidates_dir = (out_dir / "models") if out_dir is not None else model_dir / "walk"
    candidates_dir.mkdir(parents=True, exist_ok=True)
    walk = _Walk(vcfg, v, test, history, train_until, candidates_dir, say, seed)
    quiet = logging.getLogger("appliance.stages.drift")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the loop's event log has the drift events
    try:
        walk.start(champion, static.validation.recall)
        now = train_until
        while now < test_until:
            now = min(now + step, test_until)
            walk.step(now)
    finally:
        quiet.setLevel(level)
    scaled = walk.out_p / walk.out_thr * 0.5
    everything = np.ones(len(test.ticks), dtype=bool)
    scores = test.scores(everything, scaled)
    metrics = event_metrics(scores, 0.5, v.spec.horizon_s, cfg.alerts.clear_ratio)
    candidates = [0.5]
    for name in sorted(set(walk.out_model.tolist())):
        rows = walk.out_model == name
        thr = float(walk.out_thr[rows][0])
        own = threshold_candidates(test.scores(rows, walk.out_p[rows]), 0.01, 0.9999)
        candidates += (own / thr * 0.5).tolist()
    curve = metrics_curve(scores, v.spec.horizon_s, cfg.alerts.clear_ratio,
                          np.unique(candidates))
    at_budget, reachable = best_within_budget(curve, cfg.alerts.max_false_per_asset_week)
    result = WalkResult(
        v, static, step, metrics, at_budget, reachable, curve, tuple(walk.events),
        np.asarray(test.assets, dtype=object)[test.asset_index], test.ticks, walk.out_p,
        walk.out_thr, walk.out_model, time.perf_counter() - t_wall)
    c = result.counts()
    say(f"{v.name} walk-forward: recall {fmt(metrics.recall)} ({metrics.caught}/"
        f"{metrics.faults}), {fmt(metrics.false_per_asset_week)} false alarms per "
        f"asset-week; {c['trigger']} triggers, {c['trained']} trainings, {c['promote']} "
        f"promotions, {c['rollback']} rollbacks")
    if out_dir is not None:
        write_walk(out_dir, result)
    return result


def walk_step(cfg: Config, step_s: float | None) -> float:
    """The loop's step: ``step_s`` or ``[retrain] check_every_s``, at least one cadence."""
    step = cfg.retrain.check_every_s if step_s is None else float(step_s)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"the walk-forward step must be a positive number of seconds, "
                         f"got {step_s!r}")
    return max(step, cfg.pipeline.cadence_s)


def write_walk(out_dir: Path, w: WalkResult) -> None:
    """``predictions.parquet`` (asset, ts, probability, threshold, model) and
    ``loop_events.jsonl`` in ``out_dir``."""
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = {  # noqa: F841 - scanned by DuckDB below
        "asset": np.asarray(w.pred_asset, dtype=object),
        "ts_s": np.asarray(w.pred_ts, dtype=np.float64),
        "probability": np.asarray(w.pred_probability, dtype=np.float64),
        "threshold": np.asarray(w.pred_threshold, dtype=np.float64),
        "model": np.asarray(w.pred_model, dtype=object),
    }
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        target = "'" + str(out_dir / "predictions.parquet").replace("'", "''") + "'"
        con.execute(f"COPY (SELECT asset, to_timestamp(ts_s) AS ts, probability, threshold, "
                    f"model FROM predictions ORDER BY asset, ts) TO {target} "
                    f"(FORMAT parquet)")
    finally:
        con.close()
    text = "".join(json.dumps(e, default=_json_default) + "\n" for e in w.events)
    (out_dir / "loop_events.jsonl").write_text(text, encoding="utf-8")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON: {type(x).__name__}")


def run(cfg: Config, history: StoredHistory, variants: Sequence[Variant],
        train_until: float, test_until: float | None = None, *,
        out_dir: Path | None = None, step_s: float | None = None,
        progress: Say | None = None, seed: int = 0,
        on_variant: Callable[[WalkForwardResult], None] | None = None) -> WalkForwardResult:
    """The static backtest of ``variants`` and, for each model variant, its walk forward.

    With ``out_dir``: the static backtest in ``out_dir/static``, each walk in
    ``out_dir/<variant>``.  ``on_variant`` is called with the results so far as each
    variant finishes.
    """
    say = progress or (lambda _m: None)
    walks: list[WalkResult] = []
    skipped: dict[str, str] = {}
    t_test = history.t_end if test_until is None else min(test_until, history.t_end)
    static_dir = out_dir / "static" if out_dir is not None else None
    retrain = dataclasses.asdict(cfg.retrain)
    latest: list[BacktestResult] = []

    def walk(v: Variant, ds: Dataset, vr: VariantResult, model_dir: Path) -> None:
        if v.family == STATIC_FAMILY:
            skipped[v.name] = "no model to retrain (a tuned limit on one sensor)"
            return
        say(f"variant {v.name}: walk forward from {rfc3339(train_until)} to "
            f"{rfc3339(t_test)}")
        walks.append(walk_variant(cfg, v, ds, history, vr, model_dir, train_until, t_test,
                                  step_s=step_s, progress=say, seed=seed,
                                  out_dir=out_dir / v.name if out_dir is not None else None))

    def so_far(static: BacktestResult) -> WalkForwardResult:
        return WalkForwardResult(static, list(walks), dict(skipped), retrain)

    def each(static: BacktestResult) -> None:
        latest.append(static)
        if on_variant is not None:
            on_variant(so_far(static))

    static = backtest.run(history, variants, train_until, test_until,
                          budget=cfg.alerts.max_false_per_asset_week,
                          clear_ratio=cfg.alerts.clear_ratio, training=cfg.training,
                          out_dir=static_dir, progress=say, seed=seed, on_variant=each,
                          with_dataset=walk)
    return so_far(static)


def terminal_table(result: WalkForwardResult) -> str:
    headers, rows = result.table_rows()
    s = result.static
    step = next((w.step_s for w in result.walks), None)
    lines = [f"test window {rfc3339(s.train_until)} to {rfc3339(s.test_until)}, "
             f"{len(s.assets)} assets; budget {s.budget:g} false alarms per asset-week"
             + (f"; the loop looked every {step:g} s of event time" if step else ""),
             table(headers, rows, text=("loop",)),
             "static: the model trained up to the start of the test window, frozen; "
             "walk-forward: the retraining loop replayed over the test window. recall @ "
             "budget: best recall of any threshold (for the walk-forward: every model's "
             "threshold times one factor) within the budget ((!) = none met it)"]
    lines += [f"note: {n}" for n in s.notes]
    if not s.complete:
        lines.append(s.progress_text())
    return "\n".join(lines)


def write_report(result: WalkForwardResult, out_dir: Path) -> Path:
    """``DIR/report.md`` and ``DIR/walk_forward.json`` (the static report is in
    ``DIR/static``)."""
    s = result.static
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Walk-forward backtest", ""]
    if not s.complete:
        lines += [f"**{s.progress_text()}.**", ""]
    lines += [
        f"History: {len(s.assets)} assets; test window ({rfc3339(s.train_until)}, "
        f"{rfc3339(s.test_until)}].  *Static*: each variant's model trained on the ticks "
        f"up to {rfc3339(s.train_until)} and frozen (the static backtest, in full in "
        "[static/report.md](static/report.md)).  *Walk-forward*: the same model as the "
        "first champion, then the appliance's retraining loop (drift, triggers, training, "
        "gate, shadow, promotion, rollback) replayed over the test window by event time, "
        "with fault labels arriving as they happened.",
        "",
        f"False-alarm budget: {s.budget:g} per asset-week; horizon {s.horizon_s / 60:g} "
        f"min.",
        "",
        markdown_table(*result.table_rows()),
        "",
        "*recall*, *caught*, *false/asset-wk*, *median lead*: each tick alarmed by the model "
        "serving it, at that model's threshold.  *recall @ budget*: the best recall any "
        "threshold reaches within the budget (an upper bound, picked looking at the test "
        "window; for the walk-forward every model's threshold is moved by one factor).",
        "",
        "## The loop's settings",
        "",
        *[f"* `{k} = {v}`" for k, v in result.retrain.items()],
        "",
    ]
    for name, why in result.skipped.items():
        lines += [f"* {name}: not walked forward: {why}."]
    for w in result.walks:
        c = w.counts()
        lines += ["", f"## {w.variant.name}", "",
                  f"Step {w.step_s:g} s; {c['trigger']} triggers, {c['trained']} trainings "
                  f"({c['training_failed']} failed), {c['shadow_started']} shadowed, "
                  f"{c['promote']} promoted, {c['reject']} rejected, {c['rollback']} rolled "
                  f"back; {c['drift_started']} drift events; {w.seconds:.0f} s.", "",
                  f"Predictions: `{w.variant.name}/predictions.parquet` (asset, ts, "
                  f"probability, threshold, model); the loop's events: "
                  f"`{w.variant.name}/loop_events.jsonl`.", ""]
        shown = [e for e in w.events if e["event"] not in ("trained",)]
        for e in shown[:60]:
            lines.append(f"* {e['ts']} **{e['event']}** {_brief(e)}")
        if len(shown) > 60:
            lines.append(f"* ... {len(shown) - 60} more in loop_events.jsonl")
    path = out_dir / "report.md"
    _replace(path, "\n".join(lines) + "\n")
    _replace(out_dir / "walk_forward.json", json.dumps(result.as_dict(), indent=2,
                                                       default=_json_default))
    return path


def _brief(e: Mapping[str, Any]) -> str:
    keys = ("model", "kind", "reason", "accepted", "features")
    return "; ".join(f"{k}: {e[k]}" for k in keys if k in e and e[k] not in (None, ""))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(cfg: Config, names: Sequence[str], *, train_until: str | None = None,
         test_until: str | None = None, out_dir: Path | None = None,
         db: Path | None = None, readings: str | None = None, faults: str | None = None,
         asset: str | None = None, line: str = "line1", progress: Say | None = None,
         seed: int = 0, renames: Mapping[str, str] | None = None,
         ignore: Collection[str] = (), step_s: float | None = None,
         since: str | None = None,
         on_variant: Callable[[WalkForwardResult], None] | None = None
         ) -> WalkForwardResult:
    """``appliance backtest --walk-forward``: as ``backtest.main``, then the walks."""
    if not names:
        raise ValueError("no variants named")
    variants = backtest.resolve_variants(cfg, names)
    walk_step(cfg, step_s)  # a bad --step fails before the work
    history, t_train, t_test = backtest.history_and_window(
        cfg, since, train_until, test_until, db=db, readings=readings, faults=faults,
        asset=asset, line=line, progress=progress, renames=renames, ignore=ignore)
    with backtest.window_explained(history, t_train, t_test, since, train_until, test_until):
        return run(cfg, history, variants, t_train, t_test, out_dir=out_dir, step_s=step_s,
                   progress=progress, seed=seed, on_variant=on_variant)
