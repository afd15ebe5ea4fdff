"""A small MQTT broker (3.1.1 and 5.0) in pure Python: the demo's broker without mosquitto.

``with EmbeddedBroker() as b: ...`` — the same shape as ``broker.PrivateBroker``
(``host``, ``port``, ``start()``, ``stop()``, ``restart()``).  An asyncio loop in
a daemon thread serves the clients; all broker state lives on that loop, so
nothing is locked.

In: CONNECT v3.1.1 (level 4) and v5 (level 5), clean session / clean start,
persistent sessions in memory (v3 ``clean_session=0``: until replaced; v5 Session
Expiry Interval > 0: that long after the disconnect) keeping subscriptions, QoS 1
messages in flight and queued (bounded), session takeover; SUBSCRIBE and
UNSUBSCRIBE with ``+`` and ``#`` (``$`` topics not matched by a leading wildcard),
v5 subscription options (No Local, Retain As Published, Retain Handling);
PUBLISH QoS 0, 1 and 2 inbound (QoS 2 with the PUBREC/PUBREL/PUBCOMP handshake,
routed once), outbound at min(subscription, publication) with at most the
client's Receive Maximum (v3: 1000) unacknowledged per client, the rest queued;
on a session resume the unacknowledged messages are sent again with DUP set,
then the queue; retained messages; wills (on any close but a clean DISCONNECT,
so also on keep-alive timeout, takeover and malformed packets; v5 DISCONNECT 0x04
publishes it too); PINGREQ; keep-alive (1.5 × keep-alive closes).

Out: QoS 2 outbound (subscriptions are granted at most QoS 1); v5 PUBLISH
properties are not forwarded (message expiry, content type, user properties,
response topic, correlation data); topic aliases, subscription identifiers,
shared subscriptions, will delay, the client's Maximum Packet Size, AUTH;
authentication and ACLs (anyone may connect); TLS; persistence to disk (the
state survives ``restart()``, not the process); QoS 0 for offline sessions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

# -- packet codec ----------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

MAX_PACKET_BYTES = 16 * 1024 * 1024
V3_RECEIVE_MAXIMUM = 1000
V5_RECEIVE_MAXIMUM = 65535
NEVER_EXPIRES = 0xFFFFFFFF
CONNECT_TIMEOUT_S = 10.0
MAX_QUEUED = 1_000_000

# v5 properties read or written here
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, AUTH_METHOD, RECEIVE_MAXIMUM = 0x11, 0x12, 0x15, 0x21
TOPIC_ALIAS, MAXIMUM_PACKET_SIZE, SUB_IDS_AVAILABLE, SHARED_SUBS_AVAILABLE = 0x23, 0x27, 0x29, 0x2A
#: Property identifier → how its value is read (MQTT 5.0 §2.2.2.2).
PROPERTY_TYPES = {
    0x01: "u8", 0x02: "u32", 0x03: "string", 0x08: "string", 0x09: "binary", 0x0B: "varint",
    0x11: "u32", 0x12: "string", 0x13: "u16", 0x15: "string", 0x16: "binary", 0x17: "u8",
    0x18: "u32", 0x19: "u8", 0x1A: "string", 0x1C: "string", 0x1F: "string", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "u8", 0x25: "u8", 0x26: "pair", 0x27: "u32", 0x28: "u8",
    0x29: "u8", 0x2A: "u8",
}
# v5 reason codes
MALFORMED, PROTOCOL_ERROR, IMPLEMENTATION_ERROR, BAD_AUTH_METHOD = 0x81, 0x82, 0x83, 0x8C
SHUTTING_DOWN, KEEP_ALIVE_TIMEOUT, SESSION_TAKEN_OVER = 0x8B, 0x8D, 0x8E
FILTER_INVALID, TOPIC_INVALID, ALIAS_INVALID, TOO_LARGE, NO_SHARED = 0x8F, 0x90, 0x94, 0x95, 0x9E


class MalformedPacket(ValueError):
    """A packet that breaks the protocol: the broker closes that connection."""

    def __init__(self, message: str, reason: int = MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


def encode_varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def encode_string(s: str) -> bytes:
    raw = s.encode()
    return u16(len(raw)) + raw


def packet(first_byte: int, body: bytes = b"") -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def frame(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """(start, end) of the body of the packet at ``pos``; None while incomplete."""
    length = shift = 0
    i, n = pos + 1, len(buf)
    while i < n:
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            if length > MAX_PACKET_BYTES:
                raise MalformedPacket(f"packet of {length} bytes", TOO_LARGE)
            return (i, i + length) if i + length <= n else None
        shift += 7
        if shift > 21:
            raise MalformedPacket("remaining length longer than 4 bytes")
    return None


class Reader:
    """Reads the fields of one packet body; running short raises MalformedPacket."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPacket("packet shorter than its fields")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.u8()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 21:
                raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            return self.binary().decode()
        except UnicodeDecodeError:
            raise MalformedPacket("string is not valid UTF-8") from None

    def pair(self) -> tuple[str, str]:
        return self.string(), self.string()

    def properties(self) -> dict[int, Any]:
        """A v5 properties section (of repeated ones, such as user properties, the last)."""
        end = self.varint() + self.pos
        if end > len(self.data):
            raise MalformedPacket("properties longer than the packet")
        props: dict[int, Any] = {}
        while self.pos < end:
            ident = self.varint()
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MalformedPacket(f"unknown property 0x{ident:02x}")
            props[ident] = getattr(self, kind)()
        if self.pos != end:
            raise MalformedPacket("a property runs past its properties section")
        return props


def valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def valid_filter(flt: str) -> bool:
    if not flt or "\x00" in flt:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT matching; a filter starting with a wildcard does not match ``$`` topics."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f, t = flt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


# -- sessions and routing (on the loop thread only) ---------------------------------------


class Message:
    __slots__ = ("head", "payload", "qos", "retain", "topic")

    def __init__(self, topic: str, head: bytes, payload: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.head = head  # the encoded topic (length + UTF-8), ready for outbound PUBLISH
        self.payload = payload
        self.qos = qos
        self.retain = retain


class Session:
    __slots__ = ("client_id", "conn", "dropped", "expires_at", "expiry", "inflight", "next_pid",
                 "qos2_in", "queue", "subs")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.subs: dict[str, tuple[int, bool, bool]] = {}  # filter → (qos, no local, RAP)
        self.inflight: dict[int, tuple[Message, bool]] = {}  # sent, unacked; in send order
        self.queue: deque[tuple[Message, bool]] = deque()  # QoS 1 waiting for a slot
        self.qos2_in: set[int] = set()  # inbound QoS 2 ids routed, PUBREL not yet received
        self.conn: Connection | None = None
        self.expiry = 0  # seconds kept after a disconnect; NEVER_EXPIRES: forever
        self.expires_at: float | None = None
        self.next_pid = 0
        self.dropped = 0

    def new_pid(self) -> int:
        pid = self.next_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                self.next_pid = pid
                return pid


class Router:
    """Sessions, subscriptions, retained messages; survives the broker's restarts."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.connections: set[Connection] = set()
        #: topic → [(session, qos, no local, retain as published)]; cleared on any change
        self.cache: dict[str, list[tuple[Session, int, bool, bool]]] = {}
        self.stopping = False

    def publish(self, msg: Message, origin: Session | None) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        targets = self.cache.get(msg.topic)
        if targets is None:
            targets = self._match(msg.topic)
        for s, qos, no_local, rap in targets:
            if not (no_local and s is origin):
                self.deliver(s, msg, min(qos, msg.qos), msg.retain and rap)

    def _match(self, topic: str) -> list[tuple[Session, int, bool, bool]]:
        found: dict[Session, tuple[int, bool, bool]] = {}
        for s in self.sessions.values():
            for flt, opts in s.subs.items():  # overlapping filters: one copy, highest QoS
                if topic_matches(flt, topic) and (s not in found or opts[0] > found[s][0]):
                    found[s] = opts
        if len(self.cache) >= 10_000:
            self.cache.clear()
        targets = self.cache[topic] = [(s, *opts) for s, opts in found.items()]
        return targets

    def deliver(self, s: Session, msg: Message, qos: int, retain: bool) -> None:
        conn = s.conn
        if qos == 0:
            if conn is not None:
                conn.send_publish(msg, 0, 0, retain)
        elif conn is not None and not s.queue and len(s.inflight) < conn.receive_max:
            pid = s.new_pid()
            s.inflight[pid] = (msg, retain)
            conn.send_publish(msg, 1, pid, retain)
        elif len(s.queue) < self.max_queued:
            s.queue.append((msg, retain))
        else:
            s.dropped += 1
            if s.dropped == 1 or s.dropped % 10_000 == 0:
                log.warning("embedded broker: queue of %r full (%d): %d messages dropped",
                            s.client_id, self.max_queued, s.dropped)

    def pump(self, s: Session) -> None:
        """Send queued messages while the client's Receive Maximum allows."""
        conn, queue, inflight = s.conn, s.queue, s.inflight
        if conn is None:
            return
        while queue and len(inflight) < conn.receive_max:
            msg, retain = queue.popleft()
            pid = s.new_pid()
            inflight[pid] = (msg, retain)
            conn.send_publish(msg, 1, pid, retain)

    def send_retained(self, s: Session, flt: str, qos: int) -> None:
        for msg in list(self.retained.values()):
            if topic_matches(flt, msg.topic):
                self.deliver(s, msg, min(qos, msg.qos), True)

    def attach(self, conn: Connection, client_id: str, clean: bool,
               expiry: int) -> tuple[Session, bool]:
        """The session for a new connection, and whether it was resumed."""
        s = self.sessions.get(client_id)
        if s is not None and s.conn is not None:
            log.info("embedded broker: client %r taken over by a new connection", client_id)
            s.conn.close(SESSION_TAKEN_OVER)
            s = self.sessions.get(client_id)
        present = s is not None and not clean
        if s is None or clean:
            if s is not None:
                self.discard(s)
            s = self.sessions[client_id] = Session(client_id)
            self.cache.clear()
        s.conn, s.expiry, s.expires_at = conn, expiry, None
        return s, present

    def resume(self, s: Session) -> None:
        """After CONNACK: unacknowledged messages again (DUP), then the queue."""
        conn = s.conn
        if conn is not None:
            for pid, (msg, retain) in s.inflight.items():
                conn.send_publish(msg, 1, pid, retain, dup=True)
            self.pump(s)

    def detach(self, conn: Connection) -> None:
        """A connection ends: keep or drop its session, publish its will. Idempotent."""
        if conn.closed:
            return
        conn.closed = True
        self.connections.discard(conn)
        s = conn.session
        if s is not None and s.conn is conn:
            s.conn = None
            if s.expiry == 0:
                self.discard(s)
            elif s.expiry != NEVER_EXPIRES:
                s.expires_at = time.monotonic() + s.expiry
        will, conn.will = conn.will, None
        if will is not None and not self.stopping:
            self.publish(will, None)

    def discard(self, s: Session) -> None:
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
            self.cache.clear()

    def tick(self, now: float) -> None:
        """Keep-alive and CONNECT timeouts; session expiry."""
        for conn in list(self.connections):
            limit = conn.keepalive * 1.5 if conn.session is not None else CONNECT_TIMEOUT_S
            if limit and now - conn.last_rx > limit:
                log.info("embedded broker: %s silent for %.1f s: closing", conn.name, limit)
                conn.close(KEEP_ALIVE_TIMEOUT)
        for s in [s for s in self.sessions.values()
                  if s.conn is None and s.expires_at is not None and now >= s.expires_at]:
            self.discard(s)


# -- connections -----------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One client connection: frames packets, answers them, writes coalesced per loop turn."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.flush_pending = False
        self.version = 4
        self.session: Session | None = None  # set once CONNECT is accepted
        self.will: Message | None = None
        self.keepalive = 0
        self.receive_max = V3_RECEIVE_MAXIMUM
        self.last_rx = time.monotonic()
        self.closed = False
        self.name = "connection"

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.name = f"connection from {transport.get_extra_info('peername')}"
        self.router.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.detach(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = time.monotonic()
        buf = self.buf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 2:
                span = frame(buf, pos)
                if span is None:
                    break
                self.handle(buf[pos], bytes(buf[span[0]:span[1]]))
                pos = span[1]
                if self.closed:
                    return
        except (MalformedPacket, IndexError) as exc:  # IndexError: a truncated PUBLISH
            reason = exc.reason if isinstance(exc, MalformedPacket) else MALFORMED
            why = exc if isinstance(exc, MalformedPacket) else "packet shorter than its fields"
            log.warning("embedded broker: %s: %s; closing it", self.name, why)
            self.close(reason)
            return
        except Exception:
            log.exception("embedded broker: %s: unexpected error; closing it", self.name)
            self.close(IMPLEMENTATION_ERROR)
            return
        del buf[:pos]

    # output
    def send(self, *chunks: bytes) -> None:
        self.out.extend(chunks)
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def send_publish(self, msg: Message, qos: int, pid: int, retain: bool,
                     dup: bool = False) -> None:
        pid_bytes = u16(pid) if qos else b""
        props = b"\x00" if self.version == 5 else b""
        size = len(msg.head) + len(pid_bytes) + len(props) + len(msg.payload)
        self.send(bytes((0x30 | dup << 3 | qos << 1 | retain,)), encode_varint(size),
                  msg.head, pid_bytes, props, msg.payload)

    def close(self, reason: int | None = None) -> None:
        """Close (a v5 client is told why); publishes the will unless it was cleared."""
        if self.closed:
            return
        if reason is not None and self.version == 5 and self.session is not None:
            self.send(bytes((DISCONNECT << 4, 1, reason)))
        self.flush()
        self.router.detach(self)
        if self.transport is not None:
            self.transport.close()

    # packets
    def handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if self.session is None:
            if kind != CONNECT or first & 0x0F:
                raise MalformedPacket("the first packet must be CONNECT", PROTOCOL_ERROR)
            return self.on_connect(body)
        if kind == PUBLISH:
            return self.on_publish(first, body)
        if first & 0x0F != (2 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0):
            raise MalformedPacket(f"invalid flags 0x{first:02x} for packet type {kind}")
        s = self.session
        if kind == PUBACK:
            if s.inflight.pop(Reader(body).u16(), None) is not None and s.queue:
                self.router.pump(s)
        elif kind == PUBREL:
            pid = Reader(body).u16()
            s.qos2_in.discard(pid)
            self.send(packet(PUBCOMP << 4, u16(pid)))
        elif kind == SUBSCRIBE:
            self.on_subscribe(body)
        elif kind == UNSUBSCRIBE:
            self.on_unsubscribe(body)
        elif kind == PINGREQ:
            self.send(bytes((PINGRESP << 4, 0)))
        elif kind == DISCONNECT:
            self.on_disconnect(body)
        elif kind in (PUBREC, PUBCOMP):
            pass  # answers to outbound QoS 2, which this broker never sends
        else:
            raise MalformedPacket(f"unexpected packet type {kind}", PROTOCOL_ERROR)
        return None

    def on_connect(self, body: bytes) -> None:
        r = Reader(body)
        name, level = r.string(), r.u8()
        if name not in ("MQTT", "MQIsdp"):
            raise MalformedPacket(f"protocol name {name!r}", PROTOCOL_ERROR)
        if name != "MQTT" or level not in (4, 5):
            log.warning("embedded broker: %s: MQTT protocol level %d refused (only 4 and 5)",
                        self.name, level)
            self.send(packet(CONNACK << 4, b"\x00\x01"))  # unacceptable protocol version
            return self.close()
        self.version = level
        flags = r.u8()
        clean, will_flag = bool(flags & 0x02), bool(flags & 0x04)
        will_qos, will_retain = (flags >> 3) & 3, bool(flags & 0x20)
        if flags & 0x01 or will_qos == 3 or (not will_flag and (will_qos or will_retain)):
            raise MalformedPacket(f"invalid CONNECT flags 0x{flags:02x}")
        self.keepalive = r.u16()
        props = r.properties() if level == 5 else {}
        client_id = r.string()
        will = None
        if will_flag:
            if level == 5:
                r.properties()
            topic = r.string()
            if not valid_topic(topic):
                raise MalformedPacket(f"invalid will topic {topic!r}", TOPIC_INVALID)
            will = Message(topic, encode_string(topic), r.binary(), will_qos, will_retain)
        if flags & 0x80:
            r.string()  # user name: anyone may connect
        if flags & 0x40:
            r.binary()
        if r.remaining():
            raise MalformedPacket("bytes after the CONNECT payload")
        if AUTH_METHOD in props:
            self.send(packet(CONNACK << 4, bytes((0, BAD_AUTH_METHOD, 0))))
            return self.close()
        assigned = ""
        if not client_id:
            if level == 4 and not clean:
                self.send(packet(CONNACK << 4, b"\x00\x02"))  # identifier rejected
                return self.close()
            client_id = assigned = f"auto-{uuid.uuid4().hex}"
        if level == 5:
            self.receive_max = int(props.get(RECEIVE_MAXIMUM, V5_RECEIVE_MAXIMUM))
            if self.receive_max == 0:
                raise MalformedPacket("Receive Maximum 0", PROTOCOL_ERROR)
            expiry = int(props.get(SESSION_EXPIRY, 0))
        else:
            expiry = 0 if clean else NEVER_EXPIRES
        self.name, self.will = f"client {client_id!r}", will  # a refused CONNECT has no will
        s, present = self.router.attach(self, client_id, clean, expiry)
        self.session = s
        if level == 5:
            p = (bytes((MAXIMUM_PACKET_SIZE,)) + MAX_PACKET_BYTES.to_bytes(4, "big")
                 + bytes((SUB_IDS_AVAILABLE, 0, SHARED_SUBS_AVAILABLE, 0)))
            if assigned:
                p += bytes((ASSIGNED_CLIENT_ID,)) + encode_string(assigned)
            self.send(packet(CONNACK << 4, bytes((present, 0)) + encode_varint(len(p)) + p))
        else:
            self.send(packet(CONNACK << 4, bytes((present, 0))))
        log.debug("embedded broker: %s connected (v%s, clean %s, expiry %d, session present %s)",
                  client_id, "5" if level == 5 else "3.1.1", clean, expiry, present)
        self.router.resume(s)
        return None

    def on_publish(self, first: int, body: bytes) -> None:
        qos, retain = (first >> 1) & 3, bool(first & 1)
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        end = 2 + ((body[0] << 8) | body[1])
        head = body[:end]
        if len(head) != end:
            raise MalformedPacket("PUBLISH shorter than its topic")
        pid, pos = 0, end
        if qos:
            pid = (body[pos] << 8) | body[pos + 1]
            pos += 2
            if pid == 0:
                raise MalformedPacket("PUBLISH with packet identifier 0")
        if self.version == 5:
            if body[pos] == 0:  # the usual empty properties
                pos += 1
            else:
                r = Reader(body, pos)
                if TOPIC_ALIAS in r.properties():
                    raise MalformedPacket("topic alias (Topic Alias Maximum is 0)", ALIAS_INVALID)
                pos = r.pos
        try:
            topic = head[2:].decode()
        except UnicodeDecodeError:
            raise MalformedPacket("topic is not valid UTF-8", TOPIC_INVALID) from None
        if not valid_topic(topic):
            raise MalformedPacket(f"invalid topic name {topic!r}", TOPIC_INVALID)
        msg = Message(topic, head, body[pos:], qos, retain)
        s = self.session
        assert s is not None
        if qos == 1:
            self.router.publish(msg, s)
            self.send(bytes((PUBACK << 4, 2)), u16(pid))
        elif qos == 0:
            self.router.publish(msg, s)
        else:
            if pid not in s.qos2_in:  # a resent QoS 2 PUBLISH is not routed twice
                s.qos2_in.add(pid)
                self.router.publish(msg, s)
            self.send(bytes((PUBREC << 4, 2)), u16(pid))

    def on_subscribe(self, body: bytes) -> None:
        s = self.session
        assert s is not None
        r = Reader(body)
        pid = r.u16()
        if self.version == 5:
            r.properties()  # a subscription identifier is accepted but not echoed
        if not r.remaining():
            raise MalformedPacket("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
        codes, new = bytearray(), []
        while r.remaining():
            flt, opts = r.string(), r.u8()
            qos, handling = opts & 3, (opts >> 4) & 3
            if qos == 3 or handling == 3 or opts & 0xC0 or (self.version == 4 and opts & 0xFC):
                raise MalformedPacket(f"invalid subscription options 0x{opts:02x}")
            if not valid_filter(flt) or flt.startswith("$share/"):
                codes.append(0x80 if self.version == 4 else
                             NO_SHARED if flt.startswith("$share/") else FILTER_INVALID)
                continue
            granted = min(qos, 1)
            existed = flt in s.subs
            s.subs[flt] = (granted, bool(opts & 0x04), bool(opts & 0x08))
            codes.append(granted)
            if handling == 0 or (handling == 1 and not existed):
                new.append((flt, granted))
        self.router.cache.clear()
        props = b"\x00" if self.version == 5 else b""
        self.send(packet(SUBACK << 4, u16(pid) + props + bytes(codes)))
        for flt, granted in new:
            self.router.send_retained(s, flt, granted)

    def on_unsubscribe(self, body: bytes) -> None:
        s = self.session
        assert s is not None
        r = Reader(body)
        pid = r.u16()
        if self.version == 5:
            r.properties()
        codes = bytearray()
        while r.remaining():
            codes.append(0x00 if s.subs.pop(r.string(), None) is not None else 0x11)
        if not codes:
            raise MalformedPacket("UNSUBSCRIBE without a topic filter", PROTOCOL_ERROR)
        self.router.cache.clear()
        tail = b"\x00" + bytes(codes) if self.version == 5 else b""
        self.send(packet(UNSUBACK << 4, u16(pid) + tail))

    def on_disconnect(self, body: bytes) -> None:
        reason = 0
        if self.version == 5 and body:
            reason = body[0]
            props = Reader(body, 1).properties() if len(body) > 1 else {}
            s = self.session
            if SESSION_EXPIRY in props and s is not None and s.expiry:
                s.expiry = int(props[SESSION_EXPIRY])
        if reason != 0x04:  # 0x04: disconnect with will message
            self.will = None
        self.close()


# -- the broker ------------------------------------------------------------------------


class EmbeddedBroker:
    """``with EmbeddedBroker() as b: b.port`` — a broker thread, stopped on exit."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 max_queued: int = MAX_QUEUED) -> None:
        self.host = host
        self.port = port
        self.router = Router(max_queued)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        """Listen (on ``port``, or a free one if 0, then stored in ``port``)."""
        if self._thread is not None:
            raise RuntimeError("embedded broker already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(loop, ready, failed),
                                  name="embedded-mqtt-broker", daemon=True)
        thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"embedded broker did not listen within {timeout_s} s")
        if failed:
            thread.join()
            raise OSError(f"embedded broker cannot listen on {self.host}:{self.port}: "
                          f"{failed[0]}") from failed[0]
        self._loop, self._thread = loop, thread
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)
        return self

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event,
             failed: list[BaseException]) -> None:
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(loop.create_server(
                lambda: Connection(self.router), self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            failed.append(exc)
            loop.close()
            ready.set()
            return
        ticker = loop.create_task(self._tick())
        ready.set()
        try:
            loop.run_forever()
        finally:
            ticker.cancel()
            loop.run_until_complete(asyncio.gather(ticker, return_exceptions=True))
            loop.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self.router.tick(time.monotonic())
            except Exception:
                log.exception("embedded broker: housekeeping failed")

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self.router.stopping = True  # no wills: the clients did nothing wrong
        try:
            conns = list(self.router.connections)
            for conn in conns:
                conn.close(SHUTTING_DOWN)
            await asyncio.sleep(0.05)  # let the transports flush and close
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.sleep(0)
        finally:
            self.router.stopping = False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection and stop the thread; sessions and retained stay."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
        except Exception:
            log.exception("embedded broker: shutdown failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    def restart(self) -> None:
        """Stop and listen again on the same port, like mosquitto with persistence."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["EmbeddedBroker", "MalformedPacket", "topic_matches"]
