"""Fault: ``kill -9`` of the service while the retraining loop works — during a
training, and right after a candidate was judged — with readings flowing.

After each restart: the training child died with the service (no orphan keeps a
core and a gigabyte), the cut-off training is recorded as interrupted, the roles
in the registry match the last step in ``model_history``, the loop's memory
names only models that still hold its roles, and every reading the broker
acknowledged is stored exactly once.
"""

from __future__ import annotations

import json
import os
import time

import duckdb

from appliance.models.registry import Registry
from appliance.service import requests
from tests.support.faults import fault_config, stage, tally, wait_drained
from tests.support.retrain import END, SECTIONS, copy_into, prepare

RATE = 500.0  # readings per second: one asset-minute of 5 sensors every 10 ms


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited: only its parent's wait is missing
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _ask_retrain(models: Registry) -> None:
    req = requests.submit(models.directory, "retrain", {"reason": "fault test"})
    for _ in range(600):
        answer = requests.answer_path(req)
        if answer.exists():
            assert json.loads(answer.read_text())["ok"], answer.read_text()
            return
        time.sleep(0.1)
    raise AssertionError("the service did not take the retrain request")


def _steps(db) -> list[tuple[str, str | None, list[str]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [(e, c, json.loads(ch)) for e, c, ch in con.execute(
            "SELECT event, champion, challengers FROM model_history ORDER BY logged_at"
        ).fetchall()]
    finally:
        con.close()


def test_kill9_during_training_and_after_a_decision_leaves_roles_and_story_consistent(
        tmp_path, broker, fault_service, publishers):
    db = copy_into(prepare(tmp_path / "history"), tmp_path)
    cfg = fault_config(tmp_path, broker, db=db, **SECTIONS,
                       retrain={"every_days": 0.0, "min_new_faults": 0,
                                "drift_persist_s": 0.0, "score_drop": 0.0,
                                "check_every_s": 1.0, "holdout_days": 1.5, "min_gap_s": 0.0})
    registry = Registry(tmp_path / "models")
    champion = registry.active_name()
    # 1. killed while the child trains
    svc = fault_service(cfg, db).start()  # subscribed first: its session keeps the rest
    pub = publishers(broker, 40_000, rate=RATE, assets=5, step_s=60.0, t0=END).start()
    _ask_retrain(registry)
    snap = svc.wait_for(lambda s: "training" in s["stages"]["retrain"], 30, "a training")
    child = snap["stages"]["retrain"]["training"]["pid"]
    svc.kill()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphan = _alive(child)

    # 2. restarted: the cut-off training is recorded; a new one runs to its decision
    svc = fault_service(cfg, db).start()
    _ask_retrain(registry)
    svc.wait_for(lambda s: stage(s, "retrain", "trainings_started") == 1
                 and "training" not in s["stages"]["retrain"], 300, "the training's outcome")
    svc.kill()  # right after the decision (and its registry write)

    # 3. restarted again: the story and the registry agree
    svc = fault_service(cfg, db).start()
    time.sleep(3.0)  # a few checks of the loop
    pub.wait_acked(180)
    wait_drained(svc.status, timeout_s=60)
    code, _ = svc.terminate()
    steps = _steps(db)
    events = [e for e, _, _ in steps]
    t = tally(db, pub.acked)
    print(f"retrain_kill9: child orphaned {orphan}; steps {events}; rows {t.rows} of "
          f"{t.published}, lost {t.lost} {t.lost_ids[:10].tolist()}, duplicated {t.duplicated}")
    assert not orphan, "the training child outlived the killed service"
    assert events.count("interrupted") == 1 and events.count("training_started") == 2
    assert any(e in ("shadow", "rejected") for e in events)
    _, last_champion, last_challengers = steps[-1]
    assert (registry.active_name(), sorted(registry.challenger_names())) == \
        (last_champion, sorted(last_challengers)), steps[-1]
    assert registry.active_name() == champion  # a shadow is not a promotion
    loop = registry.lifecycle() or {}
    assert set(loop.get("shadow_since", {})) <= set(registry.challenger_names())
    assert not list((tmp_path / "models" / "retrain").glob("*")), "job folder left behind"
    assert code == 0
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0)
    assert t.rows == t.published > 0
