"""The typed messages that travel on the queues between stages.

Stages share nothing else: each stage knows the message types on its input and
output queues and never another stage.  All messages are immutable: frozen, slotted
dataclasses, or named tuples where one is made per reading or per asset and tick.
Timestamps are event time, float seconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class SeriesKey(NamedTuple):
    """One sensor of one asset: the unit a reading belongs to.

    A named tuple, not a dataclass like the messages: it is looked up in a dict for
    every reading (ingest, store, features), and a tuple's hash is computed in C."""

    line: str
    asset: str
    sensor: str


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
    """What ingest parsed from a run of MQTT messages of one connection.

    Readings are columnar (``keys[i]``, ``ts[i]``, ``values[i]``): one Python
    object per reading would cost more than MQTT itself.  ``mids`` are the
    QoS 1 message ids to acknowledge once this is committed; they mean
    something only on ``connection`` (the ingest connection generation).
    ``redelivered`` is True when a message had the MQTT DUP flag: only then can
    a reading already be stored, so only then does the store check.
    """

    keys: tuple[SeriesKey, ...]
    ts: np.ndarray = field(compare=False)  # float64 event time
    values: np.ndarray = field(compare=False)  # float64, finite
    faults: tuple[FaultEvent, ...]
    dead_letters: tuple[DeadLetter, ...]
    connection: int
    mids: tuple[int, ...]
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    """Store → ingest: these messages are durable and may be acknowledged."""

    connection: int
    mids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StoredReadings:
    """Store → features: committed readings, columnar, sorted by event time."""

    keys: tuple[SeriesKey, ...]
    ts: np.ndarray = field(compare=False)
    values: np.ndarray = field(compare=False)


@dataclass(frozen=True, slots=True)
class Resume:
    """Store → features, once at a service start, before the stored readings it replays
    to refill the windows (plain ``StoredReadings``, then the live ones follow): the
    last tick predicted per (line, asset) before the stop.  Rows for those ticks and
    earlier are not made again, so no tick is predicted twice."""

    predicted_through: tuple[tuple[str, str, float], ...]  # (line, asset, tick)


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
class Reason:
    """One sensor's part in a prediction, for the people who get the alert.

    ``contribution`` is the sum of the sensor's features' contributions; ``feature``
    is its most telling one (the largest contribution), whose ``value`` is set
    against ``normal`` (its 5 %–95 % quantiles in the model's training data) and
    whose ``direction`` ("up", "down") says which side of the training median it
    lies on.  ``window_s`` is the feature's window (None: the current value).
    """

    sensor: str
    direction: str
    value: float
    normal: tuple[float, float]
    window_s: float | None
    feature: str
    contribution: float
    text: str


class Prediction(NamedTuple):
    """One asset's probability at one tick, by one model.  A named tuple, as
    ``SeriesKey``: every asset makes one per tick and model (a champion and two
    challengers, 3,000 a tick for 1,000 assets), and a frozen dataclass takes four
    times as long to build."""

    line: str
    asset: str
    ts: float
    probability: float
    threshold: float
    model: str
    top_factors: tuple[Factor, ...] = ()
    #: "champion" (its alerts are published) or "challenger" (scored, never published).
    role: str = "champion"
    reasons: tuple[Reason, ...] = ()


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
    role: str = "champion"
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True, slots=True)
class Alerts:
    """Alert → record: the alert state changes of one tick."""

    items: tuple[AlertEvent, ...]


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """Predict → record: a model file was activated, found or refused."""

    ts: float
    name: str
    path: str
    sha256: str
    spec_hash: str
    status: str  # "active" | "candidate" | "refused"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """Drift → alert (published) → record: a drift or a sensor fault started or ended.

    ``kind`` "drift": the live distribution of ``features`` (the ones that moved
    most, most first) moved away from ``model``'s reference; ``statistic`` is the
    distance and ``threshold`` the calibrated limit.  ``kind`` "sensor": ``sensor``
    of ``asset`` is stuck, silent or mostly missing (``detail``), and its
    features are left out of the drift decision while it lasts.
    """

    ts: float
    line: str
    asset: str  # "*" = the whole line
    kind: str  # "drift" | "sensor"
    state: str  # "started" | "ended"
    features: tuple[str, ...]
    statistic: float | None
    threshold: float | None
    model: str | None
    #: JSON: drift: per feature {"live": ..., "reference": ..., "shift": ...} in the
    #: feature's units; sensor: {"sensor": ..., "kind": "stuck"|"silent"|..., "since": ...}
    detail: str = "{}"


@dataclass(frozen=True, slots=True)
class DriftEvents:
    """Drift → alert → record: the events of one tick."""

    items: tuple[DriftEvent, ...]


@dataclass(frozen=True, slots=True)
class LoopEvent:
    """Retrain → alert (published, retained): one step of the retraining loop, as
    stored in ``model_history`` (the retrain stage writes the row itself).

    ``event``: trigger, training_started, training_failed, rejected, shadow,
    promoted, probation_ended, rolled_back, reconciled, interrupted.
    """

    ts: float  # event time (the newest reading's) the loop acted at
    at: float  # wall-clock time
    event: str
    model: str | None
    other: str | None  # the champion it was compared with, or the one it replaced
    reason: str
    #: JSON: both models' numbers, the data window, duration, peak memory, ...
    detail: str = "{}"
    #: The roles after the step.
    champion: str | None = None
    challengers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Passed down the chain on shutdown so each stage flushes before exiting."""
