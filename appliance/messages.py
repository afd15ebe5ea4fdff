"""The typed messages that travel on the queues between stages.

Stages share nothing else: each stage knows the message types on its input and
output queues and never another stage.  All messages are frozen and slotted.
Timestamps are event time, float seconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One sensor of one asset: the unit a reading belongs to."""

    line: str
    asset: str
    sensor: str


@dataclass(frozen=True, slots=True)
class AckToken:
    """What the broker needs to acknowledge one QoS 1 message.

    ``connection`` is the ingest connection generation that received it; an
    ack for an older generation must never be sent (the broker will redeliver).
    """

    connection: int
    mid: int


@dataclass(frozen=True, slots=True)
class Reading:
    key: SeriesKey
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class FaultEvent:
    line: str
    asset: str
    ts: float
    state: str  # "start" | "end"
    code: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: float
    topic: str
    payload: bytes  # at most the first 1 KiB
    reason: str


@dataclass(frozen=True, slots=True)
class Inbound:
    """Everything ingest parsed from a run of MQTT messages, in arrival order.

    ``redelivered`` is True when any message had the MQTT DUP flag: only then
    can a reading already be stored, so only then does the store check.
    """

    readings: tuple[Reading, ...]
    faults: tuple[FaultEvent, ...]
    dead_letters: tuple[DeadLetter, ...]
    acks: tuple[AckToken, ...]
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    """Store → ingest: these messages are durable and may be acknowledged."""

    acks: tuple[AckToken, ...]


@dataclass(frozen=True, slots=True)
class StoredReadings:
    """Store → features: readings that were committed, sorted by event time."""

    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Features → predict: one feature row per asset for one tick."""

    tick: float
    line: tuple[str, ...]
    assets: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray = field(compare=False)  # shape (len(assets), len(names)), float32


@dataclass(frozen=True, slots=True)
class Factor:
    feature: str
    value: float
    contribution: float


@dataclass(frozen=True, slots=True)
class Prediction:
    line: str
    asset: str
    ts: float
    probability: float
    threshold: float
    model: str
    top_factors: tuple[Factor, ...] = ()


@dataclass(frozen=True, slots=True)
class Predictions:
    """Predict → alert: every asset's prediction for one tick."""

    items: tuple[Prediction, ...]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    line: str
    asset: str
    ts: float
    state: str  # "raised" | "cleared"
    probability: float
    threshold: float
    horizon_s: float
    model: str
    top_factors: tuple[Factor, ...] = ()


@dataclass(frozen=True, slots=True)
class Alerts:
    """Alert → record: the alert state changes of one tick."""

    items: tuple[AlertEvent, ...]


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Passed down the chain on shutdown so each stage flushes before exiting."""
