"""The runner is wiring only: queues, stages, supervisor, status, shutdown.

    MQTT ─► ingest ─q─► store ─q─► features ─q─► predict ─q─► alert ─q─► record
              ▲           │               │ tap                 ▲ │          │
              └── acks ───┘               └──q─► drift ─────────┘ ▼ MQTT     ▼ DuckDB: predictions,
                            DuckDB: readings, faults,          alerts,    alerts, models,
                            dead_letters                       drift      drift_events

    stage      file                 what it works through
    ingest     stages/ingest.py     mqtt/ (client, topics, payloads)
    store      stages/store.py      storage/tables.py (every write)
    features   stages/features.py   features/live.py over kernels/
    predict    stages/predict.py    models/ (contract, watcher, explain)
    drift      stages/drift.py      models/drift.py, features/health.py (off: [drift] enabled)
    alert      stages/alert.py      alarm.py, mqtt/payloads.py
    record     stages/record.py     storage/tables.py
    scores     stages/scores.py     models/scores.py (beside the chain: rescores as faults arrive)
    retrain    stages/retrain.py    models/lifecycle.py, service/child.py (beside the chain:
                                    a training child on a snapshot; shadow, promote, roll back)
    maintenance stages/maintenance.py storage/tables.py (beside the chain: retention,
                                    checkpoints, the disk watch)
    service/   supervisor (a thread per stage, restarts, hung), status, systemd_notify,
               control (the socket `appliance sql` and `export` ask while it runs)

Stages share only the typed messages of ``messages.py`` on their queues.
Training, import and the dev tools are never imported here
(``tests/unit/test_layering.py`` holds that).

Stages start sinks first (record … ingest) so nothing is produced before its
consumer runs.  A start resumes where the last run stopped: the store replays the
stored readings the feature windows need ahead of the live ones, and the alert stage
is handed the alerts still raised (``storage.recent``).  Shutdown (SIGTERM or SIGINT,
one path) drains: ingest stops taking messages and passes an EndOfStream down the
chain, so every stage flushes what it holds and the store commits everything received.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass

import duckdb

from appliance import __version__
from appliance.config import Config
from appliance.features.spec import PipelineSpec
from appliance.models.contract import LoadedModel, ModelError
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher, serving_model
from appliance.service.control import ControlServer
from appliance.service.status import StatusPublisher, snapshot
from appliance.service.supervisor import Supervisor
from appliance.service.systemd_notify import notify, watchdog_interval_s
from appliance.stages.alert import AlertStage
from appliance.stages.base import Stage
from appliance.stages.drift import DriftStage
from appliance.stages.features import FeaturesStage
from appliance.stages.ingest import IngestStage
from appliance.stages.maintenance import MaintenanceStage
from appliance.stages.predict import PredictStage
from appliance.stages.record import RecordStage
from appliance.stages.retrain import RetrainStage
from appliance.stages.scores import ScoresStage
from appliance.stages.store import StoreStage
from appliance.storage.database import OpenReport
from appliance.storage.database import connect as open_database
from appliance.storage.recent import standing_alerts

log = logging.getLogger(__name__)

#: SIGTERM to exit: the contract is under 5 s; drain gets most of it.
DRAIN_TIMEOUT_S = 4.0

#: glibc malloc arenas for the whole process (``mallopt(M_ARENA_MAX)``).  glibc gives
#: threads their own arenas, up to 8 per core, each keeping what its thread freed;
#: the service runs ~25 threads (stages, MQTT, DuckDB, onnxruntime).  2 arenas:
#: ~3 MB less steady RSS in ``appliance bench memory``, no change in its throughput.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (before the threads start: an arena made is kept).
    False, and nothing changed, elsewhere than glibc or when the environment sets
    ``MALLOC_ARENA_MAX`` (the operator's choice stands)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (ValueError, OSError, AttributeError):  # no such confstr, library or symbol
        return False


@dataclass
class Pipeline:
    """Everything ``build`` wired, for the runner and for tests."""

    cfg: Config
    db: duckdb.DuckDBPyConnection
    open_report: OpenReport
    queues: dict[str, queue.Queue]
    stages: dict[str, Stage]
    supervisor: Supervisor

    def status(self, previous: dict | None = None) -> dict:
        """The status snapshot (``previous``, the last one, gives the rates)."""
        return snapshot(self.supervisor, self.queues,
                        database=str(self.cfg.resolve(self.cfg.storage.path)),
                        damaged_wal=self.open_report.damaged_wal, previous=previous)


def build(cfg: Config) -> Pipeline:
    """Wire the pipeline.  Raises ``ModelError`` when no model can serve and the config
    requires one (``[model] required``), before anything is opened."""
    registry = Registry(cfg.models_dir())
    model = _serving_model(cfg, registry)
    db, report = open_database(cfg.resolve(cfg.storage.path), cfg.storage.memory_limit)
    size = cfg.queues.size
    names = ("inbound", "stored", "features", "predictions", "records")
    q = {name: queue.Queue(maxsize=size) for name in
         (*names, "drift") if name in names or cfg.drift.enabled}
    # Unbounded but bounded in practice by receive_maximum; a Queue (not a
    # SimpleQueue) because two threads take from it (see stages/ingest.py).
    acks: queue.Queue = queue.Queue()
    stages: dict[str, Stage] = {
        "retrain": RetrainStage(cfg, db, registry, spec_hash(cfg), q["predictions"]),
        "scores": ScoresStage(cfg, db),
        "maintenance": MaintenanceStage(cfg, db, cfg.resolve(cfg.storage.path)),
        "record": RecordStage(db, q["records"]),
        # the champion's alerts still raised when the service stopped go on raised
        "alert": AlertStage(cfg, q["predictions"], q["records"], standing_alerts(db)),
        "predict": PredictStage(cfg, ModelWatcher(registry, spec_hash(cfg),
                                                  cfg.model.max_challengers), model,
                                q["features"], q["predictions"]),
    }
    if cfg.drift.enabled:  # a second producer into the alert stage's inbox
        stages["drift"] = DriftStage(cfg, ModelWatcher(registry, spec_hash(cfg),
                                                       watch_files=False),
                                     model, q["drift"], q["predictions"])
    stages |= {
        "features": FeaturesStage(cfg, q["stored"], q["features"], q.get("drift")),
        "store": StoreStage(cfg, db, q["inbound"], q["stored"], acks),
        "ingest": IngestStage(cfg, q["inbound"], acks),
    }
    supervisor = Supervisor(list(stages.values()), hung_after_s=cfg.service.hung_after_s)
    return Pipeline(cfg, db, report, q, stages, supervisor)


def spec_hash(cfg: Config) -> str:
    return PipelineSpec.from_config(cfg.pipeline).hash


def _serving_model(cfg: Config, registry: Registry) -> LoadedModel | None:
    try:
        serving = serving_model(cfg, registry)
    except ModelError as exc:
        if cfg.model.required:
            raise
        log.warning("running WITHOUT A MODEL ([model] required = false): readings are stored "
                    "and features computed, nothing is predicted until a model is promoted "
                    "(%s)", exc)
        return None
    if serving.refused_active:
        log.error("%s; serving %s instead", serving.refused_active, serving.model.name)
    return serving.model


class Service:
    """The running appliance: ``start``, then ``beat`` every few seconds, then ``stop``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        limit_malloc_arenas()  # before build: DuckDB starts its threads on open
        self.pipeline = build(cfg)
        self.publisher: StatusPublisher | None = None
        self.control = ControlServer(cfg, self.pipeline.db)
        self._next_status = 0.0

    def start(self) -> None:
        p = self.pipeline
        if p.open_report.damaged_wal:
            log.error("STARTED WITH A DAMAGED DATABASE LOG, set aside at %s",
                      p.open_report.damaged_wal)
        # the socket first: if it cannot be had, nothing has started that must be stopped
        self.control.start()
        p.supervisor.start()
        self.publisher = StatusPublisher(self.cfg, p.status)
        notify("READY=1")
        log.info("appliance %s running; database %s", __version__,
                 self.cfg.resolve(self.cfg.storage.path))

    def beat(self) -> None:
        """Feed the watchdog while no essential stage has failed or hung (otherwise
        systemd restarts us); publish status when due."""
        if self.pipeline.supervisor.essential_working():
            notify("WATCHDOG=1")
        if time.monotonic() >= self._next_status and self.publisher is not None:
            self.publisher.publish()
            self._next_status = time.monotonic() + self.cfg.status.interval_s

    def stop(self) -> bool:
        notify("STOPPING=1")
        log.info("stopping: draining the pipeline")
        self.control.stop()  # before the drain: a query must not hold the cores meanwhile
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
