"""Drift of a model's inputs: PSI against its reference, calibrated on its held-out period.

Statistic: the population stability index (PSI) of a window of live values over
the bins of the reference histogram every model already stores
(``appliance.reference``: decile edges and counts of the training rows, pooled
over all training assets).  Chosen over a Wasserstein distance on the reference
quantiles because (a) it needs nothing new in the metadata, (b) a sample becomes
one bin index when it arrives, so a window is a count per bin, updated in O(1) per
sample and computed the same way in the service and in a batch over a feature
matrix, and (c) it is scale-free, so one calibration rule serves features in °C
and in A alike.  A value outside the reference range counts in the outermost bin,
so a shift past the range still moves all its mass there.

Windows are per line, not per asset.  The reference is pooled over assets, and
each asset sits in a corner of it (the simulator gives each one a fixed
installation offset, e.g. lube ±2 °C), so one asset's window is far from the
reference and noisy even on stationary data: per asset, calibrated thresholds at
the default budget ended above the largest PSI a 144-sample window can reach, and
a +10 °C recalibration went unreported for 5 days.  So a line's window pools its
assets as the reference does: per ``sample_s`` slot of event time, each asset's
first feature row of the slot is a sample, and every asset's sample goes into the
line's window (a ring of per-slot bin counts, [slots, features, bins] per line).
The window is the line's last ``window_s / sample_s`` slots holding a sample (by
count: a line with data in stretches compares its last stretches, as training
did).  PSI is computed once the window holds that many slots and half of one
asset's samples; every sample of a slot updates it, and the persistence rule
advances once per slot.  An event needs PSI above the threshold at ``P = 1 +
persist_s / sample_s`` consecutive slots, i.e. the "persistent distance" (the
minimum of PSI over the last P slots) above it; it ends after P slots below.

Calibration (``calibrate``, run by ``training.fit`` on the validation rows, which
the model never saw): the held-out assets are pooled into one line's window as
live (training does not know the lines).  Feature rows 10 s apart are strongly
autocorrelated, so a threshold from i.i.d. theory fires all the time; instead the
persistent distance over the held-out period is cut into blocks of ``BLOCK_S``
and a Gumbel law is fitted (method of moments) to the block maxima, per feature.
The calibration stores the fit, not a threshold, because the number of lines is
known only live: ``Settings.thresholds`` gives each (line, feature) unit the
false-event rate ``max_false_per_month / (features × lines)`` and the threshold
whose block exceedance probability is that rate × block / month.  (Units as
sensors × lines, taking a sensor's features as one trial, gave 7 false events on
a stationary simulated month against 2: they do not move together when nothing
drifts.)  The threshold is never below the largest persistent distance seen on
the held-out data, and then raised by ``SAFETY`` for variation slower than the
held-out period.  PSI's sampling noise grows as (bins − 1) / n with n samples per
window, so the calibration stores n (the held-out windows' median) and a live
window with fewer samples (a line with fewer assets than were held out, a line
with gaps) gets the threshold × held-out n / live n; a fuller one keeps it.  A
feature with too few blocks to fit, and every feature of a model without a
calibration of this version (the starter, a file dropped in, a per-asset
calibration of version 1), gets ``[drift] uncalibrated_psi`` (0.5: twice the
0.25 rule of thumb for a "major shift") held for ``uncalibrated_persist_s`` (2 h),
not scaled.

Events are per line: the retained topic ``appliance/<line>/drift`` holds one
state per line.  A line's drift event starts when any of its features drifts
and ends when none does; it names the features that moved most (most first, with
the PSI, the threshold, the window's samples and the shift in the feature's
units: the mean of the line's assets' EWMAs, spanning the window, minus the
reference mean), and for attribution the assets whose values moved most on the
worst feature (each one's EWMA minus the reference mean, installation offset
included).  The event's asset is ``*`` (the line), or the asset of a one-asset
line.  The cost of pooling: one asset drifting alone (one sensor swapped on one
asset of many) moves 1 / assets of the line's window, and goes unreported unless
large; ``sensor`` events (``features.health``) cover the stuck, silent and mostly
missing sensors, whose features ``observe`` is passed as excluded so they stay
out of the window.
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
#: 2: one window per line (1 was per asset, whose PSI is not comparable).
CALIBRATION_VERSION = 2
#: Pseudo-count per bin of the live window: a bin the window has not seen yet is not
#: log(0), and a short window does not look infinitely far from the reference.
PSEUDO_COUNT = 0.5
#: A bin index meaning "no value here" (NaN, or a faulty sensor's feature).
ABSENT = 255
#: Length of the blocks whose maxima the Gumbel law is fitted to.  (Blocks a window
#: long were tried: too few maxima for a fit, and more false events, not fewer.)
BLOCK_S = 3600.0
#: The fitted threshold is multiplied by this.  A held-out period of days cannot show
#: variation slower than itself (the simulator's weather, its load regimes, and on a
#: line's pooled window the clustering of its assets' faults: a day of several oil
#: pressure faults moves the line's oil features): on a stationary simulated month
#: after a 5-day held-out period, the largest persistent PSI of a line's window
#: reached 1.7 × the fitted threshold (oil_pressure__ewma_600s).
SAFETY = 2.0
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


def line_series(ref: Reference, window: Window,
                assets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch: the numbers the live monitor computes for one line's window.

    ``assets``: per asset of the line, (ticks, X in ``ref.features`` order, excluded
    or None).  Returns per sample slot of the line (a slot in which any asset took a
    sample): the tick at which its last sample arrived (when the live PSI reaches
    the value here), PSI (S, F), NaN until the window holds ``W`` slots and
    ``min_present`` samples, and the samples in the window (S, F).
    """
    F, B, W = len(ref.features), ref.width, window.samples
    slots, seen, bins = [], [], []
    for ticks, X, excluded in assets:
        rows = sample_rows(ticks, window.sample_s)
        b = ref.bins(X[rows])
        if excluded is not None:
            b[excluded[rows]] = ABSENT
        t = np.asarray(ticks, dtype=np.float64)[rows]
        slots.append(np.floor(t / window.sample_s).astype(np.int64))
        seen.append(t)
        bins.append(b)
    slot = np.concatenate(slots) if slots else np.empty(0, dtype=np.int64)
    line_slots, at = np.unique(slot, return_inverse=True)
    S = len(line_slots)
    last = np.full(S, -np.inf)
    if S:
        np.maximum.at(last, at, np.concatenate(seen))
    per_slot = np.zeros((S + 1, F, B), dtype=np.int32)
    if S:
        b = np.concatenate(bins)
        row, f = np.nonzero(b != ABSENT)
        np.add.at(per_slot, (1 + at[row], f, b[row, f].astype(np.intp)), 1)
    psi = np.full((S, F), np.nan)
    n = np.zeros((S, F), dtype=np.int64)
    if S >= W:
        cum = np.cumsum(per_slot, axis=0)
        counts = cum[W:] - cum[:-W]  # the windows ending at slot W-1 … S-1
        n[W - 1:] = counts.sum(axis=2)
        psi[W - 1:] = np.where(n[W - 1:] >= window.min_present,
                               psi_from_counts(counts, ref), np.nan)
    return last, psi, n


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

    ``assets``: per asset (ticks, X in ``names`` order, excluded or None), pooled
    into one line's window as the live monitor pools a line (the training history
    does not say which line an asset is on).  Returns the JSON-able document stored
    as ``appliance.drift_calibration``.
    """
    ref = reference_of(names, reference)
    cols = np.array([list(names).index(f) for f in ref.features], dtype=np.intp)
    block_s = BLOCK_S
    per_block = block_s / window.sample_s
    pooled = [(ticks, X[:, cols], None if excluded is None else excluded[:, cols])
              for ticks, X, excluded in assets]
    t, psi, n = line_series(ref, window, pooled)
    d = persistent(psi, window.persist)
    largest = _nanmax(d)
    blocks = np.floor(t / block_s).astype(np.int64)
    maxima = []
    for b in np.unique(blocks):
        rows = d[blocks == b]
        seen = np.sum(~np.isnan(rows), axis=0)
        maxima.append(np.where(seen >= MIN_BLOCK_FILL * per_block, _nanmax(rows), np.nan))
    M = np.array(maxima) if maxima else np.empty((0, len(ref.features)))
    features = {}
    for j, f in enumerate(ref.features):
        m = M[:, j][~np.isnan(M[:, j])] if len(M) else np.empty(0)
        valid = n[~np.isnan(psi[:, j]), j]
        entry: dict[str, Any] = {"blocks": len(m),
                                 "max": _num(largest[j]) if np.isfinite(largest[j]) else None,
                                 "samples": int(np.median(valid)) if len(valid) else None}
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
    #: Per monitored feature: samples in a held-out window (0: not scaled).
    samples: tuple[int, ...] = ()

    def thresholds(self, n_lines: int) -> np.ndarray:
        """Per feature, the PSI threshold of a window as full as the held-out ones, for
        a gateway of ``n_lines`` lines."""
        units = max(1, len(self.fits)) * max(1, n_lines)
        p = min(0.5, self.max_false_per_month / units * self.block_s / MONTH_S)
        out = np.empty(len(self.fits))
        for j, fit in enumerate(self.fits):
            if fit is None:
                out[j] = self.uncalibrated_psi
            else:
                loc, scale, largest = fit
                out[j] = SAFETY * max(gumbel_quantile(loc, scale, p), largest)
        return out

    def scaled(self, thresholds: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``thresholds`` (F,) for windows of ``n`` (..., F) samples: PSI's sampling
        noise grows as (bins − 1) / n, so a window with fewer samples than the held-out
        ones (a line with fewer assets) gets a proportionally higher threshold; never a
        lower one (more assets, held out on fewer)."""
        if not self.samples:
            return np.broadcast_to(thresholds, np.shape(n)).astype(np.float64)
        held = np.asarray(self.samples, dtype=np.float64)
        return thresholds * np.maximum(1.0, held / np.maximum(n, 1))


def settings_for(ref: Reference, calibration: Mapping[str, Any] | None, *, window: Window,
                 uncalibrated_persist_s: float, uncalibrated_psi: float,
                 max_false_per_month: float) -> Settings:
    """The settings a model gets: its calibration's window and fits, or the
    conservative default (``window`` with ``uncalibrated_persist_s``) without one or
    with one of another version (per-asset windows: its PSI is not this one's)."""
    if not calibration or calibration.get("version") != CALIBRATION_VERSION:
        return Settings(Window(window.window_s, window.sample_s, uncalibrated_persist_s),
                        False, (None,) * len(ref.features), uncalibrated_psi,
                        max_false_per_month)
    per = calibration.get("features", {})
    fits: list[tuple[float, float, float] | None] = []
    samples: list[int] = []
    for f in ref.features:
        e = per.get(f) or {}
        if e.get("loc") is None or e.get("scale") is None:
            fits.append(None)
            samples.append(0)  # the uncalibrated threshold is not a held-out one
        else:
            fits.append((float(e["loc"]), float(e["scale"]), float(e.get("max") or 0.0)))
            samples.append(int(e.get("samples") or 0))
    cal_window = Window(float(calibration["window_s"]), float(calibration["sample_s"]),
                        float(calibration["persist_s"]))
    return Settings(cal_window, True, tuple(fits), uncalibrated_psi, max_false_per_month,
                    float(calibration.get("block_s", BLOCK_S)), tuple(samples))


def count_events(drifting_by_sample: np.ndarray) -> int:
    """Event starts in a (samples,) bool series of "the line has a drifting feature"."""
    d = np.asarray(drifting_by_sample, dtype=bool)
    return int(d[0]) + int(np.sum(d[1:] & ~d[:-1])) if len(d) else 0


def drifting_series(psi: np.ndarray, thresholds: np.ndarray, persist: int) -> np.ndarray:
    """Batch: per sample and feature, whether the line's feature is drifting (the live
    rule: starts after ``persist`` samples above, ends after ``persist`` below);
    ``thresholds`` (F,) or per sample (S, F)."""
    above = np.nan_to_num(psi, nan=-np.inf) > np.broadcast_to(thresholds, psi.shape)
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

#: Arrays per asset and per line of the monitor, with their fill values (grown by doubling).
_ASSET_ARRAYS = {"line_of": 0, "slot": np.iinfo(np.int64).min, "ewma": np.nan}
_LINE_ARRAYS = {"ring": 0, "counts": 0, "pos": 0, "taken": 0,
                "lslot": np.iinfo(np.int64).min, "psi": np.nan, "n": 0, "threshold": np.nan,
                "up": 0, "down": 0, "drifting": False, "up0": 0, "down0": 0,
                "drifting0": False}


class DriftMonitor:
    """Streaming PSI over every (line, feature) window of a gateway, vectorised.

    Per line: a ring of ``W`` slots × F features × B bins of sample counts (the
    samples of all the line's assets in that slot), their sum (the window), the run
    lengths above and below the threshold at the end of the previous slot and now.
    Per asset: its line, its last sample slot and an EWMA of its values (the
    attribution).  ``observe`` takes one tick's rows of many assets; only assets
    entering a new ``sample_s`` slot do any work.
    """

    def __init__(self, ref: Reference, settings: Settings, model: str | None,
                 top_features: int = 5) -> None:
        self.ref = ref
        self.settings = settings
        self.model = model
        self.top_features = top_features
        self.window = settings.window
        self.index: dict[tuple[str, str], int] = {}
        self.line_index: dict[str, int] = {}
        self.lines: list[str] = []
        self.names: list[str] = []
        F, W, B = len(ref.features), self.window.samples, ref.width
        self._F, self._W, self._B = F, W, B
        self.line_of = np.zeros(16, dtype=np.intp)
        self.slot = np.full(16, np.iinfo(np.int64).min, dtype=np.int64)
        self.ewma = np.full((16, F), np.nan, dtype=np.float32)
        # uint16: at most 65,535 assets of a line sample one bin in one slot
        self.ring = np.zeros((1, W, F, B), dtype=np.uint16)
        self.counts = np.zeros((1, F, B), dtype=np.int32)
        self.pos = np.zeros(1, dtype=np.intp)
        self.taken = np.zeros(1, dtype=np.int64)
        self.lslot = np.full(1, np.iinfo(np.int64).min, dtype=np.int64)
        self.psi = np.full((1, F), np.nan)
        self.n = np.zeros((1, F), dtype=np.int32)
        self.threshold = np.full((1, F), np.nan)
        for name in ("up", "down", "up0", "down0"):
            setattr(self, name, np.zeros((1, F), dtype=np.int32))
        self.drifting = np.zeros((1, F), dtype=bool)
        self.drifting0 = np.zeros((1, F), dtype=bool)
        self._alpha = 2.0 / (W + 1)
        self.thresholds = settings.thresholds(1)
        #: line → (feature names, threshold) of its open drift event.
        self.open: dict[str, tuple[tuple[str, ...], float]] = {}

    @property
    def n_assets(self) -> int:
        return len(self.index)

    def nbytes(self) -> int:
        return sum(getattr(self, a).nbytes for a in (*_ASSET_ARRAYS, *_LINE_ARRAYS))

    def assets_of(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """Row indices of (line, asset) keys, adding new assets and lines."""
        out = np.empty(len(keys), dtype=np.intp)
        for i, key in enumerate(keys):
            a = self.index.get(key)
            if a is None:
                a = self.index[key] = len(self.index)
                self.names.append(key[1])
                if a >= len(self.slot):
                    self._grow(_ASSET_ARRAYS)
                line = self.line_index.get(key[0])
                if line is None:
                    line = self.line_index[key[0]] = len(self.lines)
                    self.lines.append(key[0])
                    if line >= len(self.pos):
                        self._grow(_LINE_ARRAYS)
                    self.thresholds = self.settings.thresholds(len(self.lines))
                self.line_of[a] = line
            out[i] = a
        return out

    def _grow(self, arrays: Mapping[str, Any]) -> None:
        for name, fill in arrays.items():
            arr = getattr(self, name)
            extra = np.full((len(arr), *arr.shape[1:]), fill, dtype=arr.dtype)
            setattr(self, name, np.concatenate([arr, extra]))

    def due(self, tick: float, assets: np.ndarray) -> np.ndarray:
        """Which of ``assets`` take a sample at ``tick`` (the first row of a new slot)."""
        return self.slot[assets] < math.floor(tick / self.window.sample_s)

    def observe(self, tick: float, assets: np.ndarray, X: np.ndarray,
                excluded: np.ndarray | None = None) -> np.ndarray:
        """One tick's rows: ``assets`` (indices from ``assets_of``), X (n, F) in
        ``ref.features`` order, ``excluded`` (n, F) features of faulty sensors (left
        out of the window).  Returns the indices of the lines whose window changed."""
        slot = math.floor(tick / self.window.sample_s)
        due = self.slot[assets] < slot
        if not due.any():
            return np.empty(0, dtype=np.intp)
        a = assets[due]
        Xd = np.asarray(X, dtype=np.float64)[due]
        self.slot[a] = slot
        bins = self.ref.bins(Xd)
        if excluded is not None:
            bins[excluded[due]] = ABSENT
        has = bins != ABSENT
        e = self.ewma[a]
        fresh = has & np.isnan(e)
        e = np.where(fresh, Xd, e)
        self.ewma[a] = np.where(has & ~fresh, e + self._alpha * (Xd - e), e)
        line_of = self.line_of[a]
        lines = np.unique(line_of)
        new = lines[self.lslot[lines] < slot]
        if len(new):  # the line's first sample of this slot: the oldest slot leaves
            self.lslot[new] = slot
            pos = (self.pos[new] + 1) % self._W
            self.pos[new] = pos
            self.counts[new] -= self.ring[new, pos].astype(np.int32)
            self.ring[new, pos] = 0
            self.taken[new] += 1
            # later samples of this slot decide again from the state the slot started in
            self.up0[new], self.down0[new] = self.up[new], self.down[new]
            self.drifting0[new] = self.drifting[new]
        F, B = self._F, self._B
        # this tick's samples as counts per (line, feature, bin): one bincount, not a
        # scatter-add per sample
        row, f = np.nonzero(has)
        flat = (np.searchsorted(lines, line_of[row]) * F + f) * B + bins[row, f]
        added = np.bincount(flat, minlength=len(lines) * F * B).reshape(len(lines), F, B)
        self.ring[lines, self.pos[lines]] += added.astype(np.uint16)
        self.counts[lines] += added.astype(np.int32)
        counts = self.counts[lines]
        n = counts.sum(axis=2)
        valid = (self.taken[lines] >= self._W)[:, None] & (n >= self.window.min_present)
        psi = np.where(valid, psi_from_counts(counts, self.ref), np.nan)
        threshold = self.settings.scaled(self.thresholds, n)
        above = np.nan_to_num(psi, nan=-np.inf) > threshold
        up = np.where(above, self.up0[lines] + 1, 0)
        down = np.where(above, 0, self.down0[lines] + 1)
        persist = self.window.persist
        state = np.where(self.drifting0[lines], down < persist, up >= persist)
        self.psi[lines], self.n[lines], self.threshold[lines] = psi, n, threshold
        self.up[lines], self.down[lines], self.drifting[lines] = up, down, state
        return lines

    def events(self, tick: float, lines: np.ndarray) -> list[DriftEvent]:
        """Drift events of ``lines`` (indices, as ``observe`` returns): started or ended."""
        out = []
        for line in sorted(lines.tolist(), key=lambda i: self.lines[i]):
            name = self.lines[line]
            drifting = self.drifting[line]
            if drifting.any() and name not in self.open:
                out.append(self._started(tick, line, drifting))
            elif not drifting.any() and name in self.open:
                out.append(self._ended(tick, line))
        return out

    def end_all(self, tick: float, why: str) -> list[DriftEvent]:
        """End every open event (the model changed: its reference no longer applies)."""
        return [self._ended(tick, self.line_index[name], why) for name in sorted(self.open)]

    def _assets_on(self, line: int) -> np.ndarray:
        return np.flatnonzero(self.line_of[:len(self.names)] == line)

    def _started(self, tick: float, line: int, drifting: np.ndarray) -> DriftEvent:
        name = self.lines[line]
        per_feature = np.where(drifting, self.psi[line], -np.inf)
        order = [j for j in np.argsort(-per_feature, kind="stable")
                 if np.isfinite(per_feature[j])][:self.top_features]
        features = tuple(self.ref.features[j] for j in order)
        worst = order[0]
        rows = self._assets_on(line)
        # Attribution: the window is the line's; which assets moved is read from each
        # one's EWMA against the reference mean (installation offsets included).
        moved = self.ewma[rows, worst].astype(np.float64) - self.ref.mean[worst]
        by = [i for i in np.argsort(-np.nan_to_num(np.abs(moved), nan=-1.0), kind="stable")
              if np.isfinite(moved[i])][:self.top_features]
        detail: dict[str, Any] = {
            "n_assets": len(rows),
            "assets": {self.names[rows[i]]: _round(float(moved[i])) for i in by},
            "features": {}}
        for j in order:
            live = float(np.nanmean(self.ewma[rows, j])) if np.isfinite(
                self.ewma[rows, j]).any() else math.nan
            ref_mean = float(self.ref.mean[j])
            detail["features"][self.ref.features[j]] = {
                "psi": round(float(per_feature[j]), 4),
                "threshold": round(float(self.threshold[line, j]), 4),
                "samples": int(self.n[line, j]), "live": _round(live),
                "reference": _round(ref_mean), "shift": _round(live - ref_mean)}
        asset = self.names[rows[0]] if len(rows) == 1 else "*"
        threshold = float(self.threshold[line, worst])
        self.open[name] = (features, threshold)
        return DriftEvent(tick, name, asset, "drift", "started", features,
                          float(per_feature[worst]), threshold, self.model,
                          json.dumps(detail))

    def _ended(self, tick: float, line: int, why: str = "") -> DriftEvent:
        name = self.lines[line]
        features, threshold = self.open.pop(name)
        now = self.psi[line, [self.ref.features.index(f) for f in features]]
        stat = float(np.nanmax(now)) if np.isfinite(now).any() else None
        rows = self._assets_on(line)
        asset = self.names[rows[0]] if len(rows) == 1 else "*"
        detail = {"why": why} if why else {}
        return DriftEvent(tick, name, asset, "drift", "ended", features, stat, threshold,
                          self.model, json.dumps(detail))


def _round(x: float) -> float | None:
    return float(f"{x:.4g}") if math.isfinite(x) else None
