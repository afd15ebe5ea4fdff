"""Explanations: occlusion contributions summed per sensor, told against the normal range.

The model is a real ONNX logistic regression with known weights, so every
contribution is σ(z) − σ(z − wⱼ·(xⱼ − medianⱼ)), computed here in NumPy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from appliance.messages import AlertEvent, Reason
from appliance.models.contract import load_model
from appliance.models.explain import (
    Explainer,
    FeatureParts,
    duration,
    feature_parts,
    reason_text,
)
from appliance.mqtt.payloads import alert_document
from appliance.training import export

# feature: (weight, median, q05, q95, value)
FEATURES: dict[str, tuple[float, float, float, float, float]] = {
    "ambient_temp__mean_600s": (0.2, 20.0, 14.0, 26.0, 15.0),  # lowers the probability
    "lube_temp__mean_600s": (0.3, 50.0, 45.0, 55.0, 58.0),
    "oil_pressure__mean_3600s": (-2.0, 4.0, 3.8, 4.2, 3.5),
    "vibration__last": (0.1, 3.0, 2.1, 4.0, 7.0),
    "vibration__max_600s": (0.1, 4.0, 3.0, 5.0, 9.0),
    "vibration__mean_600s": (0.15, 3.0, 2.1, 4.0, 7.9),
}
BIAS = -3.0
NAMES = tuple(FEATURES)
W = np.array([v[0] for v in FEATURES.values()])
MEDIAN = np.array([v[1] for v in FEATURES.values()])
X = np.array([[v[4] for v in FEATURES.values()]], dtype=np.float32)


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _logistic_model(tmp_path: Path) -> Path:
    f = len(NAMES)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    inits = [numpy_helper.from_array(W.reshape(f, 1).astype(np.float32), "w"),
             # z = BIAS + W·(x − median): the medians' row sits at BIAS
             numpy_helper.from_array(np.array([BIAS - W @ MEDIAN], np.float32), "b"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    graph = helper.make_graph(
        nodes, "logistic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, f])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    proto.ir_version = 8
    ref = {n: {"median": med, "q05": lo, "q95": hi, "mean": med, "std": 1.0,
               "hist_edges": [lo, hi], "hist_counts": [1]}
           for n, (_w, med, lo, hi, _x) in FEATURES.items()}
    helper.set_model_props(proto, export.build_metadata(
        feature_names=NAMES, spec_hash="h", horizon_s=3600.0, threshold=0.5, reference=ref,
        trained_from=0.0, trained_to=1.0, metrics={}, family="logistic"))
    path = tmp_path / "logistic.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture
def explainer(tmp_path: Path) -> Explainer:
    return Explainer(load_model(_logistic_model(tmp_path)), top=5)


def _expected_contributions() -> np.ndarray:
    d = X[0].astype(np.float64) - MEDIAN
    z = BIAS + W @ d
    return _sigmoid(z) - _sigmoid(z - W * d)


def test_contributions_are_the_drop_when_each_feature_is_set_to_its_median(explainer):
    proba = explainer.model.predict_proba(X)
    np.testing.assert_allclose(proba, _sigmoid(BIAS + W @ (X[0] - MEDIAN)), rtol=1e-5)
    np.testing.assert_allclose(explainer.contributions(X, proba)[0], _expected_contributions(),
                               rtol=1e-4, atol=1e-6)


def test_reasons_sum_a_sensors_features_and_rank_sensors_by_the_sum(explainer):
    c = _expected_contributions()
    by_name = dict(zip(NAMES, c, strict=True))
    vibration = sum(v for n, v in by_name.items() if n.startswith("vibration__"))
    # the setting that makes grouping matter: each vibration feature alone is below
    # oil pressure, their sum is above it
    assert max(by_name[n] for n in NAMES if n.startswith("vibration__")) \
        < by_name["oil_pressure__mean_3600s"] < vibration
    explained = explainer.explain(X, explainer.model.predict_proba(X))[0]
    reasons = explained.reasons
    # ambient lowered the probability: it is no reason for an alert
    assert [r.sensor for r in reasons] == ["lube_temp", "vibration", "oil_pressure"]
    np.testing.assert_allclose([r.contribution for r in reasons],
                               [by_name["lube_temp__mean_600s"], vibration,
                                by_name["oil_pressure__mean_3600s"]], rtol=1e-4)
    # the factors stay per feature: vibration's features each stand alone there
    assert [f.feature for f in explained.factors][:3] == [
        "lube_temp__mean_600s", "oil_pressure__mean_3600s", "vibration__mean_600s"]
    assert len({f.feature for f in explained.factors}) == len(explained.factors)


def test_a_reason_tells_its_most_telling_feature_against_the_normal_range(explainer):
    lube, vib, oil = explainer.explain(X, explainer.model.predict_proba(X))[0].reasons
    assert (vib.feature, vib.direction, vib.window_s) == ("vibration__mean_600s", "up", 600.0)
    assert vib.value == pytest.approx(7.9) and vib.normal == pytest.approx((2.1, 4.0))
    assert vib.text == "vibration up: 7.9 over the last 10 min, normal 2.1–4"
    assert lube.text == "lube_temp up: 58 over the last 10 min, normal 45–55"
    assert (oil.direction, oil.window_s) == ("down", 3600.0)
    assert oil.text == "oil_pressure down: 3.5 over the last 1 h, normal 3.8–4.2"


def test_a_value_inside_the_normal_range_says_so(explainer):
    row = X.copy()
    row[0, NAMES.index("lube_temp__mean_600s")] = 53.0  # above the median, below q95
    lube = next(r for r in explainer.explain(row, explainer.model.predict_proba(row))[0].reasons
                if r.sensor == "lube_temp")
    assert lube.text == "lube_temp up: 53 over the last 10 min, within normal 45–55"


def test_top_limits_the_sensors_not_the_features(tmp_path):
    two = Explainer(load_model(_logistic_model(tmp_path)), top=2)
    explained = two.explain(X, two.model.predict_proba(X))[0]
    assert [r.sensor for r in explained.reasons] == ["lube_temp", "vibration"]
    assert len(explained.factors) == 2


@pytest.mark.parametrize("name, parts", [
    ("vibration__mean_600s", FeatureParts("vibration", "mean", 600.0)),
    ("lube_temp__slope_3600s", FeatureParts("lube_temp", "slope", 3600.0)),
    ("motor_current__last", FeatureParts("motor_current", "last", None)),
    ("oil_pressure__dev", FeatureParts("oil_pressure", "dev", None)),
    ("diff__lube_temp__ambient_temp", FeatureParts("lube_temp-ambient_temp", "last", None)),
    ("temperature", FeatureParts("temperature", "", None)),  # a model from elsewhere
])
def test_feature_parts(name, parts):
    assert feature_parts(name) == parts


@pytest.mark.parametrize("seconds, text", [(600, "10 min"), (3600, "1 h"), (7200, "2 h"),
                                           (90, "90 s"), (5400, "90 min"), (30, "30 s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_the_alert_payload_carries_the_reasons_beside_the_factors():
    reason = Reason("vibration", "up", 7.912345, (2.1000001, math.nan), 600.0,
                    "vibration__mean_600s", 0.3123456789, "vibration up: …")
    doc = alert_document(AlertEvent("l1", "a1", 1.0, "raised", 0.9, 0.5, 3600.0, "m",
                                    reasons=(reason,)))
    assert doc["top_factors"] == []
    assert doc["reasons"] == [{"sensor": "vibration", "direction": "up", "value": 7.912,
                               "normal": [2.1, None], "window_s": 600.0,
                               "feature": "vibration__mean_600s", "contribution": 0.312346,
                               "text": "vibration up: …"}]


def test_a_slope_reads_per_hour_and_a_range_below_zero_says_to():
    parts = feature_parts("vibration__slope_3600s")
    # 0.00121 per s is 4.356 per h; the range -9.08e-05..1.9e-4 per s is -0.327..0.684 per h
    assert reason_text(parts, "up", 0.00121, (-9.08e-05, 1.9e-4)) == \
        "vibration up: slope per h 4.36 over the last 1 h, normal -0.327 to 0.684"
    assert reason_text(feature_parts("lube_temp__last"), "down", 40.0, (45.0, 55.0)) == \
        "lube_temp down: 40 now, normal 45–55"
    assert reason_text(parts, "missing", math.nan, (0.0, 1.0)) == \
        "vibration: no slope per h value (missing)"
