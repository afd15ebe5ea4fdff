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
