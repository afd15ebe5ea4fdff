"""A restart raises no alert on a healthy asset, even under a model that learned one.

A model trained on rows from the start of data learns that a window still filling
(NaN, or a few points) comes before the faults of a test bench whose faults were
all induced minutes into each run.  Here such a model is built on purpose — a
real gradient-boosted model exported to ONNX, whose only rule is "a window is
not yet full" — and a healthy asset is driven through its starts: the first
start, a restart after an idle gap, and a restart of the service with nothing to
refill its windows from (new state: ``[pipeline] restore_s = 0``, or no stored
readings; with them the store replays the windows full, see
``tests/integration/test_restart.py``).  With the warm-up no row reaches the model before its
windows are full, so nothing is raised; without it the same model raises at every
start, which is what the warm-up is for.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from appliance.alarm import RAISED, AlarmState
from appliance.config import DEFAULT_CLEAR_RATIO, PipelineConfig
from appliance.features.batch import asset_features
from appliance.features.live import AssetFeatures, FeatureBanks
from appliance.features.spec import PipelineSpec
from appliance.models.contract import LoadedModel
from appliance.training import export

SPEC = PipelineSpec.from_config(PipelineConfig(cadence_s=10, horizon_s=600, max_gap_s=60,
                                               idle_gap_s=3600))
T0 = 1_700_000_000.0
HOUR = 3600.0


def healthy(t_from: float, seconds: float, seed: int) -> list[tuple[float, str, float]]:
    """Two sensors at ~1 Hz around steady values: nothing is wrong with this asset."""
    rng = np.random.default_rng(seed)
    ts = t_from + np.arange(0.0, seconds, 1.0) + rng.uniform(0, 0.5, int(seconds))
    return sorted([(t, "temp", 60 + rng.normal(0, 0.3)) for t in ts]
                  + [(t + 0.2, "vib", 2 + rng.normal(0, 0.05)) for t in ts])


def shortcut_model(tmp_path) -> LoadedModel:
    """A model whose one rule is "some window is not full yet" → fault (p ≈ 1)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    cold = dataclasses.replace(SPEC, warmup_s=0.0)
    events = healthy(T0 - 10 * HOUR, 2 * HOUR, seed=1)
    series = {s: (np.array([t for t, n, _ in events if n == s]),
                  np.array([v for _t, n, v in events if n == s])) for s in ("temp", "vib")}
    names, _ticks, X = asset_features(cold, series, T0 - 11 * HOUR, T0)
    y = np.isnan(X).any(axis=1).astype(np.int64)
    assert 0 < y.sum() < len(y)
    clf = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    meta = export.build_metadata(
        feature_names=names, spec_hash=SPEC.hash, horizon_s=SPEC.horizon_s, threshold=0.5,
        reference=export.reference_distribution(X.astype(np.float32), names),
        trained_from=T0 - 11 * HOUR, trained_to=T0, metrics={}, family="gbt")
    return export.write_model(export.to_onnx(clf, len(names), meta), tmp_path / "m.onnx",
                              SPEC.hash)


def raised_at(spec: PipelineSpec, model: LoadedModel) -> list[float]:
    """Ticks at which the alert stage's rule raises while a healthy asset starts,
    restarts after an idle gap, and lives through a restart of the service."""
    first = healthy(T0, 2 * HOUR, seed=2)
    after_idle = healthy(T0 + 2 * HOUR + 86400, 2 * HOUR, seed=3)
    after_service_restart = healthy(T0 + 4 * HOUR + 86400, 2 * HOUR, seed=4)
    alarm = AlarmState(DEFAULT_CLEAR_RATIO)
    raised = []
    for part in ((*first, *after_idle), after_service_restart):
        state = AssetFeatures(spec, FeatureBanks(spec))  # a service starts with nothing
        for t, sensor, value in part:
            for tick, names, row in state.push(sensor, t, value):
                cols = model.column_index(names)
                p = float(model.predict_proba(row[None, cols].astype(np.float32))[0])
                if alarm.update(p, model.threshold) == RAISED:
                    raised.append(tick)
    return raised


def test_a_healthy_asset_raises_nothing_at_any_start(tmp_path):
    model = shortcut_model(tmp_path)
    assert raised_at(SPEC, model) == []
    # the same model, the same readings, rows from the first tick: it raises at a start
    without = raised_at(dataclasses.replace(SPEC, warmup_s=0.0), model)
    assert len(without) >= 2
