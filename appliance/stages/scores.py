"""Scores: rescores every model (``models.scores``) as faults arrive; ``model_scores``.

A stage of its own, beside the chain rather than in it (no queues), because a
rescore reads up to 30 days of predictions: done in the record stage it would
hold up the predictions behind it and, by back-pressure, the store.  DuckDB
lets this thread read on its own cursor while the others write.

Every ``[model] scores_every_s`` it counts the stored fault events (MQTT or
import) and rescores when the count changed, and once at start.  The last scores
are in the status entry too: ``appliance models scores`` reads them there while
the service holds the database file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import duckdb

from appliance.config import Config
from appliance.models import scores
from appliance.stages.base import POLL_S, Stage, StopSignals

log = logging.getLogger(__name__)


class ScoresStage(Stage):
    name = "scores"
    essential = False  # scoring is hindsight: nothing is lost while it is down

    def __init__(self, cfg: Config, db: duckdb.DuckDBPyConnection) -> None:
        super().__init__()
        self.cfg = cfg
        self.db = db
        self._con: duckdb.DuckDBPyConnection | None = None
        self._faults_seen: int | None = None  # None: never scored, so score at start
        self._next_check = 0.0
        self._last: dict[str, Any] = {}

    def start(self) -> None:
        self._con = self.db.cursor()
        # at start, and after a restart (its last rescore may have been cut short)
        self._faults_seen = None
        self._next_check = 0.0

    def run(self, signals: StopSignals) -> None:
        while not (signals.drain.is_set() or signals.abort.is_set()):
            if self.clock.monotonic() >= self._next_check:
                self._next_check = self.clock.monotonic() + self.cfg.model.scores_every_s
                self.check(signals)
            self.progressed()
            self.clock.sleep(POLL_S, signals.drain)

    def check(self, signals: StopSignals | None = None) -> bool:
        """Rescore if fault events were stored since the last time; True if it did."""
        con = self._con
        assert con is not None
        faults = scores.fault_count(con)
        if faults == self._faults_seen:
            return False

        def keep_going() -> bool:
            self.progressed()  # a long rescore is busy, not hung
            return signals is None or not (signals.drain.is_set() or signals.abort.is_set())

        started = time.perf_counter()
        result = scores.score_models(con, self.cfg.pipeline.horizon_s,
                                     self.cfg.alerts.clear_ratio, keep_going=keep_going,
                                     cooldown_s=self.cfg.training.cooldown_s)
        if result is None:  # stopping: the next start scores again
            return False
        scores.write_scores(con, self.clock.time(), result)
        took = time.perf_counter() - started
        self._faults_seen = faults
        self.counters.processed += 1
        self._last = {"refreshed_at": self.clock.time(), "refresh_s": round(took, 3),
                      "fault_events": faults, "scores": [s.row() for s in result]}
        log.info("rescored %d models on %d fault events in %.1f s",
                 len({s.model for s in result}), faults, took)
        return True

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self._last}

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()
