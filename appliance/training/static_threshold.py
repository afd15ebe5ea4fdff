"""The SCADA baseline: one sensor, one limit, tuned on history.

What a plant's alarm system does: raise when one sensor's value crosses a
limit.  ``fit_static`` tries every sensor's current value (``<sensor>__last``,
the reading on the pipeline's grid) and its mean over the shortest window (the
process-value filter alarm systems put before a limit, so that one noisy
reading does not raise an alarm), above and below, and keeps the sensor, signal,
direction and limit with the best recall within the false-alarm budget on the
training window (the same event metrics and hysteresis as the models, ``metrics``).

To share the models' alarm rule and metrics, a limit is expressed as a score
in [0, 1]: the fraction of training values at or below the value ("above"
limits; at or above for "below").  The limit is then a threshold on that score
and the score plays the part of a probability (in ``predictions.parquet`` too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from appliance.config import DEFAULT_CLEAR_RATIO
from appliance.features.spec import PipelineSpec
from appliance.scoring.metrics import EventMetrics, best_within_budget, metrics_curve
from appliance.training.dataset import Dataset


@dataclass(frozen=True, slots=True, eq=False)
class StaticLimit:
    """A tuned single-sensor limit: alarm while ``feature`` is beyond ``limit``."""

    feature: str
    direction: str  # "above" | "below"
    threshold: float  # on the score scale
    limit: float  # in the sensor's units (approximately where the score reaches threshold)
    training: EventMetrics  # at the chosen threshold, on the training window
    met_budget: bool
    reference: np.ndarray = field(repr=False)  # sorted finite training values

    def score(self, X: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Scores of rows X (columns ``names``): NaN where the feature is missing."""
        return _score(np.asarray(X)[:, list(names).index(self.feature)], self.reference,
                      self.direction)

    def describe(self) -> str:
        op = ">=" if self.direction == "above" else "<="
        return f"{self.feature} {op} {self.limit:.4g}"


def _score(x: np.ndarray, ref: np.ndarray, direction: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = len(ref)
    if direction == "above":
        out = np.searchsorted(ref, x, side="right") / n
    else:
        out = 1.0 - np.searchsorted(ref, x, side="left") / n
    out[~np.isfinite(x)] = np.nan
    return out


def candidate_features(spec: PipelineSpec, names: Sequence[str]) -> list[str]:
    """Per sensor: its value on the grid and its mean over the shortest window."""
    out = [n for n in names if n.endswith("__last")]
    if spec.windows_s:
        short = f"__mean_{min(spec.windows_s):g}s"
        out += [n for n in names if n.endswith(short)]
    return out


def fit_static(ds: Dataset, spec: PipelineSpec, t_start: float, t_end: float,
               max_false_per_asset_week: float, clear_ratio: float = DEFAULT_CLEAR_RATIO,
               n_candidates: int = 41, progress: Callable[[str], None] | None = None
               ) -> StaticLimit:
    """Tune the limit on the ticks of ``ds`` in (t_start, t_end] (see the module docstring).

    Thresholds tried per signal and direction: ``n_candidates`` quantiles of the
    training scores from the 80th percentile up (a limit is set in the tail).
    """
    say = progress or (lambda _m: None)
    rows = (ds.ticks > t_start) & (ds.ticks <= t_end)
    fit_rows = rows & ds.usable
    if not fit_rows.any():
        raise ValueError("no usable ticks in the training window")
    best: tuple[tuple[float, float, float], StaticLimit] | None = None
    for feature in candidate_features(spec, ds.names):
        col = ds.X[:, ds.names.index(feature)].astype(np.float64)
        ref = np.sort(col[fit_rows][np.isfinite(col[fit_rows])])
        if len(ref) < 10 or ref[0] == ref[-1]:
            continue
        for direction in ("above", "below"):
            p = _score(col[rows], ref, direction)
            scores = ds.scores(rows, p)
            usable_p = p[ds.usable[rows] & np.isfinite(p)]
            candidates = np.unique(np.quantile(usable_p, np.linspace(0.8, 1.0, n_candidates)))
            point, met = best_within_budget(
                metrics_curve(scores, spec.horizon_s, clear_ratio, candidates),
                max_false_per_asset_week)
            recall = 0.0 if math.isnan(point.recall) else point.recall
            fa = 0.0 if math.isnan(point.false_per_asset_week) else point.false_per_asset_week
            key = (float(met), recall, -fa)
            if best is None or key > best[0]:
                q = point.threshold if direction == "above" else 1.0 - point.threshold
                limit = float(np.quantile(ref, min(max(q, 0.0), 1.0)))
                best = (key, StaticLimit(feature, direction, point.threshold, limit, point,
                                         met, ref))
    if best is None:
        raise ValueError("no sensor with varying values to set a limit on")
    chosen = best[1]
    say(f"static_threshold: {chosen.describe()} (recall {chosen.training.recall:.2f}, "
        f"{chosen.training.false_per_asset_week:.2f} false alarms per asset-week on the "
        f"training window)")
    return chosen
