"""The retraining loop's rules (``models.lifecycle``): pure, so every branch here."""

from __future__ import annotations

import math

import pytest

from appliance.config import RetrainConfig
from appliance.models.lifecycle import (
    DAY_S,
    Action,
    Lifecycle,
    LoopState,
    Standing,
    Watch,
    at_least_as_good,
)

BUDGET = 1.0
T0 = 1_750_000_000.0


def standing(faults: int = 10, caught: int = 8, false_episodes: int = 1,
             asset_weeks: float = 4.0) -> Standing:
    return Standing(faults, caught, caught / faults if faults else math.nan, false_episodes,
                    asset_weeks, false_episodes / asset_weeks, 1800.0)


def loop(**cfg) -> Lifecycle:
    base = {"every_days": 0.0, "min_new_faults": 0, "drift_persist_s": 0.0,
            "score_drop": 0.0, "min_gap_s": 0.0}
    return Lifecycle(RetrainConfig(**{**base, **cfg}), BUDGET)


# -- comparing two models ---------------------------------------------------------------


def test_more_faults_caught_within_the_budget_is_at_least_as_good():
    assert at_least_as_good(standing(caught=9), standing(caught=8), BUDGET)[0]
    ok, why = at_least_as_good(standing(caught=7), standing(caught=8), BUDGET)
    assert not ok and "recall 0.70 below 0.80" in why
    # a margin asks for more than equal
    assert not at_least_as_good(standing(caught=8), standing(caught=8), BUDGET, 0.05)[0]


def test_false_alarms_count_only_beyond_the_budget_or_the_other_models():
    quiet, noisy = standing(false_episodes=0), standing(false_episodes=3)  # 0.75/asset-wk
    assert at_least_as_good(noisy, quiet, BUDGET)[0]  # within the budget
    louder = standing(false_episodes=8)  # 2/asset-week
    ok, why = at_least_as_good(louder, quiet, BUDGET)
    assert not ok and "budget" in why
    assert at_least_as_good(louder, standing(false_episodes=12), BUDGET)[0]


def test_with_no_fault_false_episodes_decide_with_one_of_slack():
    def quiet(n: int) -> Standing:  # a quarter of an asset-week, no fault
        return standing(faults=0, caught=0, false_episodes=n, asset_weeks=0.25)

    assert at_least_as_good(quiet(1), quiet(0), BUDGET)[0]  # one episode is noise
    assert not at_least_as_good(quiet(2), quiet(0), BUDGET)[0]
    assert at_least_as_good(quiet(3), quiet(2), BUDGET)[0]


# -- triggers ---------------------------------------------------------------------------


def test_each_trigger_fires_on_its_own_condition_and_by_hand_first():
    state = LoopState(started_at=T0)
    now = T0 + 10 * DAY_S
    assert loop().trigger(state, Watch(now, faults=50)) is None  # every trigger off
    assert loop().trigger(state, Watch(now, 0, requested="why")).kind == "manual"
    drift = loop(drift_persist_s=6 * 3600.0)
    assert drift.trigger(state, Watch(now, 0, drift_open_since=now - 5 * 3600)) is None
    assert drift.trigger(state, Watch(now, 0, drift_open_since=now - 7 * 3600)).kind == "drift"
    score = loop(score_drop=0.2, min_live_faults=3)
    live = standing(faults=5, caught=2)  # 0.4 live, validated 0.8
    assert score.trigger(state, Watch(now, 0, champion_live=live,
                                      champion_validated_recall=0.8)).kind == "score"
    assert score.trigger(state, Watch(now, 0, champion_live=standing(faults=2, caught=0),
                                      champion_validated_recall=0.8)) is None  # too few
    assert score.trigger(state, Watch(now, 0, champion_live=standing(false_episodes=9),
                                      champion_validated_recall=None)).kind == "score"
    first = Lifecycle.began(LoopState(), T0, faults=30)  # an imported history's faults
    assert first.faults_at_training == 30 and first.started_at == T0
    assert Lifecycle.began(first, T0 + 5, 99) == first
    faults = loop(min_new_faults=10)
    trained = Lifecycle.trained(state, T0, faults=40)
    assert faults.trigger(trained, Watch(now, 49)) is None
    assert faults.trigger(trained, Watch(now, 50)).kind == "faults"
    schedule = loop(every_days=7.0)
    assert schedule.trigger(state, Watch(T0 + 6.9 * DAY_S, 0)) is None
    assert schedule.trigger(state, Watch(T0 + 7 * DAY_S, 0)).kind == "schedule"


def test_no_automatic_trigger_within_the_gap_or_while_a_candidate_is_judged():
    lc = loop(min_new_faults=1, min_gap_s=12 * 3600.0)
    trained = Lifecycle.trained(LoopState(started_at=T0), T0, faults=0)
    assert lc.trigger(trained, Watch(T0 + 11 * 3600, 5)) is None
    assert lc.trigger(trained, Watch(T0 + 13 * 3600, 5)).kind == "faults"
    shadowing = Lifecycle.shadowed(trained, "cand", T0)
    assert lc.trigger(shadowing, Watch(T0 + 2 * DAY_S, 5)) is None
    assert lc.trigger(shadowing, Watch(T0 + 2 * DAY_S, 5, requested="x")).kind == "manual"


# -- gate, shadow, probation ----------------------------------------------------------------


def test_the_gate_takes_a_candidate_as_good_within_the_budget_and_rejects_others():
    lc = loop()
    assert lc.gate(standing(caught=9), standing(caught=8)).accepted
    worse = lc.gate(standing(caught=6), standing(caught=8))
    assert not worse.accepted and "below" in worse.reason
    over = lc.gate(standing(caught=10, false_episodes=8), standing(caught=8))
    assert not over.accepted and "budget" in over.reason
    assert lc.gate(standing(), None).accepted
    assert not lc.gate(standing(faults=0, caught=0, false_episodes=0), None).accepted


def _table(values: dict[str, Standing]):
    return lambda model, since, until: values[model]


def test_a_challenger_is_decided_after_its_shadow_or_enough_faults():
    lc = loop(shadow_days=7.0, shadow_faults=5, drift_shadow_days=2.0, probation_days=7.0)
    state = Lifecycle.shadowed(LoopState(started_at=T0), "new", T0)
    better = _table({"new": standing(faults=3, caught=3), "old": standing(faults=3, caught=2)})
    assert lc.review(state, T0 + 3 * DAY_S, "old", False, better) == []
    (promote,) = lc.review(state, T0 + 3 * DAY_S, "old", True, better)  # drift: 2 days
    assert promote.kind == "promote" and set(promote.standings) == {"new", "old"}
    enough = _table({"new": standing(faults=5, caught=5), "old": standing(faults=5, caught=4)})
    assert lc.review(state, T0 + DAY_S, "old", False, enough)[0].kind == "promote"
    worse = _table({"new": standing(faults=5, caught=2), "old": standing(faults=5, caught=4)})
    (reject,) = lc.review(state, T0 + 8 * DAY_S, "old", False, worse)
    assert reject.kind == "reject" and "below" in reject.reason
    after = lc.applied(state, promote, "old", T0 + 3 * DAY_S)
    assert after.shadow_since == {} and after.probation["previous"] == "old"
    assert after.probation["until"] == pytest.approx(T0 + 10 * DAY_S)


def test_a_promotion_on_probation_rolls_back_when_the_old_champion_does_better():
    lc = loop(probation_days=7.0)
    promoted = lc.applied(Lifecycle.shadowed(LoopState(), "new", T0),
                          Action("promote", "new", ""), "old", T0)
    short = _table({"new": standing(faults=3, caught=0, asset_weeks=0.5),
                    "old": standing(faults=3, caught=3, asset_weeks=0.5)})
    assert lc.review(promoted, T0 + DAY_S, "new", False, short) == []  # too little exposure
    held = _table({"new": standing(faults=2, caught=2), "old": standing(faults=2, caught=2)})
    assert lc.review(promoted, T0 + DAY_S, "new", False, held) == []
    (end,) = lc.review(promoted, T0 + 7 * DAY_S, "new", False, held)
    assert end.kind == "end_probation" and end.model == "old"
    one = _table({"new": standing(faults=1, caught=0), "old": standing(faults=1, caught=1)})
    assert lc.review(promoted, T0 + DAY_S, "new", False, one) == []  # one fault: wait
    fell = _table({"new": standing(faults=3, caught=0), "old": standing(faults=3, caught=3)})
    (back,) = lc.review(promoted, T0 + DAY_S, "new", False, fell)
    assert back.kind == "rollback" and back.model == "old"
    assert lc.applied(promoted, back, "new", T0 + DAY_S).probation is None


def test_what_a_person_undid_is_forgotten():
    lc = loop(probation_days=7.0)
    state = lc.applied(Lifecycle.shadowed(LoopState(), "new", T0), Action("promote", "new", ""),
                       "old", T0)
    state = Lifecycle.shadowed(state, "cand", T0)
    # the person promoted another model, and unshadowed the candidate
    forgot = Lifecycle.reconcile(state, "theirs", ["old"])
    assert forgot.probation is None and forgot.shadow_since == {}
    assert Lifecycle.reconcile(state, "new", ["old", "cand"]) == state


def test_the_state_survives_its_json():
    state = LoopState(T0, T0 + 1, 4, {"a": T0}, {"champion": "a", "previous": "b",
                                                 "since": T0, "until": T0 + 9})
    assert LoopState.from_json(state.to_json()) == state
    assert LoopState.from_json(None) == LoopState()


def test_a_challenger_that_never_predicted_is_not_promoted():
    lc = loop(shadow_days=1.0)
    state = Lifecycle.shadowed(LoopState(), "ghost", T0)
    nothing = Standing(0, 0, math.nan, 0, 0.0, math.nan, math.nan)
    table = _table({"ghost": nothing, "champ": standing(faults=4, caught=4)})
    (decision,) = lc.review(state, T0 + 2 * DAY_S, "champ", False, table)
    assert decision.kind == "reject" and "too few to judge" in decision.reason
