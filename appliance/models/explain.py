"""Why a model said what it said: occlusion, one model call for many rows, then per sensor.

Every feature in turn is set to its training median (from the model's
reference distributions) and the drop in probability is that feature's
contribution; the ``top`` largest are a prediction's factors.  All rows and all
their occluded copies go through the model in one call per block of rows.
Cost: rows × features model rows per call.

The factors name features, which a line engineer does not think in: one sensor
shows as its mean, median and last value at once.  So the contributions are
also summed per sensor (``sensor__…`` features; ``diff__a__b`` is a sensor of its
own, ``a-b``), and each sensor that pushed the probability up becomes a
``Reason`` told by its most telling feature (the largest contribution): which
way it moved, its value against the training 5 %–95 % range, over which window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.messages import Factor, Reason
from appliance.models.contract import LoadedModel

#: Rows explained per model call (bounds the occluded copies to ~0.6 MB at 67 features).
EXPLAIN_BLOCK = 32

#: How a statistic is named in a reason's text ("" for the plain value).
STAT_WORDS: dict[str, str] = {
    "last": "", "mean": "", "median": "median ", "min": "min ", "max": "max ",
    "std": "std ", "slope": "slope per h ", "change": "change ",
    "dev": "deviation from its baseline ", "missing": "missing share ", "stuck": "stuck ",
}
#: A slope is stored per second; a person reads a trend per hour.
STAT_SCALE: dict[str, float] = {"slope": 3600.0}

_WINDOWED = re.compile(r"(?P<stat>[a-z]+)_(?P<window>[0-9.e+]+)s")


@dataclass(frozen=True, slots=True)
class FeatureParts:
    """What a feature name says: the sensor, the statistic, the window (None: now)."""

    sensor: str
    stat: str
    window_s: float | None


def feature_parts(name: str) -> FeatureParts:
    """Split a pipeline feature name (``features.spec``): ``vibration__mean_600s`` →
    (vibration, mean, 600); ``lube_temp__last`` → (lube_temp, last, None);
    ``diff__a__b`` → (a-b, last, None).  A name the pipeline does not make (a model
    from elsewhere) is a sensor of its own."""
    parts = name.split("__")
    if len(parts) == 3 and parts[0] == "diff":
        return FeatureParts(f"{parts[1]}-{parts[2]}", "last", None)
    if len(parts) != 2:
        return FeatureParts(name, "", None)
    sensor, rest = parts
    m = _WINDOWED.fullmatch(rest)
    if m is not None:
        try:
            return FeatureParts(sensor, m["stat"], float(m["window"]))
        except ValueError:
            pass  # not a number after all: the whole rest is the statistic
    return FeatureParts(sensor, rest, None)


def duration(seconds: float) -> str:
    """600 → "10 min", 7200 → "2 h", 90 → "90 s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def number(value: float) -> str:
    """A reading as a person reads it: three significant digits."""
    return f"{value:.3g}"


def value_range(lo: float, hi: float) -> str:
    """``2.1–4``; ``-0.3 to 0.2`` (a dash after a minus sign reads as a second minus)."""
    return f"{number(lo)}{'–' if lo >= 0 else ' to '}{number(hi)}"


def reason_text(parts: FeatureParts, direction: str, value: float,
                normal: tuple[float, float]) -> str:
    """``vibration up: 7.9 over the last 10 min, normal 2.1–4.0``."""
    if math.isnan(value):
        return f"{parts.sensor}: no {STAT_WORDS.get(parts.stat, '')}value (missing)"
    when = "now" if parts.window_s is None else f"over the last {duration(parts.window_s)}"
    scale = STAT_SCALE.get(parts.stat, 1.0)
    text = (f"{parts.sensor} {direction}: {STAT_WORDS.get(parts.stat, '')}"
            f"{number(value * scale)} {when}")
    lo, hi = normal
    if math.isfinite(lo) and math.isfinite(hi):
        where = "" if value > hi or value < lo else "within "
        text += f", {where}normal {value_range(lo * scale, hi * scale)}"
    return text


@dataclass(frozen=True, slots=True)
class Explanation:
    """One prediction's factors (features) and reasons (sensors), largest first."""

    factors: tuple[Factor, ...]
    reasons: tuple[Reason, ...]


#: A prediction below the clearing level: not explained (its alert cannot be raised).
UNEXPLAINED = Explanation((), ())


class Explainer:
    """The occlusion explanation of one model's predictions."""

    def __init__(self, model: LoadedModel, top: int) -> None:
        self.model = model
        self.top = top
        ref = model.reference
        self.medians = _stat(ref, model.feature_names, "median")
        self._q05 = _stat(ref, model.feature_names, "q05")
        self._q95 = _stat(ref, model.feature_names, "q95")
        self._parts = tuple(feature_parts(n) for n in model.feature_names)
        sensors = sorted({p.sensor for p in self._parts})
        group = np.array([sensors.index(p.sensor) for p in self._parts], dtype=np.intp)
        # (features, sensors) one-hot: the per-sensor sums of all rows are one product
        self._onehot = (group[:, None] == np.arange(len(sensors))).astype(np.float64)
        self._members = tuple(np.flatnonzero(group == s) for s in range(len(sensors)))

    def explain(self, X: np.ndarray, proba: np.ndarray) -> list[Explanation]:
        """The factors and reasons of each row of ``X`` (model input order) given its
        probability."""
        if self.top == 0:
            return [UNEXPLAINED] * len(X)
        contribution = self.contributions(X, proba)
        reasons = self.reasons(X, contribution)
        return [Explanation(self._factors(X[i], contribution[i]), reasons[i])
                for i in range(len(X))]

    def contributions(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """(rows, features): the drop in probability when each feature is set to its
        training median."""
        n, f = X.shape
        diag = np.arange(f)
        out = np.empty((n, f), dtype=np.float64)
        # Occluded copies in blocks: n × f × f floats at once would be tens of MB.
        for start in range(0, n, EXPLAIN_BLOCK):
            block = X[start:start + EXPLAIN_BLOCK]
            m = len(block)
            occluded = np.repeat(block, f, axis=0).reshape(m, f, f)
            occluded[:, diag, diag] = self.medians
            p = self.model.predict_proba(occluded.reshape(m * f, f)).reshape(m, f)
            out[start:start + m] = proba[start:start + m, None] - p
        return out

    def _factors(self, row: np.ndarray, contribution: np.ndarray) -> tuple[Factor, ...]:
        names = self.model.feature_names
        return tuple(Factor(names[j], float(row[j]), float(contribution[j]))
                     for j in np.argsort(-contribution)[:self.top])

    def reasons(self, X: np.ndarray, contribution: np.ndarray) -> list[tuple[Reason, ...]]:
        """Per row, the ``top`` sensors that pushed the probability up (summed
        contribution > 0), largest first, each told by its most telling feature."""
        c = np.nan_to_num(contribution, nan=0.0)
        sums = c @ self._onehot
        # a stable sort over the negated sums: equal sums keep the sensors' name order
        ranked = np.argsort(-sums, axis=1, kind="stable")[:, :self.top]
        out = []
        for i in range(len(X)):
            row = []
            for s in ranked[i].tolist():
                if not sums[i, s] > 0:
                    break  # the rest lowered the probability: not a reason for an alert
                members = self._members[s]
                j = int(members[np.argmax(c[i, members])])
                row.append(self._reason(j, float(X[i, j]), float(sums[i, s])))
            out.append(tuple(row))
        return out

    def _reason(self, j: int, value: float, contribution: float) -> Reason:
        parts = self._parts[j]
        normal = (float(self._q05[j]), float(self._q95[j]))
        direction = ("missing" if math.isnan(value)
                     else "up" if value >= self.medians[j] else "down")
        return Reason(parts.sensor, direction, value, normal, parts.window_s,
                      self.model.feature_names[j], contribution,
                      reason_text(parts, direction, value, normal))


def _stat(reference: Mapping[str, Mapping[str, Any]], names: tuple[str, ...],
          stat: str) -> np.ndarray:
    """One reference statistic per feature; NaN where the model does not give it."""
    def value(name: str) -> float:
        v = reference.get(name, {}).get(stat)
        return float(v) if isinstance(v, int | float) else math.nan

    return np.array([value(n) for n in names], dtype=np.float64)
