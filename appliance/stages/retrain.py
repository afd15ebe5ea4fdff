"""Retrain: the closed loop — trigger, train in a child, validate, shadow, promote,
roll back — with every step recorded and published.

Beside the chain (no queue in; its ``LoopEvent``s go to the alert stage, which
publishes them retained on ``<line>/model``).  Every ``[retrain] check_every_s``
it reads what the loop watches from the database (event time of the newest
reading, fault starts, open drift events, the champion's live scores in
``model_scores``), and ``models.lifecycle.Lifecycle`` decides; this stage acts:

* a trigger → the history is copied out (``storage.snapshot``, on this stage's
  own cursor, one transaction) and a training child started (``service.child``:
  lower priority, memory cap, never two at once).  Ingest goes on meanwhile.
* the child's result → the candidate is added to the registry and gated against
  the champion on the same holdout: a challenger (``registry.shadow``) or kept as
  a record (``models`` row ``rejected`` with both sets of numbers).
* reviews → promote, reject, roll back, end a probation (``registry``), each a
  single atomic write of the roles and the loop's memory.

Every step is a row of ``model_history`` (and ``training_runs``, ``models``)
and a retained MQTT message.  Requests by file (``service.requests``) are served
between checks: ``appliance retrain``, and ``appliance train`` asking for a
snapshot while the service holds the database.

A job folder (``<models dir>/retrain/<id>``) lives while its child runs; one left
behind by a killed service is recorded as ``interrupted`` at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import queue
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

from appliance.config import Config
from appliance.features.spec import PipelineSpec
from appliance.messages import LoopEvent
from appliance.models import scores
from appliance.models.contract import ModelError, load_model
from appliance.models.lifecycle import DAY_S, Action, Lifecycle, LoopState, Standing, Watch
from appliance.models.registry import Registry
from appliance.service import requests
from appliance.service.child import ChildOutcome, TrainingChild
from appliance.stages.base import POLL_S, Stage, StopSignals
from appliance.storage import tables
from appliance.storage.snapshot import write_snapshot
from appliance.timefmt import from_us, rfc3339

log = logging.getLogger(__name__)

#: The live window the champion is watched over (``models.scores`` keeps 7 and 30).
LIVE_WINDOW_DAYS = 30


class RetrainStage(Stage):
    name = "retrain"
    essential = False  # the loop is improvement: readings and alerts go on without it

    def __init__(self, cfg: Config, db: duckdb.DuckDBPyConnection, registry: Registry,
                 spec_hash: str, out: queue.Queue | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.db = db
        self.registry = registry
        self.spec_hash = spec_hash
        self.events_out = out
        self.lifecycle = Lifecycle(cfg.retrain, cfg.alerts.max_false_per_asset_week)
        self.jobs = registry.directory / "retrain"
        self._con: duckdb.DuckDBPyConnection | None = None
        self._child: TrainingChild | None = None
        self._job: dict[str, Any] = {}
        self._next_check = 0.0
        self._last: dict[str, Any] = {}
        #: The newest step not yet handed to the alert stage (its inbox was full): the
        #: message is retained, so the newest is the one that matters.
        self._unpublished: LoopEvent | None = None

    # -- stage interface ---------------------------------------------------------

    def start(self) -> None:
        self._con = self.db.cursor()
        self._recover()
        self._next_check = 0.0

    def run(self, signals: StopSignals) -> None:
        while not (signals.drain.is_set() or signals.abort.is_set()):
            self._hand_on()
            self.serve_requests()
            if self._child is not None:
                self.watch_child()
            if self.clock.monotonic() >= self._next_check:
                self._next_check = self.clock.monotonic() + self.cfg.retrain.check_every_s
                self.check()
            self.progressed()
            self.clock.sleep(POLL_S, signals.drain)

    def status(self) -> dict[str, Any]:
        entry = {**super().status(), **self._last}
        if self._child is not None:
            entry["training"] = {"pid": self._child.pid, "job": self._job.get("id"),
                                 "rss_mb": round(self._child.peak_rss_mb, 1)}
        return entry

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:  # stopping or restarting: this training is lost
            child.kill("the service stopped")
            self._finish_interrupted(self._job, "the service stopped during training")
        con, self._con = self._con, None
        if con is not None:
            con.close()

    # -- the loop ----------------------------------------------------------------

    def check(self, requested: str | None = None) -> None:
        """Triggers and reviews at the newest event time (see the module docstring)."""
        con = self._cur()
        self.counters.processed += 1  # checks made
        now = self._event_time()
        if now is None:
            return  # nothing stored yet
        champion, challengers = self._roles()
        self._record_outside_changes(now, champion, challengers)
        raw = LoopState.from_json(self.registry.lifecycle())
        faults = scores.fault_count(con, starts_only=True)
        state = Lifecycle.reconcile(Lifecycle.began(raw, now, faults), champion, challengers)
        if state != raw:
            self.registry.save_lifecycle(state.to_json())
        enabled = self.cfg.retrain.enabled
        drift_since = self._drift_open_since()  # one query serves review and triggers
        in_drift = drift_since is not None
        serving = self._serving_champion()
        if serving is not None:  # with the loop off too: a manual retrain's shadow ends
            for action in self.lifecycle.review(state, now, serving, in_drift,
                                                self._standing_of):
                state = self._apply(action, state, now, serving)
        if self._child is not None or not (enabled or requested):
            return
        live = self._champion_live(serving)
        watch = Watch(now, faults, drift_since, live,
                      self._validated_recall(champion), requested)
        trigger = self.lifecycle.trigger(state, watch)
        self._last = {"checked_at": now, "loop": state.to_json()}
        if trigger is None:
            return
        self._event(now, "trigger", None, serving, f"{trigger.kind}: {trigger.reason}",
                    {"kind": trigger.kind})
        self._start_training(now, trigger.kind, Lifecycle.trained(state, now, faults))

    def _start_training(self, now: float, kind: str, state: LoopState) -> None:
        r = self.cfg.retrain
        spec = PipelineSpec.from_config(self.cfg.pipeline)
        job_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock.time()))
        job_dir = self.jobs / job_id
        # the candidate's data and holdout, and a warm-up before them
        since = now - (r.history_days + r.holdout_days) * DAY_S - 2 * spec.warmup_s
        started = self.clock.time()
        try:
            ready = write_snapshot(self._cur(), job_dir / "snapshot", since)
        except (duckdb.Error, OSError) as exc:  # e.g. the disk is full: a failed run
            shutil.rmtree(job_dir, ignore_errors=True)
            self.registry.save_lifecycle(state.to_json())  # no retry before min_gap_s
            self.counters.bump("trainings_failed")
            why = f"the history could not be copied out: {type(exc).__name__}: {exc}"
            tables.insert_training_run(self._cur(), started, self.clock.time(), None,
                                       "failed", {"trigger": kind, "error": why})
            self._event(now, "training_failed", None, self._serving_champion(), why,
                        {"trigger": kind})
            return
        champion = self._champion_path()
        (job_dir / "config.pickle").write_bytes(pickle.dumps(self.cfg))
        job = {"id": job_id, "trigger": kind, "ts": now, "started_at": started,
               "config": "config.pickle", "snapshot": str(job_dir / "snapshot"),
               "champion": str(champion) if champion else None,
               "out": str(job_dir / f"candidate-{job_id}.onnx"), "parent": os.getpid(),
               "nice": r.nice, "snapshot_rows": ready["rows"],
               "snapshot_s": ready["seconds"]}
        (job_dir / "job.json").write_text(json.dumps(job))
        self.registry.save_lifecycle(state.to_json())
        self._child = TrainingChild(job_dir, r.max_memory_mb, r.timeout_s, self.clock)
        self._job = job
        self.counters.bump("trainings_started")
        self._event(now, "training_started", None, self._serving_champion(),
                    f"{kind}: a child (pid {self._child.pid}) trains on "
                    f"{ready['rows']} readings", {"snapshot_rows": ready["rows"],
                                                  "snapshot_s": ready["seconds"],
                                                  "since": rfc3339(since)})

    def watch_child(self) -> None:
        child = self._child
        assert child is not None
        outcome = child.poll()
        if outcome is None:
            return
        self._child = None
        job, self._job = self._job, {}
        self._finish_safely(job, outcome)

    def _finish_safely(self, job: dict[str, Any], outcome: ChildOutcome) -> None:
        """``_finish``, with a failure there (the registry's disk full, a model file that
        does not load) recorded as a failed run; the job folder goes either way."""
        job_dir = Path(job["snapshot"]).parent
        try:
            if outcome.status != "ok":
                outcome = dataclasses.replace(
                    outcome, reason=f"{outcome.reason}; child log: {_tail(job_dir)}")
            self._finish(job, outcome)
        except (ModelError, OSError, KeyError, TypeError, ValueError) as exc:
            why = f"its result could not be taken: {type(exc).__name__}: {exc}"
            self._finish(job, ChildOutcome("failed", why, {}, outcome.peak_rss_mb,
                                           outcome.seconds))
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _finish(self, job: dict[str, Any], outcome: ChildOutcome) -> None:
        con = self._cur()
        now = job["ts"]
        base = {"trigger": job["trigger"], "seconds": round(outcome.seconds, 1),
                "peak_rss_mb": round(outcome.peak_rss_mb, 1),
                "snapshot_rows": job["snapshot_rows"], "snapshot_s": job["snapshot_s"]}
        if outcome.status != "ok":
            self.counters.bump("trainings_failed")
            tables.insert_training_run(con, job["started_at"], self.clock.time(), None,
                                       "failed", {**base, "error": outcome.reason})
            self._event(now, "training_failed", None, self._serving_champion(),
                        outcome.reason, base)
            return
        report = outcome.result["report"]
        candidate = Standing.from_dict(report["candidate"])
        champion = Standing.from_dict(report["champion"]) if report.get("champion") else None
        model = self.registry.add(Path(report["path"]), self.spec_hash)
        gate = self.lifecycle.gate(candidate, champion)
        detail = {**base, "window": report["window"], "gate": gate.reason,
                  "candidate": candidate.as_dict(),
                  "champion": champion.as_dict() if champion else None,
                  "champion_name": report.get("champion_name"),
                  "problems": report.get("problems", []), "timings_s": report["timings_s"],
                  "validation": report["metrics"].get("validation")}
        status = "challenger" if gate.accepted else "rejected"
        reason = gate.reason
        if gate.accepted:
            state = LoopState.from_json(self.registry.lifecycle())
            # judged from when it can predict, not from the trigger (the champion's
            # ticks and faults while it trained are not the challenger's)
            since = self._event_time() or now
            try:
                self.registry.shadow(model.name, self.cfg.model.max_challengers,
                                     self.spec_hash,
                                     lifecycle=Lifecycle.shadowed(state, model.name,
                                                                  since).to_json())
            except ModelError as exc:
                status, reason = "rejected", f"passed the gate but cannot shadow: {exc}"
        tables.insert_training_run(con, job["started_at"], self.clock.time(), model.name,
                                   status, detail)
        tables.insert_model(con, self.clock.time(), model.name, model.sha256, str(model.path),
                            self.spec_hash, status, detail)
        self.counters.bump("candidates_" + status)
        self._event(now, "shadow" if status == "challenger" else "rejected", model.name,
                    report.get("champion_name") or self._serving_champion(), reason, detail)

    def _apply(self, action: Action, state: LoopState, now: float, champion: str
               ) -> LoopState:
        """Carry out a review's decision: the roles and the loop's memory in one write."""
        new = self.lifecycle.applied(state, action, champion, now)
        doc = new.to_json()
        detail = {"standings": {m: s.as_dict() for m, s in action.standings.items()}}
        con = self._cur()
        try:
            if action.kind == "promote":
                model = self.registry.promote(
                    action.model, self.spec_hash, lifecycle=doc,
                    keep_previous=new.probation is not None)
                tables.insert_model(con, self.clock.time(), model.name, model.sha256,
                                    str(model.path), self.spec_hash, "active", detail)
                event, other = "promoted", champion
            elif action.kind == "reject":
                self.registry.unshadow(action.model, lifecycle=doc)
                event, other = "rejected", champion
            elif action.kind == "rollback":
                self.registry.rollback_to(action.model, self.spec_hash, lifecycle=doc)
                event, other = "rolled_back", champion
            else:  # end_probation: the old champion is no longer shadowed
                self.registry.unshadow(action.model, lifecycle=doc)
                event, other = "probation_ended", champion
        except ModelError as exc:
            log.error("retrain: cannot %s %s: %s", action.kind, action.model, exc)
            self._event(now, "reconciled", action.model, champion,
                        f"could not {action.kind}: {exc}", detail)
            # given up, once: a failed rollback must not be retried every check
            new = self.lifecycle.applied(state, Action("end_probation", action.model,
                                                       str(exc)), champion, now)
            self.registry.save_lifecycle(new.to_json())
            return new
        self.counters.bump(event)
        self._event(now, event, action.model, other, action.reason, detail)
        return new

    def _record_outside_changes(self, now: float, champion: str | None,
                                challengers: list[str]) -> None:
        """Roles that differ from the last recorded step were changed outside the loop: by
        hand (``appliance models promote`` ...), or by a step whose row a ``kill -9`` cut
        off (the registry is written first).  Recorded, so the story matches the roles."""
        row = self._cur().execute("SELECT champion, challengers FROM model_history "
                                  "ORDER BY logged_at DESC LIMIT 1").fetchone()
        if row is None or (row[0], sorted(json.loads(row[1]))) == (champion,
                                                                   sorted(challengers)):
            return
        self._event(now, "reconciled", champion, row[0],
                    f"the roles changed outside the loop (by hand, or a step cut short by a "
                    f"restart): champion {champion}, challengers "
                    f"{', '.join(challengers) or 'none'}",
                    {"recorded_champion": row[0], "recorded_challengers": json.loads(row[1])})

    # -- requests by file ----------------------------------------------------------

    def serve_requests(self) -> None:
        for path, doc in requests.pending(self.registry.directory):
            kind = doc.get("kind")
            requests.take(path)
            try:
                if kind == "retrain":
                    if self._child is not None:
                        answer = {"ok": False, "error": f"a training is running already "
                                                        f"(job {self._job.get('id')})"}
                    else:
                        self.check(requested=str(doc.get("reason") or "appliance retrain"))
                        answer = {"ok": self._child is not None, "job": self._job.get("id"),
                                  "error": None if self._child else "nothing stored yet"}
                elif kind == "snapshot":
                    target = self.registry.directory / "snapshots" / path.stem
                    ready = write_snapshot(self._cur(), target, doc.get("since"))
                    answer = {"ok": True, "snapshot": str(target), **ready}
                elif kind == "record":
                    self._record(doc)
                    answer = {"ok": True}
                else:
                    answer = {"ok": False, "error": f"unknown request kind {kind!r}"}
            except Exception as exc:  # a bad request must not crash-loop the stage
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            requests.answer(path, answer)

    def _record(self, doc: Mapping[str, Any]) -> None:
        """Rows of ``appliance train`` (run beside the service) for the tables it may
        not write itself."""
        con = self._cur()
        for m in doc.get("models", []):
            tables.insert_model(con, m["ts"], m["name"], m["sha256"], m["path"],
                                m["spec_hash"], m["status"], m["metrics"])
        for t in doc.get("training_runs", []):
            tables.insert_training_run(con, t["started"], t["ended"], t["model"], t["status"],
                                       t["detail"])

    # -- what the loop watches ---------------------------------------------------------

    def _cur(self) -> duckdb.DuckDBPyConnection:
        assert self._con is not None
        return self._con

    def _event_time(self) -> float | None:
        row = self._cur().execute("SELECT epoch_us(max(ts)) FROM readings_raw").fetchone()
        return None if row is None or row[0] is None else from_us(row[0])

    def _roles(self) -> tuple[str | None, list[str]]:
        return self.registry.active_name(), self.registry.challenger_names()

    def _serving_champion(self) -> str | None:
        """The registry's active model, else the model the champion predictions name
        (the configured or starter model)."""
        active = self.registry.active_name()
        if active is not None:
            return active
        row = self._cur().execute("SELECT arg_max(model, ts) FROM predictions "
                                  "WHERE role = 'champion'").fetchone()
        return row[0] if row else None

    def _champion_path(self) -> Path | None:
        active = self.registry.active_name()
        try:
            if active is not None:
                return self.registry.path_of(active)
        except ModelError:
            return None
        return Path(self.cfg.resolve(self.cfg.model.path)) if self.cfg.model.path else None

    def _drift_open_since(self) -> float | None:
        """The oldest drift event open against the serving champion (one left open by a
        restart or against an earlier model does not count)."""
        row = self._cur().execute(
            "SELECT epoch_us(min(ts)) FROM (SELECT arg_max(state, ts) AS state, max(ts) AS ts "
            "FROM drift_events WHERE kind = 'drift' AND model = ? GROUP BY line, asset) "
            "WHERE state = 'started'", [self._serving_champion()]).fetchone()
        return None if row is None or row[0] is None else from_us(row[0])

    def _champion_live(self, champion: str | None) -> Standing | None:
        for row in scores.read_scores(self._cur()):
            if row["model"] == champion and row["window_days"] == LIVE_WINDOW_DAYS:
                return Standing.from_dict(row)
        return None

    def _validated_recall(self, champion: str | None) -> float | None:
        if champion is None:
            return None
        try:
            metrics = load_model(self.registry.path_of(champion)).metrics
        except ModelError:
            return None
        validation = metrics.get("validation") or {}
        recall = validation.get("recall")
        return float(recall) if isinstance(recall, int | float) else None

    def _standing_of(self, model: str, since: float, until: float) -> Standing:
        return Standing.of(scores.score_period(
            self._cur(), model, since, until, self.cfg.pipeline.horizon_s,
            self.cfg.alerts.clear_ratio, self.cfg.training.cooldown_s))

    # -- records --------------------------------------------------------------------

    def _event(self, now: float, event: str, model: str | None, other: str | None,
               reason: str, detail: Mapping[str, Any]) -> None:
        champion, challengers = self._roles()
        e = LoopEvent(now, self.clock.time(), event, model, other, reason,
                      json.dumps(detail, default=str), champion, tuple(challengers))
        tables.insert_loop_event(self._cur(), e)
        log.info("retrain: %s%s: %s", event, f" {model}" if model else "", reason)
        self._unpublished = e
        self._hand_on()

    def _hand_on(self) -> None:
        """To the alert stage, without waiting: the loop must not stall behind a full
        inbox (the row is stored; the message goes at a later poll)."""
        if self._unpublished is None or self.events_out is None:
            return
        try:
            self.events_out.put_nowait(self._unpublished)
            self._unpublished = None
        except queue.Full:
            self.counters.bump("publish_postponed")

    def _recover(self) -> None:
        """Job folders left by a service that was killed: record each as interrupted."""
        if self._child is not None or not self.jobs.is_dir():
            return
        for job_dir in sorted(p for p in self.jobs.iterdir() if p.is_dir()):
            job = _read_json(job_dir / "job.json") or {"id": job_dir.name, "ts": None,
                                                       "started_at": None, "trigger": "?"}
            result = _read_json(job_dir / "result.json")
            if result is None or "snapshot" not in job:
                self._finish_interrupted(job, "the service stopped or was killed during "
                                              "training")
                shutil.rmtree(job_dir, ignore_errors=True)
                continue
            # the child finished before the service died: its work is not lost
            self._finish_safely(job, ChildOutcome(
                "ok" if result.get("status") == "ok" else "failed",
                result.get("error", "trained"), result,
                float(result.get("peak_rss_mb", 0.0)), float(result.get("seconds", 0.0))))
        shutil.rmtree(self.registry.directory / "snapshots", ignore_errors=True)

    def _finish_interrupted(self, job: Mapping[str, Any], why: str) -> None:
        if not job:
            return
        con = self._cur()
        started = job.get("started_at") or self.clock.time()
        tables.insert_training_run(con, started, self.clock.time(), None, "interrupted",
                                   {"job": job.get("id"), "trigger": job.get("trigger"),
                                    "error": why})
        self._event(job.get("ts") or self._event_time() or self.clock.time(), "interrupted",
                    None, self._serving_champion(), why, {"job": job.get("id")})
        if job.get("snapshot"):
            shutil.rmtree(Path(job["snapshot"]).parent, ignore_errors=True)



def _tail(job_dir: Path, lines: int = 5) -> str:
    """The last lines the child wrote (its traceback), for the run's record."""
    text = ""
    for name in ("child.log", "child.stderr"):
        with contextlib.suppress(OSError):
            text += (job_dir / name).read_text(errors="replace")
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
