"""The embedded broker against real paho clients (and a few raw sockets), and the service."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator

import duckdb
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import from_dict
from appliance.embedded_broker import EmbeddedBroker, encode_string, encode_varint
from appliance.runner import Service
from tests.conftest import REPO

WAIT_S = 5.0


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


class Peer:
    """A connected paho client whose messages land in a queue."""

    def __init__(self, broker: EmbeddedBroker, client_id: str = "", *, v5: bool = False,
                 clean: bool = True, expiry: int = 0, receive_max: int = 0,
                 manual_ack: bool = False) -> None:
        kwargs = {} if v5 else {"clean_session": clean}
        self.client = c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kwargs)
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.unsubacks: queue.Queue[list[int]] = queue.Queue()
        connected = threading.Event()
        self.session_present = None
        c.manual_ack_set(manual_ack)
        c.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put([r.value for r in codes])
        c.on_unsubscribe = lambda _c, _u, _mid, codes, _p: self.unsubacks.put(
            [r.value for r in codes])

        def on_connect(_c, _u, flags, reason_code, _p) -> None:
            assert not reason_code.is_failure, reason_code
            self.session_present = flags.session_present
            connected.set()

        c.on_connect = on_connect
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if expiry:
                props.SessionExpiryInterval = expiry
            if receive_max:
                props.ReceiveMaximum = receive_max
            c.connect(broker.host, broker.port, keepalive=30, clean_start=clean,
                      properties=props)
        else:
            c.connect(broker.host, broker.port, keepalive=30)
        c.loop_start()
        assert connected.wait(WAIT_S), "no CONNACK"

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        self.client.subscribe([(f, qos) for f in filters])
        return self.subacks.get(timeout=WAIT_S)

    def unsubscribe(self, *filters: str) -> list[int]:
        self.client.unsubscribe(list(filters))
        return self.unsubacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()

    def take(self, n: int, timeout_s: float = WAIT_S) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout_s
        return [self.inbox.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def rest(self, quiet_s: float = 0.3) -> list[mqtt.MQTTMessage]:
        """Whatever arrives until nothing has for ``quiet_s``."""
        got = []
        with pytest.raises(queue.Empty):
            while True:
                got.append(self.inbox.get(timeout=quiet_s))
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def raw_connect(broker: EmbeddedBroker, client_id: str, keepalive: int = 30,
                will: tuple[str, bytes] | None = None) -> socket.socket:
    """An MQTT 3.1.1 CONNECT by hand (will: QoS 1, retained); returns after CONNACK."""
    flags, payload = 0x02, encode_string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20
        payload += encode_string(will[0]) + len(will[1]).to_bytes(2, "big") + will[1]
    body = encode_string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload
    sock = socket.create_connection((broker.host, broker.port), timeout=WAIT_S)
    sock.sendall(b"\x10" + encode_varint(len(body)) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def closed_by_broker(sock: socket.socket, timeout_s: float = WAIT_S) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def wait_offline(broker: EmbeddedBroker, client_id: str) -> None:
    """Until the broker has seen the client go (its session stays)."""
    deadline = time.monotonic() + WAIT_S
    while broker.router.sessions[client_id].conn is not None:
        assert time.monotonic() < deadline, f"{client_id} still connected"
        time.sleep(0.01)


def topics(msgs: list[mqtt.MQTTMessage]) -> set[tuple[str, bytes]]:
    return {(m.topic, m.payload) for m in msgs}


def test_pubsub_v311_and_v5_with_wildcards(broker):
    sub3, sub5, dollar = Peer(broker), Peer(broker, v5=True), Peer(broker, v5=True)
    assert sub3.subscribe("a/+/c", "x/#", qos=0) == [0, 0]
    assert sub5.subscribe("#", qos=2) == [1]  # QoS 2 is granted as 1
    assert dollar.subscribe("$SYS/+") == [1]
    pub3, pub5 = Peer(broker), Peer(broker, v5=True)
    sent = ["a/b/c", "a/b/c/d", "a/c", "x", "x/y/z", "$SYS/load", "q"]
    for i, t in enumerate(sent):
        pub3.publish(t, f"3-{i}")
    props = Properties(PacketTypes.PUBLISH)  # v5 PUBLISH properties are parsed and skipped
    props.UserProperty = ("k", "v")
    props.MessageExpiryInterval = 60
    pub5.publish("x/y", "5-y", qos=0)
    pub5.publish("a/z/c", "5-x", properties=props)

    got3, got5, got_dollar = sub3.rest(), sub5.rest(), dollar.rest()
    assert topics(got3) == {("a/b/c", b"3-0"), ("x", b"3-3"), ("x/y/z", b"3-4"),
                            ("a/z/c", b"5-x"), ("x/y", b"5-y")}
    assert {m.qos for m in got3} == {0}
    assert topics(got5) == {(t, f"3-{i}".encode()) for i, t in enumerate(sent)
                            if t != "$SYS/load"} | {("a/z/c", b"5-x"), ("x/y", b"5-y")}
    assert {m.qos for m in got5 if m.topic != "x/y"} == {1}
    assert topics(got_dollar) == {("$SYS/load", b"3-5")}
    assert sub5.unsubscribe("#", "never/subscribed") == [0x00, 0x11]
    pub3.publish("a/b/c", "after")
    assert topics(sub3.rest()) == {("a/b/c", b"after")}
    assert sub5.rest() == []
    for p in (sub3, sub5, dollar, pub3, pub5):
        p.close()


def test_retained_messages_are_delivered_on_subscribe(broker):
    pub = Peer(broker)
    pub.publish("r/3", "three", qos=0, retain=True)
    pub.publish("r/1", "one", retain=True)
    pub.publish("r/2", "two", retain=True)
    pub.publish("r/2", "", retain=True)  # an empty retained message clears the topic
    for v5, kept, live in ((False, b"one", b"live-3"), (True, b"live-3", b"live-5")):
        sub = Peer(broker, v5=v5)
        sub.subscribe("r/+")
        got = sub.rest()
        assert {(m.topic, m.payload, m.retain) for m in got} == {
            ("r/1", kept, True), ("r/3", b"three", True)}
        assert {m.topic: m.qos for m in got} == {"r/1": 1, "r/3": 0}
        pub.publish("r/1", live, retain=True)  # to a subscriber already there: retain 0
        [m] = sub.rest()
        assert (m.topic, m.payload, m.retain) == ("r/1", live, False)
        sub.close()
    pub.close()


def test_receive_maximum_bounds_unacknowledged_messages(broker):
    sub = Peer(broker, "rm", v5=True, receive_max=100, manual_ack=True)
    sub.subscribe("rm/#")
    pub = Peer(broker)
    n = 250
    for i in range(n):
        pub.client.publish("rm/x", str(i), qos=1)
    pub.publish("rm/x", "last")
    got: list[mqtt.MQTTMessage] = []
    for expected in (100, 100, 51):
        batch = sub.take(expected)
        assert sub.rest(quiet_s=0.5) == []  # no more until some are acknowledged
        got += batch
        for m in batch:
            sub.client.ack(m.mid, m.qos)
    assert [m.payload for m in got] == [str(i).encode() for i in range(n)] + [b"last"]
    sub.close()
    pub.close()


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
def test_persistent_session_gets_what_was_published_while_away(broker, v5):
    sub = Peer(broker, f"away-{v5}", v5=v5, clean=False, expiry=60)
    assert sub.session_present is False
    sub.subscribe("p/#")
    sub.close()
    wait_offline(broker, f"away-{v5}")
    pub = Peer(broker)
    pub.publish("p/zero", "not kept for an offline session", qos=0)
    for i in range(50):  # after these are acknowledged, the QoS 0 one has been routed
        pub.publish(f"p/{i % 3}", str(i))
    sub = Peer(broker, f"away-{v5}", v5=v5, clean=False, expiry=60)
    assert sub.session_present is True
    got = sub.take(50)
    assert [m.payload for m in got] == [str(i).encode() for i in range(50)]
    assert sub.rest() == []
    sub.close()
    # A clean start drops the session: nothing queued, no subscription.
    sub = Peer(broker, f"away-{v5}", v5=v5, clean=True)
    assert sub.session_present is False
    pub.publish("p/1", "lost")
    assert sub.rest() == []
    sub.close()
    pub.close()


def test_unacknowledged_messages_are_redelivered_with_dup(broker):
    def connect() -> Peer:
        return Peer(broker, "redeliver", v5=True, clean=False, expiry=60, manual_ack=True)

    sub = connect()
    sub.subscribe("d/#")
    pub = Peer(broker)
    for i in range(10):
        pub.publish("d/x", str(i))
    first = sub.take(10)
    assert not any(m.dup for m in first)
    sub.close()  # nothing acknowledged
    wait_offline(broker, "redeliver")
    for i in range(10, 15):
        pub.publish("d/x", str(i))
    pub.close()
    broker.restart()  # the sessions outlive a restart of the broker
    sub = connect()
    assert sub.session_present is True
    again = sub.take(15)
    assert [(m.payload, m.dup) for m in again] == (
        [(str(i).encode(), True) for i in range(10)] +
        [(str(i).encode(), False) for i in range(10, 15)])
    for m in again:
        sub.client.ack(m.mid, m.qos)
    time.sleep(0.2)
    sub.close()
    sub = connect()
    assert sub.rest() == []  # all acknowledged: nothing comes back
    sub.close()


def test_will_is_published_on_abrupt_close_not_on_disconnect(broker):
    sub = Peer(broker)
    sub.subscribe("w/#")
    polite = raw_connect(broker, "polite", will=("w/polite", b"gone"))
    polite.sendall(b"\xe0\x00")  # DISCONNECT
    assert closed_by_broker(polite)
    rude = raw_connect(broker, "rude", will=("w/rude", b"gone"))
    rude.close()
    [will] = sub.take(1)
    assert (will.topic, will.payload, will.qos) == ("w/rude", b"gone", 1)
    assert sub.rest() == []
    late = Peer(broker, v5=True)  # the will was retained
    late.subscribe("w/+")
    [kept] = late.take(1)
    assert (kept.topic, kept.payload, kept.retain) == ("w/rude", b"gone", True)
    sub.close()
    late.close()


def test_keepalive_timeout_closes_and_publishes_will(broker):
    sub = Peer(broker)
    sub.subscribe("k/#")
    t0 = time.monotonic()
    silent = raw_connect(broker, "silent", keepalive=1, will=("k/silent", b"timeout"))
    assert closed_by_broker(silent)
    assert 1.4 < time.monotonic() - t0 < 4.0
    assert [m.payload for m in sub.take(1)] == [b"timeout"]
    sub.close()


def test_takeover_qos2_and_malformed_packets(broker):
    first = raw_connect(broker, "same-id")
    second = raw_connect(broker, "same-id")
    assert closed_by_broker(first)  # the older connection is closed
    second.close()
    for garbage in (b"\x30\xff\xff\xff\xff\x7f",  # remaining length of 5 bytes
                    b"\x82\x00"):  # SUBSCRIBE before CONNECT
        sock = socket.create_connection((broker.host, broker.port), timeout=WAIT_S)
        sock.sendall(garbage)
        assert closed_by_broker(sock)
    bad = raw_connect(broker, "bad")
    bad.sendall(b"\x30\x05\x00\x09abc")  # topic longer than the packet
    assert closed_by_broker(bad)
    sub, pub = Peer(broker), Peer(broker, v5=True)  # the broker still serves
    assert sub.subscribe("q2", qos=2) == [1]
    pub.publish("q2", "exactly once", qos=2)
    [m] = sub.take(1)
    assert (m.payload, m.qos) == (b"exactly once", 1)
    assert sub.rest() == []
    sub.close()
    pub.close()


def test_the_service_runs_against_the_embedded_broker(broker, tmp_path):
    db = tmp_path / "a.duckdb"
    cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port},
                     "storage": {"path": str(db)},
                     "model": {"path": str(REPO / "models/starter.onnx")}})
    service = Service(cfg)
    service.start()
    stopped = False
    try:
        assert service.pipeline.stages["ingest"].connected.wait(10)  # type: ignore[attr-defined]
        service.beat()  # a retained status
        pub = Peer(broker)
        n, t0 = 2000, time.time() - 60
        infos = [pub.client.publish("plant/l1/a1/s1",
                                    json.dumps({"ts": t0 + i * 0.01, "value": i}), qos=1)
                 for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
        store = service.pipeline.stages["store"]
        deadline = time.monotonic() + 20
        while store.counters.processed < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.counters.processed == n
        pub.close()
        assert service.stop()
        stopped = True
    finally:
        if not stopped:
            service.stop()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*), sum(value) FROM readings").fetchone() == (
            n, float(sum(range(n))))
    finally:
        con.close()
    status = Peer(broker)
    status.subscribe(cfg.status.topic)
    [m] = status.take(1)
    assert (m.payload, m.retain) == (b"offline", True)
    status.close()
