"""One turn of the retraining loop's training: a candidate trained up to a cut-off and
scored beside the champion on the holdout after it.

The training child (``training.child``, for the service) and the walk-forward
backtest call ``train_candidate`` alike; ``models.lifecycle.Lifecycle.gate`` then
decides on the two standings.

Windows, with ``now`` the event time the history was taken at:

    t_start = max(first reading, cut − history_days)     cut = now − holdout_days
    candidate: trained on (t_start, cut] (its own train / gap / validation split
               chooses its threshold, as ``appliance train``)
    holdout:   (cut, now − horizon]: every tick there has its label, because a fault
               up to one horizon after it would have been stored by ``now``

The holdout starts no earlier than the end of the champion's data (training and
the validation that chose its threshold): a
champion scored on ticks it was trained on would look better than it is.  When
the champion saw the whole holdout, both are scored on all of it anyway and the
report says ``champion_in_sample``.

Both models are scored there by ``scoring.metrics.event_metrics`` at the threshold
each would serve with (``[alerts] threshold`` when set, else its own), under the
service's alarm rule.  The champion sees the same feature rows through its own
column order; a champion of another pipeline spec is not comparable and counts as
none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import DEFAULT_FAMILY, Config
from appliance.features.spec import PipelineSpec
from appliance.models.contract import LoadedModel
from appliance.models.lifecycle import DAY_S, Standing
from appliance.scoring.metrics import event_metrics
from appliance.storage.history import StoredHistory
from appliance.timefmt import parse_rfc3339, rfc3339
from appliance.training.dataset import Progress, build_dataset
from appliance.training.families import TrainParams
from appliance.training.fit import train, write


@dataclass(frozen=True, slots=True)
class CandidateReport:
    """What a training turn produced: the model file and both standings."""

    path: Path | None  # None when no model could be trained
    window: dict[str, str]
    candidate: Standing | None
    champion: Standing | None
    champion_name: str | None
    problems: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "window": self.window,
                "candidate": self.candidate.as_dict() if self.candidate else None,
                "champion": self.champion.as_dict() if self.champion else None,
                "champion_name": self.champion_name, "problems": list(self.problems),
                "timings_s": self.timings_s, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateReport:
        return cls(path=Path(d["path"]) if d.get("path") else None, window=d["window"],
                   candidate=Standing.from_dict(d["candidate"]) if d.get("candidate") else None,
                   champion=Standing.from_dict(d["champion"]) if d.get("champion") else None,
                   champion_name=d.get("champion_name"), problems=tuple(d.get("problems", ())),
                   timings_s=d.get("timings_s", {}), metrics=d.get("metrics", {}))


def serving_threshold(cfg: Config, model_threshold: float) -> float:
    """The threshold the service alarms at: ``[alerts] threshold`` when set."""
    return cfg.alerts.threshold or model_threshold


def train_candidate(cfg: Config, history: StoredHistory, now: float,
                    champion: LoadedModel | None, out_path: Path,
                    progress: Progress | None = None, seed: int = 0,
                    family: str = DEFAULT_FAMILY) -> CandidateReport:
    """Train a candidate of ``family`` on the history before the holdout, write it to
    ``out_path`` (ONNX) and score it and the champion on the holdout.  Raises ValueError
    when the history cannot make a model (too short, no faults in the training window,
    ...)."""
    say = progress or (lambda _m: None)
    r = cfg.retrain
    spec = PipelineSpec.from_config(cfg.pipeline)
    cut = now - r.holdout_days * DAY_S
    t_start = max(history.t_start - 1.0, cut - r.history_days * DAY_S)
    holdout_end = now - spec.horizon_s
    window = {"trained_from": rfc3339(t_start), "cut": rfc3339(cut),
              "holdout_to": rfc3339(holdout_end), "now": rfc3339(now)}
    if cut <= history.t_start:
        raise ValueError(f"no history before the holdout: the data start at "
                         f"{rfc3339(history.t_start)}, the holdout ({r.holdout_days:g} days) "
                         f"at {window['cut']}")
    if holdout_end <= cut:
        raise ValueError(f"the holdout ({r.holdout_days:g} days) is not longer than one "
                         f"horizon ({spec.horizon_s:.0f} s): nothing to compare on")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    params = TrainParams.from_settings(family, cfg.training,
                                       cfg.alerts.max_false_per_asset_week,
                                       cfg.alerts.clear_ratio, seed)
    result = train(spec, history.histories, t_start, cut, params, say, cfg.drift)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, _agreement = write(result, out_path)
    timings["export_s"] = time.perf_counter() - t0

    comparable = champion is not None and champion.spec_hash == spec.hash
    holdout_from, in_sample = cut, False
    if comparable and champion is not None:
        # its training rows, and the validation rows that chose its threshold
        seen_to = max(parse_rfc3339(t) for t in (champion.trained_to,
                                                 champion.metrics.get("validation_to"))
                      if isinstance(t, str))
        if seen_to >= holdout_end - spec.horizon_s:
            in_sample = True
        else:
            holdout_from = max(cut, seen_to)
    window["holdout_from"] = rfc3339(holdout_from)
    t0 = time.perf_counter()
    try:
        ds = build_dataset(spec, history.histories, holdout_from, holdout_end,
                           params.cooldown_s)
    except ValueError as exc:
        raise ValueError(f"no holdout to compare on: {exc}") from None
    rows = np.ones(len(ds.ticks), dtype=bool)

    def standing(m: LoadedModel) -> Standing:
        p = m.predict_proba(np.ascontiguousarray(ds.X[:, m.column_index(ds.names)]))
        return Standing.of(event_metrics(ds.scores(rows, p), serving_threshold(cfg, m.threshold),
                                         spec.horizon_s, cfg.alerts.clear_ratio, pr_auc=np.nan))

    mine = standing(model)
    theirs = standing(champion) if comparable and champion is not None else None
    timings["holdout_s"] = time.perf_counter() - t0
    say(f"holdout {window['cut']} to {window['holdout_to']}: candidate {mine.text()}"
        + (f"; champion {theirs.text()}" if theirs else "; no comparable champion"))
    return CandidateReport(out_path, window, mine, theirs,
                           champion.name if theirs is not None and champion else None,
                           result.problems, timings,
                           {"validation": result.validation.as_dict(),
                            "threshold": result.threshold,
                            "rows": result.metrics.get("rows"),
                            "champion_in_sample": in_sample})
