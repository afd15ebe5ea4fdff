"""Whether a model can be used, and whether the pipeline's windows fit the data.

``judge`` is the one verdict on a model, used by ``appliance train`` (on the
validation window) and ``appliance backtest`` (on the test window): the
problems, in plain words, that make it *not usable* — no faults where its
threshold was chosen (the threshold is then a fallback), no fault caught, false
alarms over the budget, an output that does not move, features that are NaN on
every tick of an asset scored.  An empty list means usable.  Metrics alone hide
these: a constant model has a threshold, a recall of NaN prints as "-", and a
limit on a sensor nobody has scores NaN without an error.

``window_notes`` compares the pipeline's windows with the data's interval
between readings: a window that holds fewer points than its statistic needs
does nothing (a Hampel filter judging one point) or next to nothing (a rolling
std over one reading).  These are notes, not problems of a model: a model may
still be fine without the filter.  The windows are reported, not scaled to the
data: a window is part of the pipeline spec whose hash the service checks a
model by, so a window scaled only in training would make the service refuse
the model; the note names the value to set in the configuration instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from appliance.console import short_list
from appliance.features.spec import PipelineSpec
from appliance.scoring.metrics import EventMetrics
from appliance.storage.history import AssetHistory

log = logging.getLogger(__name__)

#: An output that moves less than this is constant (float32 ONNX output: ~1e-7 noise).
CONSTANT_SPREAD = 1e-6
#: Thresholds are searched from 0.02 and an alarm clears below 0.8 × its threshold, so
#: an output that moves less than this cannot raise and then clear an alarm at any
#: threshold from 0.05 up: it is near-constant.
NEAR_CONSTANT_SPREAD = 0.01
#: Points a rolling window needs for its statistics (std, slope, median) to say anything.
MIN_WINDOW_POINTS = 3


def judge(window: str, metrics: EventMetrics, budget: float, probability: np.ndarray,
          features: Sequence[str], X: np.ndarray, assets: np.ndarray,
          chosen_on: tuple[str, EventMetrics] | None = None) -> list[str]:
    """The problems that make a model not usable, in plain words (empty: usable).

    ``window`` names the scored window ("validation", "test"); ``metrics`` are the
    event metrics there at the model's threshold; ``probability``, ``X`` (the
    model's ``features``, in order) and ``assets`` (the asset's name) are per
    scored tick.  ``chosen_on`` is (name, metrics at the threshold) of the window
    the threshold was chosen on when that is another window; None: this one.
    """
    problems = []
    where, chosen = chosen_on if chosen_on is not None else (window, metrics)
    if chosen.faults == 0:
        problems.append(f"the {where} window held no faults: the threshold "
                        f"({chosen.threshold:.3f}) is a fallback, not chosen")
    if chosen_on is not None and metrics.faults == 0:
        problems.append(f"the {window} window held no faults: nothing shows the model "
                        f"catches any")
    if metrics.faults > 0 and metrics.caught == 0:
        problems.append(f"caught 0 of {metrics.faults} {window} faults")
    if metrics.false_per_asset_week > budget:  # NaN (no usable ticks) is never over
        problems.append(f"over the false-alarm budget on the {window} window "
                        f"({metrics.false_per_asset_week:.2f} > {budget:g} per asset-week)")
    problems += _output_problems(window, np.asarray(probability, dtype=np.float64))
    problems += _missing_features(window, features, np.asarray(X), np.asarray(assets))
    return problems


def rank(metrics: EventMetrics) -> tuple[float, float, float]:
    """Sort key of usable models or variants, best last: recall at the threshold, then
    fewer false alarms, then PR-AUC (NaN counts as the worst)."""
    def value(x: float, worst: float) -> float:
        return worst if math.isnan(x) else x

    return (value(metrics.recall, 0.0), -value(metrics.false_per_asset_week, math.inf),
            value(metrics.pr_auc, 0.0))


def _output_problems(window: str, p: np.ndarray) -> list[str]:
    finite = p[np.isfinite(p)]
    if len(p) and not len(finite):
        return [f"every prediction is NaN ({len(p)} {window} ticks)"]
    if not len(finite):
        return []
    lo, hi = float(finite.min()), float(finite.max())
    on = f"on all {len(finite)} {window} ticks" + (
        f" with a value ({len(p) - len(finite)} more are NaN)" if len(finite) < len(p) else "")
    if hi - lo <= CONSTANT_SPREAD:
        return [f"output is constant (p={lo:.4g} {on})"]
    if hi - lo < NEAR_CONSTANT_SPREAD:
        return [f"output is near-constant (p from {lo:.4g} to {hi:.4g} {on}): too flat "
                f"to raise and clear alarms"]
    return []


def _missing_features(window: str, features: Sequence[str], X: np.ndarray,
                      assets: np.ndarray) -> list[str]:
    """Features NaN on every scored tick of every asset: the model cannot use them
    anywhere (one asset of a mixed fleet lacking a sensor is not a problem: the
    model was trained with such gaps and handles them)."""
    if not len(X):
        return []
    gone = [f for f, all_nan in zip(features, np.isnan(X).all(axis=0), strict=True)
            if all_nan]
    if not gone:
        return []
    names = sorted(set(assets.tolist()))
    return [f"features missing: {len(gone)} of the model's {len(features)} features "
            f"({short_list(gone, 3)}) {'is' if len(gone) == 1 else 'are'} NaN on every "
            f"{window} tick of {'asset' if len(names) == 1 else 'assets'} "
            f"{short_list(names)}"]


def typical_intervals(histories: Sequence[AssetHistory]) -> dict[str, float]:
    """Per sensor, the typical seconds between its readings: the median over assets of
    each asset's median interval (so one asset's outage does not move it)."""
    per_sensor: dict[str, list[float]] = {}
    for h in histories:
        for sensor, (ts, _values) in h.series.items():
            gaps = np.diff(np.asarray(ts, dtype=np.float64))
            gaps = gaps[gaps > 0]
            if len(gaps):
                per_sensor.setdefault(sensor, []).append(float(np.median(gaps)))
    return {s: float(np.median(v)) for s, v in sorted(per_sensor.items())}


def window_notes(spec: PipelineSpec, intervals: Mapping[str, float]) -> list[str]:
    """The windows of ``spec`` too short for the data (see the module docstring), each
    with the value that would work.  ``intervals``: ``typical_intervals``."""
    hampel: dict[tuple[float, int, float, bool], list[str]] = {}
    rolling: dict[tuple[float, float], list[str]] = {}
    for sensor, interval in intervals.items():
        # On the grid a sensor gives one point per cadence, and one new reading per
        # interval when that is longer (the points between repeat the last reading).
        spacing = max(spec.cadence_s, interval)
        clean = spec.sensor(sensor).clean
        if clean is not None and _held(clean.hampel_window_s, spacing) < clean.hampel_min_count:
            grid_short = _held(clean.hampel_window_s, spec.cadence_s) < clean.hampel_min_count
            key = (clean.hampel_window_s, clean.hampel_min_count, spacing, grid_short)
            hampel.setdefault(key, []).append(sensor)
        for w in spec.windows_s:
            if _held(w, spacing) < MIN_WINDOW_POINTS:
                rolling.setdefault((w, spacing), []).append(sensor)
    notes = []
    for (w, need, spacing, grid_short), sensors in hampel.items():
        held = _held(w, spacing)
        if grid_short:
            what = f"the Hampel filter needs {need} and does nothing"
        else:
            # Its window fills with copies of a reading or two: the MAD is 0, so a new
            # reading counts as an outlier until it fills half the window.
            what = (f"the other grid points in it repeat {'that reading' if held == 1 else 'them'}"
                    f", so the filter cannot tell a spike from a change and holds each new "
                    f"reading back for up to half its window")
        notes.append(f"hampel_window_s = {w:g} holds {_points(held, spacing, spec, sensors)}: "
                     f"{what}; set hampel_window_s >= {need * spacing:g}")
    for (w, spacing), sensors in rolling.items():
        held = _held(w, spacing)
        notes.append(f"the {w:g} s window (windows_s) holds "
                     f"{_points(held, spacing, spec, sensors)}: its std, slope and median say "
                     f"next to nothing; make it >= {MIN_WINDOW_POINTS * spacing:g} s")
    return notes


def _held(window_s: float, spacing_s: float) -> int:
    """Points ``spacing_s`` apart in a trailing window (t − window_s, t]: the one at t
    and each earlier one still inside (the kernels' window bounds)."""
    return max(1, math.ceil(window_s / spacing_s - 1e-9))


def _points(held: int, spacing: float, spec: PipelineSpec, sensors: Sequence[str]) -> str:
    """'1 point of the 600 s grid (cadence_s) for sensors a, b' or '1 reading of sensor
    a (one every 600 s)': what a window holds, and whose."""
    whose = f"{'sensor' if len(sensors) == 1 else 'sensors'} {short_list(list(sensors))}"
    if spacing <= spec.cadence_s:
        return (f"{held} {'point' if held == 1 else 'points'} of the {spacing:g} s grid "
                f"(cadence_s) for {whose}")
    return f"{held} {'reading' if held == 1 else 'readings'} of {whose} (one every {spacing:g} s)"


def fitting_values(spec: PipelineSpec, intervals: Mapping[str, float]
                   ) -> dict[str, float | tuple[float, ...]]:
    """The ``[pipeline]`` keys whose values do not fit the data's typical intervals
    between readings (``intervals``, seconds per sensor), each with a value that would
    (``pipeline_advice`` says why; ``import --fit-pipeline`` writes them): ``cadence_s``
    the fastest sensor's interval when the grid is more than twice finer; ``max_gap_s``
    three intervals of the slowest sensor whose carry-forward limit is shorter than
    two; ``hampel_window_s`` the filter's minimum count of readings of the slowest
    sensor it does not fit; ``windows_s`` the rolling windows, each at least
    ``MIN_WINDOW_POINTS`` readings of the slowest sensor.  Empty: everything fits."""
    out: dict[str, float | tuple[float, ...]] = {}
    if not intervals:
        return out
    every = min(intervals.values())
    cadence = spec.cadence_s
    if cadence < every / 2:
        cadence = out["cadence_s"] = _round_s(every)
    gaps = [iv for sensor, iv in intervals.items()
            if max(spec.sensor(sensor).max_gap_s, spec.sensor(sensor).max_gap_intervals * iv)
            < 2 * iv]
    if gaps:
        out["max_gap_s"] = _round_s(3 * max(gaps))
    need = MIN_WINDOW_POINTS * max(cadence, *intervals.values())
    if any(_held(w, need / MIN_WINDOW_POINTS) < MIN_WINDOW_POINTS for w in spec.windows_s):
        out["windows_s"] = tuple(sorted({max(w, _round_s(need)) for w in spec.windows_s}))
    hampel = []
    for sensor, iv in intervals.items():
        clean = spec.sensor(sensor).clean
        # as window_notes: one new reading per max(cadence, interval) on the grid
        if clean is not None and _held(clean.hampel_window_s, max(spec.cadence_s, iv)) \
                < clean.hampel_min_count:
            hampel.append(clean.hampel_min_count * max(cadence, iv))
    if hampel:
        out["hampel_window_s"] = _round_s(max(hampel))
    return out


def pipeline_advice(spec: PipelineSpec, intervals: Mapping[str, float]) -> list[str]:
    """What of ``[pipeline]`` does not fit the data's typical intervals between readings
    (``intervals``, seconds per sensor), each with the key and the value that would
    (``fitting_values``): a grid much finer than the fastest sensor (each reading
    becomes many grid points that repeat it: the features then see copies, and the data
    set grows by that factor), a carry-forward limit shorter than two readings apart (a
    sensor is missing between its readings), and ``window_notes``.  ``appliance
    import`` says it after a file, ``train`` and ``backtest`` before they run."""
    fit = fitting_values(spec, intervals)
    notes = []
    if "cadence_s" in fit:
        fastest = min(intervals, key=lambda s: intervals[s])
        every = intervals[fastest]
        notes.append(f"cadence_s = {spec.cadence_s:g} puts {every / spec.cadence_s:.0f} grid "
                     f"points on each reading of the fastest sensor ({fastest}, one every "
                     f"{every:g} s): set cadence_s = {fit['cadence_s']:g}")
    if "max_gap_s" in fit:
        notes.append(f"max_gap_s = {spec.max_gap_s:g} (or max_gap_intervals) is shorter "
                     f"than two readings of some sensors, so they are missing between "
                     f"readings: set max_gap_s = {fit['max_gap_s']:g}")
    return notes + window_notes(spec, intervals)


def warn_unfit(spec: PipelineSpec, histories: Sequence[AssetHistory], command: str
               ) -> list[str]:
    """Log ``pipeline_advice`` on ``histories`` as warnings (``train`` and ``backtest``,
    before they run: a log line shows under ``--quiet`` too); the advice."""
    advice = pipeline_advice(spec, typical_intervals(histories))
    for a in advice:
        log.warning("%s: [pipeline] does not fit the data: %s", command, a)
    return advice


def intervals_text(intervals: Mapping[str, float]) -> str:
    """'300 s: a, b; 1 s: c' — sensors grouped by typical interval, most sensors first."""
    groups: dict[str, list[str]] = {}
    for sensor, interval in intervals.items():
        groups.setdefault(_round_s(interval), []).append(sensor)
    return "; ".join(f"{every:g} s: {short_list(sensors)}" for every, sensors in
                     sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])))


def _round_s(seconds: float) -> float:
    """Seconds as a config value: whole seconds from 10 s up, else 3 significant digits."""
    return float(round(seconds)) if seconds >= 10 else float(f"{seconds:.3g}")
