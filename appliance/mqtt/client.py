"""paho-mqtt 2.x clients set up the one way the appliance uses them.

MQTT v5, callback API version 2, ``connect_async`` + ``loop_start`` with a
reconnect back-off; paho reconnects by itself and ``on_connect`` (not the
caller) subscribes, so subscriptions are renewed on every reconnect.
``ConnectionMonitor`` keeps a client's connection state and logs its failures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.clock import Clock
from appliance.config import MqttConfig

log = logging.getLogger(__name__)


def make_client(cfg: MqttConfig, role: str, *, persistent: bool = False,
                will: tuple[str, bytes] | None = None) -> tuple[mqtt.Client, Properties]:
    """A configured, not yet connected client and its CONNECT properties.

    ``persistent`` keeps the broker-side session (subscriptions and queued QoS 1
    messages) for ``session_expiry_s`` and lets the broker send up to
    ``receive_maximum`` unacknowledged messages (the MQTT v3 limit of 20 in
    flight would make acknowledging after commit impossibly slow).
    """
    client_id = cfg.client_id if role == "ingest" else f"{cfg.client_id}-{role}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
    if will is not None:
        topic, payload = will
        client.will_set(topic, payload, qos=1, retain=True)
    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
    return client, props


def connect(client: mqtt.Client, cfg: MqttConfig, props: Properties, *,
            persistent: bool = False) -> None:
    """Start connecting in the background; paho retries until it succeeds."""
    client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                         clean_start=not persistent, properties=props)
    client.loop_start()


def reason_failed(reason_code: object) -> bool:
    """True when a CONNACK/DISCONNECT reason code reports a failure."""
    return bool(getattr(reason_code, "is_failure", False))


#: At most one line per client this often about failing connects, with their count.
FAILURE_LOG_EVERY_S = 30.0


class ConnectionMonitor:
    """A client's connection state, and its failures logged without flooding the log.

    ``attach`` sets the client's ``on_connect``, ``on_connect_fail`` and
    ``on_disconnect``; what the owner must do on each (subscribe, drop stale acks)
    goes in ``on_up`` and ``on_down`` (told whether the connection was lost rather
    than closed by us), called from paho's network thread.  With the
    broker down paho retries every ``reconnect_*_s``: the first failure is logged at
    once, then one line per ``FAILURE_LOG_EVERY_S`` with the failures since the last.
    """

    def __init__(self, cfg: MqttConfig, role: str, clock: Clock, *,
                 on_up: Callable[[mqtt.Client, object], None] | None = None,
                 on_down: Callable[[bool], None] | None = None) -> None:
        self.cfg = cfg
        self.role = role
        self.clock = clock
        self.on_up = on_up
        self.on_down = on_down
        self.connected = threading.Event()
        #: Monotonic time since when the client has not been connected; None while it is.
        self.down_since: float | None = clock.monotonic()
        self.failures = 0  # since the last connect
        self.last_failure = ""
        self._unlogged = 0
        self._logged_at: float | None = None

    def attach(self, client: mqtt.Client) -> None:
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect

    def down_for(self) -> float:
        """Seconds without a connection (0 while connected)."""
        since = self.down_since
        return 0.0 if since is None else self.clock.monotonic() - since

    def problem(self, after_s: float) -> str | None:
        """Why the client counts as down, once it has been down longer than ``after_s``."""
        down_s = self.down_for()
        if down_s <= after_s:
            return None
        return (f"MQTT not connected to {self.cfg.host}:{self.cfg.port} for {down_s:.0f} s "
                f"({self.failures} failed attempts; last: {self.last_failure or 'none yet'})")

    # -- paho callbacks (network thread): never raise ---------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: object, properties: object) -> None:
        if reason_failed(reason_code):
            self._failed(f"refused: {reason_code}")
            return
        log.info("MQTT %s connected to %s:%d%s (session present: %s)", self.role,
                 self.cfg.host, self.cfg.port,
                 f" after {_attempts(self.failures)}" if self.failures else "",
                 getattr(flags, "session_present", "?"))
        self.failures, self._unlogged, self._logged_at = 0, 0, None
        self.down_since = None
        if self.on_up is not None:
            self.on_up(client, flags)
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._failed("no connection (broker down or unreachable)")

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: object, properties: object) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        lost = was_connected and reason_failed(reason_code)  # not our own disconnect()
        if self.on_down is not None:
            self.on_down(lost)
        if was_connected:
            self.down_since = self.clock.monotonic()
            if lost:
                log.warning("MQTT %s disconnected from %s:%d (%s); reconnecting", self.role,
                            self.cfg.host, self.cfg.port, reason_code)

    def _failed(self, why: str) -> None:
        self.failures += 1
        self._unlogged += 1
        self.last_failure = why
        now = self.clock.monotonic()
        if self._logged_at is not None and now - self._logged_at < FAILURE_LOG_EVERY_S:
            return
        log.error("MQTT %s cannot connect to %s:%d: %s (%s since the last report, %d since "
                  "the last connection); retrying", self.role, self.cfg.host, self.cfg.port,
                  why, _attempts(self._unlogged), self.failures)
        self._unlogged, self._logged_at = 0, now


def _attempts(n: int) -> str:
    return f"{n} failed attempt{'' if n == 1 else 's'}"
