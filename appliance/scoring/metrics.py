"""Event metrics: what a line engineer counts, computed from per-tick probabilities.

Alarms follow the service's own rule, ``appliance.alarm`` (raise at the
threshold, clear below threshold × clear_ratio, NaN holds); a tick that is not
usable (see ``labels``) clears it too.  An *episode* is one raise.

* a fault is *caught* when an alarm is active at some usable tick in
  [start − horizon, start); only faults with ticks over that whole horizon (one
  tick's slack) are counted, so each had a full horizon of ticks to be caught —
  not one at the start of the data, after an idle gap or a warm-up, or after
  the data ended (a fault at the very end of a run-to-failure test counts);
* *recall* = caught / counted faults;
* a *false alarm episode* is a raise at t with no fault of the asset starting in
  (t, t + horizon]; reported per asset-week of usable ticks;
* *episode precision* = true episodes / all episodes;
* *lead time* of a caught fault = start − first tick in [start − horizon, start)
  with the alarm active; the median over caught faults is reported;
* *PR-AUC* (average precision) over usable ticks.

Design: every quantity is a handful of vectorised passes over one asset's
ticks (running maxima for the hysteresis state, ``searchsorted`` for the fault
windows), so scanning a few hundred candidate thresholds stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from appliance.alarm import alarm_active
from appliance.config import DEFAULT_CLEAR_RATIO

_WEEK_S = 7 * 86400.0


@dataclass(frozen=True, slots=True, eq=False)
class AssetScores:
    """One asset's scored ticks: time, probability, usable mask, labels and faults."""

    asset: str
    ticks: np.ndarray  # sorted, float64
    probability: np.ndarray
    usable: np.ndarray  # bool
    positive: np.ndarray  # bool
    fault_starts: np.ndarray  # all of the asset's fault starts (any order)


@dataclass(frozen=True, slots=True)
class EventMetrics:
    threshold: float
    faults: int
    caught: int
    recall: float
    episodes: int
    false_episodes: int
    asset_weeks: float
    false_per_asset_week: float
    episode_precision: float
    median_lead_s: float
    pr_auc: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (NaN becomes None), numbers rounded for humans."""
        out: dict[str, float | int | None] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                out[key] = None if math.isnan(value) else round(value, 6)
            else:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class AssetCounts:
    """What one asset adds to the event metrics; ``combine`` sums them.  Kept apart so
    the live scores (``models.scores``) can stream assets through the same two steps
    without holding every asset's ticks at once."""

    faults: int
    caught: int
    episodes: int
    false_episodes: int
    leads: tuple[float, ...]
    usable_s: float


def asset_counts(s: AssetScores, threshold: float, horizon_s: float, clear_ratio: float
                 ) -> AssetCounts:
    """The faults, catches, episodes, false episodes, lead times and usable seconds of
    one asset."""
    t = np.asarray(s.ticks, dtype=np.float64)
    if len(t) == 0:
        return AssetCounts(0, 0, 0, 0, (), 0.0)
    active = alarm_active(s.probability, s.usable, threshold, clear_ratio)
    starts = np.sort(np.asarray(s.fault_starts, dtype=np.float64))

    raised = active & ~np.concatenate(([False], active[:-1]))
    t_raise = t[raised]
    nxt = np.searchsorted(starts, t_raise, side="right")
    has_next = nxt < len(starts)
    true_ep = np.zeros(len(t_raise), dtype=bool)
    true_ep[has_next] = starts[nxt[has_next]] <= t_raise[has_next] + horizon_s
    episodes = int(raised.sum())
    false_eps = int(episodes - np.count_nonzero(true_ep))

    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    lo = np.searchsorted(t, starts - horizon_s, side="left")
    hi = np.searchsorted(t, starts, side="left")  # ticks in [s - h, s)
    need = max(1, round(horizon_s / step) - 1) if step > 0 else np.inf
    covered = (hi - lo) >= need
    counted, lo, hi = starts[covered], lo[covered], hi[covered]
    # First active tick at or after each index (len(t) when none).
    first_active = np.where(active, np.arange(len(t)), len(t))
    first_active = np.minimum.accumulate(first_active[::-1])[::-1]
    first_active = np.append(first_active, len(t))
    j = first_active[lo]
    caught = j < hi
    leads = tuple((counted[caught] - t[j[caught]]).tolist())

    usable_s = float(np.count_nonzero(s.usable)) * step
    return AssetCounts(len(counted), int(caught.sum()), episodes, false_eps, leads, usable_s)


def combine(counts: Iterable[AssetCounts], threshold: float, pr_auc: float) -> EventMetrics:
    """The event metrics of all assets from their ``asset_counts``."""
    faults = caught = episodes = false_eps = 0
    leads: list[float] = []
    usable_s = 0.0
    for c in counts:
        faults += c.faults
        caught += c.caught
        episodes += c.episodes
        false_eps += c.false_episodes
        leads += c.leads
        usable_s += c.usable_s
    weeks = usable_s / _WEEK_S
    return EventMetrics(
        threshold=float(threshold),
        faults=faults,
        caught=caught,
        recall=caught / faults if faults else math.nan,
        episodes=episodes,
        false_episodes=false_eps,
        asset_weeks=weeks,
        false_per_asset_week=false_eps / weeks if weeks > 0 else math.nan,
        episode_precision=(episodes - false_eps) / episodes if episodes else math.nan,
        median_lead_s=float(np.median(leads)) if leads else math.nan,
        pr_auc=pr_auc,
    )


def event_metrics(scores: Sequence[AssetScores], threshold: float, horizon_s: float,
                  clear_ratio: float = DEFAULT_CLEAR_RATIO, pr_auc: float | None = None
                  ) -> EventMetrics:
    """Event metrics of all assets at one threshold (see the module docstring)."""
    return combine((asset_counts(s, threshold, horizon_s, clear_ratio) for s in scores),
                   threshold, tick_pr_auc(scores) if pr_auc is None else pr_auc)


def tick_pr_auc(scores: Sequence[AssetScores]) -> float:
    """Average precision over all usable ticks (NaN when one class is absent)."""
    from sklearn.metrics import average_precision_score

    y = np.concatenate([s.positive[s.usable] for s in scores]) if scores else np.empty(0)
    p = np.concatenate([s.probability[s.usable] for s in scores]) if scores else np.empty(0)
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) == 0 or y.all() or not y.any():
        return math.nan
    return float(average_precision_score(y, p))


def threshold_candidates(scores: Sequence[AssetScores], lo: float = 0.02, hi: float = 0.995
                         ) -> np.ndarray:
    """Thresholds worth trying: an even grid on [lo, hi] and the upper quantiles of the
    usable probabilities (where the interesting thresholds are), within [lo, hi]."""
    p = np.concatenate([s.probability[s.usable] for s in scores]) if scores else np.empty(0)
    p = p[np.isfinite(p)]
    grid = np.linspace(lo, hi, 97)
    if len(p):
        grid = np.concatenate([grid, np.quantile(p, np.linspace(0.5, 1.0, 201))])
    return np.unique(np.clip(grid, lo, hi))


def metrics_curve(scores: Sequence[AssetScores], horizon_s: float,
                  clear_ratio: float = DEFAULT_CLEAR_RATIO,
                  candidates: np.ndarray | None = None) -> list[EventMetrics]:
    """Event metrics at each candidate threshold (default ``threshold_candidates``):
    recall against false alarms, as the threshold moves."""
    if candidates is None:
        candidates = threshold_candidates(scores)
    auc = tick_pr_auc(scores)
    return [event_metrics(scores, float(c), horizon_s, clear_ratio, pr_auc=auc)
            for c in np.asarray(candidates, dtype=np.float64)]


def best_within_budget(curve: Sequence[EventMetrics], max_false_per_asset_week: float
                       ) -> tuple[EventMetrics, bool]:
    """The point of ``curve`` with the best recall whose false alarms stay within the budget.

    Ties go to fewer false alarms, then to the higher threshold.  Returns the
    point and whether the budget was met (when no point meets it, the one with
    the fewest false alarms per asset-week is returned).
    """
    if not curve:
        raise ValueError("no thresholds to choose from")

    def fa(m: EventMetrics) -> float:
        return 0.0 if math.isnan(m.false_per_asset_week) else m.false_per_asset_week

    feasible = [m for m in curve if fa(m) <= max_false_per_asset_week]
    if feasible:
        best = max(feasible, key=lambda m: (0.0 if math.isnan(m.recall) else m.recall,
                                            -fa(m), m.threshold))
        return best, True
    return min(curve, key=lambda m: (fa(m), -m.threshold)), False


def choose_threshold(scores: Sequence[AssetScores], horizon_s: float,
                     max_false_per_asset_week: float = 1.0,
                     clear_ratio: float = DEFAULT_CLEAR_RATIO,
                     lo: float = 0.02, hi: float = 0.995) -> tuple[EventMetrics, bool]:
    """The threshold with the best recall whose false alarms stay within the budget.

    Candidates are ``threshold_candidates(scores, lo, hi)``.  Ties
    go to fewer false alarms, then to the higher threshold.  Returns the metrics
    at the chosen threshold and whether the budget was met (when no candidate
    meets it, the one with the fewest false alarms per asset-week is returned).
    """
    curve = metrics_curve(scores, horizon_s, clear_ratio, threshold_candidates(scores, lo, hi))
    return best_within_budget(curve, max_false_per_asset_week)
