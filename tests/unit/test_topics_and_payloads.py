import json
import math

import pytest

from appliance import payloads
from appliance.config import Config, LimitsConfig
from appliance.topics import Route, Topics, UnroutableTopic

NOW = 1_750_000_000.0
LIMITS = LimitsConfig()
TOPICS = Topics.from_config(Config())


def test_subscriptions_cover_every_routable_shape():
    assert set(TOPICS.subscriptions()) == {"plant/+/+/+", "plant/+/+"}
    assert TOPICS.route("plant/l1/a1/temp").route is Route.READING
    assert TOPICS.route("plant/l1/a1/fault").route is Route.FAULT
    assert TOPICS.route("plant/l1/a1").route is Route.BATCH
    assert TOPICS.alert("l1", "a1") == "appliance/l1/a1/alert"


@pytest.mark.parametrize(("topic", "reason"), [
    ("other/l1/a1/t", "outside prefix"),
    ("plant/l1", "levels"),
    ("plant/l1/a1/t/x", "levels"),
    ("plant/l1/a 1/t", "not a name"),
    ("plant/l1//t", "not a name"),
    ("plant/l1/ä/t", "not a name"),
])
def test_unroutable_topics_say_why(topic, reason):
    with pytest.raises(UnroutableTopic, match=reason):
        TOPICS.route(topic)


def parse(topic: str, payload: bytes) -> payloads.Parsed:
    return payloads.parse(TOPICS.route(topic), payload, NOW, LIMITS)


def test_json_reading_with_unix_and_rfc3339_ts():
    r = parse("plant/l1/a1/temp", b'{"ts": 1749999990.5, "value": 21.5}').readings[0]
    assert (r.key.line, r.key.asset, r.key.sensor, r.ts, r.value) == (
        "l1", "a1", "temp", 1749999990.5, 21.5)
    r = parse("plant/l1/a1/temp", b'{"ts": "2025-06-15T15:06:30Z", "value": 1}').readings[0]
    assert r.ts == 1750000000.0 - 10.0


def test_bare_number_uses_arrival_time():
    r = parse("plant/l1/a1/temp", b"42.25").readings[0]
    assert (r.ts, r.value) == (NOW, 42.25)


def test_batch_payload_keeps_good_values_and_reports_bad():
    doc = {"ts": NOW - 1, "values": {"a": 1, "b": "x", "c": 3.5}}
    parsed = parse("plant/l1/a1", json.dumps(doc).encode())
    assert sorted((r.key.sensor, r.value) for r in parsed.readings) == [("a", 1.0), ("c", 3.5)]
    assert "'b'" in parsed.partial_reason and "not a number" in parsed.partial_reason


def test_fault_event():
    f = parse("plant/l1/a1/fault", b'{"ts": 1749999999, "state": "start", "code": "E7"}').fault
    assert (f.asset, f.state, f.code, f.ts) == ("a1", "start", "E7", 1749999999.0)


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("plant/l1/a1/t", b"abc", "not a number or JSON"),
    ("plant/l1/a1/t", b'{"ts": 1749999999, "value": NaN}', "not finite"),
    ("plant/l1/a1/t", b'{"value": Infinity}', "not finite"),
    ("plant/l1/a1/t", b'{"value": "3"}', "value is not a number"),
    ("plant/l1/a1/t", b'{"value": true}', "value is not a number"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": 1750000000000}', "milliseconds"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": 0}', "older than max_past_s"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": "yesterday"}', "not RFC 3339"),
    ("plant/l1/a1/t", b"\xff\xfe", "not UTF-8"),
    ("plant/l1/a1/t", b"[" * 100_00 + b"]" * 100_00, "nested too deeply"),
    ("plant/l1/a1/t", b"1" * (LIMITS.max_payload_bytes + 1), "exceeds max_payload_bytes"),
    ("plant/l1/a1/fault", b'{"state": "broken"}', "fault state"),
    ("plant/l1/a1", b'{"values": {}}', "non-empty object"),
    ("plant/l1/a1", b"12", "must be a JSON object"),
])
def test_bad_payloads_raise_with_reason(topic, payload, reason):
    with pytest.raises(payloads.BadPayload, match=reason):
        parse(topic, payload)


def test_nan_never_becomes_a_reading():
    for payload in (b"NaN", b"-Infinity", b'{"value": NaN}'):
        with pytest.raises(payloads.BadPayload):
            parse("plant/l1/a1/t", payload)
    assert not math.isnan(parse("plant/l1/a1/t", b"0").readings[0].value)
