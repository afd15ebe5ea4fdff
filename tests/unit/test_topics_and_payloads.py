import json
import math

import pytest

from appliance.config import Config, LimitsConfig, MqttConfig
from appliance.mqtt import payloads
from appliance.mqtt.topics import Route, Routed, Topics, UnroutableTopic

NOW = 1_750_000_000.0
LIMITS = LimitsConfig()
TOPICS = Topics.from_config(Config())


def test_subscriptions_cover_every_routable_shape():
    assert TOPICS.subscriptions() == ("plant/#",)
    assert TOPICS.route("plant/l1/a1/temp").route is Route.READING
    assert TOPICS.route("plant/l1/a1/fault").route is Route.FAULT
    assert TOPICS.route("plant/l1/a1").route is Route.BATCH
    assert TOPICS.alert("l1", "a1") == "appliance/l1/a1/alert"


def test_built_topics_route_back_to_what_built_them():
    # publishers (simulator, benchmarks, tests) build topics; ingest routes them
    assert TOPICS.reading("l1", "a1", "temp") == "plant/l1/a1/temp"
    assert TOPICS.route(TOPICS.reading("l1", "a1", "temp")) == Routed(Route.READING, "l1", "a1",
                                                                      "temp")
    assert TOPICS.fault("l1", "a1") == "plant/l1/a1/fault"
    assert TOPICS.route(TOPICS.fault("l1", "a1")) == Routed(Route.FAULT, "l1", "a1")
    assert TOPICS.route(TOPICS.batch("l1", "a1")) == Routed(Route.BATCH, "l1", "a1")
    other = Topics.from_config(Config(mqtt=MqttConfig(topic_prefix="site/7/")))
    assert other.reading("l1", "a1", "temp") == "site/7/l1/a1/temp"
    assert other.route("site/7/l1/a1/fault") == Routed(Route.FAULT, "l1", "a1")


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


def parse(topic: str, payload: bytes):
    """What ingest does with one message: route, decode, then parse by route."""
    routed = TOPICS.route(topic)
    doc = payloads.decode(payload, LIMITS)
    if routed.route is Route.READING:
        return payloads.reading(doc, NOW, LIMITS)
    if routed.route is Route.FAULT:
        return payloads.fault(routed, doc, NOW, LIMITS)
    return payloads.batch(doc, NOW, LIMITS)


def test_json_reading_with_unix_and_rfc3339_ts():
    assert parse("plant/l1/a1/temp", b'{"ts": 1749999990.5, "value": 21.5}') == (
        1749999990.5, 21.5)
    assert parse("plant/l1/a1/temp", b' {"ts": "2025-06-15T15:06:30Z", "value": 1} ') == (
        NOW - 10.0, 1.0)


def test_bare_number_and_json_without_ts_use_arrival_time():
    assert parse("plant/l1/a1/temp", b"42.25") == (NOW, 42.25)
    assert parse("plant/l1/a1/temp", b'{"value": -3}') == (NOW, -3.0)


def test_batch_payload_keeps_good_values_and_reports_bad():
    doc = {"ts": NOW - 1, "values": {"a": 1, "b": "x", "c": 3.5, "fault": 1}}
    ts, sensors, values, refused = parse("plant/l1/a1", json.dumps(doc).encode())
    assert ts == NOW - 1 and sensors == ("a", "c") and values == [1.0, 3.5]
    assert "'b'" in refused and "not a number" in refused and "'fault'" in refused


@pytest.mark.parametrize("values", [
    {"a": 1, "b": "x"}, {"a": 1, "b": True}, {"a": 1, "b": float("inf")},
    {"a": 1, "b": float("nan")}, {"a": 1, "b": 10 ** 400}])
def test_a_batch_of_checked_sensors_is_still_refused_a_bad_value(values):
    """The fast path for sensor sets seen before skips the names, never the values."""
    _ts, sensors, got, refused = payloads.batch({"ts": NOW, "values": values}, NOW, LIMITS,
                                                checked={("a", "b")})
    assert sensors == ("a",) and got == [1.0] and "'b'" in refused


def test_a_batch_of_checked_sensors_is_taken_whole():
    doc = {"ts": NOW, "values": {"b": 2, "a": 1.5}}
    assert payloads.batch(doc, NOW, LIMITS, checked={("b", "a")}) == (NOW, ("b", "a"),
                                                                       [2.0, 1.5], "")
    # the same set in another order is another set: checked name by name
    assert payloads.batch({"ts": NOW, "values": {"a": 1, "fault": 2}}, NOW, LIMITS,
                          checked={("fault", "a")})[1] == ("a",)


def test_fault_event():
    f = parse("plant/l1/a1/fault", b'{"ts": 1749999999, "state": "start", "code": "E7"}')
    assert (f.line, f.asset, f.state, f.code, f.ts) == ("l1", "a1", "start", "E7", 1749999999.0)


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("plant/l1/a1/t", b"abc", "not a number or JSON"),
    ("plant/l1/a1/t", b"1 2", "not a number or JSON"),
    ("plant/l1/a1/t", b"", "not a number or JSON"),
    ("plant/l1/a1/t", b'{"ts": 1749999999, "value": NaN}', "not finite"),
    ("plant/l1/a1/t", b'{"value": Infinity}', "not finite"),
    ("plant/l1/a1/t", b'{"value": ' + b"9" * 400 + b"}", "beyond float range"),
    ("plant/l1/a1/t", b'{"value": "3"}', "value is not a number"),
    ("plant/l1/a1/t", b'{"value": true}', "value is not a number"),
    ("plant/l1/a1/t", b"[1]", "payload is not a number"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": 1750000000000}', "milliseconds"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": 0}', "older than max_past_s"),
    ("plant/l1/a1/t", b'{"value": 1, "ts": "yesterday"}', "not RFC 3339"),
    ("plant/l1/a1/t", b"\xff\xfe", "not UTF-8"),
    ("plant/l1/a1/t", b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    ("plant/l1/a1/t", b"1" * (LIMITS.max_payload_bytes + 1), "exceeds max_payload_bytes"),
    ("plant/l1/a1/fault", b'{"state": "broken"}', "fault state"),
    ("plant/l1/a1/fault", b'{"state": "end", "code": 7}', "fault code"),
    ("plant/l1/a1", b'{"values": {}}', "non-empty object"),
    ("plant/l1/a1", b'{"values": {"x": null}}', "no usable value"),
    ("plant/l1/a1", b"12", "must be a JSON object"),
])
def test_bad_payloads_raise_with_reason(topic, payload, reason):
    with pytest.raises(payloads.BadPayload, match=reason):
        parse(topic, payload)


def test_nan_never_becomes_a_reading():
    for payload in (b"NaN", b"-Infinity", b'{"value": NaN}'):
        with pytest.raises(payloads.BadPayload):
            parse("plant/l1/a1/t", payload)
    assert not math.isnan(parse("plant/l1/a1/t", b"0")[1])
