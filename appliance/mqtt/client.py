"""paho-mqtt 2.x clients set up the one way the appliance uses them.

MQTT v5, callback API version 2, ``connect_async`` + ``loop_start`` with a
reconnect back-off; TLS and the user name and password from ``[mqtt]``, the same for
every client of the service (ingest, alerts, status); paho reconnects by itself and
``on_connect`` (not the caller) subscribes, so subscriptions are renewed on every
reconnect.
``ConnectionMonitor`` keeps a client's connection state and logs its failures.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path

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
        client.username_pw_set(cfg.username, password(cfg))
    if cfg.tls_ca:
        # verifies the broker's certificate and its host name against tls_ca
        client.tls_set(ca_certs=cfg.tls_ca, certfile=cfg.tls_cert or None,
                       keyfile=cfg.tls_key or None)
    client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
    if will is not None:
        topic, payload = will
        client.will_set(topic, payload, qos=1, retain=True)
    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
    return client, props


#: The systemd credential (``LoadCredential=mqtt_password:...``) that holds the password.
CREDENTIAL = "mqtt_password"


def password(cfg: MqttConfig) -> str | None:
    """The MQTT password: systemd's credential ``mqtt_password`` when the service has one
    (and it is not empty), else the first line of ``[mqtt] password_file``, else
    ``[mqtt] password``; None for none."""
    files = []
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        files.append(Path(credentials) / CREDENTIAL)
    if cfg.password_file:
        files.append(Path(cfg.password_file))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        lines = text.splitlines()
        if lines and lines[0]:
            return lines[0]
    return cfg.password or None


def connect(client: mqtt.Client, cfg: MqttConfig, props: Properties, *,
            persistent: bool = False) -> None:
    """Start connecting in the background; paho retries until it succeeds."""
    client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                         clean_start=not persistent, properties=props)
    client.loop_start()


def reason_failed(reason_code: object) -> bool:
    """True when a CONNACK/DISCONNECT reason code reports a failure."""
    return bool(getattr(reason_code, "is_failure", False))


#: At most one line per client this often about failing connects, with their count
#: (and one whenever the reason changes).
FAILURE_LOG_EVERY_S = 30.0
#: CONNACK reason codes that retrying will not cure: bad user name or password, not
#: authorized (MQTT v5, 0x86 and 0x87).
AUTH_REFUSED = frozenset({134, 135})


class ConnectionMonitor:
    """A client's connection state, and its failures logged without flooding the log.

    ``attach`` sets the client's ``on_connect``, ``on_connect_fail`` and
    ``on_disconnect``; what the owner must do on each (subscribe, drop stale acks)
    goes in ``on_up`` and ``on_down`` (told whether the connection was lost rather
    than closed by us), called from paho's network thread.  With the
    broker down paho retries every ``reconnect_*_s``: the first failure is logged at
    once, then one line per ``FAILURE_LOG_EVERY_S`` with the failures since the last.
    A failure that names the config (a certificate that does not verify, a password
    refused) says which key, and slows the retries to ``reconnect_max_s``.
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
        #: Seconds between retries after a failure that retrying will not cure (a
        #: certificate, a password); None while paho's back-off from reconnect_min_s runs.
        self.retry_every_s: float | None = None

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
        retry = f"; retrying every {self.retry_every_s:g} s" if self.retry_every_s else ""
        return (f"MQTT not connected to {self.cfg.host}:{self.cfg.port} for {down_s:.0f} s "
                f"({self.failures} failed attempts; last: {self.last_failure or 'none yet'}"
                f"{retry})")

    # -- paho callbacks (network thread): never raise ---------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: object, properties: object) -> None:
        if reason_failed(reason_code):
            value = getattr(reason_code, "value", None)
            if value in AUTH_REFUSED:
                self._failed(f"refused: {reason_code} (check [mqtt] username and the "
                             f"password: credential {CREDENTIAL}, password_file or password)",
                             client, permanent=True)
            else:
                self._failed(f"refused: {reason_code}", client)
            return
        if self.retry_every_s is not None:  # back to the short back-off for the next outage
            client.reconnect_delay_set(min_delay=self.cfg.reconnect_min_s,
                                       max_delay=self.cfg.reconnect_max_s)
            self.retry_every_s = None
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
        # paho calls this inside its ``except OSError`` around the connect, and passes
        # no exception: the one being handled is the reason (a TLS failure is an OSError)
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._failed(f"TLS: the broker's certificate failed verification against "
                         f"[mqtt] tls_ca {self.cfg.tls_ca}: {exc.verify_message}", client,
                         permanent=True)
        elif isinstance(exc, ssl.SSLError):
            self._failed(f"TLS handshake failed ({exc.reason or exc}): check [mqtt] tls_ca, "
                         f"tls_cert and tls_key against the broker's listener", client,
                         permanent=True)
        else:
            self._failed("no connection (broker down or unreachable)", client)

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

    def _failed(self, why: str, client: mqtt.Client, *, permanent: bool = False) -> None:
        """Count and log a failed connect.  A ``permanent`` one (a certificate or a
        password the broker refuses) will fail the same way until someone changes the
        config or the broker: retry only every ``reconnect_max_s``, not from
        ``reconnect_min_s`` up, and log it at once when the reason changes."""
        self.failures += 1
        self._unlogged += 1
        changed = why != self.last_failure
        self.last_failure = why
        if permanent and self.retry_every_s is None:
            client.reconnect_delay_set(min_delay=self.cfg.reconnect_max_s,
                                       max_delay=self.cfg.reconnect_max_s)
            self.retry_every_s = self.cfg.reconnect_max_s
        now = self.clock.monotonic()
        if not changed and self._logged_at is not None and \
                now - self._logged_at < FAILURE_LOG_EVERY_S:
            return
        log.error("MQTT %s cannot connect to %s:%d: %s (%s since the last report, %d since "
                  "the last connection); retrying%s", self.role, self.cfg.host, self.cfg.port,
                  why, _attempts(self._unlogged), self.failures,
                  f" every {self.retry_every_s:g} s" if self.retry_every_s else "")
        self._unlogged, self._logged_at = 0, now


def _attempts(n: int) -> str:
    return f"{n} failed attempt{'' if n == 1 else 's'}"
