"""Tools of the fault-injection suite.

* ``ReadingPublisher``: a thread publishing unique readings at QoS 1 at a steady
  rate; it counts the publishes the broker acknowledged (PUBACK) and keeps at
  most ``window`` unacknowledged, so a broker outage stalls it instead of
  growing memory.  Reading ``i`` is on ``plant/<line>/a<i % assets>/<sensor>`` at
  event time ``t0 + (i // (assets × sensors)) × step_s`` with value ``i``: the
  value is the reading's identity, so the stored values tell exactly which
  readings were lost or stored twice.
* ``FaultService``: ``appliance run`` as a child process (``tests.support.service.Service``)
  with the database anywhere, its pid and RSS.
* ``StatusWatcher``: the retained ``appliance/status`` over MQTT, for when the
  status file cannot be written (a full disk).
* ``tally``: what the DuckDB file holds, against what was published.
* ``summary``: the uniform ``FAULT <test> published=… stored=… …`` line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import paho.mqtt.client as mqtt

from appliance.devtools.mosquitto import PrivateBroker
from tests.support.service import TOPICS, Service

#: Sensor names of the simulated line (the starter model's inputs).
SENSORS = ("lube_temp", "vibration", "motor_current", "oil_pressure", "ambient_temp")


def summary(test: str, published: int, stored: int, duplicated: int, lost: int,
            recovery_s: float) -> str:
    """Print (and return) the one line per test the lead's table is built from."""
    line = (f"FAULT {test} published={published} stored={stored} duplicated={duplicated} "
            f"lost={lost} recovery_s={recovery_s:.2f}")
    print(line, flush=True)
    return line


# -- configuration ------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def fault_config(tmp_path: Path, broker: PrivateBroker, *, db: Path | None = None,
                 **sections: dict[str, object]) -> Path:
    """Write ``appliance.toml`` in ``tmp_path``; ``sections`` override or add keys,
    e.g. ``storage={"retry_max_s": 1.0}``."""
    base: dict[str, dict[str, object]] = {
        "mqtt": {"host": broker.host, "port": broker.port,
                 "client_id": f"svc-{tmp_path.name[-20:]}"},
        "storage": {"path": str(db or tmp_path / "appliance.duckdb"), "batch_ms": 50},
        "status": {"interval_s": 0.5},
    }
    for name, keys in sections.items():
        base.setdefault(name, {}).update(keys)
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
                   for name, keys in base.items())
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


# -- the service as a process -------------------------------------------------------------


class FaultService(Service):
    """``tests.support.service.Service`` with the database (and its status file) anywhere."""

    def __init__(self, config: Path, db: Path) -> None:
        super().__init__(config)
        self.db = db
        self.status_path = db.with_name(db.name + ".status.json")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        """VmRSS of the service process, in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stage(snap: dict, name: str, key: str = "processed") -> int:
    return int(snap.get("stages", {}).get(name, {}).get(key, 0))


def settled(snap: dict) -> bool:
    """Every message this process received is acknowledged (or its ack was for a
    connection that has since dropped) and every queue is empty."""
    ing = snap.get("stages", {}).get("ingest", {})
    if not ing or not snap.get("mqtt_connected"):
        return False
    answered = ing.get("acked", 0) + ing.get("stale_acks_dropped", 0)
    return answered == ing["processed"] and not any(snap["queues"].values())


def wait_drained(read_status: Callable[[], dict], timeout_s: float, quiet_s: float = 1.5,
                 alive: Callable[[], bool] = lambda: True) -> dict:
    """Wait until the service has taken everything the broker holds for it: every
    message acknowledged, queues empty, nothing new for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    snap: dict = {}
    while time.monotonic() < deadline:
        assert alive(), "the service died while draining"
        snap = read_status()
        n = stage(snap, "ingest")
        if not (snap and settled(snap)) or n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return snap
        time.sleep(0.1)
    raise AssertionError(f"not drained within {timeout_s} s; last status {snap}")


class StatusWatcher:
    """The latest retained ``appliance/status`` JSON, read over MQTT."""

    def __init__(self, broker: PrivateBroker, topic: str = "appliance/status") -> None:
        self.latest: dict = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"status-watch-{id(self):x}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.latest = json.loads(msg.payload)

    def __call__(self) -> dict:
        return self.latest

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float, what: str,
                 alive: Callable[[], bool] = lambda: True) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert alive(), f"the service died waiting for {what}"
            if self.latest and predicate(self.latest):
                return self.latest
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status {self.latest}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the publisher ------------------------------------------------------------------------


class ReadingPublisher:
    """Publishes ``total`` unique readings at QoS 1 at ``rate`` per second (0: as fast as
    the window allows), from a thread.  ``acked`` counts broker PUBACKs; paho resends
    what was unacknowledged when the connection comes back."""

    def __init__(self, broker: PrivateBroker, total: int, *, rate: float = 0.0,
                 assets: int = 20, sensors: tuple[str, ...] = SENSORS, step_s: float = 1.0,
                 t0: float | None = None, line: str = "l1", window: int = 100,
                 client_id: str = "") -> None:
        self.total = total
        self.rate = rate
        self.assets = assets
        self.sensors = sensors
        self.step_s = step_s
        self.t0 = time.time() - 3600.0 if t0 is None else t0
        self.line = line
        self.window = window
        self.sent = 0
        self.acked = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self._stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"pub-{id(self):x}")
        # paho looks through every unacknowledged message on each PUBACK: a window
        # of ~100 publishes fastest (5k/s here; 2000 gives 1.5k/s)
        self.client.max_inflight_messages_set(window)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def message(self, i: int) -> tuple[str, bytes]:
        a = i % self.assets
        s = (i // self.assets) % len(self.sensors)
        ts = self.t0 + (i // (self.assets * len(self.sensors))) * self.step_s
        return (TOPICS.reading(self.line, f"a{a:03d}", self.sensors[s]),
                b'{"ts": %.6f, "value": %d}' % (ts, i))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: object,
                    properties: object) -> None:
        self.acked += 1  # only paho's network thread writes it

    def start(self) -> ReadingPublisher:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.total):
            if self._stop.is_set():
                break
            if self.rate:
                ahead = start + i / self.rate - time.monotonic()
                if ahead > 0.002:
                    time.sleep(ahead)
            while self.sent - self.acked >= self.window and not self._stop.is_set():
                time.sleep(0.002)
            if self._stop.is_set():
                break
            topic, payload = self.message(i)
            self.client.publish(topic, payload, qos=1)
            self.sent += 1
        self.finished_at = time.monotonic()

    def stop_publishing(self) -> int:
        """End the publish early (the count published so far stands); the number sent."""
        self._stop.set()
        self._thread.join(30)
        return self.sent

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_acked(self, timeout_s: float) -> int:
        """Wait for the thread to finish and every publish to be acknowledged."""
        self._thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self._thread.is_alive(), f"publisher still running: {self.sent} sent"
        assert self.acked == self.sent, f"broker acknowledged {self.acked} of {self.sent}"
        return self.acked

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


class ListPublisher(ReadingPublisher):
    """Publishes the given (topic, payload) pairs, in order, at QoS 1."""

    def __init__(self, broker: PrivateBroker, messages: list[tuple[str, bytes]], **kw) -> None:
        super().__init__(broker, len(messages), **kw)
        self.messages = messages

    def message(self, i: int) -> tuple[str, bytes]:
        return self.messages[i]


# -- what the database holds --------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    published: int
    rows: int
    distinct: int  # distinct (asset, sensor, ts)
    duplicated: int
    lost: int  # published readings not stored
    unexpected: int  # stored readings that were never published
    lost_ids: np.ndarray

    def line(self, test: str, recovery_s: float) -> str:
        return summary(test, self.published, self.distinct, self.duplicated, self.lost,
                       recovery_s)


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tally(db: Path, published: int, line: str = "l1") -> Tally:
    """Compare the readings of ``line`` in the (closed) database with ids 0..published-1."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (asset, sensor, ts)) FROM readings WHERE line = ?",
            [line]).fetchone()
        values = con.execute("SELECT value FROM readings WHERE line = ?",
                             [line]).fetchnumpy()["value"]
    finally:
        con.close()
    ids = np.unique(values.astype(np.int64))
    expected = np.arange(published, dtype=np.int64)
    lost_ids = np.setdiff1d(expected, ids, assume_unique=True)
    unexpected = len(np.setdiff1d(ids, expected, assume_unique=True))
    return Tally(published, int(rows), int(distinct), int(rows - distinct), len(lost_ids),
                 unexpected, lost_ids)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               poll_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout_s``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0
