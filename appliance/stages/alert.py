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

Across a restart the champion's state is not lost: the runner reads the alerts still
standing (``storage.recent.standing_alerts``: last published state ``raised``) and the
stage resumes them raised, so a prediction still high raises nothing again and one
below the clearing level clears as usual.  A raised alert with no prediction of its
asset for ``[alerts] quiet_s`` (the horizon by default; wall clock, counted from the
start when resumed, so the backlog the broker kept comes first) is cleared: its asset
went quiet and nothing backs it.  The clear is published (replacing the retained
``raised``) and recorded; it carries the last probability seen, and the time it was
decided as ``ts``.
Challengers' states start afresh (their alerts are never published).
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from appliance.alarm import CLEARED, AlarmState
from appliance.config import Config
from appliance.messages import AlertEvent, Alerts, DriftEvents, LoopEvent, Prediction, Predictions
from appliance.mqtt import payloads
from appliance.mqtt.client import ConnectionMonitor, connect, make_client
from appliance.mqtt.topics import Topics
from appliance.stages.base import Stage
from appliance.storage.recent import StandingAlert
from appliance.timefmt import rfc3339

log = logging.getLogger(__name__)

#: Messages paho may hold while the broker is away; alerts are in DuckDB too.
MAX_QUEUED_PUBLISHES = 10_000


class AlertStage(Stage):
    name = "alert"
    essential = False  # the readings keep being stored without it

    def __init__(self, cfg: Config, inbox: queue.Queue, out: queue.Queue,
                 standing: Sequence[StandingAlert] = ()) -> None:
        super().__init__(inbox, out)
        self.cfg = cfg
        self.topics = Topics.from_config(cfg)
        self._states: dict[tuple[str, ...], AlarmState] = {}
        self.quiet_s = cfg.alerts.quiet_s or cfg.pipeline.horizon_s
        #: The champion's raised alerts: the last prediction (or, resumed, the published
        #: alert) of each, and when its asset last had one (clock time; event time of
        #: its last stored reading when resumed, -inf when it has none).
        self._raised: dict[tuple[str, str], AlertEvent | Prediction] = {}
        self._heard: dict[tuple[str, str], float] = {}
        self._resumed_heard: dict[tuple[str, str], float] = {}  # taken at the first start
        for s in standing:
            key = (s.alert.line, s.alert.asset)
            self._states[key] = AlarmState(cfg.alerts.clear_ratio, raised=True)
            self._raised[key] = s.alert
            self._resumed_heard[key] = -math.inf if math.isnan(s.last_reading) \
                else s.last_reading
        if standing:
            self.counters.extra["alerts_resumed"] = len(standing)
        self._client: mqtt.Client | None = None
        self.link: ConnectionMonitor | None = None
        self._lines: set[str] = set()
        self._loop_event: LoopEvent | None = None

    def start(self) -> None:
        # A resumed alert's quiet time counts from the start at the earliest: what the
        # broker kept for us while we were down comes first, and must not find its
        # alert cleared before it.
        now = self.clock.time()
        for key, heard in self._resumed_heard.items():
            self._heard[key] = max(heard, now)
        self._resumed_heard.clear()
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
                log_alert(a)
                self._publish(a)
        self.counters.processed += len(item.items)
        return (item, Alerts(tuple(alerts))) if alerts else (item,)

    def periodic(self) -> tuple[Alerts, ...]:
        """Clear the raised alerts whose asset has been quiet for ``quiet_s``."""
        now = self.clock.time()
        quiet = [key for key, heard in self._heard.items() if now - heard > self.quiet_s]
        alerts = []
        for key in quiet:
            del self._heard[key]
            last = self._raised.pop(key)
            self._states[key].clear()
            self.counters.bump("alerts_cleared_quiet")
            log.info("alert of %s/%s cleared: no prediction for %g s", *key, self.quiet_s)
            alert = AlertEvent(last.line, last.asset, now, CLEARED, last.probability,
                               last.threshold, self.cfg.pipeline.horizon_s, last.model)
            self._publish(alert)
            alerts.append(alert)
        return (Alerts(tuple(alerts)),) if alerts else ()

    def _update(self, p: Prediction) -> AlertEvent | None:
        key = (p.line, p.asset) if p.role == "champion" else (p.model, p.line, p.asset)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = AlarmState(self.cfg.alerts.clear_ratio)
        change = state.update(p.probability, p.threshold)
        if p.role == "champion" and state.raised:
            self._raised[(p.line, p.asset)] = p
            self._heard[(p.line, p.asset)] = self.clock.time()
        elif change is not None and p.role == "champion":
            del self._raised[(p.line, p.asset)], self._heard[(p.line, p.asset)]
        if change is None:
            return None
        self.counters.bump(f"alerts_{change}" if p.role == "champion"
                           else f"challenger_alerts_{change}")
        return AlertEvent(p.line, p.asset, p.ts, change, p.probability, p.threshold,
                          self.cfg.pipeline.horizon_s, p.model, p.top_factors, p.role,
                          p.reasons)

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


def log_alert(alert: AlertEvent) -> None:
    """One INFO line per raised or cleared alert: the service log is where an operator
    looks first, and an alert seen only on MQTT cannot be traced there."""
    reason = "no reason given"
    if alert.reasons:
        reason = alert.reasons[0].text
    elif alert.top_factors:
        f = alert.top_factors[0]
        reason = f"{f.feature} = {f.value:.4g} (contribution {f.contribution:+.3g})"
    log.info("alert %s: %s/%s at %s, probability %.3f against threshold %.3f (model %s); "
             "top reason: %s", alert.state, alert.line, alert.asset, rfc3339(alert.ts),
             alert.probability, alert.threshold, alert.model, reason)
