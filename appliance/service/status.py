"""The service's status: a snapshot of every stage, published retained on MQTT and to a
file beside the database, and read back by ``appliance status``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.config import Config
from appliance.mqtt.client import connect, make_client

if TYPE_CHECKING:  # pragma: no cover
    from appliance.service.runner import Pipeline

log = logging.getLogger(__name__)


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


def text(snap: dict, age_s: float) -> str:
    """``appliance status``: the snapshot for a person."""
    lines = [f"state {snap['state']} (as of {age_s:.0f} s ago), version {snap['version']}, "
             f"model {snap['model']}, MQTT {'connected' if snap['mqtt_connected'] else 'DOWN'}"]
    if snap.get("damaged_wal"):
        lines.append(f"!! damaged write-ahead log set aside at {snap['damaged_wal']}")
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
