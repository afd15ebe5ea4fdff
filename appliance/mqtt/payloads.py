"""The payloads of the wire contract: inbound readings and fault events (or a reason
to refuse one), and the outbound alert JSON.

Pure functions: no I/O, no clock (the caller passes the arrival time).  Parsing
runs once per message on the hot path, so it works on plain floats and tuples
and decodes JSON with the C scanner directly.
"""

from __future__ import annotations

import json
import json.scanner
import math
from collections.abc import Container
from typing import Any

from appliance.config import LimitsConfig
from appliance.messages import AlertEvent, DriftEvent, FaultEvent, LoopEvent, Reason
from appliance.mqtt.topics import FAULT_SENSOR, Routed, is_name
from appliance.timefmt import parse_rfc3339

DEAD_LETTER_PAYLOAD_BYTES = 1024
FAULT_STATES = ("start", "end")

_scan_once = json.scanner.make_scanner(json.JSONDecoder())
#: A JSON number decodes to one of these (bool is not one here: ``number``).
_NUMBER_TYPES = frozenset((int, float))


class BadPayload(ValueError):
    """A payload that cannot become a reading or fault; the message is the reason."""


def decode(payload: bytes, limits: LimitsConfig) -> object:
    """The JSON value of a payload (a bare number is JSON too)."""
    if len(payload) > limits.max_payload_bytes:
        raise BadPayload(f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                         f"({limits.max_payload_bytes})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("payload is not UTF-8 text") from None
    try:
        doc, end = _scan_once(text, 0)
        if end == len(text) or not text[end:].strip():
            return doc
    except (StopIteration, ValueError):  # JSONDecodeError: a malformed string or object
        pass  # leading whitespace or not JSON: let json.loads say which
    except RecursionError:
        raise BadPayload("JSON nested too deeply") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadPayload("JSON nested too deeply") from None
    except ValueError as exc:
        raise BadPayload(f"not a number or JSON: {exc}") from None


def reading(doc: object, received_at: float, limits: LimitsConfig) -> tuple[float, float]:
    """(ts, value) of a single-reading payload: a bare number or {"ts", "value"}."""
    if type(doc) is dict:
        return timestamp(doc, received_at, limits), number(doc.get("value"), "value")
    return received_at, number(doc, "payload")


def batch(doc: object, received_at: float, limits: LimitsConfig,
          checked: Container[tuple[str, ...]] = ()
          ) -> tuple[float, tuple[str, ...], list[float], str]:
    """(ts, sensors, values, refused) of {"ts", "values": {sensor: number}}.

    Bad entries are left out and described in ``refused``; a batch with no good
    entry raises.  ``checked`` holds sets of sensor names (in payload order) the
    caller has seen pass: a batch of those whose values are all finite numbers —
    a gateway's every message but the first — is taken without a look at each
    name, the per-reading cost that would eat what batching saves.
    """
    if type(doc) is not dict:
        raise BadPayload("batch payload must be a JSON object")
    ts = timestamp(doc, received_at, limits)
    values = doc.get("values")
    if type(values) is not dict or not values:
        raise BadPayload("batch payload needs a non-empty object 'values'")
    sensors = tuple(values)
    numbers = list(values.values())
    if sensors in checked and _NUMBER_TYPES.issuperset(map(type, numbers)):
        try:
            if all(map(math.isfinite, numbers)):
                return ts, sensors, list(map(float, numbers)), ""
        except OverflowError:  # an integer beyond float: ``number`` says so below
            pass
    good, kept, refused = [], [], []
    for sensor, raw in values.items():
        try:
            if not is_name(sensor) or sensor == FAULT_SENSOR:
                raise BadPayload("not a valid sensor name")
            good.append(number(raw, f"values.{sensor}"))
            kept.append(sensor)
        except BadPayload as exc:
            refused.append(f"{sensor[:64]!r}: {exc}")
    reason = "; ".join(refused)[:500]
    if not good:
        raise BadPayload("no usable value in batch: " + reason)
    return ts, tuple(kept), good, reason


def fault(routed: Routed, doc: object, received_at: float, limits: LimitsConfig) -> FaultEvent:
    if type(doc) is not dict:
        raise BadPayload("fault payload must be a JSON object")
    ts = timestamp(doc, received_at, limits)
    state = doc.get("state")
    if state not in FAULT_STATES:
        raise BadPayload(f"fault state must be one of {FAULT_STATES}, got {_short(state)}")
    code = doc.get("code", "")
    if not isinstance(code, str) or len(code) > 256:
        raise BadPayload("fault code must be a string of at most 256 characters")
    return FaultEvent(routed.line, routed.asset, ts, state, code)


def number(raw: object, what: str) -> float:
    kind = type(raw)
    if kind is not float and kind is not int:  # bool is not a number here
        raise BadPayload(f"{what} is not a number: {_short(raw)}")
    try:
        value = float(raw)
    except OverflowError:  # a JSON integer of hundreds of digits
        raise BadPayload(f"{what} is not finite: an integer beyond float range") from None
    if not math.isfinite(value):
        raise BadPayload(f"{what} is not finite: {value}")
    return value


class OutOfWindow(BadPayload):
    """An event time outside ``[limits]``: ``which`` is "future" or "past"."""

    def __init__(self, message: str, which: str) -> None:
        super().__init__(message)
        self.which = which


def timestamp(doc: dict, received_at: float, limits: LimitsConfig) -> float:
    """The event time of a payload: unix seconds or RFC 3339; arrival time if absent."""
    raw = doc.get("ts")
    if raw is None:
        return received_at
    if isinstance(raw, str):
        try:
            ts = parse_rfc3339(raw)
        except ValueError:
            raise BadPayload(f"ts is not RFC 3339: {_short(raw)}") from None
    else:
        ts = number(raw, "ts")
    if ts > received_at + limits.max_future_s:
        hint = " (milliseconds? ts must be in seconds)" if ts > 1e11 else ""
        raise OutOfWindow(f"ts {ts:.3f} is {ts - received_at:.0f} s in the future{hint}",
                          "future")
    if ts < received_at - limits.max_past_s:
        raise OutOfWindow(f"ts {ts:.3f} is older than max_past_s ({limits.max_past_s:.0f} s)",
                          "past")
    return ts


def _short(raw: object) -> str:
    return repr(raw)[:80]


def alert_document(alert: AlertEvent) -> dict[str, Any]:
    """The alert of the external contract (DESIGN.md, "Alerts"), as published on MQTT
    and stored in ``alerts`` (its ``top_factors`` column): one set of numbers."""
    return {
        "asset": alert.asset,
        "line": alert.line,
        "ts": alert.ts,
        "state": alert.state,
        "probability": round(alert.probability, 6),
        "threshold": alert.threshold,
        "horizon_s": alert.horizon_s,
        "model": alert.model,
        "top_factors": [{"feature": f.feature, "value": f.value,
                         "contribution": round(f.contribution, 6)} for f in alert.top_factors],
        "reasons": [reason_document(r) for r in alert.reasons],
    }


def reason_document(reason: Reason) -> dict[str, Any]:
    """One sensor's reason as published: numbers to 4 significant digits (a reading's
    precision, not the float32's noise), NaN as null (JSON has no NaN)."""
    return {"sensor": reason.sensor, "direction": reason.direction,
            "value": _sig(reason.value), "normal": [_sig(v) for v in reason.normal],
            "window_s": reason.window_s, "feature": reason.feature,
            "contribution": round(reason.contribution, 6), "text": reason.text}


def _sig(value: float) -> float | None:
    return float(f"{value:.4g}") if math.isfinite(value) else None


def alert_payload(alert: AlertEvent) -> bytes:
    """The MQTT payload of an alert."""
    return json.dumps(alert_document(alert)).encode()


def drift_document(event: DriftEvent) -> dict[str, Any]:
    """A drift or sensor event as published on MQTT and stored in ``drift_events``."""
    return {
        "ts": event.ts,
        "line": event.line,
        "asset": event.asset,
        "kind": event.kind,
        "state": event.state,
        "features": list(event.features),
        "statistic": None if event.statistic is None else round(event.statistic, 6),
        "threshold": None if event.threshold is None else round(event.threshold, 6),
        "model": event.model,
        "detail": json.loads(event.detail),
    }


def drift_payload(event: DriftEvent) -> bytes:
    """The MQTT payload of a drift or sensor event."""
    return json.dumps(drift_document(event)).encode()


def loop_document(event: LoopEvent) -> dict[str, Any]:
    """A step of the retraining loop as published on ``<line>/model`` and stored in
    ``model_history``, with the roles after it."""
    return {"ts": event.ts, "at": event.at, "event": event.event, "model": event.model,
            "other": event.other, "reason": event.reason, "detail": json.loads(event.detail),
            "champion": event.champion, "challengers": list(event.challengers)}


def loop_payload(event: LoopEvent) -> bytes:
    """The MQTT payload of a step of the retraining loop."""
    return json.dumps(loop_document(event)).encode()
