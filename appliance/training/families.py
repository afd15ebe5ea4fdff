"""The model families and their parameters: one table of names (``config.FAMILIES``).

Two families: gradient-boosted trees (``gbt``, HistGradientBoosting) and a
logistic regression (``logistic``: median imputation of missing values,
standard scaling, then the regression, one scikit-learn Pipeline that skl2onnx
converts whole).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.config import DEFAULT_CLEAR_RATIO, DEFAULT_FAMILY, FAMILIES, TrainingConfig


@dataclass(frozen=True, slots=True)
class TrainParams:
    """What ``fit.train`` does; the defaults make a small, quick model."""

    #: ``gbt`` (HistGradientBoosting) or ``logistic`` (imputer + scaler + regression).
    family: str = DEFAULT_FAMILY

    #: Fraction of (t_start, t_end] used for training; validation follows a horizon gap.
    train_fraction: float = 0.75
    max_false_per_asset_week: float = 1.0
    #: Alarm hysteresis (``appliance.alarm``): clear below threshold × clear_ratio.
    clear_ratio: float = DEFAULT_CLEAR_RATIO
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
    #: Training rows fitted on at most: every positive and 1 in k negatives, weighted by
    #: ≈ k (``dataset.thin_training_rows``); None: every row.  Bounds a fit's memory.
    max_train_rows: int | None = 200_000
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
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ValueError(f"max_train_rows must be >= 1 or None, got "
                             f"{self.max_train_rows!r}")
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
                   stride=training.stride, max_train_rows=training.max_train_rows,
                   threads=training.threads or None, seed=seed)


def make_classifier(params: TrainParams) -> Any:
    """An unfitted scikit-learn classifier of ``params.family``."""
    return BUILDERS[params.family](params)


def fit_classifier(clf: Any, params: TrainParams, X: np.ndarray, y: np.ndarray,
                   sample_weight: np.ndarray | None = None) -> Any:
    """Fit ``make_classifier(params)`` on float32 rows X with optional row weights.

    Both families take X as float32, the type the service feeds the ONNX model.
    HistGradientBoosting converts it to float64 itself before it bins (exactly:
    a float64 copy of ours would only be a second one).  The logistic pipeline's
    imputer and scaler then work in float32 and only the regression converts to
    float64: one copy where float64 input made five (measured: 340 MB instead of
    640 MB at 168,000 × 93).  The weights reach the scaler and the regression
    (the imputer's median takes none).
    """
    if params.family == "gbt":
        with _unweighted_binning():
            return clf.fit(X, y, sample_weight=sample_weight)
    if sample_weight is None:
        return clf.fit(X, y)
    return clf.fit(X, y, scale__sample_weight=sample_weight,
                   model__sample_weight=sample_weight)


@contextlib.contextmanager
def _unweighted_binning() -> Iterator[None]:
    """Work around scikit-learn's weighted binning being too slow for a gateway.

    Since 1.7, HistGradientBoosting computes its bin thresholds from weighted
    percentiles when it bins all the rows (up to 200,000), one
    ``_weighted_percentile`` call per threshold: 255 sorts per feature, about
    3 minutes for 170,000 rows × 93 features on one core, where the whole fit
    takes under a minute (scikit-learn issue #34304, faster from PR #34248).
    For the duration of one fit, thresholds are found from the rows unweighted,
    as LightGBM and scikit-learn before 1.7 do; the boosting itself (gradients,
    leaf values) still takes the weights.  The thresholds are only the candidate
    splits, so the weighted fit changes little.
    """
    from sklearn.ensemble._hist_gradient_boosting import binning

    original = binning._find_binning_thresholds

    @functools.wraps(original)
    def find(col_data: Any, max_bins: int, sample_weight: Any = None) -> Any:
        return original(col_data, max_bins, sample_weight=None)

    binning._find_binning_thresholds = find
    try:
        yield
    finally:
        binning._find_binning_thresholds = original


def _gradient_boosting(params: TrainParams) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=params.max_iter, max_depth=params.max_depth,
        learning_rate=params.learning_rate, l2_regularization=params.l2_regularization,
        early_stopping=False, random_state=params.seed)


def _logistic(params: TrainParams) -> Any:
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


#: How each family of ``config.FAMILIES`` is built (the same keys; a test holds it).
BUILDERS: dict[str, Callable[[TrainParams], Any]] = {"gbt": _gradient_boosting,
                                                     "logistic": _logistic}
