"""The model contract: what load_model accepts and what it refuses, with which message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from appliance.config import PipelineConfig
from appliance.features.spec import PipelineSpec
from appliance.models import contract
from appliance.models.contract import STARTER_MODEL, ModelError, load_model
from appliance.training import export

STARTER = STARTER_MODEL
NAMES = ("a__last", "b__last", "c__last")


@pytest.fixture(scope="module")
def small_proto():
    """A 3-feature HistGradientBoosting model exported with full metadata."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(42)
    X = rng.normal(size=(2000, 3)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=2000) > 0.8).astype(np.int64)
    clf = HistGradientBoostingClassifier(max_iter=20, max_depth=3, random_state=0)
    clf.fit(X.astype(np.float64), y)
    meta = export.build_metadata(
        feature_names=NAMES, spec_hash="aaaa1111bbbb2222", horizon_s=3600.0, threshold=0.6,
        reference=export.reference_distribution(X, NAMES), trained_from=1.7e9,
        trained_to=1.7e9 + 86400, metrics={"validation": {"recall": 0.5}},
        family="hist_gradient_boosting", created_at=1.7e9 + 90000)
    return export.to_onnx(clf, 3, meta), clf, X


def _write(tmp_path: Path, proto, name: str = "m.onnx", meta: dict | None = None) -> Path:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # a copy
    if meta is not None:
        helper.set_model_props(proto, meta)
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def _meta(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def test_starter_model_follows_the_contract():
    spec = PipelineSpec.from_config(PipelineConfig())
    m = load_model(STARTER, expected_spec_hash=spec.hash)
    assert m.spec_hash == spec.hash
    assert m.horizon_s == spec.horizon_s
    assert 0.0 < m.threshold < 1.0
    assert m.family == "hist_gradient_boosting"
    assert m.sha256 == hashlib.sha256(STARTER.read_bytes()).hexdigest()
    assert m.name == f"starter-{m.sha256[:8]}"
    assert set(m.reference) >= set(m.feature_names)
    # Every feature the starter uses is one the pipeline computes for the simulator's sensors.
    from appliance.devtools.simulator import SENSORS
    pipeline_names = spec.feature_names(SENSORS)
    idx = m.column_index(pipeline_names)
    assert [pipeline_names[i] for i in idx] == list(m.feature_names)
    assert STARTER.stat().st_size < 2_000_000


def test_starter_model_predicts_probabilities():
    m = load_model(STARTER)
    rng = np.random.default_rng(1)
    med = np.array([m.reference[f]["median"] for f in m.feature_names], dtype=np.float32)
    X = np.tile(med, (5, 1)) * rng.uniform(0.9, 1.1, size=(5, m.n_features)).astype(np.float32)
    X[0, :3] = np.nan  # missing features are allowed
    p = m.predict_proba(X)
    assert p.shape == (5,) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    assert m.predict_proba(np.empty((0, m.n_features), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError, match=f"{m.n_features} features"):
        m.predict_proba(np.zeros((2, m.n_features + 1), dtype=np.float32))


def test_a_valid_small_model_loads(tmp_path, small_proto):
    proto, clf, X = small_proto
    m = load_model(_write(tmp_path, proto), expected_spec_hash="aaaa1111bbbb2222")
    assert m.feature_names == NAMES
    assert m.threshold == 0.6 and m.horizon_s == 3600.0
    assert m.trained_from == "2023-11-14T22:13:20Z"  # 1.7e9 s, written by hand
    assert m.metrics["validation"]["recall"] == 0.5
    np.testing.assert_allclose(m.predict_proba(X[:50]), clf.predict_proba(X[:50])[:, 1],
                               atol=1e-5)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(empty)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_file_is_refused_naming_the_file(tmp_path, small_proto, damage):
    blob = small_proto[0].SerializeToString()
    rng = np.random.default_rng(7)
    if damage == "truncate":
        blob = blob[: len(blob) // 3]
    elif damage == "garbage":
        blob = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    else:  # overwrite a stretch in the middle
        mid = len(blob) // 2
        blob = blob[:mid] + rng.integers(0, 256, 64, dtype=np.uint8).tobytes() + blob[mid + 64:]
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(blob)
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("key", contract.REQUIRED_KEYS)
def test_missing_metadata_key_is_refused_and_named(tmp_path, small_proto, key):
    meta = _meta(small_proto[0])
    del meta[key]
    path = _write(tmp_path, small_proto[0], meta=meta)
    with pytest.raises(ModelError, match=f"missing model metadata {key}") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_spec_hash_mismatch_names_both_hashes(tmp_path, small_proto):
    path = _write(tmp_path, small_proto[0])
    with pytest.raises(ModelError) as err:
        load_model(path, expected_spec_hash="ffff0000eeee9999")
    msg = str(err.value)
    assert "aaaa1111bbbb2222" in msg and "ffff0000eeee9999" in msg and str(path) in msg


def test_feature_count_mismatch_is_refused(tmp_path, small_proto):
    meta = _meta(small_proto[0])
    four = [*NAMES, "d__last"]
    meta[contract.KEY_FEATURES] = json.dumps(four)
    ref = json.loads(meta[contract.KEY_REFERENCE])
    ref["d__last"] = ref["a__last"]
    meta[contract.KEY_REFERENCE] = json.dumps(ref)
    with pytest.raises(ModelError, match=r"feature count mismatch.*takes 3 features.*lists 4"):
        load_model(_write(tmp_path, small_proto[0], meta=meta))


@pytest.mark.parametrize("key, value, message", [
    (contract.KEY_FEATURES, "[]", "non-empty JSON list"),
    (contract.KEY_FEATURES, '["a__last", "a__last", "c__last"]', "names a feature twice"),
    (contract.KEY_FEATURES, "a,b,c", "not valid JSON"),
    (contract.KEY_THRESHOLD, "1.5", r"must be in \(0, 1\)"),
    (contract.KEY_THRESHOLD, "high", "must be a number"),
    (contract.KEY_HORIZON, "-60", "must be > 0"),
    (contract.KEY_HORIZON, "nan", "must be finite"),
    (contract.KEY_REFERENCE, '{"a__last": {}}', "has no entry for b__last"),
    (contract.KEY_METRICS, "[1, 2]", "must be a JSON object"),
    (contract.KEY_TRAINED_FROM, "yesterday", "RFC 3339"),
    (contract.KEY_CREATED_AT, "2025-01-01T00:00:00", "time zone"),
    (contract.KEY_SPEC_HASH, " ", "is empty"),
    (contract.KEY_CONTRACT, "2", "contract_version"),
])
def test_bad_metadata_values_are_refused(tmp_path, small_proto, key, value, message):
    meta = _meta(small_proto[0])
    meta[key] = value
    with pytest.raises(ModelError, match=message):
        load_model(_write(tmp_path, small_proto[0], meta=meta))


def test_reference_entry_lacking_statistics_is_refused(tmp_path, small_proto):
    meta = _meta(small_proto[0])
    ref = json.loads(meta[contract.KEY_REFERENCE])
    del ref["b__last"]["q95"]
    ref["c__last"]["hist_counts"] = ref["c__last"]["hist_counts"][:-1]
    meta[contract.KEY_REFERENCE] = json.dumps(ref)
    with pytest.raises(ModelError, match=r"reference\[b__last\] lacks q95"):
        load_model(_write(tmp_path, small_proto[0], meta=meta))


def _identity_model(meta: dict[str, str], width: int = 2, out_name: str = "probabilities"):
    """A graph whose 'probabilities' are its input: it does not output probabilities."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [out_name])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [None, width])])
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    proto.ir_version = 8
    helper.set_model_props(proto, meta)
    return proto


def _meta_for(names: tuple[str, ...], median: float) -> dict[str, str]:
    ref = {n: {"median": median, "q05": 0, "q95": 1, "mean": 0, "std": 1,
               "hist_edges": [0, 1], "hist_counts": [1]} for n in names}
    return export.build_metadata(feature_names=names, spec_hash="h", horizon_s=60.0,
                                 threshold=0.5, reference=ref, trained_from=0.0,
                                 trained_to=1.0, metrics={}, family="identity")


def test_outputs_that_are_not_probabilities_are_refused(tmp_path):
    # The reference row is (0.3, 0.3): its "probabilities" sum to 0.6.
    proto = _identity_model(_meta_for(("u", "v"), 0.3))
    with pytest.raises(ModelError, match="does not hold probabilities"):
        load_model(_write(tmp_path, proto))


def test_an_output_of_the_wrong_width_is_refused(tmp_path):
    proto = _identity_model(_meta_for(("u", "v", "w"), 0.3), width=3, out_name="out")
    with pytest.raises(ModelError, match=r"\[N, 2\]"):
        load_model(_write(tmp_path, proto))


def test_a_probability_pair_from_a_foreign_model_is_accepted(tmp_path):
    # Any binary classifier following the contract may be dropped in, whatever made it.
    proto = _identity_model(_meta_for(("u", "v"), 0.5), out_name="scores")
    m = load_model(_write(tmp_path, proto))
    np.testing.assert_allclose(m.predict_proba(np.array([[0.25, 0.75]], np.float32)), [0.75])


def test_column_index_maps_by_name_and_names_what_is_missing(tmp_path, small_proto):
    m = load_model(_write(tmp_path, small_proto[0]))
    assert m.column_index(["x", "c__last", "a__last", "b__last"]).tolist() == [2, 3, 1]
    with pytest.raises(ModelError, match="b__last"):
        m.column_index(["a__last", "c__last"])
