"""ONNX export of a fitted scikit-learn classifier, with the contract's metadata.

The metadata keys and their meaning are defined in ``models/README.md`` and
checked by ``appliance.models.contract.load_model``; ``write_model`` writes the file and
loads it back through that check, so a model this module wrote is one the
service accepts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.models import contract
from appliance.timefmt import rfc3339


def _num(x: float) -> float | None:
    """A float for JSON: 6 significant digits, None for NaN/inf."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def reference_distribution(X: np.ndarray, names: Sequence[str], bins: int = 10,
                           weight: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per-feature reference statistics of training rows, for drift monitoring.

    For each feature: ``count`` (finite values), ``missing`` (fraction NaN/inf),
    ``mean``, ``std``, ``min``, ``q05``, ``median``, ``q95``, ``max``, and a
    histogram whose ``hist_edges`` are the deciles (duplicates merged; values
    outside belong to no bin) with ``hist_counts``.  Numbers that do not exist
    (a feature that is never finite) are null.

    With ``weight`` (thinned training rows, ``dataset.thin_training_rows``) a row
    counts as its weight: counts are the rounded sums of the weights, mean and std
    weighted, and the quantiles those of the weighted distribution (numpy's
    ``inverted_cdf``, the one method it weights), so the reference describes the
    rows the thinned ones stand for.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X has shape {X.shape} but {len(names)} feature names were given")
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (len(X),) or not np.all(weight > 0):
            raise ValueError(f"weight must be {len(X)} positive numbers, got shape "
                             f"{weight.shape}")
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        col = np.asarray(X[:, j], dtype=np.float64)
        finite = np.isfinite(col)
        v = col[finite]
        w = None if weight is None else weight[finite]
        total = len(col) if weight is None else float(weight.sum())
        count = len(v) if w is None else float(w.sum())
        entry: dict[str, Any] = {"count": round(count),
                                 "missing": _num(1.0 - count / total) if len(col) else None}
        if len(v) == 0:
            entry.update({k: None for k in ("mean", "std", "min", "q05", "median", "q95",
                                            "max")})
            entry.update(hist_edges=[], hist_counts=[])
        else:
            q = _quantiles(v, [0.0, 0.05, 0.5, 0.95, 1.0], w)
            edges = np.unique(_quantiles(v, np.linspace(0.0, 1.0, bins + 1), w))
            counts = np.histogram(v, bins=edges, weights=w)[0] if len(edges) > 1 \
                else np.empty(0)
            if w is None:
                mean, std = float(v.mean()), float(v.std())
            else:
                mean = float(np.average(v, weights=w))
                std = math.sqrt(float(np.average((v - mean) ** 2, weights=w)))
            entry.update(mean=_num(mean), std=_num(std), min=_num(q[0]),
                         q05=_num(q[1]), median=_num(q[2]), q95=_num(q[3]), max=_num(q[4]),
                         hist_edges=[_num(e) for e in edges] if len(edges) > 1 else [],
                         hist_counts=[round(float(c)) for c in counts])
        out[name] = entry
    return out


def _quantiles(v: np.ndarray, q: Any, weight: np.ndarray | None) -> np.ndarray:
    if weight is None:
        return np.quantile(v, q)
    return np.quantile(v, q, weights=weight, method="inverted_cdf")


def build_metadata(*, feature_names: Sequence[str], spec_hash: str, horizon_s: float,
                   threshold: float, reference: Mapping[str, Any], trained_from: float,
                   trained_to: float, metrics: Mapping[str, Any], family: str,
                   created_at: float | None = None,
                   training: Mapping[str, Any] | None = None,
                   drift_calibration: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The contract's metadata as the strings ONNX stores (times as Unix seconds in)."""
    meta = {
        contract.KEY_FEATURES: json.dumps(list(feature_names)),
        contract.KEY_SPEC_HASH: spec_hash,
        contract.KEY_HORIZON: repr(float(horizon_s)),
        contract.KEY_THRESHOLD: repr(float(threshold)),
        contract.KEY_REFERENCE: json.dumps(reference, separators=(",", ":"), allow_nan=False),
        contract.KEY_TRAINED_FROM: rfc3339(trained_from),
        contract.KEY_TRAINED_TO: rfc3339(trained_to),
        contract.KEY_METRICS: json.dumps(metrics, separators=(",", ":"), allow_nan=False),
        contract.KEY_FAMILY: family,
        contract.KEY_CREATED_AT: rfc3339(time.time() if created_at is None else created_at),
        contract.KEY_CONTRACT: contract.CONTRACT_VERSION,
    }
    if training is not None:
        meta[KEY_TRAINING] = json.dumps(training, separators=(",", ":"), allow_nan=False)
    if drift_calibration is not None:
        meta[contract.KEY_DRIFT_CALIBRATION] = json.dumps(
            drift_calibration, separators=(",", ":"), allow_nan=False)
    return meta


#: Optional metadata: how the model was trained (parameters, data, dropped features).
KEY_TRAINING = "appliance.training"


@contextlib.contextmanager
def _int_missing_flags() -> Iterator[None]:
    """Work around skl2onnx writing Python ``False`` into an integer ONNX attribute.

    skl2onnx's HistGradientBoosting converter passes ``missing = False`` for
    leaves as ``nodes_missing_value_tracks_true``; recent ``onnx`` refuses a bool
    in an INTS attribute ("Expected an int, got a boolean").  For the duration
    of one conversion, coerce that one argument to int.  The values are the
    same (0/1); only their Python type changes.
    """
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    @functools.wraps(original)
    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(
            nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def to_onnx(classifier: Any, n_features: int, metadata: Mapping[str, str]) -> Any:
    """Convert a fitted binary classifier to an ``onnx.ModelProto`` with ``metadata``.

    Input ``input`` float32 [N, n_features]; outputs ``label`` and
    ``probabilities`` float32 [N, 2] (skl2onnx, ``zipmap`` off).
    """
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = classifier.steps[-1][1] if hasattr(classifier, "steps") else classifier
    if list(getattr(final, "classes_", [])) != [0, 1]:
        raise ValueError(f"expected a binary classifier with classes [0, 1], got "
                         f"{getattr(final, 'classes_', None)}")
    with _int_missing_flags():
        proto = convert_sklearn(
            classifier, initial_types=[("input", FloatTensorType([None, n_features]))],
            options={type(final): {"zipmap": False}})
    set_metadata(proto, metadata)
    proto.producer_name = "appliance"
    proto.doc_string = ("appliance fault model: probability that the asset faults within "
                        f"{metadata.get(contract.KEY_HORIZON, '?')} s; see models/README.md")
    onnx.checker.check_model(proto)
    return proto


def write_model(proto: Any, path: str | Path,
                expected_spec_hash: str | None = None) -> contract.LoadedModel:
    """Write ``proto`` atomically to ``path`` and load it back through the contract check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(proto.SerializeToString())
        contract.load_model(tmp, expected_spec_hash)  # never replace a file with a bad one
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return contract.load_model(path, expected_spec_hash)


def set_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Replace the metadata of an ONNX model proto."""
    import onnx

    onnx.helper.set_model_props(proto, dict(metadata))


def proto_probabilities(proto: Any, X: np.ndarray) -> np.ndarray:
    """Class-1 probabilities of an in-memory ONNX proto (onnxruntime, CPU) on float32 rows."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out = session.run([contract.PROBABILITY_OUTPUT],
                      {session.get_inputs()[0].name: np.asarray(X, dtype=np.float32)})[0]
    return np.asarray(out[:, 1], dtype=np.float64)


def proto_agreement(proto: Any, classifier: Any, X: np.ndarray, tol: float = 1e-4
                    ) -> dict[str, float]:
    """Compare ONNX and scikit-learn probabilities on rows X (rounded to float32 first).

    Returns the row count, the largest absolute difference and the fraction of
    rows differing by more than ``tol`` (a value between a float64 split
    threshold and its float32 rounding can take the other branch).
    """
    X32 = np.asarray(X, dtype=np.float32)
    if len(X32) == 0:
        return {"rows": 0, "max_abs_diff": 0.0, "frac_over_tol": 0.0}
    diff = np.abs(proto_probabilities(proto, X32)
                  - classifier.predict_proba(X32.astype(np.float64))[:, 1])
    return {"rows": len(X32), "max_abs_diff": float(diff.max()),
            "frac_over_tol": float(np.mean(diff > tol))}
