"""Challengers: the registry's shadow list, and the predict and alert stages serving
one champion and its challengers on the same rows (issue 11, item 5)."""

from __future__ import annotations

import json
import queue
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from appliance import config
from appliance.features.spec import PipelineSpec
from appliance.messages import EndOfStream, FeatureRows, ModelEvent, Prediction, Predictions
from appliance.models.contract import STARTER_MODEL, LoadedModel, ModelError
from appliance.models.registry import REGISTRY_FILE, Registry
from appliance.models.watcher import ModelWatcher
from appliance.stages.alert import AlertStage
from appliance.stages.base import StopSignals
from appliance.stages.predict import PredictStage

SPEC = PipelineSpec.from_config(config.PipelineConfig()).hash


def _copies(tmp_path: Path, n: int) -> tuple[Registry, list[LoadedModel]]:
    """A registry holding ``n`` copies of the starter model under different names."""
    registry = Registry(tmp_path / "models")
    models = []
    for i in range(n):
        src = tmp_path / f"m{i}.onnx"
        shutil.copyfile(STARTER_MODEL, src)
        models.append(registry.add(src, SPEC))
    return registry, models


def test_shadow_checks_limits_and_unshadow(tmp_path):
    registry, (a, b, c, d) = _copies(tmp_path, 4)
    registry.promote(a.name, SPEC)
    with pytest.raises(ModelError, match="active model"):
        registry.shadow(a.name, 2, SPEC)
    registry.shadow(b.name, 2, SPEC)
    registry.shadow(b.name, 2, SPEC)  # twice is once
    registry.shadow(c.name, 2, SPEC)
    with pytest.raises(ModelError, match="max_challengers = 2"):
        registry.shadow(d.name, 2, SPEC)
    with pytest.raises(ModelError, match="pipeline spec"):
        registry.shadow(d.name, 3, "another-spec")
    assert registry.challenger_names() == [b.name, c.name]
    roles = {e.name: (e.active, e.challenger) for e in registry.entries(SPEC)}
    assert roles[a.name] == (True, False) and roles[b.name] == (False, True)

    registry.unshadow(c.name)
    with pytest.raises(ModelError, match="not a challenger"):
        registry.unshadow(c.name)
    registry.promote(b.name, SPEC)  # a promoted challenger leaves the list
    state = json.loads((registry.directory / REGISTRY_FILE).read_text())
    assert state["active"] == b.name and state["challengers"] == []


def _rows(n: int, model: LoadedModel, seed: int = 0) -> FeatureRows:
    rng = np.random.default_rng(seed)
    # the pipeline's columns in another order than the model's, plus one it does not use
    names = (*reversed(model.feature_names), "extra__last")
    return FeatureRows(1_700_000_000.0, ("l1",) * n, tuple(f"a{i}" for i in range(n)), names,
                       rng.normal(0, 1, (n, len(names))).astype(np.float32))


def _stage(tmp_path: Path, n_challengers: int = 1
           ) -> tuple[PredictStage, list[LoadedModel], list[ModelEvent]]:
    registry, models = _copies(tmp_path, 1 + n_challengers)
    registry.promote(models[0].name, SPEC)
    for m in models[1:]:
        registry.shadow(m.name, 2, SPEC)
    cfg = config.from_dict({"model": {"dir": str(registry.directory)}})
    stage = PredictStage(cfg, ModelWatcher(registry, SPEC, cfg.model.max_challengers),
                         models[0], queue.Queue(), queue.Queue())
    events = stage.periodic()  # the first poll loads the challengers
    return stage, models, events


def test_a_challenger_predicts_on_the_same_rows_after_the_champion(tmp_path):
    stage, (champion, challenger), events = _stage(tmp_path)
    rows = _rows(50, champion)
    out = list(stage.handle(rows))
    assert [len(p.items) for p in out] == [50, 50]
    first, shadow = out
    assert {p.role for p in first.items} == {"champion"}
    assert {(p.role, p.model) for p in shadow.items} == {("challenger", challenger.name)}
    assert all(p.top_factors == () for p in shadow.items)
    # the same rows: the same bytes of model, so the same probabilities, asset by asset
    assert [(p.asset, p.ts, p.probability) for p in shadow.items] == \
        [(p.asset, p.ts, p.probability) for p in first.items]
    X = rows.values[:, champion.column_index(rows.names)]
    np.testing.assert_allclose([p.probability for p in shadow.items],
                               challenger.predict_proba(X))
    assert challenger.name in stage.status()["challengers"]
    assert any(e.status == "challenger" and e.name == challenger.name for e in events)


def test_the_champion_is_out_before_a_challenger_runs(tmp_path):
    stage, _, _ = _stage(tmp_path)
    ticks = stage.handle(_rows(5, stage.model))
    assert next(ticks).items[0].role == "champion"  # the challenger has not run yet
    assert stage._challenger_ms == {}


@dataclass(frozen=True)
class Broken:
    """Stands in for a challenger whose onnxruntime session fails."""

    model: LoadedModel

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : boom")


def test_a_failing_challenger_is_dropped_and_the_champion_serves_on(tmp_path, caplog):
    stage, (champion, bad, good), _ = _stage(tmp_path, n_challengers=2)
    stage.watcher.challengers[bad.name] = Broken(bad)  # type: ignore[assignment]
    with caplog.at_level("ERROR"):
        out = list(stage.handle(_rows(20, champion)))
    assert [p.role for p in out[0].items] == ["champion"] * 20
    assert {p.model for p in out[1].items} == {good.name}
    assert f"challenger {bad.name} dropped, the champion serves on: [ONNXRuntimeError]" \
        in caplog.text
    assert bad.name not in stage.watcher.challengers
    assert stage.counters.extra["challengers_dropped"] == 1
    refused = [e for e in stage.periodic() if e.status == "refused"]
    assert [e.name for e in refused] == [bad.name] and "boom" in refused[0].detail
    # it stays dropped at the next polls, and the next tick has the champion and the other
    stage._next_poll = 0.0
    stage.periodic()
    assert list(stage.watcher.challengers) == [good.name]
    assert [len(p.items) for p in stage.handle(_rows(20, champion))] == [20, 20]


def test_challenger_alerts_are_recorded_never_published():
    stage = AlertStage(config.from_dict({}), queue.Queue(), queue.Queue())
    published = []
    stage._publish = published.append  # type: ignore[method-assign]

    def tick(ts: float, p_champion: float, p_challenger: float) -> list:
        items = (Prediction("l1", "a1", ts, p_champion, 0.5, "champ"),
                 Prediction("l1", "a1", ts, p_challenger, 0.5, "chal", role="challenger"))
        return list(stage.handle(Predictions(items)))

    recorded = [a for ts, pc, pq in ((0.0, 0.1, 0.9),  # only the challenger raises
                                     (10.0, 0.9, 0.9),  # the champion too; the other stands
                                     (20.0, 0.1, 0.1))  # both clear
                for m in tick(ts, pc, pq) for a in getattr(m, "alerts", getattr(m, "items", ()))
                if not isinstance(a, Prediction)]
    assert [(a.role, a.state, a.ts) for a in recorded] == [
        ("challenger", "raised", 0.0), ("champion", "raised", 10.0),
        ("champion", "cleared", 20.0), ("challenger", "cleared", 20.0)]
    assert [(a.role, a.state) for a in published] == [("champion", "raised"),
                                                       ("champion", "cleared")]
    assert stage.counters.extra == {"challenger_alerts_raised": 1, "alerts_raised": 1,
                                    "alerts_cleared": 1, "challenger_alerts_cleared": 1}


def test_alert_stage_passes_challenger_alerts_to_the_record():
    inbox: queue.Queue = queue.Queue()
    out: queue.Queue = queue.Queue()
    stage = AlertStage(config.from_dict({}), inbox, out)
    stage._publish = lambda a: None  # type: ignore[method-assign]
    inbox.put(Predictions((Prediction("l1", "a1", 0.0, 0.9, 0.5, "chal", role="challenger"),)))
    inbox.put(ModelEvent(0.0, "m", "p", "", "", "challenger"))
    inbox.put(EndOfStream())
    stage.run(StopSignals())
    kinds = [type(m).__name__ for m in out.queue]
    assert kinds == ["Predictions", "Alerts", "ModelEvent", "EndOfStream"]
    alert = list(out.queue)[1].items[0]
    assert (alert.role, alert.model, alert.state) == ("challenger", "chal", "raised")


def test_models_shadow_unshadow_list_on_the_command_line(tmp_path, capsys):
    from appliance.cli import main

    registry, (a, b) = _copies(tmp_path, 2)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[model]\ndir = "{registry.directory}"\nmax_challengers = 1\n')
    assert main(["models", "promote", a.name, "--config", str(cfg)]) == 0
    assert main(["models", "shadow", a.name, "--config", str(cfg)]) == 1
    assert "active model" in capsys.readouterr().err
    assert main(["models", "shadow", b.name, "--config", str(cfg)]) == 0
    assert main(["models", "list", "--config", str(cfg)]) == 0
    listed = capsys.readouterr().out
    assert f"* {a.name}" in listed and f"~ {b.name}" in listed
    assert main(["models", "unshadow", b.name, "--config", str(cfg)]) == 0
    assert registry.challenger_names() == []


def test_champion_alerts_are_logged_one_line_each(caplog):
    from appliance.messages import Factor

    stage = AlertStage(config.from_dict({}), queue.Queue(), queue.Queue())
    why = (Factor("vibration__mean_600s", 2.5, 0.8), Factor("temp__max_60s", 1.0, 0.1))
    caplog.set_level("INFO", logger="appliance.stages.alert")
    for ts, p in ((0.0, 0.9), (10.0, 0.95), (20.0, 0.1)):  # raised, standing, cleared
        stage.handle(Predictions((Prediction("l1", "a1", ts, p, 0.5, "champ",
                                             top_factors=why),
                                  Prediction("l1", "a1", ts, p, 0.5, "chal",
                                             role="challenger"))))
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.stages.alert"]
    assert len(lines) == 2, lines  # the challenger's alerts are not the operator's
    assert lines[0].startswith("alert raised: l1/a1 at 1970-01-01T00:00:00"), lines[0]
    assert "probability 0.900 against threshold 0.500 (model champ)" in lines[0]
    assert "top reason: vibration__mean_600s = 2.5 (contribution +0.8)" in lines[0]
    assert lines[1].startswith("alert cleared: l1/a1") and "probability 0.100" in lines[1]


def test_a_champion_that_fails_to_predict_is_refused_and_the_previous_serves(tmp_path,
                                                                              caplog):
    stage, (first, second), _ = _stage(tmp_path)  # first serves
    stage.use(Broken(second))  # type: ignore[arg-type]  # its session fails at predict
    stage.periodic()
    with caplog.at_level("ERROR"):
        out = list(stage.handle(_rows(5, first)))
    assert out == [] and stage.model is first  # the model served before it
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None
    assert f"model {second.name} refused, it failed to predict: [ONNXRuntimeError]" in \
        refusals[0].getMessage()
    events = stage.periodic()
    assert [(e.name, e.status) for e in events if e.status == "refused"] == \
        [(second.name, "refused")]
    assert [p.model for p in next(iter(stage.handle(_rows(5, first)))).items] == \
        [first.name] * 5


def test_when_the_previous_model_fails_too_none_serves_and_the_status_says_why(tmp_path):
    stage, (first, second), _ = _stage(tmp_path)
    stage.use(Broken(first))  # type: ignore[arg-type]
    stage.use(Broken(second))  # type: ignore[arg-type]
    assert list(stage.handle(_rows(5, first))) == []  # second refused: first again
    assert stage.model is not None and stage.model.name == first.name
    assert list(stage.handle(_rows(5, first))) == []  # first refused too: none, no ping-pong
    assert stage.model is None
    problem = stage.status()["problem"]  # the status reads degraded
    assert problem.startswith(f"no model: model {first.name} refused (failed to predict:")
    assert stage.counters.extra["rows_without_model"] == 10
