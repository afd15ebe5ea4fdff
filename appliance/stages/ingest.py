"""Ingest: MQTT messages in, parsed ``Inbound`` batches out; acks after commit.

paho's network thread calls ``_on_message``, which only parses, appends to the
open batch and counts; it never raises.  When the batch is full it hands it on,
blocking while the queue below is full: paho then stops reading the socket and
the broker keeps the messages (back-pressure).  The stage loop hands on partial
batches every ``batch_ms`` and sends the acks the store returns — only those of
the current connection, since a message id from a dropped connection means
nothing (or something else) on the new one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt

from appliance import payloads
from appliance.clock import Clock, WallClock
from appliance.config import Config
from appliance.messages import AckToken, Committed, DeadLetter, EndOfStream, Inbound
from appliance.mqtt import connect, make_client, reason_failed
from appliance.stages.base import POLL_S, Stage, StopSignals, put
from appliance.topics import Routed, Topics, UnroutableTopic

log = logging.getLogger(__name__)


class _OpenBatch:
    __slots__ = ("acks", "dead", "faults", "opened", "readings", "redelivered")

    def __init__(self, opened: float) -> None:
        self.readings: list = []
        self.faults: list = []
        self.dead: list = []
        self.acks: list = []
        self.redelivered = False
        self.opened = opened

    def __len__(self) -> int:
        return len(self.acks) or len(self.readings) + len(self.faults) + len(self.dead)

    def seal(self) -> Inbound:
        return Inbound(tuple(self.readings), tuple(self.faults), tuple(self.dead),
                       tuple(self.acks), self.redelivered)


class IngestStage(Stage):
    name = "ingest"

    def __init__(self, cfg: Config, out: queue.Queue, acks: queue.SimpleQueue,
                 clock: Clock | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.topics = Topics.from_config(cfg)
        self.out = out
        self.acks = acks
        self.clock = clock or WallClock()
        self.connected = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()  # guards the open batch and the generation
        self._batch = _OpenBatch(time.monotonic())
        self._routes: dict[str, Routed] = {}
        self._series: set = set()
        self._client: mqtt.Client | None = None
        self._abort = threading.Event()
        self._closing = False

    # -- paho callbacks (network thread): never raise ---------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: object, properties: object) -> None:
        if reason_failed(reason_code):
            log.error("MQTT connect to %s:%d refused: %s", self.cfg.mqtt.host,
                      self.cfg.mqtt.port, reason_code)
            return
        with self._lock:
            self._generation += 1
        qos = self.cfg.mqtt.qos
        client.subscribe([(t, qos) for t in self.topics.subscriptions()])
        self.connected.set()
        log.info("MQTT connected to %s:%d (session present: %s)", self.cfg.mqtt.host,
                 self.cfg.mqtt.port, getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: object, properties: object) -> None:
        with self._lock:
            self._generation += 1  # acks still pending belong to a dead connection
        self.connected.clear()
        if not self._closing:
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)
            self.counters.bump("disconnects")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._accept(msg)
        except Exception:  # paho would re-raise into its network thread
            log.exception("ingest: unexpected error on a message")
            self.counters.errors += 1

    # -- parsing -------------------------------------------------------------------------
    def _accept(self, msg: mqtt.MQTTMessage) -> None:
        now = self.clock.time()
        full = None
        with self._lock:
            batch = self._batch
            if msg.qos > 0:
                batch.acks.append(AckToken(self._generation, msg.mid))
            if msg.dup:
                batch.redelivered = True
            self._parse_into(batch, msg, now)
            self.counters.processed += 1
            if len(batch) >= self.cfg.storage.batch_messages:
                full = self._swap()
        if full is not None:
            put(self.out, full, self._abort)

    def _parse_into(self, batch: _OpenBatch, msg: mqtt.MQTTMessage, now: float) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = repr(msg._topic)[:200]
            self._dead(batch, now, topic, msg.payload, "topic is not UTF-8")
            return
        try:
            routed = self._routes.get(topic)
            if routed is None:
                routed = self.topics.route(topic)
                if len(self._routes) < self.cfg.limits.max_series:
                    self._routes[topic] = routed
            parsed = payloads.parse(routed, msg.payload, now, self.cfg.limits)
        except (UnroutableTopic, payloads.BadPayload) as exc:
            self._dead(batch, now, topic, msg.payload, str(exc))
            return
        if parsed.fault is not None:
            batch.faults.append(parsed.fault)
        for reading in parsed.readings:
            if reading.key not in self._series:
                if len(self._series) >= self.cfg.limits.max_series:
                    self._dead(batch, now, topic, msg.payload,
                               f"more than max_series ({self.cfg.limits.max_series}) "
                               "distinct series")
                    continue
                self._series.add(reading.key)
            batch.readings.append(reading)
        if parsed.partial_reason:
            self._dead(batch, now, topic, msg.payload, "part of batch refused: "
                       + parsed.partial_reason)

    def _dead(self, batch: _OpenBatch, now: float, topic: str, payload: bytes,
              reason: str) -> None:
        batch.dead.append(DeadLetter(now, topic[:1024], bytes(payload[:payloads.
                                     DEAD_LETTER_PAYLOAD_BYTES]), reason))
        self.counters.bump("dead_letters")

    def _swap(self) -> Inbound | None:
        """Seal the open batch (caller holds the lock); None when it is empty."""
        if not len(self._batch):
            self._batch.opened = time.monotonic()
            return None
        sealed = self._batch.seal()
        self._batch = _OpenBatch(time.monotonic())
        return sealed

    # -- stage interface -----------------------------------------------------------------
    def start(self) -> None:
        self._closing = False
        client, props = make_client(self.cfg.mqtt, "ingest", persistent=True)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        connect(client, self.cfg.mqtt, props, persistent=True)

    def run(self, signals: StopSignals) -> None:
        self._abort = signals.abort
        batch_s = self.cfg.storage.batch_ms / 1000.0
        while not signals.drain.is_set() and not signals.abort.is_set():
            self._send_acks(timeout=min(POLL_S, batch_s / 2))
            with self._lock:
                due = time.monotonic() - self._batch.opened >= batch_s
                sealed = self._swap() if due else None
            if sealed is not None:
                put(self.out, sealed, signals.abort)
        # Drain: stop receiving, hand on what we hold, then the end marker.
        self._disconnect()
        with self._lock:
            sealed = self._swap()
        if sealed is not None:
            put(self.out, sealed, signals.abort)
        put(self.out, EndOfStream(), signals.abort)

    def _send_acks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if isinstance(item, Committed):
                self._ack(item.acks)

    def _ack(self, tokens: tuple[AckToken, ...]) -> None:
        client = self._client
        if client is None:
            return
        sent = stale = 0
        with self._lock:
            for token in tokens:
                if token.connection == self._generation:
                    client.ack(token.mid, 1)
                    sent += 1
                else:
                    stale += 1
        if stale:
            self.counters.bump("stale_acks_dropped", stale)
        self.counters.bump("acked", sent)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._closing = True
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self._disconnect()
