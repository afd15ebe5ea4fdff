"""Ingest: MQTT messages in, parsed ``Inbound`` batches out; acks after commit.

paho's network thread calls ``_on_message``, which only parses, appends to the
open batch and counts; it never raises.  When the batch is full it hands it on,
blocking while the queue below is full: paho then stops reading the socket and
the broker keeps the messages (back-pressure).  The stage loop hands on partial
batches every ``batch_ms`` and sends the acks the store returns — only those of
the current connection, since a message id from a dropped connection means
nothing (or another message) on the new one.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from appliance.config import Config
from appliance.messages import Committed, DeadLetter, EndOfStream, Inbound, SeriesKey
from appliance.mqtt import payloads
from appliance.mqtt.client import ConnectionMonitor, connect, make_client
from appliance.mqtt.topics import Route, Routed, Topics, UnroutableTopic
from appliance.stages.base import POLL_S, Stage, StopSignals, put

log = logging.getLogger(__name__)

#: Messages set aside for their event time (``[limits] max_future_s`` / ``max_past_s``)
#: are logged at most this often, with their count: one line per message would flood
#: the log when a whole publisher's clock is off.
SET_ASIDE_LOG_S = 60.0
#: Sets of sensors remembered per batch topic (``_parse_batch``).
BATCH_SETS_PER_TOPIC = 16


class _OpenBatch:
    """The batch being filled, columnar; sealed into an ``Inbound``."""

    __slots__ = ("connection", "dead", "faults", "keys", "mids", "opened", "redelivered",
                 "ts", "values")

    def __init__(self, connection: int) -> None:
        self.connection = connection
        self.keys: list[SeriesKey] = []
        self.ts: list[float] = []
        self.values: list[float] = []
        self.faults: list = []
        self.dead: list[DeadLetter] = []
        self.mids: list[int] = []
        self.redelivered = False
        self.opened = time.monotonic()

    def size(self) -> int:
        """Readings, faults and dead letters: every message makes one at least."""
        return len(self.keys) + len(self.faults) + len(self.dead)

    def seal(self) -> Inbound:
        return Inbound(tuple(self.keys), np.array(self.ts, dtype=np.float64),
                       np.array(self.values, dtype=np.float64), tuple(self.faults),
                       tuple(self.dead), self.connection, tuple(self.mids), self.redelivered)


class IngestStage(Stage):
    name = "ingest"

    def __init__(self, cfg: Config, out: queue.Queue, acks: queue.Queue) -> None:
        super().__init__(out=out)
        self.cfg = cfg
        self.topics = Topics.from_config(cfg)
        self.acks = acks
        #: The state of the current client's connection; a new one per ``start``.
        self.link: ConnectionMonitor | None = None
        self._lock = threading.Lock()  # guards the batches
        #: Guards the generation and sending acks, so no ack of an old connection
        #: can be sent on a new one.  Never held while taking ``_lock``.
        self._ack_lock = threading.Lock()
        self._generation = 0
        self._batch = _OpenBatch(0)
        self._sealed: list[Inbound] = []  # sealed by a connection change, not yet handed on
        #: raw topic → (route, the reading's series key or None); bounded by max_series
        self._routes: dict[bytes, tuple[Routed, SeriesKey | None]] = {}
        self._keys: dict[tuple[str, str, str], SeriesKey] = {}
        #: raw batch topic → the sets of sensors taken whole from it, and their keys
        self._batch_keys: dict[bytes, dict[tuple[str, ...], tuple[SeriesKey, ...]]] = {}
        self._client: mqtt.Client | None = None
        self._abort = threading.Event()
        #: messages set aside for their time since the last log line, by "future"/"past"
        self._set_aside = {"future": 0, "past": 0}
        self._set_aside_logged = -math.inf  # monotonic time of that line

    # -- paho callbacks (network thread): never raise ---------------------------------
    def _on_up(self, client: mqtt.Client, flags: object) -> None:
        self._new_generation()
        client.subscribe([(t, self.cfg.mqtt.qos) for t in self.topics.subscriptions()])

    def _on_down(self, lost: bool) -> None:
        self._new_generation()  # acks still pending belong to a dead connection
        if lost:
            self.counters.bump("disconnects")

    def _new_generation(self) -> None:
        with self._ack_lock, self._lock:
            self._generation += 1
            if self._batch.size():
                self._sealed.append(self._batch.seal())
            self._batch = _OpenBatch(self._generation)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._accept(msg)
        except Exception:  # paho would re-raise into its network thread
            log.exception("ingest: unexpected error after a message was taken")
            self.counters.errors += 1

    # -- parsing (hot path) ------------------------------------------------------------
    def _accept(self, msg: mqtt.MQTTMessage) -> None:
        now = self.clock.time()
        full = None
        with self._lock:
            batch = self._batch
            if msg.qos:
                batch.mids.append(msg.mid)
            if msg.dup:
                batch.redelivered = True
            self._parse_into(batch, msg, now)
            self.counters.processed += 1
            if batch.size() >= self.cfg.storage.batch_messages:
                full = batch.seal()
                self._batch = _OpenBatch(self._generation)
        if full is not None:
            put(self.out, full, self._abort)
        if self.acks.queue:  # a peek without the queue's lock: this runs per message
            # Acks sent from paho's own thread cost less than from another (no wake-up).
            self._send_acks(timeout=0.0)

    def _parse_into(self, batch: _OpenBatch, msg: mqtt.MQTTMessage, now: float) -> None:
        raw_topic = msg._topic  # bytes; the public .topic decodes on every access
        limits = self.cfg.limits
        try:
            entry = self._routes.get(raw_topic)
            if entry is None:
                entry = self._route(raw_topic)
            routed, key = entry
            doc = payloads.decode(msg.payload, limits)
            if key is not None:
                ts, value = payloads.reading(doc, now, limits)
                batch.keys.append(key)
                batch.ts.append(ts)
                batch.values.append(value)
            elif routed.route is Route.FAULT:
                batch.faults.append(payloads.fault(routed, doc, now, limits))
            else:
                self._parse_batch(batch, routed, msg, doc, now)
        except (UnroutableTopic, payloads.BadPayload) as exc:
            if isinstance(exc, payloads.OutOfWindow):
                self._note_set_aside(exc.which)
            self._dead(batch, now, raw_topic, msg.payload, str(exc))
        except Exception as exc:
            # A bug of ours, not bad input: the message's id is already queued for the
            # ack, so it is kept as a dead letter with the error, not lost.
            log.exception("ingest: unexpected error parsing a message")
            self.counters.errors += 1
            self._dead(batch, now, raw_topic, msg.payload,
                       f"internal error: {type(exc).__name__}: {exc}"[:500])

    def _note_set_aside(self, which: str) -> None:
        """Count a message set aside for its time; log the counts (first one at once,
        then at most every ``SET_ASIDE_LOG_S``) naming the limit that set them aside."""
        self._set_aside[which] += 1
        mono = self.clock.monotonic()
        if mono - self._set_aside_logged < SET_ASIDE_LOG_S:
            return
        limits = self.cfg.limits
        parts = [f"{n} with an event time {what}" for n, what in (
            (self._set_aside["future"], f"more than [limits] max_future_s = "
                                        f"{limits.max_future_s:g} s ahead of this clock"),
            (self._set_aside["past"], f"older than [limits] max_past_s = "
                                      f"{limits.max_past_s:g} s")) if n]
        log.warning("ingest: set aside as dead letters (not stored as readings): %s; a "
                    "publisher's clock off, or a replay faster than real time, does this",
                    "; ".join(parts))
        self._set_aside = {"future": 0, "past": 0}
        self._set_aside_logged = mono

    def _route(self, raw_topic: bytes) -> tuple[Routed, SeriesKey | None]:
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            raise UnroutableTopic("topic is not UTF-8") from None
        routed = self.topics.route(topic)
        key = None
        if routed.route is Route.READING:
            key = self._admit(routed.line, routed.asset, routed.sensor)
        if len(self._routes) < self.cfg.limits.max_series + 1000:
            self._routes[raw_topic] = (routed, key)
        return routed, key

    def _admit(self, line: str, asset: str, sensor: str) -> SeriesKey:
        """The series key, if the series count stays within ``max_series``."""
        key = self._keys.get((line, asset, sensor))
        if key is None:
            if len(self._keys) >= self.cfg.limits.max_series:
                raise payloads.BadPayload(
                    f"more than max_series ({self.cfg.limits.max_series}) distinct series")
            key = self._keys[(line, asset, sensor)] = SeriesKey(line, asset, sensor)
        return key

    def _parse_batch(self, batch: _OpenBatch, routed: Routed, msg: mqtt.MQTTMessage,
                     doc: object, now: float) -> None:
        checked = self._batch_keys.get(msg._topic)
        ts, sensors, values, refused = payloads.batch(doc, now, self.cfg.limits,
                                                      checked or ())
        keys = checked.get(sensors) if checked else None
        if keys is None:
            keys, values, refused = self._admit_batch(routed, sensors, values, refused)
            if not refused and len(self._batch_keys) < self.cfg.limits.max_series:
                # an asset publishes the same sensors message after message (bounded: one
                # sending whichever sensors changed would make a set per message)
                sets = self._batch_keys.setdefault(msg._topic, {})
                if len(sets) < BATCH_SETS_PER_TOPIC:
                    sets[sensors] = keys
        batch.keys.extend(keys)
        batch.ts.extend([ts] * len(keys))
        batch.values.extend(values)
        if refused:
            self._dead(batch, now, msg._topic, msg.payload, "part of batch refused: " + refused)

    def _admit_batch(self, routed: Routed, sensors: tuple[str, ...], values: list[float],
                     refused: str) -> tuple[tuple[SeriesKey, ...], list[float], str]:
        """The series keys and values of a batch's sensors but those beyond
        ``max_series``, which join the refused."""
        keys, kept = [], []
        for sensor, value in zip(sensors, values, strict=True):
            try:
                keys.append(self._admit(routed.line, routed.asset, sensor))
            except payloads.BadPayload as exc:
                refused = f"{refused}; {sensor!r}: {exc}".lstrip("; ")
                continue
            kept.append(value)
        return tuple(keys), kept, refused

    def _dead(self, batch: _OpenBatch, now: float, raw_topic: bytes, payload: bytes,
              reason: str) -> None:
        topic = raw_topic[:1024].decode("utf-8", errors="backslashreplace")
        batch.dead.append(DeadLetter(now, topic, bytes(payload[:payloads.
                                     DEAD_LETTER_PAYLOAD_BYTES]), reason))
        self.counters.bump("dead_letters")

    # -- stage interface -----------------------------------------------------------------
    def start(self) -> None:
        client, props = make_client(self.cfg.mqtt, "ingest", persistent=True)
        client.manual_ack_set(True)
        self.link = ConnectionMonitor(self.cfg.mqtt, self.name, self.clock,
                                      on_up=self._on_up, on_down=self._on_down)
        self.link.attach(client)
        client.on_message = self._on_message
        self._client = client
        connect(client, self.cfg.mqtt, props, persistent=True)

    def run(self, signals: StopSignals) -> None:
        self._abort = signals.abort
        batch_s = self.cfg.storage.batch_ms / 1000.0
        while not signals.drain.is_set() and not signals.abort.is_set():
            self._send_acks(timeout=min(POLL_S, batch_s / 2))
            self.hand_on(due_only=True)
            self.progressed()
        # Drain: stop receiving, hand on what we hold, then the end marker.
        self._disconnect()
        self.hand_on(due_only=False)
        put(self.out, EndOfStream(), signals.abort)

    def hand_on(self, due_only: bool) -> None:
        """Put the sealed batches on the output, and the open one when it is due (or
        always, with ``due_only`` false)."""
        with self._lock:
            sealed, self._sealed = self._sealed, []
            batch = self._batch
            due = time.monotonic() - batch.opened >= self.cfg.storage.batch_ms / 1000.0
            if batch.size() and (due or not due_only):
                sealed.append(batch.seal())
                self._batch = _OpenBatch(self._generation)
            elif not batch.size():
                batch.opened = time.monotonic()
        for item in sealed:
            put(self.out, item, self._abort)

    def _send_acks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                remaining = deadline - time.monotonic()
                item = self.acks.get(timeout=remaining) if remaining > 0 else \
                    self.acks.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Committed):
                self._ack(item)

    def _ack(self, committed: Committed) -> None:
        client = self._client
        if client is None or not committed.mids:
            return
        with self._ack_lock:
            if committed.connection != self._generation:
                self.counters.bump("stale_acks_dropped", len(committed.mids))
                return
            for mid in committed.mids:
                client.ack(mid, 1)
        self.counters.bump("acked", len(committed.mids))

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self._disconnect()

    def status(self) -> dict[str, Any]:
        c = self.link
        entry: dict[str, Any] = {**super().status(),
                                 "connected": c is not None and c.connected.is_set()}
        problem = c.problem(self.cfg.service.mqtt_down_after_s) if c is not None else None
        if problem:
            entry["problem"] = problem
        return entry
