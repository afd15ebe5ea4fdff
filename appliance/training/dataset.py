"""Feature rows and labels of many assets: the input every model family is fitted on.

The feature matrix comes from the batch pipeline (``appliance.features.batch``)
with the same spec the service runs, so a model sees in training exactly the
features it will see live.  ``build_dataset`` once, then ``fit`` per family:
the features are the expensive part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from appliance.features.batch import asset_features, stretches
from appliance.features.spec import PipelineSpec
from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import AssetScores
from appliance.storage.history import AssetHistory

Progress = Callable[[str], None]


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
        return self.take(on_stride(spec, self.ticks, n))

    def scores(self, rows: np.ndarray, probability: np.ndarray) -> list[AssetScores]:
        """Per-asset scores of the selected rows (bool mask) with their probabilities."""
        out = []
        for i, asset in enumerate(self.assets):
            sel = rows & (self.asset_index == i)
            out.append(AssetScores(asset, self.ticks[sel], probability[sel[rows]],
                                   self.usable[sel], self.positive[sel],
                                   self.fault_starts[asset]))
        return out


def on_stride(spec: PipelineSpec, ticks: np.ndarray, n: int) -> np.ndarray:
    """Mask of the ticks on every n-th point of the grid: the same ticks for every
    asset, across its gaps too (not every n-th row of an asset)."""
    return np.rint(ticks / spec.cadence_s).astype(np.int64) % n == 0


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
        kept = on_stride(spec, ticks, stride)
        ticks, X = ticks[kept], X[kept]
        pos, ok = label_ticks(ticks, h.fault_starts, h.fault_ends, spec.horizon_s, cooldown_s)
        parts["X"].append(X.astype(np.float32))
        parts["ticks"].append(ticks)
        parts["pos"].append(pos)
        parts["ok"].append(ok)
        parts["idx"].append(np.full(len(ticks), i, dtype=np.int32))
        if progress:
            progress(f"features {h.asset}: {len(ticks)} ticks, {int(pos[ok].sum())} positive")
    if not sum(len(t) for t in parts["ticks"]):
        raise ValueError(_no_ticks(spec, histories))
    return Dataset(
        names=tuple(names), assets=tuple(h.asset for h in histories),
        asset_index=np.concatenate(parts["idx"]), ticks=np.concatenate(parts["ticks"]),
        X=np.concatenate(parts["X"]), positive=np.concatenate(parts["pos"]),
        usable=np.concatenate(parts["ok"]),
        fault_starts={h.asset: np.sort(np.asarray(h.fault_starts, dtype=np.float64))
                      for h in histories})


def _no_ticks(spec: PipelineSpec, histories: Sequence[AssetHistory]) -> str:
    """Why no asset has a tick: most often data in runs shorter than the warm-up."""
    longest = max((hi - lo for h in histories for lo, hi, _k0, _k1 in stretches(spec, h.series)),
                  default=0.0)
    why = ("the time the longest window, " f"{max(spec.windows_s):.0f} s, takes to fill"
           if spec.warmup_s == spec.filled_after_s() else "as configured")
    return (f"no asset has a tick past its warm-up in the window: its longest stretch of data "
            f"is {longest:.0f} s, and [pipeline] warmup_s is {spec.warmup_s:.0f} s ({why}). "
            f"For data in short runs use a shorter horizon_s or windows_s (or set warmup_s)")


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
