"""Explanations on a line whose degrading sensor is known, with a model trained on it.

The simulated line here shows its precursors on vibration alone (``SimParams.
precursors``): before each fault vibration grows, the other sensors only follow
the load.  A gradient-boosted model is imported and trained on it with the CLI
(4 assets × 4 days at one reading a minute), and its explanations must name
vibration first before the faults; ``appliance explain`` must recompute a stored
prediction from the file, and from the running service while it holds the file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance import config
from appliance.devtools import simulator
from appliance.features.batch import asset_features
from appliance.features.spec import PipelineSpec
from appliance.messages import Prediction
from appliance.models.contract import LoadedModel
from appliance.models.explain import Explainer, feature_parts, number, value_range
from appliance.models.registry import Registry
from appliance.storage import database, history, tables
from appliance.timefmt import rfc3339
from tests.support.retrain import prepare, run_cli
from tests.support.service import write_config

pytestmark = pytest.mark.slow  # a history imported and trained

DEGRADED = "vibration"
PARAMS = simulator.SimParams(precursors=(DEGRADED,))


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> dict:
    root = prepare(tmp_path_factory.mktemp("explain"), days=4.0, assets=4, seed=5,
                   params=PARAMS)
    cfg_path = root / "appliance.toml"
    (entry,) = Registry(root / "models").entries()
    cfg = config.load(cfg_path)
    con = database.open_offline(root / "appliance.duckdb", read_only=True)
    try:
        stored = history.load_histories(con)
    finally:
        con.close()
    return {"root": root, "config": cfg_path, "cfg": cfg, "model": entry.model,
            "spec": PipelineSpec.from_config(cfg.pipeline),
            "stored": stored, "high": _high_before_faults(cfg, entry.model, stored)}


def _high_before_faults(cfg: config.Config, model: LoadedModel, stored: history.StoredHistory
                        ) -> list[tuple[str, float, float, float, np.ndarray]]:
    """(asset, tick, probability, the fault's start, model row) of every prediction at or
    above the threshold within the horizon before a fault start, in time order per asset."""
    spec = PipelineSpec.from_config(cfg.pipeline)
    out = []
    for h in stored.histories:
        names, ticks, M = asset_features(spec, h.series, stored.t_start, stored.t_end)
        X = M[:, model.column_index(names)].astype(np.float32)
        p = model.predict_proba(X)
        ahead = np.searchsorted(h.fault_starts, ticks, side="left")
        nxt = np.append(h.fault_starts, np.inf)[ahead]
        for i in np.flatnonzero((p >= model.threshold) & (nxt - ticks <= spec.horizon_s)):
            out.append((h.asset, float(ticks[i]), float(p[i]), float(nxt[i]), X[i]))
    return out


def test_the_degraded_sensor_is_named_first_before_the_faults(line):
    model, high = line["model"], line["high"]
    faults = {(a, fault) for a, _t, _p, fault, _x in high}
    assert len(faults) >= 8, f"the model caught {len(faults)} faults: too few to judge"
    explainer = Explainer(model, top=3)
    X = np.array([x for *_rest, x in high])
    explained = explainer.explain(X, np.array([p for _a, _t, p, _f, _x in high]))
    first = [e.reasons[0] for e in explained]
    # before every fault most high predictions name vibration first, and nearly all
    # do: a model trained on 4 days fires on lube_temp alone now and then (5 of 452
    # rows, the first of one episode of asset02, when this was written; vibration is
    # not among their reasons at all, so it is the model, not the grouping)
    per_fault: dict[tuple[str, float], list[bool]] = {}
    for (asset, _t, _p, fault, _x), r in zip(high, first, strict=True):
        per_fault.setdefault((asset, fault), []).append(r.sensor == DEGRADED)
    assert all(np.mean(hits) > 0.5 for hits in per_fault.values()), per_fault
    wrong = [(a, rfc3339(t), r.sensor) for (a, t, *_rest), r in zip(high, first, strict=True)
             if r.sensor != DEGRADED]
    assert len(wrong) <= 0.05 * len(high), f"{len(wrong)} of {len(high)}: {wrong[:5]}"
    # vibration grows before a fault: it is above its training median
    assert {r.direction for r in first if r.sensor == DEGRADED} == {"up"}
    # one reason per sensor: vibration's features are summed, not listed again
    for e in explained:
        sensors = [r.sensor for r in e.reasons]
        assert len(sensors) == len(set(sensors))


def _store_prediction(root: Path, asset: str, tick: float, p: float, model: str) -> None:
    con = database.open_offline(root / "appliance.duckdb")
    try:
        tables.insert_predictions(con, [Prediction("line1", asset, tick, p, 0.5, model),
                                        Prediction("line1", asset, tick - 3600.0, 0.01, 0.5,
                                                   model)])
    finally:
        con.close()


def _readings_of(stored: history.StoredHistory, asset: str, sensor: str, lo: float,
                 hi: float) -> np.ndarray:
    h = next(h for h in stored.histories if h.asset == asset)
    ts, values = h.series[sensor]
    return values[(ts > lo) & (ts <= hi)]


@pytest.fixture(scope="module")
def explained_tick(line) -> tuple[str, float, float]:
    """The last high prediction before a fault, stored in ``predictions``."""
    asset, tick, p, _f, _x = line["high"][-1]
    _store_prediction(line["root"], asset, tick, p, line["model"].name)
    return asset, tick, p


def _check_printed(text: str, line: dict, asset: str, tick: float, p: float) -> None:
    head, first, readings, last = text.splitlines()[:4]
    assert head.startswith(f"line1/{asset} at {rfc3339(tick)}: p = {p:.3f}")
    recomputed = float(re.search(r"stored readings: ([0-9.]+)\)", head)[1])
    # the replayed span misses only the long EWMAs' far past
    assert recomputed == pytest.approx(p, abs=0.1)
    assert first.startswith(f"1. {DEGRADED} up: ")
    feature = re.search(r", (\w+)\)$", first)[1]
    window_s = feature_parts(feature).window_s or line["spec"].windows_s[0]
    values = _readings_of(line["stored"], asset, DEGRADED, tick - window_s, tick)
    ref = line["model"].reference[f"{DEGRADED}__last"]
    level = (ref["q05"], ref["q95"])
    assert readings.startswith(f"   readings of {DEGRADED} over the last ")
    assert (f": {len(values)}, min {number(values.min())}, mean {number(values.mean())}, "
            f"max {number(values.max())}; normal level {value_range(*level)}") in readings
    assert last.startswith("   last: ") and last.endswith(number(values[-1]))


def test_explain_reads_the_stored_prediction_from_the_file(line, explained_tick):
    asset, tick, p = explained_tick
    code, text = run_cli(["explain", asset, "--config", str(line["config"])])
    assert code == 0, text
    _check_printed(text, line, asset, tick, p)
    # --at picks the prediction at or before it: the low one an hour earlier
    code, text = run_cli(["explain", asset, "--at", rfc3339(tick - 60.0),
                          "--config", str(line["config"])])
    assert code == 0, text
    assert text.startswith(f"line1/{asset} at {rfc3339(tick - 3600.0)}: p = 0.010")
    code, text = run_cli(["explain", "nobody", "--config", str(line["config"])])
    assert code == 1 and "no prediction of asset 'nobody'" in text



@pytest.mark.broker
def test_explain_asks_the_running_service_that_holds_the_file(line, explained_tick, broker,
                                                               service_factory, tmp_path):
    asset, tick, p = explained_tick
    shutil.copy(line["root"] / "appliance.duckdb", tmp_path / "appliance.duckdb")
    cfg_path = write_config(tmp_path, broker, f'[model]\ndir = "{line["root"] / "models"}"\n'
                            "[pipeline]\ncadence_s = 60\nhampel_window_s = 600\n"
                            "[retrain]\nenabled = false\n")
    svc = service_factory(cfg_path).start()
    try:
        # the service holds the file: only its socket can answer
        with pytest.raises(database.DatabaseBusy):
            database.open_offline(tmp_path / "appliance.duckdb", read_only=True)
        # --at: the service predicts the ticks after the stored ones when it starts
        code, text = run_cli(["explain", asset, "--at", rfc3339(tick),
                              "--config", str(cfg_path)])
    finally:
        svc.terminate()
    assert code == 0, text
    _check_printed(text, line, asset, tick, p)
