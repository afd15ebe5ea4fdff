"""The service's status: a snapshot of every stage, published retained on MQTT and to a
file beside the database, and read back by ``appliance status``."""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.clock import WallClock
from appliance.config import Config
from appliance.mqtt.client import ConnectionMonitor, connect, make_client
from appliance.mqtt.topics import Topics
from appliance.service.supervisor import Supervisor

log = logging.getLogger(__name__)


#: The entries every stage has in the status; the rest are the stage's own counters.
STAGE_STATUS_KEYS = frozenset({"state", "restarts", "last_error", "processed", "errors",
                               "rate_per_s", "problem", "note"})
#: Stage states that make the service degraded.
DEGRADED_STATES = frozenset({"failed", "hung"})
#: A status older than this many status intervals comes from a service that is not
#: reporting (killed, hung, or stopped without its last publish): never "running".
NOT_REPORTING_AFTER_INTERVALS = 3
#: ... and never sooner than this: the main thread writes it, and a few seconds' stall
#: (a slow SD card, a long GIL hold) is not a dead service to a monitor.
NOT_REPORTING_AFTER_S = 30.0


def snapshot(supervisor: Supervisor, queues: Mapping[str, queue.Queue], *,
             database: str, damaged_wal: str, previous: dict | None = None) -> dict:
    """A JSON-able snapshot: stage health, queue depths, rates, problems.

    Each stage's entry is its supervisor health merged with its own ``status()``.
    The state is "degraded" when a stage has failed or hung or reports a problem;
    ``problems`` says which and why."""
    now = time.time()
    stages: dict[str, dict[str, Any]] = {}
    problems = []
    notes = []  # what an operator should know that is not a fault (a chosen mode)
    for stage in supervisor.stages:
        h = supervisor.health[stage.name]
        entry = {"state": supervisor.state(stage), "restarts": h.restarts,
                 "last_error": h.last_error, **stage.status()}
        if previous and stage.name in previous.get("stages", {}):
            dt = max(1e-3, now - previous["ts"])
            entry["rate_per_s"] = round(
                (entry["processed"] - previous["stages"][stage.name]["processed"]) / dt, 1)
        if entry["state"] in DEGRADED_STATES:
            # a stage left down must say why where the operator looks, not only in the log
            why = f": {h.last_error}" if entry["state"] == "failed" and h.last_error else ""
            problems.append(f"{stage.name} {entry['state']}{why}")
        if "problem" in entry:
            problems.append(f"{stage.name}: {entry['problem']}")
        if "note" in entry:
            notes.append(f"{stage.name}: {entry['note']}")
        stages[stage.name] = entry
    return {
        "state": "degraded" if problems else "running",
        "problems": problems,
        "notes": notes,
        "version": __version__,
        "ts": now,
        "mqtt_connected": bool(stages.get("ingest", {}).get("connected")),
        "model": stages.get("predict", {}).get("model"),
        "database": database,
        "damaged_wal": damaged_wal,
        "disk": stages.get("maintenance", {}).get("disk"),
        "queues": {name: qq.qsize() for name, qq in queues.items()},
        "stages": stages,
    }


def status_file(cfg: Config) -> Path:
    path = cfg.resolve(cfg.storage.path)
    return path.with_name(path.name + ".status.json")


def offline_document(reason: str) -> dict:
    """The status of a service that is not running: ``{"state": "offline", "reason",
    "version", "ts"}``, JSON like every other status so a reader parses one format.  As
    the MQTT last will its ``ts`` is when the service started (the broker publishes
    the will as it was set, when the connection is lost)."""
    return {"state": "offline", "reason": reason, "version": __version__, "ts": time.time()}


def reporting_state(snap: dict, age_s: float, interval_s: float) -> str:
    """The snapshot's state, or "not reporting" when it is older than
    ``NOT_REPORTING_AFTER_INTERVALS`` status intervals (a live service rewrites it every
    interval, so an old one says nothing about now)."""
    if snap["state"] != "offline" and age_s > max(NOT_REPORTING_AFTER_INTERVALS * interval_s,
                                                  NOT_REPORTING_AFTER_S):
        return "not reporting"
    return snap["state"]


class StatusPublisher:
    """Publishes status (retained) on MQTT and to a file; the will is an offline status."""

    def __init__(self, cfg: Config, read: Callable[[dict | None], dict]) -> None:
        """``read(previous)`` takes the snapshot (``previous`` gives the rates)."""
        self.cfg = cfg
        self.read = read
        self.topic = Topics.from_config(cfg).status
        will = offline_document("connection lost: the service died or was cut off (the "
                                "broker's last will; ts is when the service started)")
        self.client, props = make_client(cfg.mqtt, "status",
                                         will=(self.topic, json.dumps(will).encode()))
        ConnectionMonitor(cfg.mqtt, "status", WallClock()).attach(self.client)
        connect(self.client, cfg.mqtt, props)
        self.previous: dict | None = None
        self._file_error = ""
        self._health: dict | None = None  # the last health message published

    def publish(self, final: str | None = None) -> dict:
        """Publish a snapshot; ``final`` (the state at a clean stop) replaces its state
        and adds why."""
        snap = self.read(self.previous)
        if final:
            snap["state"] = final
            snap["reason"] = "stopped cleanly"
        self.previous = snap
        payload = json.dumps(snap)
        path = status_file(self.cfg)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(payload)
            tmp.replace(path)
            self._file_error = ""
        except OSError as exc:  # a full disk must not stop the service; MQTT still has it
            if str(exc) != self._file_error:
                log.error("status file %s not written: %s", path, exc)
            self._file_error = str(exc)
        self.client.publish(self.topic, payload, qos=1, retain=True)
        if not final:
            self._publish_health(snap)
        return snap

    def _publish_health(self, snap: dict) -> None:
        """The retained health message, when its state changes or the disk in use moves
        by a percentage point: a dashboard or an alerting rule watches one small topic."""
        doc = health_document(snap)
        last = self._health
        if doc is None or (last is not None and last["state"] == doc["state"] and abs(
                last["disk"]["used_percent"] - doc["disk"]["used_percent"]) < 1.0):
            return
        self.client.publish(Topics.from_config(self.cfg).health, json.dumps(doc), qos=1,
                            retain=True)
        self._health = doc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def health_document(snap: dict) -> dict | None:
    """``{"ts", "state": "ok" | "warning" | "critical", "message", "disk"}`` from a status
    snapshot, or None before the disk was first measured.  ``warning`` from 80 % of the
    disk budget in use; ``critical`` when the database grows past it."""
    disk = snap.get("disk")
    if not disk:
        return None
    entry = snap["stages"].get("maintenance", {})
    state = "critical" if "problem" in entry else "ok" if disk["state"] == "ok" else "warning"
    message = entry.get("problem") or entry.get("note") or (
        f"disk: the database uses {disk['used_mb']:,.0f} MB of its {disk['budget_mb']:,.0f} MB "
        f"budget ({disk['used_percent']:.0f} %)")
    return {"ts": snap["ts"], "state": state, "message": message, "disk": disk}


def text(snap: dict, age_s: float, interval_s: float) -> str:
    """``appliance status``: the snapshot for a person (``interval_s``: how often the
    service writes it)."""
    state = reporting_state(snap, age_s, interval_s)
    lines = [f"state {state} (as of {age_s:.0f} s ago), version {snap['version']}, "
             f"model {snap['model']}, MQTT {'connected' if snap['mqtt_connected'] else 'DOWN'}"]
    if state == "not reporting":
        lines.append(f"!! the service has not written its status for {age_s:.0f} s (it "
                     f"writes one every {interval_s:g} s): it is stopped, killed or hung; "
                     f"what follows is its last status, from {age_s:.0f} s ago")
    for problem in snap.get("problems", []):
        lines.append(f"!! {problem}")
    for note in snap.get("notes", []):
        lines.append(f"-- {note}")
    if snap.get("damaged_wal"):
        lines.append(f"!! damaged write-ahead log set aside at {snap['damaged_wal']}")
    if snap.get("disk"):
        d = snap["disk"]
        lines.append(f"disk: {d['used_mb']:,.0f} MB in use of {d['budget_mb']:,.0f} MB "
                     f"({d['used_percent']:.0f} %, {d['state']}; {d['budget_source']}), file "
                     f"{d['file_mb']:,.0f} MB, log {d['wal_mb']:.1f} MB, "
                     f"{d['fs_free_mb']:,.0f} MB free on the file system")
    lines.append("queues: " + ", ".join(f"{k} {v}" for k, v in snap["queues"].items()))
    lines.append(f"{'stage':10} {'state':10} {'processed':>10} {'rate/s':>8} {'restarts':>8}  "
                 f"last error")
    for name, s in snap["stages"].items():
        lines.append(f"{name:10} {s['state']:10} {s['processed']:>10} "
                     f"{s.get('rate_per_s', 0):>8} {s['restarts']:>8}  {s['last_error']}")
    for name, s in snap["stages"].items():
        # a stage's own counters (late, invalid, stuck, dead letters ...), where it has any
        own = {k: v for k, v in s.items() if k not in STAGE_STATUS_KEYS}
        if own:
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in own.items()))
    return "\n".join(lines)
