"""Fit a fault model: time split, fit, threshold on validation, ONNX export.

Rows are rounded to float32 before the fit because the service feeds the ONNX
model float32: the trees then split between float32 values and ONNX and
scikit-learn agree (see ``export``).

Split by time: training ticks in (t_start, t_split], then a gap of one horizon
(whose labels would look into the validation window), then validation ticks.
t_split is where ``train_fraction`` of the ticks lie before it: a quantile of
the real ticks, not of the calendar, so data in a few bursts over months (test
runs, run-to-failure tests) still leaves real data to validate on.
The threshold is chosen on validation with ``metrics.choose_threshold``, and
the model judged there with ``verdict.judge``: its problems go into the metrics,
so a model that is not usable says so wherever it is looked at.  The drift
thresholds are calibrated there too (``models.drift.calibrate``: the live
stage's line windows slid over the assets' validation rows pooled, with faulty
sensors left out as live), because held-out rows are the "data like the reference" whose
false drift events the budget bounds.

Memory.  The training rows are thinned to at most ``params.max_train_rows``
(``dataset``: every positive, every k-th negative of each asset weighted by
n / kept ≈ k, passed to the classifier as ``sample_weight``; the training
reference distribution and PR-AUC are weighted the same way); the validation
rows are all kept.  The classifier is fed float32 rows (``families.fit_classifier``:
HistGradientBoosting converts to float64 itself, the logistic pipeline's imputer
and scaler stay in float32), and probabilities are computed ``PREDICT_CHUNK`` rows
at a time, so no float64 copy of a whole matrix is made.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from appliance.config import FAMILIES, DriftConfig
from appliance.features import health
from appliance.features.spec import PipelineSpec
from appliance.models import drift as drift_model
from appliance.scoring.metrics import EventMetrics, choose_threshold
from appliance.storage.history import AssetHistory
from appliance.timefmt import rfc3339
from appliance.training import export
from appliance.training.dataset import (
    Dataset,
    Progress,
    build_dataset,
    evenly_spaced,
    select_features,
    split_time,
    thin_training_rows,
)
from appliance.training.families import TrainParams, fit_classifier, make_classifier
from appliance.training.verdict import judge, typical_intervals, window_notes

#: Rows per predict_proba call: bounds the float64 copy scikit-learn makes of its input.
PREDICT_CHUNK = 32_768
#: Training rows (evenly spaced) the feature selection looks at.
SELECT_ROWS = 20_000


@dataclass(frozen=True, slots=True, eq=False)
class TrainResult:
    classifier: Any
    family: str
    feature_names: tuple[str, ...]
    dropped: Mapping[str, str]
    spec_hash: str
    horizon_s: float
    threshold: float
    threshold_met_budget: bool
    reference: Mapping[str, Any]
    trained_from: float
    trained_to: float
    validated_from: float
    validated_to: float
    validation: EventMetrics
    metrics: Mapping[str, Any]
    training: Mapping[str, Any]
    timings: Mapping[str, float]
    #: Why the model is not usable (``verdict.judge`` on validation); empty: usable.
    problems: tuple[str, ...]
    #: Validation rows (float32) in the model's feature order, to check an export against.
    X_validation: np.ndarray = field(repr=False)
    #: The pipeline's windows too short for the data (``verdict.window_notes``).
    notes: tuple[str, ...] = ()
    #: The drift thresholds' calibration on validation (``models.drift.calibrate``).
    drift_calibration: Mapping[str, Any] | None = None

    @property
    def usable(self) -> bool:
        return not self.problems

    def metadata(self, extra_metrics: Mapping[str, Any] | None = None,
                 created_at: float | None = None) -> dict[str, str]:
        """The model contract's metadata for this result."""
        return export.build_metadata(
            feature_names=self.feature_names, spec_hash=self.spec_hash,
            horizon_s=self.horizon_s, threshold=self.threshold, reference=self.reference,
            trained_from=self.trained_from, trained_to=self.trained_to,
            metrics={**self.metrics, **(extra_metrics or {})}, family=self.family,
            created_at=created_at, training=self.training,
            drift_calibration=self.drift_calibration)


def train(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
          t_end: float, params: TrainParams | None = None,
          progress: Progress | None = None, drift: DriftConfig | None = None) -> TrainResult:
    """Build the data set, fit one family (``params.family``), choose the threshold."""
    params = params or TrainParams()
    return train_families(spec, histories, t_start, t_end, [params], progress, drift)[0]


def train_families(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
                   t_end: float, params: Sequence[TrainParams],
                   progress: Progress | None = None,
                   drift: DriftConfig | None = None) -> list[TrainResult]:
    """One data set (with the first params' cool-down and stride), a fit per params;
    each result carries the notes on the pipeline's windows for this history.

    The data set is thinned as it is built (``dataset.build_dataset``) when every
    params has the first's ``train_fraction`` and ``max_train_rows``; otherwise it
    is built whole and each fit thins its own training rows.
    """
    if not params:
        raise ValueError("no model family to train")
    say = progress or (lambda _msg: None)
    notes = tuple(window_notes(spec, typical_intervals(histories)))
    for note in notes:
        say(f"note: {note}")
    t0 = time.perf_counter()
    first = params[0]
    thin = all((p.train_fraction, p.max_train_rows)
               == (first.train_fraction, first.max_train_rows) for p in params)
    ds = build_dataset(spec, histories, t_start, t_end, first.cooldown_s, first.stride,
                       progress, train_fraction=first.train_fraction if thin else None,
                       max_train_rows=first.max_train_rows if thin else None)
    features_s = time.perf_counter() - t0
    results = []
    for p in params:
        r = fit(ds, spec, t_start, t_end, p, progress, drift)
        r = dataclasses.replace(r, notes=notes,
                                metrics={**r.metrics, "pipeline_notes": list(notes)})
        results.append(_with_timing(r, "features_s", features_s))
    return results


def _with_timing(result: TrainResult, key: str, seconds: float) -> TrainResult:
    timings = {key: seconds, **result.timings}
    return dataclasses.replace(result, timings=timings)


def fit(ds: Dataset, spec: PipelineSpec, t_start: float, t_end: float,
        params: TrainParams, progress: Progress | None = None,
        drift: DriftConfig | None = None) -> TrainResult:
    """Fit ``params.family`` on the rows of ``ds`` with ticks in (t_start, t_end].

    Training ticks are the first ``train_fraction`` of the ticks in the window (up
    to t_split); validation ticks follow after a gap of one horizon.  The threshold
    is the one with the best validation recall within the false-alarm budget.
    The training rows are thinned to ``params.max_train_rows`` (the module
    docstring) unless ``ds`` was thinned as it was built, for these params.
    """
    # Import scikit-learn (and so its OpenMP runtime) first: threadpoolctl limits
    # only the libraries already loaded when the limit is set.
    import sklearn.ensemble
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(params.threads):
        return _fit(ds, spec, t_start, t_end, params, progress, drift or DriftConfig())


def _fit(ds: Dataset, spec: PipelineSpec, t_start: float, t_end: float,
         params: TrainParams, progress: Progress | None, drift: DriftConfig) -> TrainResult:
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    family = FAMILIES[params.family]
    in_window = (ds.ticks > t_start) & (ds.ticks <= t_end)
    if not in_window.any():
        raise ValueError("no ticks in the training window: no asset has data there")
    t_split = _split(ds, t_start, t_end, params)
    train_rows = in_window & ds.usable & (ds.ticks <= t_split)
    val_rows = in_window & (ds.ticks > t_split + spec.horizon_s)  # alarms need every tick
    if not val_rows.any():
        raise ValueError("no validation ticks: the history is too short for the train "
                         "fraction and one horizon of gap")
    train_idx = np.flatnonzero(train_rows)
    weight = ds.weights(train_idx)
    step = ds.thinning.step if ds.thinning is not None else 1
    y_train = ds.positive[train_idx]
    if y_train.all() or not y_train.any():
        raise ValueError(f"the training window has {int(y_train.sum())} positive ticks of "
                         f"{round(weight.sum())}: need both classes (more history or more "
                         f"faults)")
    if ds.thinning is None:
        kept, weight, step = thin_training_rows(ds.asset_index[train_idx], y_train,
                                                params.max_train_rows)
        train_idx, y_train = train_idx[kept], y_train[kept]
        train_rows = np.zeros(len(ds.ticks), dtype=bool)
        train_rows[train_idx] = True
    sample_weight = weight if step > 1 else None

    if params.drop_useless:
        sample = ds.X[train_idx[evenly_spaced(len(train_idx), SELECT_ROWS)]]
        keep, dropped = select_features(sample, ds.names, params.duplicate_corr, SELECT_ROWS)
        del sample
    else:
        keep, dropped = np.arange(len(ds.names)), {}
    if not len(keep):
        raise ValueError(f"all {len(ds.names)} features are never present or constant in "
                         f"the training window: nothing to learn from")
    names = tuple(ds.names[j] for j in keep)
    X_train = ds.X[np.ix_(train_idx, keep)]
    thinned = (f"; 1 in {step} negatives, weighted as the {round(weight.sum())} ticks"
               if step > 1 else "")
    say(f"{params.family}: training on {len(X_train)} ticks ({int(y_train.sum())} positive"
        f"{thinned}), {len(names)} features ({len(dropped)} dropped): fitting, which "
        f"prints nothing until it is done (seconds to a minute)")

    t0 = time.perf_counter()
    clf = make_classifier(params)
    fit_classifier(clf, params, X_train, y_train.astype(np.int64), sample_weight)
    timings["fit_s"] = time.perf_counter() - t0
    say(f"{params.family}: fitted in {timings['fit_s']:.1f} s; choosing the threshold on "
        f"{int(val_rows.sum())} validation ticks")

    t0 = time.perf_counter()
    X_val = ds.X[np.ix_(np.flatnonzero(val_rows), keep)]
    p_val = predict_positive(clf, X_val)
    scores = ds.scores(val_rows, p_val)
    chosen, met = choose_threshold(scores, spec.horizon_s, params.max_false_per_asset_week,
                                   params.clear_ratio)
    val_assets = np.asarray(ds.assets, dtype=object)[ds.asset_index[val_rows]]
    problems = tuple(judge("validation", chosen, params.max_false_per_asset_week, p_val, names,
                           X_val, val_assets))
    p_train = predict_positive(clf, X_train)
    timings["validate_s"] = time.perf_counter() - t0
    say(f"{params.family}: threshold {chosen.threshold:.3f}: recall {chosen.recall:.2f} "
        f"({chosen.caught}/{chosen.faults}), {chosen.false_per_asset_week:.2f} false alarms "
        f"per asset-week, median lead {chosen.median_lead_s / 60:.0f} min")
    for problem in problems:
        say(f"{params.family}: on validation: {problem}")

    val_ticks = ds.ticks[val_rows]
    metrics = {
        "validation": chosen.as_dict(),
        "validation_from": rfc3339(float(val_ticks.min())),
        "validation_to": rfc3339(float(val_ticks.max())),
        "max_false_per_asset_week": params.max_false_per_asset_week,
        "threshold_met_budget": met,
        "usable": not problems,
        "problems": list(problems),
        "train_pr_auc": _round(weighted_pr_auc(y_train, p_train, weight)),
        "rows": {"train": len(train_idx), "train_positive": int(y_train.sum()),
                 "train_negative_step": step, "train_weighted": round(float(weight.sum())),
                 "validation": int(val_rows.sum()),
                 "validation_usable": int((val_rows & ds.usable).sum()),
                 "validation_positive": int((val_rows & ds.usable & ds.positive).sum())},
    }
    training = {"params": asdict(params), "assets": list(ds.assets),
                "dropped_features": dict(dropped), "spec_cadence_s": spec.cadence_s}
    reference = export.reference_distribution(X_train, names, weight=sample_weight)
    t0 = time.perf_counter()
    calibration = drift_calibration(ds, val_rows, names, reference, drift)
    timings["drift_calibration_s"] = time.perf_counter() - t0
    return TrainResult(
        classifier=clf, family=family, feature_names=names, dropped=dropped,
        spec_hash=spec.hash, horizon_s=spec.horizon_s, threshold=chosen.threshold,
        threshold_met_budget=met,
        reference=reference,
        trained_from=t_start, trained_to=t_split,
        validated_from=float(val_ticks.min()), validated_to=float(val_ticks.max()),
        validation=chosen, metrics=metrics, training=training, timings=timings,
        problems=problems, X_validation=X_val, drift_calibration=calibration)


def drift_calibration(ds: Dataset, rows: np.ndarray, names: Sequence[str],
                      reference: Mapping[str, Any], drift: DriftConfig) -> dict[str, Any]:
    """Calibrate the drift thresholds on the selected (held-out) rows, the assets pooled
    into one line's window as live, with the live exclusion of faulty sensors' features."""
    cols = np.array([ds.names.index(n) for n in names], dtype=np.intp)
    per_asset = []
    for i in range(len(ds.assets)):
        sel = np.flatnonzero(rows & (ds.asset_index == i))
        if not len(sel):
            continue
        ticks, X = ds.ticks[sel], ds.X[sel]
        sensors, kinds = health.sensor_kinds(ds.names, ticks, X, drift.sensor_silent_s,
                                             drift.sensor_missing)
        excluded = (kinds != 0) @ health.feature_sensor_matrix(names, sensors) > 0
        per_asset.append((ticks, X[:, cols], excluded))
    window = drift_model.Window(drift.window_s, drift.sample_s, drift.persist_s)
    return drift_model.calibrate(names, reference, window, per_asset)


def _split(ds: Dataset, t_start: float, t_end: float, params: TrainParams) -> float:
    """t_split: of the ticks (``dataset.split_time``), or the one ``ds`` was thinned at
    (its ticks are no longer all there)."""
    th = ds.thinning
    if th is None:
        return split_time(ds.ticks, t_start, t_end, params.train_fraction)
    if (th.t_start, th.t_end, th.train_fraction, th.max_train_rows) != (
            t_start, t_end, params.train_fraction, params.max_train_rows):
        raise ValueError(
            f"the data set was thinned for the window ({th.t_start}, {th.t_end}], "
            f"train_fraction {th.train_fraction} and max_train_rows {th.max_train_rows}; "
            f"fit asks ({t_start}, {t_end}], {params.train_fraction} and "
            f"{params.max_train_rows}: build it for these")
    return th.train_until


def predict_positive(clf: Any, X: np.ndarray, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """P(positive) of float32 rows X, ``chunk`` rows at a time: scikit-learn's float64
    copy of its input is then one chunk's, not the matrix's (the same numbers as one
    call on ``X.astype(float64)``)."""
    out = np.empty(len(X))
    for i in range(0, len(X), chunk):
        out[i:i + chunk] = clf.predict_proba(X[i:i + chunk].astype(np.float64))[:, 1]
    return out


def weighted_pr_auc(positive: np.ndarray, probability: np.ndarray,
                    weight: np.ndarray) -> float:
    """Average precision with row weights (NaN when one class is absent): on thinned
    training rows, the PR-AUC of all of them."""
    from sklearn.metrics import average_precision_score

    ok = np.isfinite(probability)
    y, p, w = positive[ok], probability[ok], weight[ok]
    if len(y) == 0 or y.all() or not y.any():
        return math.nan
    return float(average_precision_score(y, p, sample_weight=w))


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def write(result: TrainResult, path: Any, check_rows: int = 20_000,
          tol: float = 1e-4) -> tuple[Any, dict[str, float]]:
    """Export ``result`` to ONNX at ``path``; return the loaded model and the agreement check.

    ONNX and scikit-learn probabilities are compared on up to ``check_rows``
    validation rows; the comparison goes into the metrics as ``onnx_check``.
    Raises ValueError when more than 0.1 % of the rows differ by more than ``tol``.
    """
    n = len(result.X_validation)
    rows = result.X_validation[np.linspace(0, n - 1, min(n, check_rows)).astype(np.intp)] \
        if n else result.X_validation
    proto = export.to_onnx(result.classifier, len(result.feature_names), result.metadata())
    agreement = export.proto_agreement(proto, result.classifier, rows, tol)
    if agreement["frac_over_tol"] > 1e-3:
        raise ValueError(f"ONNX and scikit-learn disagree on {agreement['frac_over_tol']:.2%} "
                         f"of validation rows (max |diff| {agreement['max_abs_diff']:.3g})")
    export.set_metadata(proto, result.metadata({"onnx_check": agreement}))
    loaded = export.write_model(proto, path, expected_spec_hash=result.spec_hash)
    return loaded, agreement
