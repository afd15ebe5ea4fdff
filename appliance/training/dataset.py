"""Feature rows and labels of many assets: the input every model family is fitted on.

The feature matrix comes from the batch pipeline (``appliance.features.batch``)
with the same spec the service runs, so a model sees in training exactly the
features it will see live.  ``build_dataset`` once, then ``fit`` per family:
the features are the expensive part.

Thinning (to fit in a small memory cap).  A fit needs every tick of the
validation window (alarms and their event metrics run over every tick) but not
every negative tick of the training window: those are many (~95 % of the
ticks) and alike.  ``thin_training_rows`` keeps every positive training row and
every k-th negative one of each asset (in tick order, deterministic), k the
smallest step that leaves at most ``max_train_rows`` training rows, and gives
each kept negative the weight n / kept of its asset's negatives (≈ k), so that
the weighted negatives count as many as all of them: the classifier's
``sample_weight`` then sees the class balance of the full window and its
probabilities (and the thresholds chosen on them) stay calibrated.  With
``max_train_rows`` given, ``build_dataset`` thins while it builds (the rows left
out are never stored) and records it in ``Dataset.thinning``; ``fit`` thins a
data set built whole (the backtest's, which scores every test tick) the same
way, so both give the same rows and weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from appliance.features.batch import asset_features, asset_ticks, stretches
from appliance.features.spec import PipelineSpec
from appliance.scoring.labels import label_ticks
from appliance.scoring.metrics import AssetScores
from appliance.storage.history import AssetHistory

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Thinning:
    """How ``build_dataset`` thinned a data set's training rows (module docstring)."""

    t_start: float
    t_end: float
    train_fraction: float
    #: The split (``split_time``): the last training tick; every row after it is kept.
    train_until: float
    max_train_rows: int
    #: Every step-th negative training row of an asset was kept (1: all).
    step: int


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Feature rows of many assets on the tick grid, with their labels.

    Rows are grouped by asset (in ``assets`` order) and sorted by tick within
    an asset.  ``X`` is float32; NaN = missing.  A thinned data set (``thinning``)
    holds, up to its split, only the usable training rows that were kept, each
    with its ``weight``.
    """

    names: tuple[str, ...]
    assets: tuple[str, ...]
    asset_index: np.ndarray  # (rows,) index into assets
    ticks: np.ndarray  # (rows,)
    X: np.ndarray  # (rows, features) float32
    positive: np.ndarray  # (rows,) bool
    usable: np.ndarray  # (rows,) bool
    fault_starts: Mapping[str, np.ndarray] = field(repr=False)
    #: (rows,) float64: how many ticks each row stands for; None: one each.
    weight: np.ndarray | None = field(default=None, repr=False)
    thinning: Thinning | None = None

    def take(self, rows: np.ndarray) -> Dataset:
        """The data set restricted to the selected rows (bool mask); weights as they are."""
        return Dataset(names=self.names, assets=self.assets,
                       asset_index=self.asset_index[rows], ticks=self.ticks[rows],
                       X=self.X[rows], positive=self.positive[rows], usable=self.usable[rows],
                       fault_starts=self.fault_starts,
                       weight=None if self.weight is None else self.weight[rows],
                       thinning=self.thinning)

    def stride(self, spec: PipelineSpec, n: int) -> Dataset:
        """Every n-th tick of the grid (the same ticks for every asset)."""
        if n == 1:
            return self
        if self.thinning is not None:
            raise ValueError("stride a data set before thinning it (build_dataset's stride)")
        return self.take(on_stride(spec, self.ticks, n))

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """The weights of the selected rows (bool mask or indices); ones when unthinned."""
        if self.weight is None:
            return np.ones(len(self.ticks[rows]))
        return self.weight[rows]

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


def split_time(ticks: np.ndarray, t_start: float, t_end: float,
               train_fraction: float) -> float:
    """The last training tick: where ``train_fraction`` of the ticks in (t_start, t_end]
    lie at or before it (a quantile of the real ticks, not of the calendar)."""
    in_window = (ticks > t_start) & (ticks <= t_end)
    if not in_window.any():
        raise ValueError("no ticks in the training window: no asset has data there")
    return float(np.quantile(ticks[in_window], train_fraction))


def negative_step(n_positive: int, negatives: Sequence[int], max_rows: int | None) -> int:
    """k: the smallest step such that the positives and every k-th negative of each
    asset (``negatives``: their counts) make at most ``max_rows`` rows.

    Positives are all kept; when they alone leave less than half the cap, the
    negatives get half of it (the cap is then exceeded rather than a class lost).
    """
    n_negative = int(sum(negatives))
    if max_rows is None or n_positive + n_negative <= max_rows:
        return 1
    room = max(max_rows - n_positive, max_rows // 2, 1)
    k = max(1, -(-n_negative // room))
    while sum(-(-n // k) for n in negatives) > room:  # each asset keeps ceil(n / k)
        k += 1
    return k


def thin_negatives(positive: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """One asset's training rows (labels in tick order): the mask of the rows kept and
    their weights.

    Every positive is kept with weight 1; of the n negatives the 1st, (step+1)-th,
    (2·step+1)-th, ... are kept, each with weight n / kept, so that the kept
    negatives weigh n together.
    """
    positive = np.asarray(positive, dtype=bool)
    negative = ~positive
    rank = np.cumsum(negative) - 1
    keep = positive | (negative & (rank % step == 0))
    n_negative = int(negative.sum())
    kept = -(-n_negative // step)
    weight = np.where(positive[keep], 1.0, n_negative / kept if kept else 1.0)
    return keep, weight


def thin_training_rows(asset_index: np.ndarray, positive: np.ndarray,
                       max_rows: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The training rows to fit on (see the module docstring): the mask of the rows
    kept, their weights and the step (1: all kept, every weight 1).

    ``asset_index`` and ``positive`` describe the usable training rows, grouped
    by asset and in tick order within one.
    """
    asset_index = np.asarray(asset_index)
    positive = np.asarray(positive, dtype=bool)
    assets = np.unique(asset_index)
    negatives = [int(np.count_nonzero(~positive[asset_index == a])) for a in assets]
    step = negative_step(int(positive.sum()), negatives, max_rows)
    if step == 1:
        return np.ones(len(positive), dtype=bool), np.ones(len(positive)), 1
    keep = np.zeros(len(positive), dtype=bool)
    weight = np.ones(len(positive))
    for a in assets:
        rows = np.flatnonzero(asset_index == a)
        kept, w = thin_negatives(positive[rows], step)
        keep[rows[kept]] = True
        weight[rows[kept]] = w
    return keep, weight[keep], step


def build_dataset(spec: PipelineSpec, histories: Sequence[AssetHistory], t_start: float,
                  t_end: float, cooldown_s: float | None = None, stride: int = 1,
                  progress: Progress | None = None, *, train_fraction: float | None = None,
                  max_train_rows: int | None = None) -> Dataset:
    """Features and labels of every asset at the ticks in (t_start, t_end].

    ``stride`` keeps every stride-th tick (features are still computed on the
    full grid, so they do not change).  Sensors absent from an asset are NaN.

    With ``max_train_rows`` (and the ``train_fraction`` of ``fit``), the training
    rows are thinned as the module docstring says: up to the split
    (``split_time``) only the usable rows kept by ``thin_training_rows``, with
    their weights; every row after it (the gap and the validation window).

    Design: a first pass makes every asset's ticks and labels, without features
    (cheap), which fixes the split, the rows kept and so the size of ``X``; the
    second computes the features asset by asset straight into it, so the full
    grid's matrix never exists.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if not histories:
        raise ValueError("no asset histories to build a data set from")
    if max_train_rows is not None and train_fraction is None:
        raise ValueError("max_train_rows needs the train_fraction the split is made at")
    sensors = sorted({s for h in histories for s in h.series})
    empty = (np.empty(0), np.empty(0))
    names = spec.feature_names(sensors)
    series = [{s: h.series.get(s, empty) for s in sensors} for h in histories]
    # Pass 1: ticks and labels.
    plan: dict[str, list[np.ndarray]] = {"ticks": [], "pos": [], "ok": [], "idx": []}
    for i, h in enumerate(histories):
        ticks = asset_ticks(spec, series[i], t_start, t_end)
        ticks = ticks[on_stride(spec, ticks, stride)]
        pos, ok = label_ticks(ticks, h.fault_starts, h.fault_ends, spec.horizon_s, cooldown_s)
        plan["ticks"].append(ticks)
        plan["pos"].append(pos)
        plan["ok"].append(ok)
        plan["idx"].append(np.full(len(ticks), i, dtype=np.int32))
    ticks, pos, ok, idx = (np.concatenate(plan[k]) for k in ("ticks", "pos", "ok", "idx"))
    del plan
    if not len(ticks):
        raise ValueError(_no_ticks(spec, histories))
    keep, weight, thinning = np.ones(len(ticks), dtype=bool), None, None
    if max_train_rows is not None:
        assert train_fraction is not None
        t_split = split_time(ticks, t_start, t_end, train_fraction)
        train = np.flatnonzero((ticks <= t_split) & ok)
        kept, w, step = thin_training_rows(idx[train], pos[train], max_train_rows)
        keep = ticks > t_split
        keep[train[kept]] = True
        full = np.ones(len(ticks))
        full[train[kept]] = w
        weight = full[keep]
        thinning = Thinning(t_start, t_end, train_fraction, t_split, max_train_rows, step)
        if progress and step > 1:
            progress(f"training rows: {int(kept.sum())} of {len(train)} (every positive, "
                     f"1 in {step} negatives, weighted)")
    # Pass 2: the features of the rows kept.
    X = np.empty((int(keep.sum()), len(names)), dtype=np.float32)
    at = 0
    for i, h in enumerate(histories):
        mine = idx == i
        _names, grid_ticks, features = asset_features(spec, series[i], t_start, t_end)
        on = np.flatnonzero(on_stride(spec, grid_ticks, stride))
        if not np.array_equal(grid_ticks[on], ticks[mine]):  # one rule for both passes
            raise AssertionError(f"{h.asset}: the ticks of the features differ from the plan")
        rows = features[on[keep[mine]]]
        X[at:at + len(rows)] = rows
        at += len(rows)
        del features, rows
        if progress:
            progress(f"features {h.asset}: {int(mine.sum())} ticks, "
                     f"{int(pos[mine & ok].sum())} positive")
    return Dataset(
        names=tuple(names), assets=tuple(h.asset for h in histories),
        asset_index=idx[keep], ticks=ticks[keep], X=X, positive=pos[keep], usable=ok[keep],
        fault_starts={h.asset: np.sort(np.asarray(h.fault_starts, dtype=np.float64))
                      for h in histories},
        weight=weight, thinning=thinning)


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
    rows = X[evenly_spaced(len(X), max_rows)]
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


def evenly_spaced(n: int, max_rows: int) -> np.ndarray:
    """Indices of up to ``max_rows`` evenly spaced rows of n (all of them when n is
    at most that)."""
    return np.linspace(0, n - 1, min(n, max_rows)).astype(np.intp) if n \
        else np.empty(0, dtype=np.intp)
