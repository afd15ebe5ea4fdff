"""Live event scores: every model that predicted, scored on the faults that came in.

The backtest's implementation, not a second one: each asset's stored predictions
become ``scoring.metrics.AssetScores`` labelled by ``scoring.labels.label_ticks``
against the faults as ``storage.history`` pairs them, and go through
``metrics.asset_counts`` / ``metrics.combine`` — the two steps of
``metrics.event_metrics`` — under the alarm rule of ``appliance.alarm``.
``tests/unit/test_live_scores.py`` holds that they equal ``event_metrics``.
(Those two training modules are pure NumPy; the layering test names them as the
only part of ``training`` the service may import.)

Choices, and why:

* Windows are the last 7 and 30 days of *event time*, ending at the newest stored
  prediction, not at the wall clock: an imported or replayed history (and the demo,
  60× faster than real time) is scored over its own last days.
* A model is scored at the threshold of its newest prediction (the stored per-row
  threshold: ``[alerts] threshold`` or the model's), with ``[alerts] clear_ratio``;
  ``role`` is that of its newest prediction, so a promoted challenger shows as the
  champion it now is.  PR-AUC is not computed (it would need every tick at once).
* Bounded work: the predictions are read per model in groups of assets of at most
  ``ROWS_PER_QUERY`` rows (one query each, ordered by asset and time) and reduced to
  ``AssetCounts`` at once, so memory holds one group, never 30 days of every asset;
  ``keep_going`` is asked between groups (progress, and stopping on shutdown).
  The time is linear in the rows (see the note: ~1 s per 6 M predictions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import AssetCounts, AssetScores, EventMetrics, asset_counts, combine
from appliance.storage.history import stored_faults
from appliance.timefmt import from_us, to_us

WINDOWS_DAYS: tuple[int, ...] = (7, 30)
#: Rows of predictions held at once (~24 bytes each with the asset keys).
ROWS_PER_QUERY = 2_000_000
_DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class ModelScore:
    model: str
    role: str
    window_days: int
    metrics: EventMetrics

    def row(self) -> dict[str, Any]:
        """The ``model_scores`` columns (NaN → None), as stored and as the status shows."""
        m = self.metrics.as_dict()
        return {"model": self.model, "role": self.role, "window_days": self.window_days,
                **{k: m[k] for k in COLUMNS}}


#: ``model_scores`` columns taken from ``EventMetrics``.
COLUMNS: tuple[str, ...] = ("faults", "caught", "recall", "episodes", "false_episodes",
                            "asset_weeks", "false_per_asset_week", "median_lead_s",
                            "episode_precision")


def fault_count(con: duckdb.DuckDBPyConnection, starts_only: bool = False) -> int:
    """Stored fault events (the cheap check of whether a rescore is due), or only their
    starts (faults, as the retraining loop counts them)."""
    row = con.execute("SELECT count(*) FROM faults"
                      + (" WHERE state = 'start'" if starts_only else "")).fetchone()
    return int(row[0]) if row else 0


def score_models(con: duckdb.DuckDBPyConnection, horizon_s: float, clear_ratio: float,
                 windows_days: tuple[int, ...] = WINDOWS_DAYS,
                 keep_going: Callable[[], bool] = lambda: True,
                 cooldown_s: float | None = None) -> list[ModelScore] | None:
    """Every model's event metrics per window, the champion first; None when
    ``keep_going`` said stop.  ``cooldown_s`` as ``[training] cooldown_s`` (default
    one horizon), as the backtest labels its ticks."""
    end_row = con.execute("SELECT epoch_us(max(ts)) FROM predictions").fetchone()
    if end_row is None or end_row[0] is None:
        return []
    end = from_us(end_row[0])
    since = end - max(windows_days) * _DAY_S
    faults = stored_faults(con)
    models = con.execute(
        "SELECT model, arg_max(role, ts), arg_max(threshold, ts) FROM predictions "
        "WHERE ts > make_timestamp(?) GROUP BY model ORDER BY model",
        [to_us(since)]).fetchall()
    out = []
    for model, role, threshold in models:
        counts: dict[int, list[AssetCounts]] = {w: [] for w in windows_days}
        for asset, ticks, proba in _asset_predictions(con, model, since):
            if not keep_going():
                return None
            starts, ends = faults.get(asset, (np.empty(0), np.empty(0)))
            positive, usable = label_ticks(ticks, starts, ends, horizon_s, cooldown_s)
            for w in windows_days:
                i = int(np.searchsorted(ticks, end - w * _DAY_S, side="right"))
                scores = AssetScores(asset, ticks[i:], proba[i:], usable[i:], positive[i:],
                                     starts)
                counts[w].append(asset_counts(scores, threshold, horizon_s, clear_ratio))
        out += [ModelScore(model, role, w, combine(counts[w], threshold, math.nan))
                for w in windows_days]
    return sorted(out, key=lambda s: (s.role != "champion", s.model, s.window_days))


def score_period(con: duckdb.DuckDBPyConnection, model: str, since: float, until: float,
                 horizon_s: float, clear_ratio: float, cooldown_s: float | None = None,
                 threshold: float | None = None) -> EventMetrics:
    """One model's event metrics over its predictions in (since, until], as the windows
    of ``score_models`` are scored (the retraining loop compares two models over the
    same period with it).  ``threshold``: its newest stored one when None."""
    if threshold is None:
        row = con.execute("SELECT arg_max(threshold, ts) FROM predictions WHERE model = ?",
                          [model]).fetchone()
        threshold = float(row[0]) if row and row[0] is not None else 0.5
    faults = stored_faults(con)
    counts = []
    for asset, ticks, proba in _asset_predictions(con, model, since):
        hi = int(np.searchsorted(ticks, until, side="right"))
        starts, ends = faults.get(asset, (np.empty(0), np.empty(0)))
        positive, usable = label_ticks(ticks[:hi], starts, ends, horizon_s, cooldown_s)
        counts.append(asset_counts(AssetScores(asset, ticks[:hi], proba[:hi], usable, positive,
                                               starts), threshold, horizon_s, clear_ratio))
    return combine(counts, threshold, math.nan)


def _asset_predictions(con: duckdb.DuckDBPyConnection, model: str, since: float
                       ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(asset, sorted ticks, probabilities) of ``model`` after ``since``, a group of
    assets of at most ``ROWS_PER_QUERY`` rows per query."""
    since_us = to_us(since)
    sizes = con.execute(
        "SELECT line, asset, count(*) FROM predictions WHERE model = ? "
        "AND ts > make_timestamp(?) GROUP BY line, asset ORDER BY line, asset",
        [model, since_us]).fetchall()
    group: list[tuple[str, str]] = []
    rows = 0
    for i, (line, asset, n) in enumerate(sizes):
        group.append((line, asset))
        rows += n
        if rows >= ROWS_PER_QUERY or i == len(sizes) - 1:
            yield from _read_group(con, model, since_us, group)
            group, rows = [], 0


def _read_group(con: duckdb.DuckDBPyConnection, model: str, since_us: int,
                group: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    lines, assets = [g[0] for g in group], [g[1] for g in group]
    data = con.execute(
        "SELECT k.i, epoch_us(p.ts) AS us, p.probability FROM predictions p JOIN "
        "(SELECT unnest(?::VARCHAR[]) AS line, unnest(?::VARCHAR[]) AS asset, "
        " unnest(range(?)) AS i) k ON p.line = k.line AND p.asset = k.asset "
        "WHERE p.model = ? AND p.ts > make_timestamp(?) ORDER BY k.i, p.ts",
        [lines, assets, len(group), model, since_us]).fetchnumpy()
    idx = np.asarray(data["i"], dtype=np.int64)
    ticks = from_us(np.asarray(data["us"], dtype=np.int64))
    proba = np.asarray(data["probability"], dtype=np.float64)
    bounds = np.searchsorted(idx, np.arange(len(group) + 1), side="left")
    for k, asset in enumerate(assets):
        lo, hi = bounds[k], bounds[k + 1]
        yield asset, ticks[lo:hi], proba[lo:hi]


def write_scores(con: duckdb.DuckDBPyConnection, refreshed_at: float,
                 scores: list[ModelScore]) -> None:
    """Replace ``model_scores`` with ``scores``, in one transaction."""
    con.begin()
    try:
        con.execute("DELETE FROM model_scores")
        if scores:
            con.executemany(
                f"INSERT INTO model_scores (refreshed_at, model, role, window_days, "
                f"{', '.join(COLUMNS)}) VALUES (make_timestamp(?), ?, ?, ?, "
                f"{', '.join('?' * len(COLUMNS))})",
                [[to_us(refreshed_at), s.model, s.role, s.window_days,
                  *(s.row()[k] for k in COLUMNS)] for s in scores])
        con.commit()
    except BaseException:
        con.rollback()
        raise


def read_scores(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """``model_scores`` as dicts (``refreshed_at`` in seconds), champion first."""
    cur = con.execute(
        f"SELECT epoch_us(refreshed_at) / 1e6 AS refreshed_at, model, role, window_days, "
        f"{', '.join(COLUMNS)} FROM model_scores "
        f"ORDER BY role <> 'champion', model, window_days")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
