"""The runner owns the wiring: queues, stages, supervisor, status, shutdown.

    MQTT ─► ingest ─q─► store ─q─► features ─q─► predict ─q─► alert ─q─► record
              ▲           │  DuckDB (readings,            │ MQTT    DuckDB (predictions,
              └── acks ───┘  faults, dead_letters)        ▼ alerts            alerts)

Stages start sinks first (record … ingest) so nothing is produced before its
consumer runs.  Shutdown (SIGTERM or SIGINT, one path) drains: ingest stops
taking messages and passes an EndOfStream down the chain, so every stage
flushes what it holds and the store commits everything received.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from appliance import __version__
from appliance.config import Config
from appliance.mqtt import connect, make_client
from appliance.stages.alert import AlertStage
from appliance.stages.base import Stage
from appliance.stages.features import FeaturesStage
from appliance.stages.ingest import IngestStage
from appliance.stages.predict import PredictStage
from appliance.stages.record import RecordStage
from appliance.stages.store import StoreStage
from appliance.storage.database import OpenReport
from appliance.storage.database import connect as open_database
from appliance.supervisor import Supervisor
from appliance.systemd_notify import notify, watchdog_interval_s

log = logging.getLogger(__name__)

#: SIGTERM to exit: the contract is under 5 s; drain gets most of it.
DRAIN_TIMEOUT_S = 4.0


@dataclass
class Pipeline:
    """Everything ``build`` wired, for the runner and for tests."""

    cfg: Config
    db: duckdb.DuckDBPyConnection
    open_report: OpenReport
    queues: dict[str, queue.Queue]
    stages: dict[str, Stage]
    supervisor: Supervisor


def build(cfg: Config) -> Pipeline:
    db, report = open_database(cfg.resolve(cfg.storage.path), cfg.storage.memory_limit)
    size = cfg.queues.size
    q = {name: queue.Queue(maxsize=size) for name in
         ("inbound", "stored", "features", "predictions", "records")}
    # Unbounded but bounded in practice by receive_maximum; a Queue (not a
    # SimpleQueue) because two threads take from it (see stages/ingest.py).
    acks: queue.Queue = queue.Queue()
    stages: dict[str, Stage] = {
        "record": RecordStage(db, q["records"]),
        "alert": AlertStage(cfg, q["predictions"], q["records"]),
        "predict": PredictStage(cfg, q["features"], q["predictions"]),
        "features": FeaturesStage(cfg, q["stored"], q["features"]),
        "store": StoreStage(cfg, db, q["inbound"], q["stored"], acks),
        "ingest": IngestStage(cfg, q["inbound"], acks),
    }
    supervisor = Supervisor(list(stages.values()))
    return Pipeline(cfg, db, report, q, stages, supervisor)


#: The entries every stage has in the status; the rest are the stage's own counters.
STAGE_STATUS_KEYS = frozenset({"state", "restarts", "last_error", "processed", "errors",
                               "rate_per_s"})


def status(p: Pipeline, previous: dict | None = None) -> dict:
    """A JSON-able snapshot: stage health, queue depths, rates, last errors."""
    now = time.time()
    stages = {}
    for name, stage in p.stages.items():
        h = p.supervisor.health[name]
        c = stage.counters
        entry = {"state": h.state, "restarts": h.restarts, "last_error": h.last_error,
                 "processed": c.processed, "errors": c.errors, **c.extra}
        if previous and name in previous.get("stages", {}):
            dt = max(1e-3, now - previous["ts"])
            entry["rate_per_s"] = round((c.processed - previous["stages"][name]["processed"])
                                        / dt, 1)
        stages[name] = entry
    model = p.stages["predict"].model  # type: ignore[attr-defined]
    return {
        "state": "running" if p.supervisor.essential_alive() else "degraded",
        "version": __version__,
        "ts": now,
        "mqtt_connected": p.stages["ingest"].connected.is_set(),  # type: ignore[attr-defined]
        "model": model.name if model else None,
        "database": str(p.cfg.resolve(p.cfg.storage.path)),
        "damaged_wal": p.open_report.damaged_wal,
        "queues": {name: qq.qsize() for name, qq in p.queues.items()},
        "stages": stages,
    }


def status_file(cfg: Config) -> Path:
    path = cfg.resolve(cfg.storage.path)
    return path.with_name(path.name + ".status.json")


class StatusPublisher:
    """Publishes status (retained) on MQTT and to a file; the will says offline."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.topic = p.cfg.status.topic
        self.client, props = make_client(p.cfg.mqtt, "status",
                                         will=(self.topic, b"offline"))
        connect(self.client, p.cfg.mqtt, props)
        self.previous: dict | None = None
        self._file_error = ""

    def publish(self, final: str | None = None) -> dict:
        snap = status(self.p, self.previous)
        if final:
            snap["state"] = final
        self.previous = snap
        payload = json.dumps(snap)
        tmp = status_file(self.p.cfg).with_suffix(".tmp")
        try:
            tmp.write_text(payload)
            tmp.replace(status_file(self.p.cfg))
            self._file_error = ""
        except OSError as exc:  # a full disk must not stop the service; MQTT still has it
            if str(exc) != self._file_error:
                log.error("status file %s not written: %s", status_file(self.p.cfg), exc)
            self._file_error = str(exc)
        self.client.publish(self.topic, final or payload, qos=1, retain=True)
        return snap

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Service:
    """The running appliance: ``start``, then ``beat`` every few seconds, then ``stop``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pipeline = build(cfg)
        self.publisher: StatusPublisher | None = None
        self._next_status = 0.0

    def start(self) -> None:
        p = self.pipeline
        if p.open_report.damaged_wal:
            log.error("STARTED WITH A DAMAGED DATABASE LOG, set aside at %s",
                      p.open_report.damaged_wal)
        p.supervisor.start()
        self.publisher = StatusPublisher(p)
        notify("READY=1")
        log.info("appliance %s running; database %s", __version__,
                 self.cfg.resolve(self.cfg.storage.path))

    def beat(self) -> None:
        """Feed the watchdog while every essential stage lives; publish status when due."""
        if self.pipeline.supervisor.essential_alive():
            notify("WATCHDOG=1")  # a hung or failed essential stage starves the watchdog
        if time.monotonic() >= self._next_status and self.publisher is not None:
            self.publisher.publish()
            self._next_status = time.monotonic() + self.cfg.status.interval_s

    def stop(self) -> bool:
        notify("STOPPING=1")
        log.info("stopping: draining the pipeline")
        clean = self.pipeline.supervisor.stop(DRAIN_TIMEOUT_S)
        if self.publisher is not None:
            self.publisher.publish(final="offline")
            self.publisher.close()
        self.pipeline.db.close()
        log.info("stopped %s", "cleanly" if clean else "after aborting stages that did not drain")
        return clean


def run(cfg: Config, stop: threading.Event | None = None) -> int:
    """Run the service until SIGTERM/SIGINT (or ``stop``); the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    service = Service(cfg)
    service.start()
    beat_s = min(0.5, watchdog_interval_s() or 0.5)
    while not stop.wait(beat_s):
        service.beat()
    return 0 if service.stop() else 1
