"""paho-mqtt 2.x clients set up the one way the appliance uses them.

MQTT v5, callback API version 2, ``connect_async`` + ``loop_start`` with a
reconnect back-off; paho reconnects by itself and ``on_connect`` (not the
caller) subscribes, so subscriptions are renewed on every reconnect.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
