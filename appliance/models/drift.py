"""Drift of a model's inputs: PSI against its reference, calibrated on its held-out period.

Statistic: the population stability index (PSI) of a window of live values over
the bins of the reference histogram every model already stores
(``appliance.reference``: decile edges and counts of the training rows).  Chosen
over a Wasserstein distance on the reference quantiles because (a) it needs
nothing new in the metadata, (b) a sample becomes one bin index (a byte) when it
arrives, so a window is a ring of bytes plus a count per bin, updated in O(1)
per sample and computed the same way in the service and in a batch over a
feature matrix, and (c) it is scale-free, so one calibration rule serves
features in °C and in A alike.  A value outside the reference range counts in
the outermost bin, so a shift past the range still moves all its mass there.
The shift in the feature's units is reported beside it (an EWMA of the live
values with a span of the window, minus the reference mean), so the operator
reads "lube_temp__last +6.1" and not only "PSI 3.2".

Windows: per asset, the first feature row of each ``sample_s`` slot of event
time is a sample; the window is the asset's last ``window_s / sample_s``
samples (by count: an asset with data in stretches compares its last stretches,
as training did).  PSI is computed once the window is full and half its samples
hold a value.  An event needs PSI above the threshold at ``P = 1 +
persist_s / sample_s`` consecutive samples, i.e. the "persistent distance" (the
minimum of PSI over the last P samples) above it; it ends after P samples below.

Calibration (``calibrate``, run by ``training.fit`` on the validation rows, which
the model never saw): feature rows 10 s apart are strongly autocorrelated, so a
threshold from i.i.d. theory fires all the time.  Instead the same windows slide
over each asset's held-out rows, the persistent distance is cut into blocks of
blocks of ``BLOCK_S`` and a Gumbel law is fitted (method of moments) to the block maxima,
per feature, pooled over assets.  The calibration stores the fit, not a
threshold, because the number of assets is known only live: ``Thresholds``
gives each (asset, feature) unit the per-unit false-event rate
``max_false_per_month / (features × assets)`` and the threshold whose block
exceedance probability is that rate × block / month.  That is
conservative twice: a block exceeding is at most one event start, and several
units drifting at once on a line make one event (below).  The threshold is
never below the largest persistent distance seen on the held-out data, and then
raised by ``SAFETY`` for variation slower than the held-out period.  A
feature with too few blocks to fit, and every feature of a model without a
calibration (the starter, a file dropped in), gets ``[drift]
uncalibrated_psi`` (0.5: twice the 0.25 rule of thumb for a "major shift")
held for ``uncalibrated_persist_s`` (2 h).

Events are per line: the retained topic ``appliance/<line>/drift`` holds one
state per line, and an operator wants one message when the line's inputs move,
not one per asset of 1,000.  A line's drift event starts when any of its units
drifts and ends when none does; it names the asset when one asset drifts,
``*`` when several do, and the features that moved most over the line (most
first, with the number of assets and the shift).  ``sensor`` events are not
made here (``features.health``): a faulty sensor's features are passed to
``observe`` as excluded, so they neither drift nor end up in the window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.messages import DriftEvent

STATISTIC = "psi"
CALIBRATION_VERSION = 1
#: Pseudo-count per bin of the live window: a bin the window has not seen yet is not
#: log(0), and a short window does not look infinitely far from the reference.
PSEUDO_COUNT = 0.5
#: A bin index meaning "no value here" (NaN, or a faulty sensor's feature).
ABSENT = 255
#: Length of the blocks whose maxima the Gumbel law is fitted to.  (Blocks a window
#: long were tried: too few maxima for a fit, and more false events, not fewer.)
BLOCK_S = 3600.0
#: The fitted threshold is multiplied by this.  A held-out period of days cannot show
#: variation slower than itself (the simulator's weather, its load regimes): on a
#: stationary simulated month after a 5-day held-out period, the largest persistent
#: PSI reached 1.15 × the fitted threshold.
SAFETY = 1.3
#: Fewer block maxima than this per feature: no fit, the uncalibrated threshold.
MIN_BLOCKS = 8
#: A block counts when it holds at least this fraction of its samples.
MIN_BLOCK_FILL = 0.5
MONTH_S = 30 * 86400.0
#: Per-sensor health columns: watched by ``features.health``, not by drift.
HEALTH_SUFFIXES = ("__missing", "__stuck")
_EULER = 0.5772156649015329


@dataclass(frozen=True, slots=True)
class Window:
    """How live values are windowed: ``W`` samples of one per ``sample_s``; ``P`` in a row."""

    window_s: float
    sample_s: float
    persist_s: float

    @property
    def samples(self) -> int:
        return max(2, round(self.window_s / self.sample_s))

    @property
    def persist(self) -> int:
        return 1 + round(self.persist_s / self.sample_s)

    @property
    def min_present(self) -> int:
        return max(2, self.samples // 2)


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """The monitored features of a model and their reference bins, stacked for numpy.

    ``inner[f]`` holds feature f's interior edges padded with +inf, so the bin of a
    value is the number of interior edges at or below it (as ``numpy.histogram``,
    with values outside the range in the outer bins).
    """

    features: tuple[str, ...]
    inner: np.ndarray  # (F, B-1) float64
    n_bins: np.ndarray  # (F,)
    mask: np.ndarray  # (F, B) bool: a real bin of that feature
    q: np.ndarray  # (F, B) reference probabilities (0 on padding)
    log_q: np.ndarray  # (F, B)
    mean: np.ndarray  # (F,)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def bins(self, X: np.ndarray) -> np.ndarray:
        """uint8 bin index of each value of X (n, F); ``ABSENT`` where not finite."""
        X = np.asarray(X, dtype=np.float64)
        idx = (X[:, :, None] >= self.inner[None, :, :]).sum(axis=2).astype(np.uint8)
        idx[~np.isfinite(X)] = ABSENT
        return idx


def monitored(names: Sequence[str], reference: Mapping[str, Mapping[str, Any]]
              ) -> tuple[str, ...]:
    """The features drift watches: a reference histogram of two bins or more, and not a
    sensor-health column (a change there is a sensor event, not drift)."""
    out = []
    for name in names:
        entry = reference.get(name) or {}
        if name.endswith(HEALTH_SUFFIXES):
            continue
        if len(entry.get("hist_counts") or ()) >= 2 and sum(entry["hist_counts"]) > 0:
            out.append(name)
    return tuple(out)


def reference_of(names: Sequence[str], reference: Mapping[str, Mapping[str, Any]]
                 ) -> Reference:
    """Stack the reference histograms of ``monitored(names, reference)``."""
    features = monitored(names, reference)
    width = max([len(reference[f]["hist_counts"]) for f in features], default=2)
    F = len(features)
    inner = np.full((F, width - 1), np.inf)
    mask = np.zeros((F, width), dtype=bool)
    q = np.zeros((F, width))
    mean = np.zeros(F)
    for j, f in enumerate(features):
        entry = reference[f]
        edges = np.asarray(entry["hist_edges"], dtype=np.float64)
        counts = np.asarray(entry["hist_counts"], dtype=np.float64)
        b = len(counts)
        inner[j, :b - 1] = edges[1:-1]
        mask[j, :b] = True
        q[j, :b] = (counts + PSEUDO_COUNT) / (counts.sum() + PSEUDO_COUNT * b)
        mean[j] = entry.get("mean") if entry.get("mean") is not None else np.nan
    log_q = np.where(mask, np.log(np.where(mask, q, 1.0)), 0.0)
    return Reference(features, inner, mask.sum(axis=1), mask, q, log_q, mean)


def psi_from_counts(counts: np.ndarray, ref: Reference) -> np.ndarray:
    """PSI of windows given as bin counts (..., F, B); NaN where a window holds nothing.

    The one implementation: the live monitor and the batch functions both call it.
    """
    c = counts.astype(np.float64)
    n = c.sum(axis=-1)
    p = (c + PSEUDO_COUNT) / (n + PSEUDO_COUNT * ref.n_bins)[..., None]
    p = np.where(ref.mask, p, 1.0)
    psi = np.sum(np.where(ref.mask, (p - ref.q) * (np.log(p) - ref.log_q), 0.0), axis=-1)
    return np.where(n > 0, psi, np.nan)


def sample_rows(ticks: np.ndarray, sample_s: float) -> np.ndarray:
    """Indices of the rows that are samples: the first row of each ``sample_s`` slot."""
    slots = np.floor(np.asarray(ticks, dtype=np.float64) / sample_s).astype(np.int64)
    if not len(slots):
        return np.empty(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate(([True], slots[1:] > slots[:-1])))


def psi_series(ref: Reference, window: Window, ticks: np.ndarray, X: np.ndarray,
               excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batch: (sample ticks, PSI (S, F)) of one asset's rows (X in ``ref.features`` order)
    — the numbers the live monitor computes; NaN until the window is full."""
    rows = sample_rows(ticks, window.sample_s)
    bins = ref.bins(X[rows])
    if excluded is not None:
        bins[excluded[rows]] = ABSENT
    S, F = bins.shape
    W = window.samples
    psi = np.full((S, F), np.nan)
    for j in range(F):
        onehot = np.zeros((S + 1, ref.width), dtype=np.int32)
        present = bins[:, j] != ABSENT
        onehot[1:][present, bins[present, j]] = 1
        cum = np.cumsum(onehot, axis=0)
        counts = cum[W:] - cum[:-W]  # window ending at sample W-1 … S-1
        if not len(counts):
            continue
        col = _psi_column(counts, ref, j)
        col[counts.sum(axis=1) < window.min_present] = np.nan
        psi[W - 1:, j] = col
    return np.asarray(ticks)[rows], psi


def _psi_column(counts: np.ndarray, ref: Reference, j: int) -> np.ndarray:
    """``psi_from_counts`` for one feature's windows (S, B)."""
    one = Reference(ref.features[j:j + 1], ref.inner[j:j + 1], ref.n_bins[j:j + 1],
                    ref.mask[j:j + 1], ref.q[j:j + 1], ref.log_q[j:j + 1], ref.mean[j:j + 1])
    return psi_from_counts(counts[:, None, :], one)[:, 0]


def persistent(psi: np.ndarray, persist: int) -> np.ndarray:
    """The minimum of PSI over the last ``persist`` samples (NaN counts as below)."""
    filled = np.where(np.isnan(psi), -np.inf, psi)
    out = np.full(psi.shape, np.nan)
    if len(psi) < persist:
        return out
    view = np.lib.stride_tricks.sliding_window_view(filled, persist, axis=0)
    out[persist - 1:] = view.min(axis=-1)
    return np.where(np.isinf(out), np.nan, out)


# -- calibration ------------------------------------------------------------------------


def calibrate(names: Sequence[str], reference: Mapping[str, Mapping[str, Any]],
              window: Window, assets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
              ) -> dict[str, Any]:
    """The calibration of a model's drift thresholds on its held-out rows.

    ``assets``: per asset (ticks, X in ``names`` order, excluded or None).  Returns
    the JSON-able document stored as ``appliance.drift_calibration``.
    """
    ref = reference_of(names, reference)
    cols = np.array([list(names).index(f) for f in ref.features], dtype=np.intp)
    block_s = BLOCK_S
    per_block = block_s / window.sample_s
    maxima: list[np.ndarray] = []
    largest = np.full(len(ref.features), np.nan)
    for ticks, X, excluded in assets:
        ex = None if excluded is None else excluded[:, cols]
        t, psi = psi_series(ref, window, ticks, X[:, cols], ex)
        d = persistent(psi, window.persist)
        largest = np.fmax(largest, _nanmax(d))
        blocks = np.floor(t / block_s).astype(np.int64)
        for b in np.unique(blocks):
            rows = d[blocks == b]
            seen = np.sum(~np.isnan(rows), axis=0)
            m = np.where(seen >= MIN_BLOCK_FILL * per_block, _nanmax(rows), np.nan)
            maxima.append(m)
    M = np.array(maxima) if maxima else np.empty((0, len(ref.features)))
    features = {}
    for j, f in enumerate(ref.features):
        m = M[:, j][~np.isnan(M[:, j])] if len(M) else np.empty(0)
        entry: dict[str, Any] = {"blocks": len(m),
                                 "max": _num(largest[j]) if np.isfinite(largest[j]) else None}
        if len(m) >= MIN_BLOCKS:
            scale = max(float(np.std(m)) * math.sqrt(6.0) / math.pi, 1e-6)
            entry.update(loc=_num(float(np.mean(m)) - _EULER * scale), scale=_num(scale))
        features[f] = entry
    return {"version": CALIBRATION_VERSION, "statistic": STATISTIC,
            "window_s": window.window_s, "sample_s": window.sample_s,
            "persist_s": window.persist_s, "block_s": block_s, "assets": len(assets),
            "features": features}


def _nanmax(a: np.ndarray) -> np.ndarray:
    """Column maxima ignoring NaN; NaN for a column of NaN only (no warning)."""
    if not len(a):
        return np.full(a.shape[1:], np.nan)
    filled = np.where(np.isnan(a), -np.inf, a).max(axis=0)
    return np.where(np.isinf(filled), np.nan, filled)


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def gumbel_quantile(loc: float, scale: float, p_exceed: float) -> float:
    """x with P(block max > x) = p_exceed under Gumbel(loc, scale)."""
    return loc - scale * math.log(-math.log1p(-p_exceed))


@dataclass(frozen=True, slots=True)
class Settings:
    """What the monitor runs with for one model: its window and per-feature fits."""

    window: Window
    calibrated: bool
    #: Per monitored feature: (loc, scale, largest seen) or None (uncalibrated).
    fits: tuple[tuple[float, float, float] | None, ...]
    uncalibrated_psi: float
    max_false_per_month: float
    block_s: float = BLOCK_S

    def thresholds(self, n_assets: int) -> np.ndarray:
        """Per feature, the PSI threshold for a gateway of ``n_assets`` assets."""
        units = max(1, len(self.fits)) * max(1, n_assets)
        p = min(0.5, self.max_false_per_month / units * self.block_s / MONTH_S)
        out = np.empty(len(self.fits))
        for j, fit in enumerate(self.fits):
            if fit is None:
                out[j] = self.uncalibrated_psi
            else:
                loc, scale, largest = fit
                out[j] = SAFETY * max(gumbel_quantile(loc, scale, p), largest)
        return out


def settings_for(ref: Reference, calibration: Mapping[str, Any] | None, *, window: Window,
                 uncalibrated_persist_s: float, uncalibrated_psi: float,
                 max_false_per_month: float) -> Settings:
    """The settings a model gets: its calibration's window and fits, or the
    conservative default (``window`` with ``uncalibrated_persist_s``) without one."""
    if not calibration:
        return Settings(Window(window.window_s, window.sample_s, uncalibrated_persist_s),
                        False, (None,) * len(ref.features), uncalibrated_psi,
                        max_false_per_month)
    per = calibration.get("features", {})
    fits: list[tuple[float, float, float] | None] = []
    for f in ref.features:
        e = per.get(f) or {}
        if e.get("loc") is None or e.get("scale") is None:
            fits.append(None)
        else:
            fits.append((float(e["loc"]), float(e["scale"]), float(e.get("max") or 0.0)))
    cal_window = Window(float(calibration["window_s"]), float(calibration["sample_s"]),
                        float(calibration["persist_s"]))
    return Settings(cal_window, True, tuple(fits), uncalibrated_psi, max_false_per_month,
                    float(calibration.get("block_s", BLOCK_S)))


def count_events(drifting_by_sample: np.ndarray) -> int:
    """Event starts in a (samples,) bool series of "the line has a drifting unit"."""
    d = np.asarray(drifting_by_sample, dtype=bool)
    return int(d[0]) + int(np.sum(d[1:] & ~d[:-1])) if len(d) else 0


def drifting_series(psi: np.ndarray, thresholds: np.ndarray, persist: int) -> np.ndarray:
    """Batch: per sample and feature, whether the unit is drifting (the live rule:
    starts after ``persist`` samples above, ends after ``persist`` below)."""
    above = np.nan_to_num(psi, nan=-np.inf) > thresholds[None, :]
    S, F = above.shape
    state = np.zeros(F, dtype=bool)
    up = np.zeros(F, dtype=np.int64)
    down = np.zeros(F, dtype=np.int64)
    out = np.zeros((S, F), dtype=bool)
    for s in range(S):
        up = np.where(above[s], up + 1, 0)
        down = np.where(above[s], 0, down + 1)
        state = np.where(state, down < persist, up >= persist)
        out[s] = state
    return out


# -- the live monitor -----------------------------------------------------------------------


class DriftMonitor:
    """Streaming PSI over every (asset, feature) unit of a gateway, vectorised.

    State per asset: a ring of ``W`` samples × F features of bin indices (1 byte
    each), counts per bin, the run lengths above and below the threshold, and an
    EWMA of the values for the shift.  ``observe`` takes one tick's rows of many
    assets; only assets entering a new ``sample_s`` slot do any work.
    """

    def __init__(self, ref: Reference, settings: Settings, model: str | None,
                 top_features: int = 5) -> None:
        self.ref = ref
        self.settings = settings
        self.model = model
        self.top_features = top_features
        self.window = settings.window
        self.index: dict[tuple[str, str], int] = {}
        self.lines: list[str] = []
        self.names: list[str] = []
        F, W, B = len(ref.features), self.window.samples, ref.width
        self._F, self._W, self._B = F, W, B
        cap = 16
        self.ring = np.full((cap, F, W), ABSENT, dtype=np.uint8)
        self.counts = np.zeros((cap, F, B), dtype=np.int16)
        self.pos = np.zeros(cap, dtype=np.int64)
        self.taken = np.zeros(cap, dtype=np.int64)
        self.slot = np.full(cap, np.iinfo(np.int64).min, dtype=np.int64)
        self.psi = np.full((cap, F), np.nan)
        self.up = np.zeros((cap, F), dtype=np.int32)
        self.down = np.zeros((cap, F), dtype=np.int32)
        self.drifting = np.zeros((cap, F), dtype=bool)
        self.ewma = np.full((cap, F), np.nan, dtype=np.float32)
        self._alpha = 2.0 / (W + 1)
        self.thresholds = settings.thresholds(1)
        #: line → (asset named, feature names, threshold) of its open drift event.
        self.open: dict[str, tuple[str, tuple[str, ...], float]] = {}

    @property
    def n_assets(self) -> int:
        return len(self.index)

    def nbytes(self) -> int:
        arrays = (self.ring, self.counts, self.pos, self.taken, self.slot, self.psi,
                  self.up, self.down, self.drifting, self.ewma)
        return sum(a.nbytes for a in arrays)

    def assets_of(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """Row indices of (line, asset) keys, adding new assets."""
        out = np.empty(len(keys), dtype=np.intp)
        for i, key in enumerate(keys):
            a = self.index.get(key)
            if a is None:
                a = self.index[key] = len(self.index)
                self.lines.append(key[0])
                self.names.append(key[1])
                if a >= len(self.pos):
                    self._grow()
                self.thresholds = self.settings.thresholds(len(self.index))
            out[i] = a
        return out

    def _grow(self) -> None:
        def more(arr: np.ndarray, fill: Any) -> np.ndarray:
            extra = np.full((len(arr), *arr.shape[1:]), fill, dtype=arr.dtype)
            return np.concatenate([arr, extra])

        self.ring = more(self.ring, ABSENT)
        self.counts = more(self.counts, 0)
        self.pos = more(self.pos, 0)
        self.taken = more(self.taken, 0)
        self.slot = more(self.slot, np.iinfo(np.int64).min)
        self.psi = more(self.psi, np.nan)
        self.up = more(self.up, 0)
        self.down = more(self.down, 0)
        self.drifting = more(self.drifting, False)
        self.ewma = more(self.ewma, np.nan)

    def due(self, tick: float, assets: np.ndarray) -> np.ndarray:
        """Which of ``assets`` take a sample at ``tick`` (the first row of a new slot)."""
        return self.slot[assets] < math.floor(tick / self.window.sample_s)

    def observe(self, tick: float, assets: np.ndarray, X: np.ndarray,
                excluded: np.ndarray | None = None) -> np.ndarray:
        """One tick's rows: ``assets`` (indices from ``assets_of``), X (n, F) in
        ``ref.features`` order, ``excluded`` (n, F) features of faulty sensors.
        Returns the indices of the assets that took a sample."""
        slot = math.floor(tick / self.window.sample_s)
        due = self.slot[assets] < slot
        if not due.any():
            return np.empty(0, dtype=np.intp)
        a = assets[due]
        Xd = np.asarray(X, dtype=np.float64)[due]
        ex = np.zeros(Xd.shape, dtype=bool) if excluded is None else excluded[due]
        self.slot[a] = slot
        F, W, B = self._F, self._W, self._B
        bins = self.ref.bins(Xd)
        bins[ex] = ABSENT
        pos = self.pos[a]
        old = self.ring[a, :, pos]  # (n, F)
        flat = self.counts.reshape(-1)
        base = (a[:, None] * F + np.arange(F)[None, :]) * B
        had = old != ABSENT
        flat[(base + old)[had]] -= 1
        has = bins != ABSENT
        flat[(base + bins)[has]] += 1
        self.ring[a, :, pos] = bins
        self.pos[a] = (pos + 1) % W
        self.taken[a] += 1
        e = self.ewma[a]
        fresh = has & np.isnan(e)
        e = np.where(fresh, Xd, e)
        e = np.where(has & ~fresh, e + self._alpha * (Xd - e), e)
        self.ewma[a] = e
        counts = self.counts[a]
        psi = psi_from_counts(counts, self.ref)
        valid = (self.taken[a] >= W)[:, None] & (counts.sum(axis=2) >= self.window.min_present)
        psi = np.where(valid, psi, np.nan)
        self.psi[a] = psi
        above = np.nan_to_num(psi, nan=-np.inf) > self.thresholds[None, :]
        up = np.where(above, self.up[a] + 1, 0)
        down = np.where(above, 0, self.down[a] + 1)
        persist = self.window.persist
        state = np.where(self.drifting[a], down < persist, up >= persist)
        state &= ~ex  # a faulty sensor's features never drift
        self.up[a], self.down[a], self.drifting[a] = up, down, state
        return a

    def events(self, tick: float, sampled: np.ndarray) -> list[DriftEvent]:
        """Drift events of the lines of the assets just sampled: started or ended."""
        out = []
        for line in sorted({self.lines[i] for i in sampled.tolist()}):
            rows = self._rows_of(line)
            drifting = self.drifting[rows]
            if drifting.any() and line not in self.open:
                out.append(self._started(tick, line, rows, drifting))
            elif not drifting.any() and line in self.open:
                out.append(self._ended(tick, line, rows))
        return out

    def _rows_of(self, line: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.lines, dtype=object) == line)

    def end_all(self, tick: float, why: str) -> list[DriftEvent]:
        """End every open event (the model changed: its reference no longer applies)."""
        out = []
        for line in sorted(self.open):
            rows = self._rows_of(line)
            out.append(self._ended(tick, line, rows, why))
        return out

    def _started(self, tick: float, line: str, rows: np.ndarray,
                 drifting: np.ndarray) -> DriftEvent:
        psi = np.where(drifting, self.psi[rows], -np.inf)
        assets = rows[drifting.any(axis=1)]
        per_feature = psi.max(axis=0)
        order = [j for j in np.argsort(-per_feature, kind="stable")
                 if np.isfinite(per_feature[j])][:self.top_features]
        features = tuple(self.ref.features[j] for j in order)
        worst = order[0]
        detail: dict[str, Any] = {"assets": [self.names[i] for i in assets[:20].tolist()],
                                  "n_assets": len(assets), "features": {}}
        for j in order:
            who = drifting[:, j]
            live = float(np.nanmean(self.ewma[rows[who], j]))
            ref_mean = float(self.ref.mean[j])
            detail["features"][self.ref.features[j]] = {
                "psi": round(float(per_feature[j]), 4),
                "threshold": round(float(self.thresholds[j]), 4),
                "assets": int(who.sum()), "live": _round(live), "reference": _round(ref_mean),
                "shift": _round(live - ref_mean)}
        asset = self.names[int(assets[0])] if len(assets) == 1 else "*"
        threshold = float(self.thresholds[worst])
        self.open[line] = (asset, features, threshold)
        return DriftEvent(tick, line, asset, "drift", "started", features,
                          float(per_feature[worst]), threshold, self.model,
                          json.dumps(detail))

    def _ended(self, tick: float, line: str, rows: np.ndarray, why: str = "") -> DriftEvent:
        asset, features, threshold = self.open.pop(line)
        cols = [self.ref.features.index(f) for f in features]
        now = self.psi[rows][:, cols]
        stat = float(np.nanmax(now)) if np.isfinite(now).any() else None
        detail = {"why": why} if why else {}
        return DriftEvent(tick, line, asset, "drift", "ended", features, stat, threshold,
                          self.model, json.dumps(detail))


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if math.isfinite(x) else None
