"""Parsing MQTT payloads into readings and fault events, or a reason to refuse.

Pure functions: no I/O, no clock (the caller passes the arrival time).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.config import LimitsConfig
from appliance.messages import FaultEvent, Reading, SeriesKey
from appliance.topics import FAULT_SENSOR, Route, Routed, is_name

DEAD_LETTER_PAYLOAD_BYTES = 1024
FAULT_STATES = ("start", "end")


class BadPayload(ValueError):
    """A payload that cannot become a reading or fault; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Parsed:
    readings: tuple[Reading, ...] = ()
    fault: FaultEvent | None = None
    #: Set when part of a batch payload was refused (the rest is kept).
    partial_reason: str = ""


def parse(routed: Routed, payload: bytes, received_at: float, limits: LimitsConfig) -> Parsed:
    """Turn one message into readings or a fault event; raise BadPayload otherwise."""
    if len(payload) > limits.max_payload_bytes:
        raise BadPayload(f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                         f"({limits.max_payload_bytes})")
    doc = _decode(payload)
    if routed.route is Route.READING:
        if not isinstance(doc, dict):
            ts = received_at
            value = _number(doc, "payload")
        else:
            ts = _timestamp(doc, received_at, limits)
            value = _number(doc.get("value"), "value")
        key = SeriesKey(routed.line, routed.asset, routed.sensor)
        return Parsed(readings=(Reading(key, ts, value),))
    if not isinstance(doc, dict):
        raise BadPayload(f"{routed.route.value} payload must be a JSON object")
    ts = _timestamp(doc, received_at, limits)
    if routed.route is Route.FAULT:
        state = doc.get("state")
        if state not in FAULT_STATES:
            raise BadPayload(f"fault state must be one of {FAULT_STATES}, got {state!r:.80}")
        code = doc.get("code", "")
        if not isinstance(code, str) or len(code) > 256:
            raise BadPayload("fault code must be a string of at most 256 characters")
        return Parsed(fault=FaultEvent(routed.line, routed.asset, ts, state, code))
    values = doc.get("values")
    if not isinstance(values, dict) or not values:
        raise BadPayload("batch payload needs a non-empty object 'values'")
    readings, refused = [], []
    for sensor, raw in values.items():
        try:
            if not is_name(sensor) or sensor == FAULT_SENSOR:
                raise BadPayload("not a valid sensor name")
            readings.append(Reading(SeriesKey(routed.line, routed.asset, sensor), ts,
                                    _number(raw, f"values.{sensor}")))
        except BadPayload as exc:
            refused.append(f"{str(sensor)[:64]!r}: {exc}")
    if not readings:
        raise BadPayload("no usable value in batch: " + "; ".join(refused)[:500])
    return Parsed(readings=tuple(readings), partial_reason="; ".join(refused)[:500])


def _decode(payload: bytes) -> object:
    try:
        return json.loads(payload.decode("utf-8"))
    except RecursionError:
        raise BadPayload("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise BadPayload("payload is not UTF-8 text") from None
    except ValueError as exc:
        raise BadPayload(f"not a number or JSON: {exc}") from None


def _number(raw: object, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise BadPayload(f"{what} is not a number: {_short(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise BadPayload(f"{what} is not finite: {value}")
    return value


def _timestamp(doc: dict, received_at: float, limits: LimitsConfig) -> float:
    raw = doc.get("ts")
    if raw is None:
        return received_at
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise BadPayload(f"ts is not RFC 3339: {_short(raw)}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        ts = _number(raw, "ts")
    if ts > received_at + limits.max_future_s:
        hint = " (milliseconds? ts must be in seconds)" if ts > 1e11 else ""
        raise BadPayload(f"ts {ts:.3f} is {ts - received_at:.0f} s in the future{hint}")
    if ts < received_at - limits.max_past_s:
        raise BadPayload(f"ts {ts:.3f} is older than max_past_s ({limits.max_past_s:.0f} s)")
    return ts


def _short(raw: object) -> str:
    return repr(raw)[:80]
