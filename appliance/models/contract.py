"""Loading an ONNX model and checking it against the model contract (``models/README.md``).

``load_model`` is the only way the service gets a model: it reads the file
once, hashes those bytes, builds the onnxruntime session from the same bytes,
checks the metadata and the graph's input and output, and runs the model once
on a reference row.  Anything wrong raises ``ModelError`` naming the file and
the problem, so a caller can keep serving its current model and log why the
new one was refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from appliance.timefmt import parse_rfc3339

#: Metadata keys (ONNX ``metadata_props``) every model must carry; values are strings.
KEY_FEATURES = "appliance.features"
KEY_SPEC_HASH = "appliance.spec_hash"
KEY_HORIZON = "appliance.horizon_s"
KEY_THRESHOLD = "appliance.threshold"
KEY_REFERENCE = "appliance.reference"
KEY_TRAINED_FROM = "appliance.trained_from"
KEY_TRAINED_TO = "appliance.trained_to"
KEY_METRICS = "appliance.metrics"
KEY_FAMILY = "appliance.family"
KEY_CREATED_AT = "appliance.created_at"
REQUIRED_KEYS: tuple[str, ...] = (
    KEY_FEATURES, KEY_SPEC_HASH, KEY_HORIZON, KEY_THRESHOLD, KEY_REFERENCE,
    KEY_TRAINED_FROM, KEY_TRAINED_TO, KEY_METRICS, KEY_FAMILY, KEY_CREATED_AT,
)
#: Optional: the contract version the file follows ("1" when absent).
KEY_CONTRACT = "appliance.contract_version"
CONTRACT_VERSION = "1"
#: Optional: the calibration of the drift thresholds on the held-out period
#: (``appliance.models.drift.calibrate``); a model without one gets the default.
KEY_DRIFT_CALIBRATION = "appliance.drift_calibration"
DRIFT_CALIBRATION_KEYS = ("window_s", "sample_s", "persist_s", "features")

#: Statistics each feature's entry in ``appliance.reference`` must hold.
REFERENCE_STATS: tuple[str, ...] = ("median", "q05", "q95", "mean", "std",
                                    "hist_edges", "hist_counts")
#: Name of the probability output written by skl2onnx (``zipmap: False``).
PROBABILITY_OUTPUT = "probabilities"
#: The starter model, shipped in the package: what serves when nothing else is configured.
STARTER_MODEL = Path(__file__).with_name("starter.onnx")


class ModelError(ValueError):
    """A model file that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModel:
    """A model that passed every check of the contract, ready to predict.

    Build it with ``load_model``.  ``predict_proba`` is thread-safe (one
    onnxruntime ``run`` per call).
    """

    path: Path
    sha256: str
    name: str
    feature_names: tuple[str, ...]
    spec_hash: str
    horizon_s: float
    threshold: float
    reference: Mapping[str, Mapping[str, Any]]
    family: str
    trained_from: str
    trained_to: str
    created_at: str
    metrics: Mapping[str, Any]
    metadata: Mapping[str, str] = field(repr=False)
    _session: Any = field(repr=False)
    _input_name: str = field(repr=False)
    _output_name: str = field(repr=False)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def drift_calibration(self) -> dict[str, Any] | None:
        """The drift calibration, or None when absent or unreadable: optional metadata
        never makes a model unusable, it only leaves drift at its conservative default."""
        raw = self.metadata.get(KEY_DRIFT_CALIBRATION)
        if not raw:
            return None
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError:
            return None
        if not (isinstance(doc, dict) and all(k in doc for k in DRIFT_CALIBRATION_KEYS)
                and isinstance(doc["features"], dict)
                and all(isinstance(doc[k], int | float) and doc[k] > 0
                        for k in ("window_s", "sample_s"))
                and isinstance(doc["persist_s"], int | float) and doc["persist_s"] >= 0):
            return None
        return doc

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of a fault within the horizon for each row of X (n, n_features)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"model {self.name} takes rows of {self.n_features} features, "
                             f"got an array of shape {X.shape}")
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        out = self._session.run([self._output_name], {self._input_name: X32})[0]
        return np.asarray(out[:, 1], dtype=np.float64)

    def column_index(self, names: Sequence[str]) -> np.ndarray:
        """Indices into ``names`` of this model's features, in the model's input order.

        ``X_model = X_pipeline[:, model.column_index(pipeline_names)]``.  Raises
        ModelError naming the features the pipeline does not produce.
        """
        pos = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.feature_names if n not in pos]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                              if len(missing) > 5 else "")
            raise ModelError(f"{self.path}: the pipeline does not produce the model's "
                             f"features {shown}")
        return np.fromiter((pos[n] for n in self.feature_names), dtype=np.intp,
                           count=self.n_features)


def load_model(path: str | Path, expected_spec_hash: str | None = None) -> LoadedModel:
    """Load an ONNX model and check it against the contract; raise ModelError if it fails.

    ``expected_spec_hash`` is the hash of the pipeline spec the caller runs;
    when given, a model trained with another spec is refused.
    """
    import onnxruntime as ort

    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc}") from None
    sha256 = hashlib.sha256(blob).hexdigest()
    if not blob:
        raise ModelError(f"{path}: the model file is empty")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(blob, sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{path}: not a loadable ONNX model (corrupt or unsupported): "
                         f"{_first_line(exc)}") from None

    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: missing model metadata {', '.join(missing)} "
                         f"(see models/README.md)")
    contract = meta.get(KEY_CONTRACT, CONTRACT_VERSION)
    if contract != CONTRACT_VERSION:
        raise ModelError(f"{path}: {KEY_CONTRACT} is {contract!r}; this appliance reads "
                         f"version {CONTRACT_VERSION!r}")

    features = _parse_features(path, meta[KEY_FEATURES])
    spec_hash = meta[KEY_SPEC_HASH].strip()
    if not spec_hash:
        raise ModelError(f"{path}: {KEY_SPEC_HASH} is empty")
    if expected_spec_hash is not None and spec_hash != expected_spec_hash:
        raise ModelError(f"{path}: the model was trained with pipeline spec {spec_hash} but "
                         f"this pipeline's spec is {expected_spec_hash}; retrain the model "
                         f"or run the pipeline it was trained with")
    horizon_s = _parse_number(path, KEY_HORIZON, meta[KEY_HORIZON])
    if horizon_s <= 0:
        raise ModelError(f"{path}: {KEY_HORIZON} must be > 0, got {meta[KEY_HORIZON]!r}")
    threshold = _parse_number(path, KEY_THRESHOLD, meta[KEY_THRESHOLD])
    if not 0.0 < threshold < 1.0:
        raise ModelError(f"{path}: {KEY_THRESHOLD} must be in (0, 1), "
                         f"got {meta[KEY_THRESHOLD]!r}")
    reference = _parse_reference(path, meta[KEY_REFERENCE], features)
    metrics = _parse_json(path, KEY_METRICS, meta[KEY_METRICS])
    if not isinstance(metrics, dict):
        raise ModelError(f"{path}: {KEY_METRICS} must be a JSON object")
    for key in (KEY_TRAINED_FROM, KEY_TRAINED_TO, KEY_CREATED_AT):
        _parse_time(path, key, meta[key])
    family = meta[KEY_FAMILY].strip()
    if not family:
        raise ModelError(f"{path}: {KEY_FAMILY} is empty")

    input_name = _check_input(path, session, len(features))
    output_name = _probability_output(path, session)
    model = LoadedModel(
        path=path, sha256=sha256, name=model_name(path, sha256),
        feature_names=features, spec_hash=spec_hash, horizon_s=horizon_s,
        threshold=threshold, reference=MappingProxyType(reference), family=family,
        trained_from=meta[KEY_TRAINED_FROM], trained_to=meta[KEY_TRAINED_TO],
        created_at=meta[KEY_CREATED_AT], metrics=MappingProxyType(metrics),
        metadata=MappingProxyType(meta), _session=session, _input_name=input_name,
        _output_name=output_name,
    )
    _probe(model)
    return model


def model_name(path: Path, sha256: str) -> str:
    """``<file stem>-<first 8 hex of sha256>``; a registry file is already named so."""
    suffix = f"-{sha256[:8]}"
    return path.stem if path.stem.endswith(suffix) else path.stem + suffix


# -- checks -------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _parse_json(path: Path, key: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: {key} is not valid JSON: {exc}") from None


def _parse_number(path: Path, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ModelError(f"{path}: {key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ModelError(f"{path}: {key} must be finite, got {raw!r}")
    return value


def _parse_time(path: Path, key: str, raw: str) -> None:
    try:
        parse_rfc3339(raw)
    except ValueError:
        raise ModelError(f"{path}: {key} must be an RFC 3339 time, got {raw!r}") from None
    # the contract asks for the zone: parse_rfc3339 would read a zone-less time as UTC
    if not re.search(r"(Z|[+-]\d\d:?\d\d)$", raw):
        raise ModelError(f"{path}: {key} must name its time zone (e.g. …Z), got {raw!r}")


def _parse_features(path: Path, raw: str) -> tuple[str, ...]:
    names = _parse_json(path, KEY_FEATURES, raw)
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n for n in names)):
        raise ModelError(f"{path}: {KEY_FEATURES} must be a non-empty JSON list of "
                         f"feature names")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ModelError(f"{path}: {KEY_FEATURES} names a feature twice: {', '.join(dup)}")
    return tuple(names)


def _parse_reference(path: Path, raw: str, features: tuple[str, ...]) -> dict[str, Any]:
    ref = _parse_json(path, KEY_REFERENCE, raw)
    if not isinstance(ref, dict):
        raise ModelError(f"{path}: {KEY_REFERENCE} must be a JSON object keyed by feature")
    absent = [f for f in features if f not in ref]
    if absent:
        raise ModelError(f"{path}: {KEY_REFERENCE} has no entry for "
                         f"{', '.join(absent[:5])}{' …' if len(absent) > 5 else ''}")
    for name in features:
        entry = ref[name]
        if not isinstance(entry, dict):
            raise ModelError(f"{path}: {KEY_REFERENCE}[{name}] must be a JSON object")
        lacking = [s for s in REFERENCE_STATS if s not in entry]
        if lacking:
            raise ModelError(f"{path}: {KEY_REFERENCE}[{name}] lacks {', '.join(lacking)}")
        edges, counts = entry["hist_edges"], entry["hist_counts"]
        if not (isinstance(edges, list) and isinstance(counts, list)
                and (len(counts) == len(edges) - 1 or (not edges and not counts))):
            raise ModelError(f"{path}: {KEY_REFERENCE}[{name}]: hist_counts must have one "
                             f"entry fewer than hist_edges")
    return ref


def _check_input(path: Path, session: Any, n_features: int) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the model must have exactly one input, it has "
                         f"{len(inputs)} ({', '.join(i.name for i in inputs)})")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ModelError(f"{path}: the model's input {inp.name!r} must be a float32 tensor, "
                         f"it is {inp.type}")
    shape = inp.shape
    if len(shape) != 2:
        raise ModelError(f"{path}: the model's input {inp.name!r} must have shape "
                         f"[N, n_features], it has {shape}")
    width = shape[1]
    if isinstance(width, int) and width != n_features:
        raise ModelError(f"{path}: feature count mismatch: the model's input takes {width} "
                         f"features but {KEY_FEATURES} lists {n_features}")
    return str(inp.name)


def _probability_output(path: Path, session: Any) -> str:
    outputs = session.get_outputs()
    for out in outputs:
        if out.name == PROBABILITY_OUTPUT:
            chosen = out
            break
    else:
        candidates = [o for o in outputs
                      if o.type == "tensor(float)" and len(o.shape) == 2]
        if len(candidates) != 1:
            raise ModelError(f"{path}: cannot tell the probability output: expected one "
                             f"named {PROBABILITY_OUTPUT!r} or a single float [N, 2] output, "
                             f"found {[(o.name, o.type, o.shape) for o in outputs]}")
        chosen = candidates[0]
    width_ok = len(chosen.shape) == 2 and (chosen.shape[1] == 2
                                          or not isinstance(chosen.shape[1], int))
    if chosen.type != "tensor(float)" or not width_ok:
        raise ModelError(f"{path}: the probability output {chosen.name!r} must be a float "
                         f"tensor [N, 2], it is {chosen.type} {chosen.shape}")
    return str(chosen.name)


def _probe(model: LoadedModel) -> None:
    """Run the model once on the reference medians: shapes and probabilities must hold."""
    row = np.array([[_finite_or_zero(model.reference[f].get("median"))
                     for f in model.feature_names]], dtype=np.float32)
    try:
        out = model._session.run([model._output_name], {model._input_name: row})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{model.path}: the model fails on a row of {model.n_features} "
                         f"features (feature count mismatch?): {_first_line(exc)}") from None
    out = np.asarray(out)
    if out.shape != (1, 2):
        raise ModelError(f"{model.path}: the probability output must have shape [N, 2], "
                         f"got {list(out.shape)} for one row")
    if not (np.all(np.isfinite(out)) and np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
            and abs(float(out.sum()) - 1.0) < 1e-3):
        raise ModelError(f"{model.path}: the output {model._output_name!r} does not hold "
                         f"probabilities (got {out.tolist()} for one row)")


def _finite_or_zero(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0
