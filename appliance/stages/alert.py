"""Alert: predictions in; alerts raised and cleared with hysteresis, published.

An asset's alert is raised when its probability reaches the threshold and
cleared when it falls below threshold × clear_ratio, so a probability hovering
at the threshold does not flap.  Alerts go out on MQTT (QoS 1, retained, so a
subscriber that connects later sees each asset's current state) and, with every
prediction, on to the record stage.  Drift and sensor events (from the drift stage)
are published the same way, retained, on the line's drift topic or the asset's
sensor topic, and passed on.  Steps of the retraining loop (from the retrain stage,
which stores them itself) are published retained on every line's model topic; a
line first seen later gets the latest one then.

A challenger's predictions run through the same rule with an alarm state of
their own per (model, line, asset); its state changes are ``AlertEvent``s with
``role="challenger"`` that go to the record (so it is scored on what it would
have raised) and never to MQTT.  The champion's state stays keyed by (line,
asset) alone: a promotion must not raise an already-raised alert a second time.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

import paho.mqtt.client as mqtt

from appliance.alarm import AlarmState
from appliance.config import Config
from appliance.messages import AlertEvent, Alerts, DriftEvents, LoopEvent, Prediction, Predictions
from appliance.mqtt import payloads
from appliance.mqtt.client import ConnectionMonitor, connect, make_client
from appliance.mqtt.topics import Topics
from appliance.stages.base import Stage

log = logging.getLogger(__name__)

#: Messages paho may hold while the broker is away; alerts are in DuckDB too.
MAX_QUEUED_PUBLISHES = 10_000


class AlertStage(Stage):
    name = "alert"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue) -> None:
        super().__init__(inbox, out)
        self.cfg = cfg
        self.topics = Topics.from_config(cfg)
        self._states: dict[tuple[str, ...], AlarmState] = {}
        self._client: mqtt.Client | None = None
        self.link: ConnectionMonitor | None = None
        self._lines: set[str] = set()
        self._loop_event: LoopEvent | None = None

    def start(self) -> None:
        client, props = make_client(self.cfg.mqtt, "alert")
        client.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        # its own connection: a broker may refuse the alert client alone (ACL, client id)
        self.link = ConnectionMonitor(self.cfg.mqtt, self.name, self.clock)
        self.link.attach(client)
        self._client = client
        connect(client, self.cfg.mqtt, props)

    def handle(self, item: object) -> tuple[object, ...]:
        if isinstance(item, DriftEvents):
            for event in item.items:
                topic = (self.topics.drift(event.line) if event.kind == "drift"
                         else self.topics.sensor(event.line, event.asset))
                self._send(topic, payloads.drift_payload(event), f"{event.kind} event")
            return (item,)
        if isinstance(item, LoopEvent):
            self._loop_event = item
            for line in sorted(self._lines):
                self._send(self.topics.model(line), payloads.loop_payload(item), "model event")
            return ()
        if not isinstance(item, Predictions):
            return (item,)  # e.g. a ModelEvent, for the record
        for p in item.items:
            if p.line not in self._lines:
                self._lines.add(p.line)
                if self._loop_event is not None:
                    self._send(self.topics.model(p.line),
                               payloads.loop_payload(self._loop_event), "model event")
        alerts = [a for p in item.items if (a := self._update(p)) is not None]
        for a in alerts:
            if a.role == "champion":
                self._publish(a)
        self.counters.processed += len(item.items)
        return (item, Alerts(tuple(alerts))) if alerts else (item,)

    def _update(self, p: Prediction) -> AlertEvent | None:
        key = (p.line, p.asset) if p.role == "champion" else (p.model, p.line, p.asset)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = AlarmState(self.cfg.alerts.clear_ratio)
        change = state.update(p.probability, p.threshold)
        if change is None:
            return None
        self.counters.bump(f"alerts_{change}" if p.role == "champion"
                           else f"challenger_alerts_{change}")
        return AlertEvent(p.line, p.asset, p.ts, change, p.probability, p.threshold,
                          self.cfg.pipeline.horizon_s, p.model, p.top_factors, p.role)

    def _publish(self, alert: AlertEvent) -> None:
        client = self._client
        if client is None:
            return
        info = client.publish(self.topics.alert(alert.line, alert.asset),
                              payloads.alert_payload(alert), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            log.warning("alert publish for %s failed: %s", alert.asset, mqtt.error_string(info.rc))

    def _send(self, topic: str, payload: bytes, what: str) -> None:
        """Publish retained at QoS 1; a failure is logged (the event is in DuckDB too)."""
        client = self._client
        if client is None:
            return
        info = client.publish(topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            log.warning("%s publish on %s failed: %s", what, topic, mqtt.error_string(info.rc))

    def status(self) -> dict[str, Any]:
        entry = super().status()
        link = self.link
        problem = link.problem(self.cfg.service.mqtt_down_after_s) if link else None
        if problem:
            entry["problem"] = f"alerts are not published: {problem}"
        return entry

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
