"""Ingest keeps a message its own code failed on, as a dead letter, and only that one.

The paho callback is called directly, as paho's network thread calls it; the
broker plays no part in what is tested here.
"""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest

from appliance.config import Config
from appliance.mqtt import payloads
from appliance.mqtt.topics import Topics
from appliance.stages.ingest import IngestStage


def test_a_message_whose_parsing_raised_is_a_dead_letter_and_the_rest_are_readings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    decode = payloads.decode

    def failing(payload: bytes, limits: object) -> object:
        if payload == b"boom":
            raise RuntimeError("a bug")
        return decode(payload, limits)

    monkeypatch.setattr(payloads, "decode", failing)
    out: queue.Queue = queue.Queue()
    cfg = Config()
    ingest = IngestStage(cfg, out, queue.Queue())
    topic = Topics.from_config(cfg).reading("l1", "a1", "temp").encode()
    for mid, payload in enumerate((b"1.5", b"boom", b"2.5"), start=1):
        msg = mqtt.MQTTMessage(mid=mid, topic=topic)
        msg.payload, msg.qos = payload, 1
        ingest._on_message(None, None, msg)
    ingest.hand_on(due_only=False)
    batch = out.get_nowait()
    assert list(batch.values) == [1.5, 2.5]
    assert [d.reason for d in batch.dead_letters] == ["internal error: RuntimeError: a bug"]
    assert [d.payload for d in batch.dead_letters] == [b"boom"]
    assert batch.mids == (1, 2, 3)              # every message is acked once stored
    assert ingest.counters.processed == 3 and ingest.counters.errors == 1


def test_messages_set_aside_for_their_time_are_logged_with_a_count_at_most_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    from appliance.clock import ManualClock

    cfg = Config()
    ingest = IngestStage(cfg, queue.Queue(), queue.Queue())
    clock = ingest.clock = ManualClock()
    topic = Topics.from_config(cfg).reading("l1", "a1", "temp").encode()

    def send(ts: float) -> None:
        msg = mqtt.MQTTMessage(mid=1, topic=topic)
        msg.payload, msg.qos = f'{{"ts": {ts}, "value": 1.0}}'.encode(), 1
        ingest._on_message(None, None, msg)

    future = clock.time() + cfg.limits.max_future_s + 60.0
    send(future)
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(lines) == 1 and ("1 with an event time more than [limits] max_future_s = "
                                "300 s ahead of this clock") in lines[0]
    for _ in range(5):  # within the minute: counted, not logged
        send(future)
    send(clock.time() - cfg.limits.max_past_s - 60.0)
    assert sum("set aside" in r.getMessage() for r in caplog.records) == 1
    clock.advance(61.0)
    send(clock.time() + cfg.limits.max_future_s + 60.0)
    last = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()][-1]
    assert "6 with an event time more than [limits] max_future_s" in last
    assert "1 with an event time older than [limits] max_past_s" in last
    assert ingest.counters.extra["dead_letters"] == 8


def test_batches_of_one_sensor_set_become_readings_and_a_bad_value_a_dead_letter() -> None:
    """The second batch on a topic takes the fast path (its sensors seen before): it makes
    the same readings, and a bad value in it is still refused, the rest kept."""
    import json

    from appliance.config import from_dict

    out: queue.Queue = queue.Queue()
    cfg = from_dict({"limits": {"max_series": 3}}, source="<test>")
    ingest = IngestStage(cfg, out, queue.Queue())
    topics = Topics.from_config(cfg)
    now = ingest.clock.time()
    sent = [(topics.batch("l1", "a1"), {"t": 1, "v": 2}),
            (topics.batch("l1", "a1"), {"t": 3, "v": 4}),
            (topics.batch("l1", "a1"), {"t": 5, "v": "x"}),
            (topics.batch("l1", "a2"), {"t": 6, "v": 7}),   # a2/v: beyond max_series
            (topics.batch("l1", "a2"), {"t": 8, "v": 9})]
    for mid, (topic, values) in enumerate(sent, start=1):
        msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
        msg.payload = json.dumps({"ts": now - 10, "values": values}).encode()
        msg.qos = 1
        ingest._on_message(None, None, msg)
    ingest.hand_on(due_only=False)
    batch = out.get_nowait()
    assert [(k.asset, k.sensor) for k in batch.keys] == [
        ("a1", "t"), ("a1", "v"), ("a1", "t"), ("a1", "v"), ("a1", "t"), ("a2", "t"),
        ("a2", "t")]
    assert list(batch.values) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
    assert [d.reason.split(":")[0] for d in batch.dead_letters] == ["part of batch refused"] * 3
    assert "'v'" in batch.dead_letters[0].reason and "max_series" in batch.dead_letters[1].reason
    assert batch.keys[0] is batch.keys[2]  # one key object per series
