"""Live event scores (issue 11, item 4): what ``model_scores`` holds equals the
backtest's ``scoring.metrics.event_metrics`` on the same predictions and faults."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from appliance import config
from appliance.clock import ManualClock
from appliance.messages import FaultEvent, Prediction
from appliance.models import scores
from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import AssetScores, event_metrics
from appliance.stages.scores import ScoresStage
from appliance.storage import tables
from appliance.storage.database import connect

HORIZON = 3600.0
CLEAR = 0.8
T0 = 1_700_000_000.0
DAYS = 12
STEP = 60.0
#: asset → [(start, end)] seconds after T0 (end None: still open)
FAULTS = {
    "a0": [(2.5 * 86400, 2.5 * 86400 + 1800), (9.2 * 86400, 9.2 * 86400 + 600)],
    "a1": [(6.9 * 86400, 6.9 * 86400), (11.5 * 86400, None)],
    "a2": [],
}
MODELS = {"champ": ("champion", 0.6), "chal": ("challenger", 0.4)}


def _probabilities(rng: np.random.Generator, t: np.ndarray, starts: list[float]) -> np.ndarray:
    """Noise with bursts (false alarms) and a rise before some faults (catches)."""
    p = rng.beta(1, 12, len(t))
    for s in starts[::2]:
        p[(t >= s - 2400) & (t < s)] += 0.6
    for b in rng.choice(len(t), 6, replace=False):
        p[b:b + 8] += 0.7
    return np.clip(p, 0, 1)


@pytest.fixture
def db(tmp_path):
    con, _ = connect(tmp_path / "scores.duckdb")
    rng = np.random.default_rng(11)
    t = T0 + np.arange(0, DAYS * 86400, STEP)
    preds = []
    for model, (role, threshold) in MODELS.items():
        for asset, faults in FAULTS.items():
            p = _probabilities(rng, t, [T0 + s for s, _ in faults])
            keep = rng.random(len(t)) > 0.02  # a few missing ticks
            preds += [Prediction("l1", asset, float(ts), float(pr), threshold, model, role=role)
                      for ts, pr in zip(t[keep], p[keep], strict=True)]
    tables.insert_predictions(con, preds)
    events = [FaultEvent("l1", a, T0 + s, "start", "F") for a, fs in FAULTS.items()
              for s, _ in fs]
    events += [FaultEvent("l1", a, T0 + e, "end", "F") for a, fs in FAULTS.items()
               for _, e in fs if e is not None]
    tables.insert_faults(con, events, "mqtt")
    yield con
    con.close()


def _direct(con, model: str, window_days: int, threshold: float):
    """The backtest's way: every asset's arrays at once, straight into event_metrics."""
    end = con.execute("SELECT epoch_us(max(ts)) / 1e6 FROM predictions").fetchone()[0]
    per_asset = []
    for asset, faults in FAULTS.items():
        t, p = (np.array(c) for c in zip(*con.execute(
            "SELECT epoch_us(ts) / 1e6, probability FROM predictions WHERE model = ? AND "
            "asset = ? ORDER BY ts", [model, asset]).fetchall(), strict=True))
        keep = t > end - window_days * 86400
        t, p = t[keep], p[keep]
        starts = np.array([T0 + s for s, _ in faults])
        ends = np.array([math.nan if e is None else T0 + e for _, e in faults])
        positive, usable = label_ticks(t, starts, ends, HORIZON)
        per_asset.append(AssetScores(asset, t, p, usable, positive, starts))
    return event_metrics(per_asset, threshold, HORIZON, CLEAR, pr_auc=math.nan)


@pytest.mark.parametrize("rows_per_query", [scores.ROWS_PER_QUERY, 5_000])
def test_live_scores_equal_the_backtest_metrics(db, monkeypatch, rows_per_query):
    monkeypatch.setattr(scores, "ROWS_PER_QUERY", rows_per_query)  # one query, or many
    live = scores.score_models(db, HORIZON, CLEAR)
    assert live is not None
    assert [(s.model, s.role, s.window_days) for s in live] == [
        ("champ", "champion", 7), ("champ", "champion", 30),
        ("chal", "challenger", 7), ("chal", "challenger", 30)]
    for s in live:
        want = _direct(db, s.model, s.window_days, MODELS[s.model][1])
        got, exp = asdict(s.metrics), asdict(want)
        assert got.keys() == exp.keys()
        for key in got:
            assert got[key] == pytest.approx(exp[key], nan_ok=True), (s, key)
    # the data says something: faults counted, some caught, some false alarms
    champ30 = next(s.metrics for s in live if s.model == "champ" and s.window_days == 30)
    assert champ30.faults >= 2 and champ30.caught >= 1 and champ30.false_episodes >= 1
    week = next(s.metrics for s in live if s.model == "champ" and s.window_days == 7)
    assert week.asset_weeks == pytest.approx(3 * 0.98, rel=0.03)


def test_the_stage_rescores_when_faults_arrive_and_only_then(db):
    cfg = config.from_dict({"pipeline": {"horizon_s": HORIZON}})
    stage = ScoresStage(cfg, db)
    stage.use_clock(ManualClock(T0 + DAYS * 86400))
    stage.start()
    try:
        assert stage.check()  # once at start
        stored = scores.read_scores(db)
        assert [(r["model"], r["window_days"]) for r in stored] == [
            ("champ", 7), ("champ", 30), ("chal", 7), ("chal", 30)]
        direct = _direct(db, "champ", 30, 0.6).as_dict()
        champ30 = stored[1]
        for key in scores.COLUMNS:
            assert champ30[key] == pytest.approx(direct[key], nan_ok=True, abs=1e-6)
        assert stage.status()["scores"][0]["model"] == "champ"
        assert not stage.check()  # no new fault event: nothing to do
        tables.insert_faults(db, [FaultEvent("l1", "a2", T0 + 11 * 86400, "start", "G")],
                             "import")
        assert stage.check()
        assert scores.read_scores(db)[1]["faults"] == champ30["faults"] + 1
    finally:
        stage.close()


def test_no_predictions_no_scores(tmp_path):
    con, _ = connect(tmp_path / "empty.duckdb")
    assert scores.score_models(con, HORIZON, CLEAR) == []
    scores.write_scores(con, T0, [])
    assert scores.read_scores(con) == []
    con.close()


def test_models_scores_from_the_database_and_while_the_service_holds_it(db, tmp_path, capsys):
    import json
    import subprocess
    import sys

    from appliance.cli import main

    live = scores.score_models(db, HORIZON, CLEAR)
    scores.write_scores(db, T0, live)
    db.execute("CHECKPOINT")
    path = tmp_path / "scores.duckdb"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[storage]\npath = "{path}"\n')
    # this process holds the file as the service would: another process gets the status
    status = {"stages": {"scores": {"scores": [s.row() for s in live]}}}
    path.with_name(path.name + ".status.json").write_text(json.dumps(status))
    run = subprocess.run([sys.executable, "-m", "appliance", "models", "scores", "--config",
                          str(cfg), "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    held = json.loads(run.stdout)
    assert [r["model"] for r in held] == ["champ", "champ", "chal", "chal"]
    db.close()
    assert main(["models", "scores", "--config", str(cfg), "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["window_days"], r["faults"], r["caught"]) for r in stored] == \
        [(r["model"], r["window_days"], r["faults"], r["caught"]) for r in held]
    assert main(["models", "scores", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "champ" in out and "false/asset-week" in out and f"from {path}" in out
