"""Every MQTT topic the appliance subscribes to or publishes, declared once.

Subscribing and dispatching both read ``Topics``, so the two cannot drift apart.
Readings:  <prefix>/<line>/<asset>/<sensor>     (one value)
Batch:     <prefix>/<line>/<asset>              (several sensors at one ts)
Faults:    <prefix>/<line>/<asset>/fault
Alerts:    <alerts_prefix>/<line>/<asset>/alert (published, QoS 1, retained)
Drift:     <alerts_prefix>/<line>/drift         (published, QoS 1, retained; asset or "*")
Sensor:    <alerts_prefix>/<line>/<asset>/sensor (published, QoS 1, retained)
Status:    <status topic>                       (published, retained JSON; will: JSON "offline")
Health:    <alerts_prefix>/health               (published, retained: the disk watch)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from appliance.config import NAME_PATTERN, Config

FAULT_SENSOR = "fault"
_NAME = re.compile(NAME_PATTERN)


def is_name(text: str) -> bool:
    """True for a valid line, asset or sensor name."""
    return _NAME.fullmatch(text) is not None


class Route(Enum):
    READING = "reading"
    BATCH = "batch"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Routed:
    route: Route
    line: str
    asset: str
    sensor: str = ""


class UnroutableTopic(ValueError):
    """A topic that matches none of the subscriptions' shapes."""


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    alerts_prefix: str
    status: str

    @classmethod
    def from_config(cls, cfg: Config) -> Topics:
        return cls(cfg.mqtt.topic_prefix.rstrip("/"), cfg.alerts.topic_prefix.rstrip("/"),
                   cfg.status.topic)

    @property
    def health(self) -> str:
        """The retained health message (``service/status.py``: the disk against its budget)."""
        return f"{self.alerts_prefix}/health"

    def subscriptions(self) -> tuple[str, ...]:
        """Topic filters to subscribe to: everything under the prefix, so that a
        message on a topic of the wrong shape reaches ``route`` and is refused
        with a reason instead of never arriving."""
        return (f"{self.prefix}/#",)

    def route(self, topic: str) -> Routed:
        """Classify an incoming topic; raise UnroutableTopic with the reason."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise UnroutableTopic(f"topic outside prefix {self.prefix!r}")
        parts = topic[len(head):].split("/")
        for part in parts:
            if not is_name(part):
                raise UnroutableTopic(
                    f"topic level {part[:80]!r} is not a name of 1-64 characters "
                    "from A-Z a-z 0-9 _ . -")
        if len(parts) == 3:
            line, asset, sensor = parts
            if sensor == FAULT_SENSOR:
                return Routed(Route.FAULT, line, asset)
            return Routed(Route.READING, line, asset, sensor)
        if len(parts) == 2:
            return Routed(Route.BATCH, parts[0], parts[1])
        raise UnroutableTopic(f"expected {self.prefix}/<line>/<asset>[/<sensor>], "
                              f"got {len(parts)} levels after the prefix")

    def reading(self, line: str, asset: str, sensor: str) -> str:
        return f"{self.prefix}/{line}/{asset}/{sensor}"

    def batch(self, line: str, asset: str) -> str:
        """Where an asset's readings of one time arrive together (``{"values": …}``)."""
        return f"{self.prefix}/{line}/{asset}"

    def fault(self, line: str, asset: str) -> str:
        return f"{self.prefix}/{line}/{asset}/{FAULT_SENSOR}"

    def alert(self, line: str, asset: str) -> str:
        return f"{self.alerts_prefix}/{line}/{asset}/alert"

    def drift(self, line: str) -> str:
        """The line's drift state: one retained message per line (an asset or ``*``)."""
        return f"{self.alerts_prefix}/{line}/drift"

    def model(self, line: str) -> str:
        """The retraining loop's latest step (retained): which model serves and why."""
        return f"{self.alerts_prefix}/{line}/model"

    def sensor(self, line: str, asset: str) -> str:
        """An asset's latest sensor event, with its sensors at fault now (``active``)."""
        return f"{self.alerts_prefix}/{line}/{asset}/sensor"
