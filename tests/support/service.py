"""The service as an operator runs it (``appliance run`` in a child process), its config,
and publishers: what the integration and fault suites drive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from appliance.config import Config
from appliance.devtools.mosquitto import PrivateBroker
from appliance.mqtt.topics import Topics

#: The topics of the service under test: the configs written here keep the default prefixes.
TOPICS = Topics.from_config(Config())


def write_config(tmp_path: Path, broker: PrivateBroker, extra: str = "") -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'client_id = "svc-{tmp_path.name[-20:]}"\n'
        f'[storage]\npath = "{tmp_path / "appliance.duckdb"}"\nbatch_ms = 20\n'
        f'[status]\ninterval_s = 0.5\n' + extra)
    return path


class Service:
    """``appliance run`` as a child process, as an operator would start it."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "service.log"
        self.status_path = config.parent / "appliance.duckdb.status.json"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_connected: bool = True) -> Service:
        """Start ``appliance run``; wait for its MQTT connection unless told not to (then
        for its first status)."""
        self.status_path.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait_connected:
            self.wait_for(lambda s: s.get("mqtt_connected"), timeout_s=30,
                          what="MQTT connection")
        else:
            self.wait_for(lambda s: True, timeout_s=30, what="a first status")
        return self

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_for(self, predicate, timeout_s: float = 30, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}) waiting for "
                                     f"{what}:\n{self.log.read_text()[-3000:]}")
            snap = self.status()
            if snap and predicate(snap):
                return snap
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {self.status()}\n"
                             f"{self.log.read_text()[-3000:]}")

    def stored(self) -> int:
        return self.status().get("stages", {}).get("store", {}).get("processed", 0)

    def terminate(self, timeout_s: float = 10) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def publisher(broker: PrivateBroker, client_id: str = "") -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def subscriber(broker: PrivateBroker, topic: str) -> tuple[mqtt.Client, list[dict]]:
    """A client subscribed to ``topic`` at QoS 1, and the list its JSON messages go to."""
    received: list[dict] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda client, *_a: client.subscribe(topic, qos=1)
    c.on_message = lambda _c, _u, m: received.append(json.loads(m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c, received


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait until the broker has acknowledged every one."""
    infos = [client.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
