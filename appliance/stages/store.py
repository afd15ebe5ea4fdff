"""Store: commits what ingest parsed to DuckDB, then releases the acks.

The only writer of ``readings``, ``series``, ``faults`` and ``dead_letters``.
It writes through its own cursor of the database the runner opened.  One
transaction per drained run of batches.  A failed commit (disk full, I/O
error) is rolled back and retried with back-off, holding the batch and its acks
across restarts: nothing is acknowledged that is not stored.  Readings from a
batch that had redelivered (DUP) messages are checked against what is stored,
so a redelivery never becomes a second row.

At a service start, before the first live batch, the store replays what the features
need to go on as if the service had never stopped: a ``Resume`` (the last tick
predicted per asset) and then the stored readings of ``[pipeline] restore_s`` before
each asset's last one, as ``StoredReadings`` in event-time slices
(``storage.recent``).  The store does it because it owns the readings and the queue:
the replay is on that queue ahead of every live reading by construction, and the
features stage stays a pure consumer of messages.  Live batches wait in the inbound
queue meanwhile (and then at the broker: back-pressure, nothing is lost).
"""

from __future__ import annotations

import logging
import queue
from typing import Any

import duckdb
import numpy as np

from appliance.config import Config
from appliance.features.spec import PipelineSpec
from appliance.messages import Committed, EndOfStream, Inbound, Resume, StoredReadings
from appliance.stages.base import Stage, StopSignals
from appliance.storage import recent, tables
from appliance.timefmt import to_us

log = logging.getLogger(__name__)

#: Batches merged into one transaction at most (bounds the work held uncommitted).
MAX_MERGE = 16


class StoreStage(Stage):
    name = "store"

    def __init__(self, cfg: Config, db: duckdb.DuckDBPyConnection, inbox: queue.Queue,
                 out: queue.Queue, acks: queue.Queue) -> None:
        super().__init__(inbox, out)
        self.cfg = cfg
        self.db = db
        self.acks = acks
        #: The error of the last commit while commits are failing; empty otherwise.
        self._failing = ""
        self._con: duckdb.DuckDBPyConnection | None = None
        self._registry: tables.SeriesRegistry | None = None
        self._pending: list[Inbound] = []  # taken from the queue, not yet committed
        #: Once per process, not per restart of the stage: the features stage keeps its
        #: windows across a restart of the store.
        self._resumed = False

    def start(self) -> None:
        self._con = self.db.cursor()
        self._registry = tables.SeriesRegistry(self._con)

    def run(self, signals: StopSignals) -> None:
        if not self._resumed:
            self._resumed = True
            self._resume(signals)
        # Not the base's loop: a run of queued batches is merged into one transaction.
        while not signals.abort.is_set():
            if not self._pending:
                item = self.take()
                if item is None:
                    continue
                if isinstance(item, EndOfStream):
                    self.emit((item,), signals)
                    return
                self._pending.append(item)
                end = self._drain_more()
            else:
                end = None  # retrying a batch that failed to commit
            stored = self._commit_with_retry(signals)
            if stored is None:
                return
            self.progressed()
            self.emit((stored,) if stored.keys else (), signals)
            if end is not None:
                self.emit((end,), signals)
                return

    def _resume(self, signals: StopSignals) -> None:
        """Replay the stored readings the feature windows need (see the module doc)."""
        con = self._con
        assert con is not None
        pipeline = self.cfg.pipeline
        spec = PipelineSpec.from_config(pipeline)
        if pipeline.restore_s == 0:
            return
        # a shorter span would leave the first ticks after the stop in a warm-up
        span = max(pipeline.restore_s or 0.0, spec.refilled_after_s())
        started = self.clock.monotonic()
        plan = recent.replay_plan(con, span, spec.idle_gap_s)
        if plan is None:
            return
        through = recent.predicted_through(con, plan.first_us)
        self.emit((Resume(tuple((line, asset, tick)
                                for (line, asset), tick in sorted(through.items()))),),
                  signals)
        log.info("store: replaying %d stored readings of %d series (%g s before each "
                 "asset's last reading) to refill the feature windows", plan.readings,
                 len(plan.series), span)
        replayed = 0
        for part in recent.replay(con, plan):
            if signals.abort.is_set():
                return
            self.emit((part,), signals)
            replayed += len(part.keys)
            self.progressed()
        seconds = self.clock.monotonic() - started
        self.counters.extra |= {"replayed_readings": replayed,
                                "replay_ms": round(seconds * 1e3)}
        log.info("store: replayed %d readings in %.1f s", replayed, seconds)

    def _drain_more(self) -> EndOfStream | None:
        while len(self._pending) < MAX_MERGE:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, EndOfStream):
                return item
            self._pending.append(item)
        return None

    def _commit_with_retry(self, signals: StopSignals) -> StoredReadings | None:
        delay = self.cfg.storage.retry_min_s
        while not signals.abort.is_set():
            try:
                stored = self.commit(self._pending)
            except duckdb.Error as exc:
                self.counters.errors += 1
                self._failing = f"{type(exc).__name__}: {exc}"[:300]
                log.error("store: commit of %d batches failed (%s); retrying in %.1f s, "
                          "nothing acknowledged", len(self._pending), exc, delay)
                self.clock.sleep(delay, signals.abort)
                # Backing off is the store doing its job (a full disk, say): degraded by
                # its problem, not hung; a restart by the watchdog would not free the disk.
                self.progressed()
                delay = min(delay * 2, self.cfg.storage.retry_max_s)
                continue
            self._failing = ""
            for connection in dict.fromkeys(b.connection for b in self._pending):
                mids = tuple(m for b in self._pending if b.connection == connection
                             for m in b.mids)
                if mids:
                    self.acks.put(Committed(connection, mids))
            self._pending = []
            return stored
        return None

    def commit(self, batches: list[Inbound]) -> StoredReadings:
        """Store ``batches`` in one transaction (rolled back if anything raises)."""
        con, registry = self._con, self._registry
        assert con is not None and registry is not None
        keys = [k for b in batches for k in b.keys]
        ts = np.concatenate([b.ts for b in batches])
        values = np.concatenate([b.values for b in batches])
        known = registry.snapshot()
        con.execute("BEGIN")
        try:
            sids = registry.ids(con, keys)
            ts_us = to_us(ts)
            if any(b.redelivered for b in batches):
                keep = _first_occurrence(sids, ts_us) & ~tables.stored_already(con, sids, ts_us)
                dropped = int((~keep).sum())
                if dropped:
                    self.counters.bump("duplicates_dropped", dropped)
                    sids, ts_us, ts, values = sids[keep], ts_us[keep], ts[keep], values[keep]
                    keys = [k for k, kept in zip(keys, keep.tolist(), strict=True) if kept]
            tables.insert_readings(con, sids, ts_us, values)
            tables.insert_faults(con, [f for b in batches for f in b.faults], "mqtt")
            tables.insert_dead_letters(con, [d for b in batches for d in b.dead_letters])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            registry.forget(registry.snapshot() - known)
            raise
        self.counters.processed += len(keys)
        order = np.argsort(ts, kind="stable")
        return StoredReadings(tuple(keys[i] for i in order.tolist()), ts[order], values[order])

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()

    def status(self) -> dict[str, Any]:
        entry = super().status()
        if self._failing:
            entry["problem"] = (f"commits failing ({self._failing}); {len(self._pending)} "
                                f"batches held, nothing acknowledged")
        return entry


def _first_occurrence(sids: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """Mask keeping the first of each (series, ts) pair, in arrival order."""
    order = np.lexsort((ts_us, sids))  # stable: equal pairs keep arrival order
    s, t = sids[order], ts_us[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (s[1:] == s[:-1]) & (t[1:] == t[:-1])
    mask = np.ones(len(order), dtype=bool)
    mask[order[repeat]] = False
    return mask


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        log.exception("store: rollback failed")
