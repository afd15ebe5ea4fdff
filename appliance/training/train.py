"""Fit a fault model from history: features, labels, time split, fit, threshold, export.

The feature matrix comes from the batch pipeline (``appliance.pipeline.batch``)
with the same spec the service runs, so the exported model sees in training
exactly the features it will see live.  Rows are rounded to float32 before the
fit because the service feeds the ONNX model float32: the trees then split
between float32 values and ONNX and scikit-learn agree (see ``export``).

Split by time: training ticks in (t_start, t_split], then a gap of one horizon
(whose labels would look into the validation window), then validation ticks.
The threshold is chosen on validation with ``metrics.choose_threshold``.

Two model families: gradient-boosted trees (``gbt``, HistGradientBoosting) and
a logistic regression (``logistic``: median imputation of missing values,
standard scaling, then the regression, one scikit-learn Pipeline that skl2onnx
converts whole).  ``build_dataset`` once, then ``fit`` per family: the
features are the expensive part, and ``train_families`` shares them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from appliance.config import TrainingConfig
from appliance.pipeline.batch import asset_features
from appliance.pipeline.spec import PipelineSpec
from appliance.training import export
from appliance.training.labels import label_ticks
from appliance.training.metrics import AssetScores, EventMetrics, choose_threshold, tick_pr_auc

FAMILY_HGB = "hist_gradient_boosting"
FAMILY_LOGISTIC = "logistic_regression"
#: ``--family`` names and the family each writes into the model's metadata.
FAMILIES: dict[str, str] = {"gbt": FAMILY_HGB, "logistic": FAMILY_LOGISTIC}

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, eq=False)
class AssetHistory:
    """One asset's stored readings ({sensor: (sorted ts, values)}) and its faults."""

    asset: str
    series: Mapping[str, tuple[np.ndarray, np.ndarray]]
    fault_starts: np.ndarray
    fault_ends: np.ndarray  # NaN = still open


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Feature rows of many assets on the tick grid, with their labels.

    Rows are grouped by asset (in ``assets`` order) and sorted by tick within
    an asset.  ``X`` is float32; NaN = missing.
    """

    names: tuple[str, ...]
    assets: tuple[str, ...]
    asset_index: np.ndarray  # (rows,) index into assets
    ticks: np.ndarray  # (rows,)
    X: np.ndarray  # (rows, features) float32
    positive: np.ndarray  # (rows,) bool
    usable: np.ndarray  # (rows,) bool
    fault_starts: Mapping[str, np.ndarray] = field(repr=False)

    def take(self, rows: np.ndarray) -> Dataset:
        """The data set restricted to the selected rows (bool mask)."""
        return Dataset(names=self.names, assets=self.assets,
                       asset_index=self.asset_index[rows], ticks=self.ticks[rows],
                       X=self.X[rows], positive=self.positive[rows], usable=self.usable[rows],
                       fault_starts=self.fault_starts)

    def stride(self, spec: PipelineSpec, n: int) -> Dataset:
        """Every n-th tick of the grid (the same ticks for every asset)."""
        if n == 1:
            return self
        k = np.rint(self.ticks / spec.cadence_s).astype(np.int64)
        return self.take(k % n == 0)

    def scores(self, rows: np.ndarray, probability: np.ndarray) -> list[AssetScores]:
        """Per-asset scores of the selected rows (bool mask) with their probabilities."""
        out = []
        for i, asset in enumerate(self.assets):
            sel = rows & (self.asset_index == i)
            out.append(AssetScores(asset, self.ticks[sel], probability[sel[rows]],
                                   self.usable[sel], self.positive[sel],
                                   self.fault_starts[asset]))
        return out


def build_dataset(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
                  t_end: float, cooldown_s: float | None = None, stride: int = 1,
                  progress: Progress | None = None) -> Dataset:
    """Features and labels of every asset at the ticks in (t_start, t_end].

    ``stride`` keeps every stride-th tick (features are still computed on the
    full grid, so they do not change).  Sensors absent from an asset are NaN.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if not histories:
        raise ValueError("no asset histories to build a data set from")
    sensors = sorted({s for h in histories for s in h.series})
    empty = (np.empty(0), np.empty(0))
    names: tuple[str, ...] = ()
    parts: dict[str, list[np.ndarray]] = {"X": [], "ticks": [], "pos": [], "ok": [], "idx": []}
    for i, h in enumerate(histories):
        series = {s: h.series.get(s, empty) for s in sensors}
        names, ticks, X = asset_features(spec, series, t_start, t_end)
        ticks, X = ticks[::stride], X[::stride]
        pos, ok = label_ticks(ticks, h.fault_starts, h.fault_ends, spec.horizon_s, cooldown_s)
        parts["X"].append(X.astype(np.float32))
        parts["ticks"].append(ticks)
        parts["pos"].append(pos)
        parts["ok"].append(ok)
        parts["idx"].append(np.full(len(ticks), i, dtype=np.int32))
        if progress:
            progress(f"features {h.asset}: {len(ticks)} ticks, {int(pos[ok].sum())} positive")
    return Dataset(
        names=tuple(names), assets=tuple(h.asset for h in histories),
        asset_index=np.concatenate(parts["idx"]), ticks=np.concatenate(parts["ticks"]),
        X=np.concatenate(parts["X"]), positive=np.concatenate(parts["pos"]),
        usable=np.concatenate(parts["ok"]),
        fault_starts={h.asset: np.sort(np.asarray(h.fault_starts, dtype=np.float64))
                      for h in histories})


def select_features(X: np.ndarray, names: Sequence[str], duplicate_corr: float = 0.999,
                    max_rows: int = 20_000) -> tuple[np.ndarray, dict[str, str]]:
    """Columns worth keeping: drop never-present, constant and near-duplicate features.

    A feature is a near-duplicate when |Pearson r| >= ``duplicate_corr`` with a
    feature kept before it (on up to ``max_rows`` evenly spaced rows where both
    are present, at least 10).  Returns the kept column indices and {dropped
    name: reason}.

    Design: every pairwise-complete correlation comes from five matrix products
    over the centred rows (NaN as 0) and their presence mask, so the cost is
    one pass of BLAS instead of a Python loop over feature pairs.
    """
    X = np.asarray(X)
    rows = X[np.linspace(0, len(X) - 1, min(len(X), max_rows)).astype(np.intp)] if len(X) \
        else X
    Z = rows.astype(np.float64)
    present = np.isfinite(Z)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, Z, 0.0).sum(axis=0) / np.maximum(count, 1)
        Z = np.where(present, Z - mean, 0.0)
        P = present.astype(np.float64)
        n = P.T @ P  # rows where both are present
        s = Z.T @ P  # s[j, k]: sum of z_j where both are present
        m_j = s / n
        m_k = s.T / n
        cov = (Z.T @ Z) / n - m_j * m_k
        var_j = ((Z * Z).T @ P) / n - m_j**2
        var_k = var_j.T
        r = cov / np.sqrt(var_j * var_k)
    # A variance this small relative to the feature's own is rounding, not signal.
    scale = np.where(count > 0, (Z * Z).sum(axis=0) / np.maximum(count, 1), 0.0)
    tiny = 1e-12 * scale
    dropped: dict[str, str] = {}
    kept: list[int] = []
    for j, name in enumerate(names):
        fin = present[:, j]
        if not fin.any():
            dropped[name] = "never present"
            continue
        col = rows[fin, j]
        if col.max() == col.min():
            dropped[name] = "constant"
            continue
        for k in kept:
            if n[j, k] < 10 or var_j[j, k] <= tiny[j] or var_k[j, k] <= tiny[k]:
                continue
            if abs(r[j, k]) >= duplicate_corr:
                dropped[name] = f"near-duplicate of {names[k]} (r={r[j, k]:.4f})"
                break
        else:
            kept.append(j)
    return np.asarray(kept, dtype=np.intp), dropped


@dataclass(frozen=True, slots=True)
class TrainParams:
    """What ``train`` does; the defaults make a small, quick model."""

    #: ``gbt`` (HistGradientBoosting) or ``logistic`` (imputer + scaler + regression).
    family: str = "gbt"

    #: Fraction of (t_start, t_end] used for training; validation follows a horizon gap.
    train_fraction: float = 0.75
    max_false_per_asset_week: float = 1.0
    #: Alarm hysteresis, as in the alert stage: clear below threshold × clear_ratio.
    clear_ratio: float = 0.8
    #: Ticks left out after a fault ends; None = one horizon.
    cooldown_s: float | None = None
    max_iter: int = 100
    max_depth: int = 4
    learning_rate: float = 0.1
    l2_regularization: float = 1.0
    #: Inverse regularisation strength of the logistic family.
    C: float = 1.0
    drop_useless: bool = True
    duplicate_corr: float = 0.999
    stride: int = 1
    seed: int = 0
    #: Threads for fitting and scoring (None: the library's default, all cores).  One
    #: leaves the other core to the live pipeline on a two-core gateway.
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got "
                             f"{self.family!r}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction!r}")
        if not self.max_false_per_asset_week >= 0:
            raise ValueError(f"max_false_per_asset_week must be >= 0, got "
                             f"{self.max_false_per_asset_week!r}")
        if not 0.0 < self.clear_ratio <= 1.0:
            raise ValueError(f"clear_ratio must be in (0, 1], got {self.clear_ratio!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        if self.stride < 1 or self.max_iter < 1 or self.max_depth < 1:
            raise ValueError("stride, max_iter and max_depth must be >= 1, got "
                             f"{self.stride!r}, {self.max_iter!r}, {self.max_depth!r}")

    @classmethod
    def from_settings(cls, family: str, training: TrainingConfig, budget: float,
                      clear_ratio: float, seed: int = 0) -> TrainParams:
        """A family's parameters from ``[training]`` and the alert budget and hysteresis."""
        return cls(family=family, train_fraction=1.0 - training.validation_fraction,
                   max_false_per_asset_week=budget, clear_ratio=clear_ratio,
                   cooldown_s=training.cooldown_s, max_iter=training.max_iter,
                   stride=training.stride, threads=training.threads or None, seed=seed)


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
    #: Validation rows (float32) in the model's feature order, to check an export against.
    X_validation: np.ndarray = field(repr=False)

    def metadata(self, extra_metrics: Mapping[str, Any] | None = None,
                 created_at: float | None = None) -> dict[str, str]:
        """The model contract's metadata for this result."""
        return export.build_metadata(
            feature_names=self.feature_names, spec_hash=self.spec_hash,
            horizon_s=self.horizon_s, threshold=self.threshold, reference=self.reference,
            trained_from=self.trained_from, trained_to=self.trained_to,
            metrics={**self.metrics, **(extra_metrics or {})}, family=self.family,
            created_at=created_at, training=self.training)


def train(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
          t_end: float, params: TrainParams | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Build the data set, fit one family (``params.family``), choose the threshold."""
    params = params or TrainParams()
    return train_families(spec, histories, t_start, t_end, [params], progress)[0]


def train_families(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
                   t_end: float, params: Sequence[TrainParams],
                   progress: Progress | None = None) -> list[TrainResult]:
    """One data set (with the first params' cool-down and stride), a fit per params."""
    if not params:
        raise ValueError("no model family to train")
    t0 = time.perf_counter()
    first = params[0]
    ds = build_dataset(spec, histories, t_start, t_end, first.cooldown_s, first.stride,
                       progress)
    features_s = time.perf_counter() - t0
    results = []
    for p in params:
        r = fit(ds, spec, t_start, t_end, p, progress)
        results.append(_with_timing(r, "features_s", features_s))
    return results


def _with_timing(result: TrainResult, key: str, seconds: float) -> TrainResult:
    timings = {key: seconds, **result.timings}
    return dataclasses.replace(result, timings=timings)


def make_classifier(params: TrainParams) -> Any:
    """An unfitted scikit-learn classifier of ``params.family``."""
    if params.family == "gbt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=params.max_iter, max_depth=params.max_depth,
            learning_rate=params.learning_rate, l2_regularization=params.l2_regularization,
            early_stopping=False, random_state=params.seed)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # Missing values (NaN) become the training median, as the service's features may
    # be missing; keep_empty_features keeps the input width equal to the feature list.
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("model", LogisticRegression(C=params.C, max_iter=2000, random_state=params.seed)),
    ])


def fit(ds: Dataset, spec: PipelineSpec, t_start: float, t_end: float,
        params: TrainParams, progress: Progress | None = None) -> TrainResult:
    """Fit ``params.family`` on the rows of ``ds`` with ticks in (t_start, t_end].

    Training ticks are those up to t_split = t_start + train_fraction × (t_end −
    t_start); validation ticks follow after a gap of one horizon.  The threshold
    is the one with the best validation recall within the false-alarm budget.
    """
    # Import scikit-learn (and so its OpenMP runtime) first: threadpoolctl limits
    # only the libraries already loaded when the limit is set.
    import sklearn.ensemble
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(params.threads):
        return _fit(ds, spec, t_start, t_end, params, progress)


def _fit(ds: Dataset, spec: PipelineSpec, t_start: float, t_end: float,
         params: TrainParams, progress: Progress | None) -> TrainResult:
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    family = FAMILIES[params.family]
    in_window = (ds.ticks > t_start) & (ds.ticks <= t_end)
    t_split = t_start + params.train_fraction * (t_end - t_start)
    train_rows = in_window & ds.usable & (ds.ticks <= t_split)
    val_rows = in_window & (ds.ticks > t_split + spec.horizon_s)  # alarms need every tick
    if not val_rows.any():
        raise ValueError("no validation ticks: the history is too short for the train "
                         "fraction and one horizon of gap")
    y_train = ds.positive[train_rows]
    if y_train.all() or not y_train.any():
        raise ValueError(f"the training window has {int(y_train.sum())} positive ticks of "
                         f"{len(y_train)}: need both classes (more history or more faults)")

    X_train = ds.X[train_rows]
    if params.drop_useless:
        keep, dropped = select_features(X_train, ds.names, params.duplicate_corr)
    else:
        keep, dropped = np.arange(len(ds.names)), {}
    names = tuple(ds.names[j] for j in keep)
    X_train = X_train[:, keep]
    say(f"{params.family}: training on {len(X_train)} ticks ({int(y_train.sum())} positive), "
        f"{len(names)} features ({len(dropped)} dropped)")

    t0 = time.perf_counter()
    clf = make_classifier(params)
    clf.fit(X_train.astype(np.float64), y_train.astype(np.int64))
    timings["fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    X_val = ds.X[val_rows][:, keep]
    p_val = clf.predict_proba(X_val.astype(np.float64))[:, 1]
    scores = ds.scores(val_rows, p_val)
    chosen, met = choose_threshold(scores, spec.horizon_s, params.max_false_per_asset_week,
                                   params.clear_ratio)
    p_train = clf.predict_proba(X_train.astype(np.float64))[:, 1]
    train_scores = ds.scores(train_rows, p_train)
    timings["validate_s"] = time.perf_counter() - t0
    say(f"{params.family}: threshold {chosen.threshold:.3f}: recall {chosen.recall:.2f} "
        f"({chosen.caught}/{chosen.faults}), {chosen.false_per_asset_week:.2f} false alarms "
        f"per asset-week, median lead {chosen.median_lead_s / 60:.0f} min")

    val_ticks = ds.ticks[val_rows]
    metrics = {
        "validation": chosen.as_dict(),
        "validation_from": export.rfc3339(float(val_ticks.min())),
        "validation_to": export.rfc3339(float(val_ticks.max())),
        "max_false_per_asset_week": params.max_false_per_asset_week,
        "threshold_met_budget": met,
        "train_pr_auc": _round(tick_pr_auc(train_scores)),
        "rows": {"train": int(train_rows.sum()), "train_positive": int(y_train.sum()),
                 "validation": int(val_rows.sum()),
                 "validation_usable": int((val_rows & ds.usable).sum()),
                 "validation_positive": int((val_rows & ds.usable & ds.positive).sum())},
    }
    training = {"params": asdict(params), "assets": list(ds.assets),
                "dropped_features": dict(dropped), "spec_cadence_s": spec.cadence_s}
    return TrainResult(
        classifier=clf, family=family, feature_names=names, dropped=dropped,
        spec_hash=spec.hash, horizon_s=spec.horizon_s, threshold=chosen.threshold,
        threshold_met_budget=met,
        reference=export.reference_distribution(X_train, names),
        trained_from=t_start, trained_to=t_split,
        validated_from=float(val_ticks.min()), validated_to=float(val_ticks.max()),
        validation=chosen, metrics=metrics, training=training, timings=timings,
        X_validation=X_val)


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
