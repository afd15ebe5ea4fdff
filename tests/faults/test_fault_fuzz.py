"""Fault 4: 100,000 fuzzed payloads and topics.

Every message is one the contract refuses: random bytes, oversized payloads,
deeply nested JSON, NaN and Inf, wrong types, times far off, unicode topic
levels, wrong topic depths.  None may crash anything; every one must be counted
in ``dead_letters`` (the status counter and the table, exactly); the service's
memory must stay flat.  Topics that are not UTF-8 cannot cross mosquitto (it
closes the connection of a client that sends one), so a second test shows that
and feeds such a topic to the ingest stage directly.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import struct
import time
from collections import Counter

import numpy as np
import paho.mqtt.client as mqtt

from appliance.config import Config
from appliance.stages.ingest import IngestStage
from tests.support.faults import (
    ListPublisher,
    fault_config,
    query,
    stage,
    summary,
    wait_drained,
)
from tests.support.service import TOPICS

N = 100_000
MAX_PAYLOAD = 64 * 1024  # [limits] max_payload_bytes, the default
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
READING_TOPICS = [TOPICS.reading("f1", f"a{a}", f"s{s}") for a in range(8) for s in range(4)]
BATCH_TOPICS = [TOPICS.batch("f1", f"a{a}") for a in range(8)]
FAULT_TOPICS = [TOPICS.fault("f1", f"a{a}") for a in range(8)]
# No control characters, surrogates, non-characters, NUL, '+', '#' or '/': mosquitto
# would refuse the PUBLISH (or the filter), not the appliance.
UNICODE = ("äöüßéñøЖжДλΩ中文线设备😀🔥٣عربيةשלום\u200b\u0301\u00a0 !*$%~`'\"\\:;,<>?=&|@"
           "ẞǅﬁ𝔘𝔫𝔦")
ASCII_JUNK = "abcdefghijklmnopqrstuvwxyzXYZ{}[]:,\"'!?@ -_.0123456789"


def _parses(payload: bytes) -> bool:
    try:
        json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def fuzz(rng: np.random.Generator, n: int, now: float) -> list[tuple[str, bytes, str]]:
    """``n`` (topic, payload, kind) the appliance must refuse, each for its own reason."""
    t = now - 600.0

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def ustr(k: int) -> str:
        return "".join(pick(UNICODE) for _ in range(k))

    def name() -> str:
        return "".join(pick("abcXYZ019_.-") for _ in range(int(rng.integers(1, 12))))

    def random_bytes():
        p = rng.bytes(int(rng.integers(0, 400)))
        return pick(READING_TOPICS), (b"\xff" + p if _parses(p) else p)

    def junk_text():
        p = "".join(pick(ASCII_JUNK) for _ in range(int(rng.integers(1, 60)))).encode()
        return pick(READING_TOPICS + BATCH_TOPICS), (b"x" + p if _parses(p) else p)

    def huge():
        size = int(rng.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 8000))
        if rng.random() < 0.5:  # a valid number, but too big
            return pick(READING_TOPICS), b"1" + b" " * (size - 1)
        pad = "x" * (size - 40)
        return pick(READING_TOPICS), json.dumps({"ts": t, "value": 1, "p": pad}).encode()

    def deep():
        d = int(rng.integers(2, 30_000)) if rng.random() < 0.7 else int(rng.integers(2, 900))
        form = int(rng.integers(3))
        if form == 0:
            return pick(READING_TOPICS), b"[" * d + b"]" * d
        if form == 1:
            return pick(READING_TOPICS + FAULT_TOPICS), b'{"a":' * d + b"1" + b"}" * d
        inner = b"[" * d + b"1" + b"]" * d
        return pick(READING_TOPICS), b'{"ts": %.3f, "value": ' % t + inner + b"}"

    nan_inf_forms = [
        b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999",
        b'{"ts": %.3f, "value": NaN}' % t, b'{"ts": %.3f, "value": Infinity}' % t,
        b'{"ts": %.3f, "value": -Infinity}' % t, b'{"ts": NaN, "value": 1}',
        b'{"ts": Infinity, "value": 1}', b'{"value": 1e309}',
    ]

    def nan_inf():
        if rng.random() < 0.15:
            return pick(BATCH_TOPICS), b'{"ts": %.3f, "values": {"s1": NaN, "s2": Infinity}}' % t
        return pick(READING_TOPICS), pick(nan_inf_forms)

    wrong_reading = [
        b'{"ts": %.3f, "value": "12.5"}' % t, b'{"ts": %.3f, "value": true}' % t,
        b'{"ts": %.3f, "value": null}' % t, b'{"ts": %.3f, "value": [1]}' % t,
        b'{"ts": %.3f, "value": {"v": 1}}' % t, b'{"ts": "yesterday", "value": 1}',
        b'{"ts": true, "value": 1}', b'{"ts": [1], "value": 1}', b'{"ts": %.3f}' % t,
        b'"12"', b"true", b"false", b"null", b"[]", b"{}", b"[1, 2]", b'{"value": "NaN"}',
        b"", b" ", b"0x1F", b"1,5", b"--1", b"+1", b"1.", b".5", b"01",
    ]
    wrong_fault = [b'{"state": "exploded"}', b"[1]", b'{"ts": %.3f, "state": "start", '
                   b'"code": 5}' % t, b'"start"', b"1", b'{"state": null}']
    wrong_batch = [b"1", b"[]", b'{"ts": %.3f, "values": []}' % t,
                   b'{"ts": %.3f, "values": {}}' % t, b'{"values": {"bad name!": 1}}',
                   b'{"values": {"fault": 1}}', b'{"values": {"s1": "x", "s2": null}}',
                   b'{"ts": "soon", "values": {"s1": 1}}']

    def wrong_type():
        r = rng.random()
        if r < 0.6:
            return pick(READING_TOPICS), pick(wrong_reading)
        if r < 0.8:
            return pick(FAULT_TOPICS), pick(wrong_fault)
        return pick(BATCH_TOPICS), pick(wrong_batch)

    def far_time():
        form = int(rng.integers(5))
        if form == 0:
            ts = now + float(rng.uniform(1e4, 1e9))
        elif form == 1:
            ts = now * 1000.0  # milliseconds
        elif form == 2:
            ts = float(rng.uniform(-1e9, now - 11 * 365 * 86400))
        else:
            ts = None
        if ts is None:
            stamp = pick([b'"2999-01-01T00:00:00Z"', b'"2024-13-45T00:00:00Z"', b'"1970-01-01"'])
            return pick(READING_TOPICS), b'{"ts": ' + stamp + b', "value": 1}'
        return pick(READING_TOPICS), b'{"ts": %.3f, "value": 1}' % ts

    def unicode_topic():
        levels = [name() for _ in range(int(rng.integers(2, 5)))]
        levels[int(rng.integers(len(levels)))] = ustr(int(rng.integers(1, 8)))
        return "plant/" + "/".join(levels), b"1"

    def bad_depth():
        form = int(rng.integers(6))
        if form == 0:
            return f"plant/{name()}", b"1"
        if form == 1:
            return "plant/" + "/".join(name() for _ in range(int(rng.integers(4, 9)))), b"1"
        if form == 2:
            return f"plant//{name()}/{name()}", b"1"
        if form == 3:
            return f"plant/{name()}/{name()}/", b"1"
        if form == 4:
            return "plant/", b"1"
        return f"plant/{name()}/{'x' * int(rng.integers(65, 3000))}/{name()}", b"1"

    kinds = {random_bytes: 0.18, junk_text: 0.10, huge: 0.004, deep: 0.08, nan_inf: 0.10,
             wrong_type: 0.18, far_time: 0.08, unicode_topic: 0.136, bad_depth: 0.14}
    funcs = list(kinds)
    p = np.array(list(kinds.values()))
    choice = rng.choice(len(funcs), size=n, p=p / p.sum())
    out = []
    for k in choice.tolist():
        topic, payload = funcs[k]()
        out.append((topic, payload, funcs[k].__name__))
    return out


def test_100k_fuzzed_messages_all_dead_lettered_no_crash_flat_memory(
        tmp_path, broker, fault_service):
    rng = np.random.default_rng(4)
    db = tmp_path / "appliance.duckdb"
    cfg = fault_config(tmp_path, broker, db=db)
    svc = fault_service(cfg, db).start()
    messages = fuzz(rng, N, time.time())
    kinds = Counter(k for _, _, k in messages)
    pub = ListPublisher(broker, [(t, p) for t, p, _ in messages])
    rss: dict[int, int] = {}  # dead letters counted -> VmRSS (kB), every 10k
    try:
        pub.start()
        for mark in range(10_000, N + 1, 10_000):
            svc.wait_for(lambda s, m=mark: stage(s, "ingest", "dead_letters") >= m,
                         timeout_s=90, what=f"{mark} dead letters")
            rss[mark] = svc.rss_kb()
        drain_s = time.monotonic() - pub.finished_at
        pub.wait_acked(30)
        final = wait_drained(svc.status, timeout_s=30, alive=svc.alive)
    finally:
        pub.close()
    code, _ = svc.terminate()
    assert code == 0, svc.log_text()[-3000:]

    table = query(db, "SELECT count(*) FROM dead_letters")[0][0]
    readings = query(db, "SELECT count(*) FROM readings")[0][0]
    reasons = query(db, "SELECT split_part(reason, ':', 1) AS r, count(*) FROM dead_letters "
                        "GROUP BY r ORDER BY 2 DESC LIMIT 8")
    growth = (rss[N] - rss[20_000]) / rss[20_000]
    ing = final["stages"]["ingest"]
    print(f"fuzz: {dict(kinds)}; published {pub.acked}, dead letters: status "
          f"{ing.get('dead_letters')}, table {table}; readings stored {readings}; RSS MiB by "
          f"dead letters counted {({k: round(v / 1024, 1) for k, v in rss.items()})}, "
          f"20k -> 100k {growth:+.1%}; all counted {drain_s:.1f} s after the last publish; "
          f"top reasons {reasons}")
    summary("fuzz", pub.acked, readings, 0, N - table, drain_s)
    assert pub.acked == N
    assert ing.get("dead_letters") == N
    assert table == N
    assert readings == 0
    assert ing["processed"] == N and ing["errors"] == 0  # no unexpected error on any message
    assert all(s["state"] == "running" and s["restarts"] == 0 and s["errors"] == 0
               for s in final["stages"].values()), final["stages"]
    assert abs(growth) <= 0.10, f"RSS grew {growth:+.1%}"


def _raw_publish(host: str, port: int, topic: bytes) -> bytes:
    """CONNECT and a QoS 1 PUBLISH on ``topic`` over a bare socket; what the broker says."""
    def s(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    with socket.create_connection((host, port), timeout=2) as sk:
        var, pl = s(b"MQTT") + bytes([4, 2]) + struct.pack("!H", 30), s(b"raw-fuzz")
        sk.sendall(bytes([0x10, len(var) + len(pl)]) + var + pl)
        assert sk.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        body = s(topic) + struct.pack("!H", 1) + b"1"
        sk.sendall(bytes([0x32, len(body)]) + body)
        try:
            return sk.recv(4)  # b"" = closed; a PUBACK is b"\x40\x02\x00\x01"
        except TimeoutError:
            return b"timeout"


def test_non_utf8_topics_never_pass_the_broker_and_ingest_dead_letters_them(broker):
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(m._topic)
    sub.connect(broker.host, broker.port)
    sub.subscribe("plant/#", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        bad = [b"plant/l1/\xff\xfe/temp", b"plant/\xc3\x28/a/s", b"plant/l1/\xed\xa0\x80/s"]
        answers = [_raw_publish(broker.host, broker.port, t) for t in bad]
        ok = _raw_publish(broker.host, broker.port, b"plant/l1/a1/ok")
        time.sleep(0.3)
    finally:
        sub.disconnect()
        sub.loop_stop()
    print(f"fuzz_non_utf8: broker answers {answers} (b'' = connection closed), "
          f"valid topic answer {ok}; delivered {got}")
    assert answers == [b""] * len(bad)
    assert ok == b"\x40\x02\x00\x01"
    assert got == [b"plant/l1/a1/ok"]

    # Should one arrive anyway (another broker), ingest dead-letters it.
    out: queue.Queue = queue.Queue()
    ingest = IngestStage(Config(), out, queue.Queue())
    for i, topic in enumerate(bad, start=1):
        msg = mqtt.MQTTMessage(mid=i, topic=topic)
        msg.payload, msg.qos = b"1", 1
        ingest._on_message(None, None, msg)  # paho's callback, as its network thread calls it
    ingest.hand_on(due_only=False)
    batch = out.get_nowait()
    assert [d.reason for d in batch.dead_letters] == ["topic is not UTF-8"] * len(bad)
    assert batch.mids == (1, 2, 3) and batch.keys == ()
    assert ingest.counters.extra["dead_letters"] == len(bad) and ingest.counters.errors == 0
