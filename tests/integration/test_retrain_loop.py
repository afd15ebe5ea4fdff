"""The retrain stage's reviews on a real DuckDB file and a real registry: a challenger
that does better live is promoted, the old champion kept on probation, and the new one
rolled back when it then does worse; a challenger that does worse is rejected.

Predictions are written as the record stage writes them (two models on the same
ticks), so the live scores are computed by ``models.scores`` exactly as in service.
"""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path

import numpy as np

from appliance import config
from appliance.features.spec import PipelineSpec
from appliance.messages import LoopEvent
from appliance.models.contract import STARTER_MODEL
from appliance.models.lifecycle import DAY_S, Lifecycle, LoopState
from appliance.models.registry import Registry
from appliance.stages.retrain import RetrainStage
from appliance.storage.database import connect
from appliance.storage.query import model_history
from appliance.timefmt import to_us

T0 = 1_750_000_000.0
H = 3600.0
CFG = config.from_dict({"retrain": {"shadow_days": 1.0, "shadow_faults": 100,
                                    "probation_days": 3.0, "every_days": 0.0,
                                    # one asset: a day is 0.14 asset-weeks
                                    "min_new_faults": 0, "min_asset_weeks": 0.05}})
SPEC = PipelineSpec.from_config(CFG.pipeline).hash


def _models(tmp_path: Path, names: list[str]) -> tuple[Registry, dict[str, str]]:
    registry = Registry(tmp_path / "models")
    out = {}
    for n in names:
        src = tmp_path / f"{n}.onnx"
        shutil.copyfile(STARTER_MODEL, src)
        out[n] = registry.add(src, SPEC).name
    return registry, out


def _predict(con, model: str, role: str, t_from: float, t_to: float,
             alarmed_before: list[float]) -> None:
    """1-minute predictions of one asset: 0.9 in the hour before each time in
    ``alarmed_before``, else 0.1."""
    ticks = np.arange(t_from, t_to, 60.0)
    p = np.full(len(ticks), 0.1)
    for s in alarmed_before:
        p[(ticks >= s - H) & (ticks < s)] = 0.9
    con.execute("INSERT INTO predictions SELECT make_timestamp(us), 'l1', 'a1', p, 0.5, ?, ? "
                "FROM (SELECT unnest(?::BIGINT[]) AS us, unnest(?::DOUBLE[]) AS p)",
                [model, role, to_us(ticks).tolist(), p.tolist()])
    con.execute("INSERT INTO readings_raw VALUES (make_timestamp(?), 1, 0.0)",
                [int(to_us(np.array([t_to]))[0])])


def _faults(con, starts: list[float]) -> None:
    for s in starts:
        for state, t in (("start", s), ("end", s + 600)):
            con.execute("INSERT INTO faults VALUES (make_timestamp(?), 'l1', 'a1', ?, 'F', "
                        "'mqtt')", [int(to_us(np.array([t]))[0]), state])


def _stage(tmp_path: Path, registry: Registry) -> tuple[RetrainStage, queue.Queue, object]:
    con, _ = connect(tmp_path / "appliance.duckdb")
    out: queue.Queue = queue.Queue()
    stage = RetrainStage(CFG, con, registry, SPEC, out)
    stage.start()
    return stage, out, con


def test_a_better_challenger_is_promoted_then_rolled_back_when_it_does_worse(tmp_path):
    registry, m = _models(tmp_path, ["old", "new"])
    registry.promote(m["old"])
    registry.shadow(m["new"], 2, SPEC, lifecycle=Lifecycle.shadowed(LoopState(T0), m["new"],
                                                                     T0).to_json())
    stage, out, con = _stage(tmp_path, registry)
    try:
        faults = [T0 + 6 * H, T0 + 14 * H, T0 + 22 * H]
        _faults(con, faults)
        _predict(con, m["old"], "champion", T0, T0 + 1.2 * DAY_S, alarmed_before=[])
        _predict(con, m["new"], "challenger", T0, T0 + 1.2 * DAY_S, alarmed_before=faults)
        stage.check()
        assert registry.active_name() == m["new"]
        assert registry.challenger_names() == [m["old"]]  # on probation
        probation = registry.lifecycle()["probation"]
        assert probation["previous"] == m["old"]
        # after the promotion the new champion misses a fault the old one catches
        t1 = T0 + 1.2 * DAY_S  # [retrain] min_live_faults (3) before a probation decides
        later = [T0 + 1.35 * DAY_S, T0 + 1.6 * DAY_S, T0 + 1.85 * DAY_S]
        _faults(con, later)
        _predict(con, m["new"], "champion", t1, T0 + 2 * DAY_S, alarmed_before=[])
        _predict(con, m["old"], "challenger", t1, T0 + 2 * DAY_S, alarmed_before=later)
        stage.check()
        assert registry.active_name() == m["old"]
        assert registry.challenger_names() == []
        assert registry.lifecycle()["probation"] is None
        steps = model_history(con)
        statuses = con.execute("SELECT name, status FROM models ORDER BY created_at").fetchall()
    finally:
        stage.close()
        con.close()
    assert [s["event"] for s in steps] == ["promoted", "rolled_back"]
    promoted, rolled = steps
    assert promoted["model"] == m["new"] and promoted["other"] == m["old"]
    assert promoted["detail"]["standings"][m["new"]]["caught"] == 3
    assert promoted["detail"]["standings"][m["old"]]["caught"] == 0
    assert rolled["model"] == m["old"] and rolled["champion"] == m["old"]
    assert (m["new"], "active") in statuses
    published = [out.get_nowait() for _ in range(out.qsize())]
    assert [e.event for e in published if isinstance(e, LoopEvent)] == ["promoted",
                                                                          "rolled_back"]
    assert json.loads(published[0].detail)["standings"]


def test_a_worse_challenger_is_rejected_after_its_shadow(tmp_path):
    registry, m = _models(tmp_path, ["champ", "cand"])
    registry.promote(m["champ"])
    registry.shadow(m["cand"], 2, SPEC, lifecycle=Lifecycle.shadowed(LoopState(T0),
                                                                      m["cand"], T0).to_json())
    stage, _out, con = _stage(tmp_path, registry)
    try:
        faults = [T0 + 6 * H, T0 + 14 * H]
        _faults(con, faults)
        _predict(con, m["champ"], "champion", T0, T0 + 0.5 * DAY_S, alarmed_before=faults)
        _predict(con, m["cand"], "challenger", T0, T0 + 0.5 * DAY_S, alarmed_before=[])
        stage.check()  # half a day into a day's shadow: not decided yet
        assert registry.challenger_names() == [m["cand"]]
        _predict(con, m["champ"], "champion", T0 + 0.5 * DAY_S, T0 + 1.1 * DAY_S, faults)
        _predict(con, m["cand"], "challenger", T0 + 0.5 * DAY_S, T0 + 1.1 * DAY_S, [])
        stage.check()
        steps = model_history(con)
    finally:
        stage.close()
        con.close()
    assert registry.active_name() == m["champ"] and registry.challenger_names() == []
    assert [s["event"] for s in steps] == ["rejected"]
    assert "recall 0.00 below 1.00" in steps[0]["reason"]
