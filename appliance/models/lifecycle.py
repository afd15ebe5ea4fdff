"""The retraining loop's decisions: when to train, whether a candidate may shadow,
when a challenger is promoted or rejected, when a promotion is rolled back.

Pure: no files, no database, no clock.  Every method takes the event time
``now`` and what was observed then, so the service's retrain stage (reading its
tables) and the walk-forward backtest (replaying a history) run the same rules
on the same kind of inputs.  The loop's memory (``LoopState``) is a small JSON
document kept in the registry file beside the roles and written in the same
atomic write as the role change it goes with, so a ``kill -9`` never leaves a
role without its state or the other way round.

The rules (``[retrain]``, ``config.RetrainConfig``):

* **Triggers**, first that holds: by hand; a drift event open for
  ``drift_persist_s``; the champion's live recall ``score_drop`` below its
  validated recall (with ``min_live_faults`` live faults), or its false alarms at
  twice the budget over at least an asset-week; ``min_new_faults`` fault starts
  since the last training (or since the loop first ran: an imported history's
  faults are not new); ``every_days`` since the last training (or since the loop
  first ran).  None fires within ``min_gap_s`` of the last training, while a
  candidate of the loop is in shadow or a promotion on probation (by hand does).
* **Gate**: a candidate and the champion are scored on the same holdout; the
  candidate becomes a challenger only if it is within the false-alarm budget
  and ``at_least_as_good`` as the champion with ``margin`` on recall.
* **Shadow**: a challenger is decided after ``shadow_days`` (``drift_shadow_days``
  while a drift event is open: the champion is known to serve data unlike its
  training, so waiting a full week costs more than it tells) or as soon as
  ``shadow_faults`` faults came over ``min_asset_weeks`` of live ticks: promoted
  when its live scores since the shadow began are ``at_least_as_good`` as the
  champion's over the same ticks, else rejected.
* **Probation**: after an automatic promotion the old champion is shadowed for
  ``probation_days``; once ``min_live_faults`` faults came over
  ``min_asset_weeks`` of live ticks, or the period ended, the new champion must
  be ``at_least_as_good`` as the old, else the loop rolls back.  A manual
  promote, rollback or unshadow ends whatever the loop had going for those
  models (``reconcile``): the person wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from appliance.config import RetrainConfig
from appliance.scoring.metrics import EventMetrics

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Standing:
    """One model's event metrics over one period (live, or a holdout)."""

    faults: int
    caught: int
    recall: float
    false_episodes: int
    asset_weeks: float
    false_per_asset_week: float
    median_lead_s: float

    @classmethod
    def of(cls, m: EventMetrics) -> Standing:
        return cls(m.faults, m.caught, m.recall, m.false_episodes, m.asset_weeks,
                   m.false_per_asset_week, m.median_lead_s)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Standing:
        return cls(**{k: (math.nan if d.get(k) is None else d[k])
                      for k in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}

    def text(self) -> str:
        recall = "n/a" if math.isnan(self.recall) else f"{self.recall:.2f}"
        fpw = "n/a" if math.isnan(self.false_per_asset_week) else \
            f"{self.false_per_asset_week:.2f}"
        lead = "n/a" if math.isnan(self.median_lead_s) else f"{self.median_lead_s / 60:.0f} min"
        return (f"recall {recall} ({self.caught}/{self.faults}), {self.false_episodes} false "
                f"episodes ({fpw}/asset-week), median lead {lead}")


def at_least_as_good(a: Standing, b: Standing, budget: float, margin: float = 0.0
                     ) -> tuple[bool, str]:
    """Whether ``a`` does at least as well as ``b`` on the same ticks, and why not.

    With faults: recall at least ``b``'s plus ``margin``.  False alarms, counted
    in episodes: no more than ``b``'s or the budget's share of the period, whichever
    is higher (a model within the budget is not blamed for alarming more than a
    silent one), plus ``FALSE_EPISODE_SLACK``: over a few days one episode is
    noise, and without the slack a single one (4/asset-week over 0.25 asset-weeks)
    rolled back a model that caught every fault, seen in the walk-forward.
    """
    if a.faults and a.recall < b.recall + margin - 1e-12:
        return False, (f"recall {a.recall:.2f} below {b.recall:.2f}"
                       + (f" + margin {margin:g}" if margin else ""))
    allowed = max(b.false_episodes, budget * a.asset_weeks) + FALSE_EPISODE_SLACK
    if a.false_episodes > allowed + 1e-9:
        return False, (f"{a.false_episodes} false episodes over {a.asset_weeks:.2f} "
                       f"asset-weeks, above {b.false_episodes} for the other and the "
                       f"budget's {budget * a.asset_weeks:.1f} (+{FALSE_EPISODE_SLACK})")
    return True, "at least as good"


#: False episodes one model may raise beyond the other's (or the budget's share).
FALSE_EPISODE_SLACK = 1
#: A model is compared with another only over periods it predicted for at least this
#: share of the other's asset-weeks: a challenger the service never served (refused,
#: dropped, beyond max_challengers) scores 0 faults and 0 false episodes, which must
#: not read as "at least as good".
COVERAGE = 0.5


def _covers(a: Standing, b: Standing) -> bool:
    return a.asset_weeks >= COVERAGE * b.asset_weeks


def _zero_if_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else x


@dataclass(frozen=True, slots=True)
class LoopState:
    """What the loop remembers between checks (and restarts)."""

    #: Event time the loop first ran: the schedule counts from here until a training.
    started_at: float | None = None
    #: Event time of the last training's start, and the fault starts stored then.
    trained_at: float | None = None
    faults_at_training: int = 0
    #: Challengers the loop put in shadow → event time their shadow began.
    shadow_since: Mapping[str, float] = field(default_factory=dict)
    #: The promotion on probation: {"champion", "previous", "since", "until"}.
    probation: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> LoopState:
        doc = doc or {}
        return cls(started_at=doc.get("started_at"), trained_at=doc.get("trained_at"),
                   faults_at_training=int(doc.get("faults_at_training", 0)),
                   shadow_since=dict(doc.get("shadow_since", {})),
                   probation=dict(doc["probation"]) if doc.get("probation") else None)

    def to_json(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "trained_at": self.trained_at,
                "faults_at_training": self.faults_at_training,
                "shadow_since": dict(self.shadow_since),
                "probation": dict(self.probation) if self.probation else None}


@dataclass(frozen=True, slots=True)
class Watch:
    """What the loop sees at ``now``."""

    now: float
    #: Fault starts stored so far (MQTT and import).
    faults: int
    #: Start of the oldest drift event (kind drift) still open, or None.
    drift_open_since: float | None = None
    #: The champion's live scores over the last 30 days, and its validated recall.
    champion_live: Standing | None = None
    champion_validated_recall: float | None = None
    #: A request by hand (``appliance retrain``): its reason, or None.
    requested: str | None = None


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: str  # 'manual' | 'drift' | 'score' | 'faults' | 'schedule'
    reason: str


@dataclass(frozen=True, slots=True)
class Gate:
    accepted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # 'promote' | 'reject' | 'rollback' | 'end_probation'
    model: str
    reason: str
    #: Both models' live standings the decision was taken on: {model: standing}.
    standings: Mapping[str, Standing] = field(default_factory=dict)


#: (model, since, until) → its live standing over (since, until].
StandingOf = Callable[[str, float, float], Standing]


class Lifecycle:
    def __init__(self, cfg: RetrainConfig, budget: float) -> None:
        self.cfg = cfg
        self.budget = budget

    def trigger(self, state: LoopState, watch: Watch) -> Trigger | None:
        """The reason to train now, or None (see the module docstring for the order)."""
        cfg, now = self.cfg, watch.now
        if watch.requested is not None:
            return Trigger("manual", f"by hand: {watch.requested}")
        if state.shadow_since:
            return None  # the last candidate is still being judged live
        if state.probation:
            return None
        if state.trained_at is not None and now - state.trained_at < cfg.min_gap_s:
            return None
        if cfg.drift_persist_s and watch.drift_open_since is not None \
                and now - watch.drift_open_since >= cfg.drift_persist_s:
            return Trigger("drift", f"a drift event open for "
                                    f"{(now - watch.drift_open_since) / 3600:.1f} h")
        live = watch.champion_live
        if cfg.score_drop and live is not None:
            validated = watch.champion_validated_recall
            if live.faults >= cfg.min_live_faults and validated is not None \
                    and not math.isnan(validated) and live.recall < validated - cfg.score_drop:
                return Trigger("score", f"live recall {live.recall:.2f} over "
                                        f"{live.faults} faults, validated {validated:.2f}")
            if live.asset_weeks >= 1.0 and self.budget > 0 \
                    and _zero_if_nan(live.false_per_asset_week) >= 2 * self.budget:
                return Trigger("score", f"{live.false_per_asset_week:.2f} false alarms per "
                                        f"asset-week live, budget {self.budget:g}")
        new_faults = watch.faults - state.faults_at_training
        if cfg.min_new_faults and new_faults >= cfg.min_new_faults:
            return Trigger("faults", f"{new_faults} faults since the last training")
        since = state.trained_at if state.trained_at is not None else state.started_at
        if cfg.every_days and since is not None and now - since >= cfg.every_days * DAY_S:
            return Trigger("schedule", f"{(now - since) / DAY_S:.1f} days since the "
                                       f"{'last training' if state.trained_at else 'start'}")
        return None

    def gate(self, candidate: Standing, champion: Standing | None) -> Gate:
        """May the candidate shadow the champion? Both scored on the same holdout."""
        allowed = self.budget * candidate.asset_weeks + FALSE_EPISODE_SLACK
        if candidate.false_episodes > allowed + 1e-9:
            return Gate(False, f"{candidate.false_episodes} false episodes over "
                               f"{candidate.asset_weeks:.2f} asset-weeks of holdout, above "
                               f"the budget's {self.budget * candidate.asset_weeks:.1f} "
                               f"(+{FALSE_EPISODE_SLACK})")
        if not candidate.faults and champion is None:
            return Gate(False, "no fault in the holdout and no champion to compare with: "
                               "nothing shows the candidate catches faults")
        if champion is None:
            return Gate(True, f"no champion to compare with; {candidate.text()}")
        ok, why = at_least_as_good(candidate, champion, self.budget, self.cfg.margin)
        return Gate(ok, why if not ok else f"at least as good as the champion on the holdout "
                                           f"(margin {self.cfg.margin:g})")

    def shadow_days(self, in_drift: bool) -> float:
        return self.cfg.drift_shadow_days if in_drift else self.cfg.shadow_days

    def review(self, state: LoopState, now: float, champion: str | None, in_drift: bool,
               standing: StandingOf) -> list[Action]:
        """Decisions due at ``now`` on the loop's challengers and its probation."""
        actions: list[Action] = []
        if state.probation and champion == state.probation["champion"]:
            p = state.probation
            new = standing(p["champion"], p["since"], now)
            old = standing(p["previous"], p["since"], now)
            ok, why = at_least_as_good(new, old, self.budget)
            both = {p["champion"]: new, p["previous"]: old}
            if not _covers(old, new):  # the old one was not served beside it: no verdict
                ok, why = True, (f"the old champion predicted on {old.asset_weeks:.2f} of "
                                 f"{new.asset_weeks:.2f} asset-weeks: not compared")
            early = new.faults >= self.cfg.min_live_faults \
                and new.asset_weeks >= self.cfg.min_asset_weeks
            if not ok and (early or now >= p["until"]):
                actions.append(Action("rollback", p["previous"], f"on probation: {why}", both))
            elif now >= p["until"]:
                actions.append(Action("end_probation", p["previous"],
                                      "probation over: the new champion held", both))
            return actions  # no promotion while one is on probation
        if champion is None:
            return actions
        limit = self.shadow_days(in_drift) * DAY_S
        for name, since in sorted(state.shadow_since.items(), key=lambda kv: kv[1]):
            mine, theirs = standing(name, since, now), standing(champion, since, now)
            early = mine.faults >= self.cfg.shadow_faults \
                and mine.asset_weeks >= self.cfg.min_asset_weeks
            if now - since < limit and not early:
                continue
            ok, why = at_least_as_good(mine, theirs, self.budget)
            if not _covers(mine, theirs):  # not served (refused, dropped, over the limit)
                ok, why = False, (f"it predicted on {mine.asset_weeks:.2f} of the champion's "
                                  f"{theirs.asset_weeks:.2f} asset-weeks: too few to judge")
            both = {name: mine, champion: theirs}
            actions.append(Action("promote" if ok else "reject", name,
                                  f"after {(now - since) / DAY_S:.1f} days in shadow: {why}",
                                  both))
            if ok:
                break  # one promotion per review: the next is judged against it
        return actions

    # -- state transitions (pure) ------------------------------------------------

    @staticmethod
    def began(state: LoopState, now: float, faults: int) -> LoopState:
        """The state at the loop's first check: the schedule and the fault count start
        there (faults of an imported history are not new faults)."""
        if state.started_at is not None:
            return state
        return replace(state, started_at=now, faults_at_training=faults)

    @staticmethod
    def trained(state: LoopState, now: float, faults: int) -> LoopState:
        return replace(state, trained_at=now, faults_at_training=faults)

    @staticmethod
    def shadowed(state: LoopState, name: str, now: float) -> LoopState:
        return replace(state, shadow_since={**state.shadow_since, name: now})

    def applied(self, state: LoopState, action: Action, champion: str | None,
                now: float) -> LoopState:
        """The state after ``action`` was carried out (the registry changed with it)."""
        shadow = {k: v for k, v in state.shadow_since.items() if k != action.model}
        if action.kind == "promote":
            probation = None
            if champion is not None and self.cfg.probation_days > 0:
                probation = {"champion": action.model, "previous": champion, "since": now,
                             "until": now + self.cfg.probation_days * DAY_S}
            return replace(state, shadow_since=shadow, probation=probation)
        if action.kind in ("rollback", "end_probation"):
            return replace(state, shadow_since=shadow, probation=None)
        return replace(state, shadow_since=shadow)  # reject

    @staticmethod
    def reconcile(state: LoopState, champion: str | None, challengers: list[str]
                  ) -> LoopState:
        """Forget what a person undid: shadows of models that are no longer challengers,
        a probation whose champion is no longer active or whose old champion is gone."""
        shadow = {k: v for k, v in state.shadow_since.items() if k in challengers}
        probation = state.probation
        if probation and (probation["champion"] != champion
                          or probation["previous"] not in challengers):
            probation = None
        if shadow == dict(state.shadow_since) and probation == state.probation:
            return state
        return replace(state, shadow_since=shadow, probation=probation)
