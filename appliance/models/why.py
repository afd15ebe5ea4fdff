"""``appliance explain ASSET [--at TS]``: why a stored prediction said what it said,
with the readings behind it.

Predictions are stored without explanations (explaining every tick of every asset
would cost the model rows × features calls per tick; the service explains only
the rows that may raise an alert).  So the command recomputes: it takes the
champion's prediction at or before TS, reads the asset's stored readings over the
span a service start replays (``[pipeline] restore_s``, at least every window
full again), computes that tick's features with the batch driver (the rows the
live driver made), runs the model that made the prediction and explains it as the
service does.  The recomputed probability is printed beside the stored one: they
differ only through the long EWMA features (``dev``, ``missing``), whose memory
reaches further back than the replayed span, as after a service restart.

Everything is read with the SQL of ``appliance sql``: from the running service on
its control socket when it holds the database, else from the file opened read-only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import Config
from appliance.features.batch import asset_features
from appliance.features.spec import PipelineSpec
from appliance.messages import Reason
from appliance.models.contract import STARTER_MODEL, LoadedModel, ModelError, load_model
from appliance.models.explain import Explainer, duration, number, value_range
from appliance.models.registry import Registry
from appliance.mqtt.topics import FAULT_SENSOR, is_name
from appliance.timefmt import from_us, rfc3339, to_us

#: Readings shown last under each reason.
LAST_READINGS = 5

#: Runs one checked, read-only SQL text; returns its rows, raises ``ExplainError``.
Ask = Callable[[str], list[list[Any]]]


class ExplainError(ValueError):
    """Nothing to explain, or it cannot be recomputed; the message says why."""


@dataclass(frozen=True, slots=True)
class Behind:
    """One sensor's readings in a reason's window (the current value: the first window),
    and its normal level: the 5 %–95 % range of its grid value (``sensor__last``) in the
    model's training data (NaN when the model has no such feature)."""

    sensor: str
    window_s: float
    ts: np.ndarray
    values: np.ndarray
    normal: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Story:
    """A prediction, recomputed and explained, with the readings behind each reason."""

    line: str
    asset: str
    tick: float
    stored: float
    recomputed: float
    threshold: float
    model: str
    reasons: tuple[Reason, ...]
    behind: tuple[Behind, ...]


def explain(cfg: Config, ask: Ask, asset: str, at: float | None, db: Path) -> Story:
    """The story of ``asset``'s champion prediction at or before ``at`` (None: its latest)."""
    if not is_name(asset):
        raise ExplainError(f"{asset!r} is not an asset name (1-64 of A-Z a-z 0-9 _ . -)")
    when = "" if at is None else f" AND ts <= make_timestamp({to_us(at)})"
    rows = ask(f"SELECT line, epoch_us(ts), probability, threshold, model FROM predictions "
               f"WHERE asset = '{asset}' AND role = 'champion'{when} ORDER BY ts DESC LIMIT 1")
    if not rows:
        raise ExplainError(f"no prediction of asset {asset!r}"
                           + ("" if at is None else f" at or before {rfc3339(at)}"))
    line, tick_us, stored, threshold, model_name = rows[0]
    tick = from_us(tick_us)
    spec = PipelineSpec.from_config(cfg.pipeline)
    model = _model(cfg, db, model_name, spec.hash)
    # the span a service start replays: the features it recomputes are the live ones
    span = max(cfg.pipeline.restore_s or 0.0, spec.refilled_after_s())
    series = _readings(cfg, ask, line, asset, tick - span, tick)
    names, ticks, matrix = asset_features(spec, series, tick - spec.cadence_s, tick)
    if len(ticks) == 0 or ticks[-1] != tick:
        raise ExplainError(f"the stored readings of {asset} make no feature row at "
                           f"{rfc3339(tick)} (thinned out, or in a warm-up)")
    X = matrix[-1:, model.column_index(names)].astype(np.float32)
    proba = model.predict_proba(X)
    # asked for explicitly: explained even where the service explains nothing (top 0)
    explainer = Explainer(model, cfg.alerts.top_factors or 3)
    contribution = explainer.contributions(X, proba)
    (reasons,) = explainer.reasons(X, contribution)
    behind = []
    for r in reasons:
        if r.sensor not in series:
            continue  # a difference of two sensors: its readings are its two sensors'
        window = r.window_s or spec.windows_s[0]
        ts, values = series[r.sensor]
        inside = (ts > tick - window) & (ts <= tick)
        level = model.reference.get(f"{r.sensor}__last", {})
        behind.append(Behind(r.sensor, window, ts[inside], values[inside],
                             (float(level.get("q05", math.nan)),
                              float(level.get("q95", math.nan)))))
    return Story(line, asset, tick, float(stored), float(proba[0]), float(threshold),
                 model.name, reasons, tuple(behind))


def text(story: Story) -> str:
    """What ``appliance explain`` prints."""
    out = [f"{story.line}/{story.asset} at {rfc3339(story.tick)}: p = {story.stored:.3f} "
           f"(threshold {story.threshold:.3f}, model {story.model}; recomputed from the "
           f"stored readings: {story.recomputed:.3f})"]
    if not story.reasons:
        out.append("no sensor pushed the probability up (every feature near its training "
                   "median)")
    behind = {b.sensor: b for b in story.behind}
    for i, r in enumerate(story.reasons, 1):
        out.append(f"{i}. {r.text}  (contribution {r.contribution:+.3f}, {r.feature})")
        b = behind.get(r.sensor)
        if b is None:
            continue
        lo, hi = b.normal
        normal = (f"; normal level {value_range(lo, hi)}"
                  if math.isfinite(lo) and math.isfinite(hi) else "")
        if len(b.values) == 0:
            out.append(f"   no readings of {b.sensor} in the last {duration(b.window_s)}")
            continue
        out.append(f"   readings of {b.sensor} over the last {duration(b.window_s)}: "
                   f"{len(b.values)}, min {number(b.values.min())}, mean "
                   f"{number(b.values.mean())}, max {number(b.values.max())}{normal}")
        last = ", ".join(f"{rfc3339(t)[11:19]} {number(v)}"
                         for t, v in zip(b.ts[-LAST_READINGS:], b.values[-LAST_READINGS:],
                                         strict=True))
        out.append(f"   last: {last}")
    return "\n".join(out)


def _model(cfg: Config, db: Path, name: str, spec_hash: str) -> LoadedModel:
    """The model that made the prediction: from the registry, or the packaged starter."""
    try:
        path = Registry(cfg.models_dir(db)).path_of(name)
    except ModelError:
        starter = load_model(STARTER_MODEL)
        if starter.name != name:
            raise ExplainError(f"the prediction was made by model {name}, which is not in "
                               f"the registry {cfg.models_dir(db)} any more") from None
        return starter
    try:
        return load_model(path, spec_hash)
    except ModelError as exc:
        raise ExplainError(f"cannot recompute with model {name}: {exc}") from None


def _readings(cfg: Config, ask: Ask, line: str, asset: str, lo: float, hi: float
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The asset's readings in (lo, hi] per sensor, one query per sensor: each stays
    under ``[control] max_rows`` where the whole asset at 1 Hz would not."""
    sensors = [s for (s,) in ask(f"SELECT sensor FROM series WHERE line = '{line}' AND "
                                 f"asset = '{asset}' AND sensor <> '{FAULT_SENSOR}' "
                                 f"ORDER BY sensor")]
    out = {}
    for sensor in sensors:
        rows = ask(f"SELECT epoch_us(ts), value FROM readings WHERE line = '{line}' AND "
                   f"asset = '{asset}' AND sensor = '{sensor}' AND ts > make_timestamp("
                   f"{to_us(lo)}) AND ts <= make_timestamp({to_us(hi)}) ORDER BY ts")
        if len(rows) >= cfg.control.max_rows:
            raise ExplainError(f"{sensor} has more than {cfg.control.max_rows} readings in "
                               f"the {duration(hi - lo)} to replay: raise [control] max_rows")
        if rows:
            arr = np.array(rows, dtype=np.float64)
            out[sensor] = (from_us(arr[:, 0]), arr[:, 1])
    return out
