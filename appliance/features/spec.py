"""What the pipeline computes, and the stable hash a model records it by.

Per sensor, in this order, with that sensor's settings (``PipelineSpec.sensor``:
its ``[pipeline.sensors.<name>]`` table over the pipeline's own, or the pipeline's
alone for a sensor nobody configured):

0. validity: a reading that is not finite, lies outside [valid_min, valid_max],
   or changed faster than ``max_rate_per_s`` since the sensor's last valid
   reading is invalid (``appliance.kernels.filters.validity``); it stays
   stored but the steps below treat it as absent.  The sensor itself exists
   from its first reading, valid or not, so one sending only invalid readings
   shows as missing;
1. grid: valid readings are placed on a grid of ``cadence_s`` event-time seconds
   (their mean in (t - cadence_s, t]; the previous grid value carried
   forward while the last valid reading is at most its carry limit old, else
   missing).  The limit is ``max_gap_s``, or ``max_gap_intervals`` times the
   sensor's typical interval between valid readings (the median of the last
   ``INTERVAL_COUNT`` intervals, as of that reading: one outage does not
   stretch it) when that is longer.  Any sampling rate from 10 Hz to hourly
   gets a sensible carry with no per-sensor setting;
2. clean (optional, ``SensorSpec.clean``): a Hampel filter on the grid
   replaces a value more than k scaled MADs from the median of its trailing
   window by that median (``appliance.kernels.filters.hampel``).  On the grid,
   not on raw readings: its cost is then per tick, not per reading (a 10 Hz
   sensor would cost 100× more), and a spike still moves its cell's mean;
3. features: the grid value (``last``); ``missing``, the exponentially
   weighted fraction of ticks without a value (half-life a quarter of the
   longest window); ``stuck``, 1 when the grid value has not changed for the
   first window (``appliance.kernels.filters.stuck`` over the ticks whose cell
   held a reading — carried values do not count: the run of equal values
   began a window ago and the window holds ``STUCK_MIN_COUNT`` such ticks or
   more, so neither a sensor that just started nor a slow one is stuck); ``dev``, the grid value
   minus its long EWMA baseline;
   and, over each window, the rolling
   statistics of ``STATS`` — the columns of ``appliance.kernels.rolling.RollingBank``,
   which the live driver runs for all series at once and the batch driver
   reproduces with the batch kernels.  A window sees at most about
   ``WINDOW_SAMPLES`` points: a long window runs on a coarser grid whose cell
   is ``stride`` ticks (the mean of the finite tick values in it), and its
   statistics are those of the last closed coarse cell.  That bounds memory per
   series and window (~3 KB, see ``RollingBank``) whatever the window, at the
   cost of long-window statistics moving once per coarse cell.
4. differences: for each configured pair (a, b), grid(a) − grid(b) per tick.

An asset none of whose sensors has sent a reading for more than ``idle_gap_s`` is
idle: the rows end with the tick whose cell holds its last reading, none are
made for the silence, and at its next reading every step above starts afresh
(validity alone keeps its state) — a stopped line is not predicted on, and
a weekend does not come back as 17,000 rows per asset at once.  An asset has
rows only where it has data: from the tick of its first reading to the tick of
its last, with no rows before, after, or between its stretches of activity.

Warm-up: for ``warmup_s`` after an asset's first tick (and after each fresh
start) its windows fill but it has no rows.  A window still filling is NaN or
built on a few points, and that pattern tells a model the time since a restart
(of the machine or of the service), not the machine's health; a model fed it
learns to predict a fault one window after every start.  So no tick of a
warm-up is predicted on, trained on or scored, in live and batch alike.

The hash covers every setting above, the per-sensor ones included (a sensor whose
settings equal the pipeline's adds nothing), and ``SEMANTICS``, the version of
the definitions themselves; not the warm-up, which decides which ticks have
rows but changes no feature's value.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

from appliance.config import PipelineConfig, SensorConfig
from appliance.kernels.rolling import BANK_COLUMNS

#: Rolling statistics per sensor and window, in feature order.
STATS: tuple[str, ...] = tuple(BANK_COLUMNS)
#: The EWMA column's half-life, as a fraction of its window.
EWMA_HALFLIFE_FRACTION = 0.25
#: The per-sensor features before the window statistics, in order.
SENSOR_FEATURES: tuple[str, ...] = ("last", "missing", "stuck", "dev")
#: About this many grid points per rolling window (see ``PipelineSpec.stride``).
WINDOW_SAMPLES = 60
#: Raised whenever a feature's definition changes with the settings unchanged (e.g.
#: the stuck rule), so the hash refuses models computed the old way.  2: validity,
#: stuck over fresh ticks, change per window, carry in typical intervals, idle restarts.
SEMANTICS = 2
#: A stuck flag needs this many ticks with a reading in the first window.
STUCK_MIN_COUNT = 2
#: A sensor's typical interval is the median of its last this many (carry limit).
INTERVAL_COUNT = 5
#: A Hampel window needs this many readings before it judges one.
HAMPEL_MIN_COUNT = 3


@dataclass(frozen=True, slots=True)
class CleanSpec:
    """The cleaning step: ``appliance.kernels.filters.hampel`` over each sensor's readings."""

    hampel_window_s: float = 120.0
    hampel_k: float = 3.0
    hampel_min_count: int = HAMPEL_MIN_COUNT

    def __post_init__(self) -> None:
        if not self.hampel_window_s > 0 or not self.hampel_k > 0 or self.hampel_min_count < 1:
            raise ValueError(f"clean: hampel_window_s and hampel_k must be > 0 and "
                             f"hampel_min_count >= 1, got {self!r}")


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor's settings, resolved: its validity limits, grid gap and cleaning."""

    max_gap_s: float
    max_gap_intervals: float
    #: The cleaning step on this sensor's grid; None = not cleaned.
    clean: CleanSpec | None = None
    valid_min: float = -math.inf
    valid_max: float = math.inf
    max_rate_per_s: float = math.inf

    def __post_init__(self) -> None:
        if not (self.valid_min < self.valid_max and self.max_rate_per_s > 0
                and self.max_gap_s >= 0 and self.max_gap_intervals >= 0):
            raise ValueError(f"sensor: need valid_min < valid_max, max_rate_per_s > 0, "
                             f"max_gap_s >= 0 and max_gap_intervals >= 0, got {self!r}")


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    cadence_s: float
    horizon_s: float
    max_gap_s: float
    windows_s: tuple[float, ...]
    #: The carry limit in typical intervals between readings (see step 1).
    max_gap_intervals: float = 3.0
    #: Silence after which an asset's features start afresh; 0 = never.
    idle_gap_s: float = 6 * 3600.0
    #: Ticks after an asset's (fresh) start that fill its windows but make no rows.
    warmup_s: float = 0.0
    stats: tuple[str, ...] = STATS
    #: The cleaning step before the grid; None = no cleaning (e.g. variant no_filter).
    clean: CleanSpec | None = None
    baseline_halflife_s: float = 6 * 3600.0
    differences: tuple[tuple[str, str], ...] = ()
    #: Sensors whose settings differ from the defaults above, sorted by name; resolved
    #: when built (``from_config``), so replacing a field above does not reach them.
    sensors: tuple[tuple[str, SensorSpec], ...] = ()

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> PipelineSpec:
        clean = CleanSpec(cfg.hampel_window_s, cfg.hampel_k) if cfg.clean else None
        spec = cls(
            cadence_s=cfg.cadence_s,
            horizon_s=cfg.horizon_s,
            max_gap_s=cfg.max_gap_s,
            windows_s=tuple(float(w) for w in cfg.effective_windows()),
            max_gap_intervals=cfg.max_gap_intervals,
            idle_gap_s=cfg.idle_gap_s,
            clean=clean,
            baseline_halflife_s=cfg.baseline_halflife_s,
            differences=tuple((a, b) for a, b in cfg.differences),
        )
        spec = replace(spec, warmup_s=spec.filled_after_s() if cfg.warmup_s is None
                       else cfg.warmup_s)
        default = spec.default_sensor()
        resolved = ((name, _resolve(cfg, s)) for name, s in sorted(cfg.sensors))
        # A table that changes nothing must not change the hash a model is checked by.
        sensors = tuple((name, s) for name, s in resolved if s != default)
        return replace(spec, sensors=sensors)

    def sensor(self, name: str) -> SensorSpec:
        """The settings of sensor ``name``: its own when configured, else the defaults."""
        for configured, settings in self.sensors:
            if configured == name:
                return settings
        return self.default_sensor()

    def default_sensor(self) -> SensorSpec:
        """The settings of a sensor nobody configured: the pipeline's, no limits."""
        return SensorSpec(max_gap_s=self.max_gap_s, max_gap_intervals=self.max_gap_intervals,
                          clean=self.clean)

    @property
    def stuck_window_s(self) -> float:
        """The window the stuck flag looks back over: the first one."""
        return self.windows_s[0]

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the spec and ``SEMANTICS``, first 16 hex digits."""
        fields = asdict(self)
        del fields["warmup_s"]  # which ticks have rows, not what a row holds
        fields["semantics"] = SEMANTICS
        # Infinite validity limits are written as JSON's usual extension, Infinity.
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def stride(self, window_s: float) -> int:
        """Ticks per point of the grid a window's statistics run on (1 = every tick)."""
        return max(1, int(window_s / (WINDOW_SAMPLES * self.cadence_s)))

    def halflife_s(self, window_s: float) -> float:
        return window_s * EWMA_HALFLIFE_FRACTION

    @property
    def missing_halflife_s(self) -> float:
        return max(self.windows_s) * EWMA_HALFLIFE_FRACTION

    def sensor_feature_names(self, sensor: str) -> tuple[str, ...]:
        names = [f"{sensor}__{f}" for f in SENSOR_FEATURES]
        for w in self.windows_s:
            names.extend(f"{sensor}__{stat}_{w:g}s" for stat in self.stats)
        return tuple(names)

    def feature_names(self, sensors: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Feature names for a set of sensors, in the canonical (sorted) order;
        the configured differences come last."""
        per_sensor = [n for s in sorted(sensors) for n in self.sensor_feature_names(s)]
        return (*per_sensor, *(f"diff__{a}__{b}" for a, b in self.differences))

    def filled_after_s(self) -> float:
        """Seconds after a start when every window holds its span of points.

        A long window's points are coarse cells of ``stride`` ticks, aligned to the
        grid, not to the start: the first closes up to one cell after the start, and
        a window that is not a whole number of cells needs one cell more to reach
        a point a full window old.
        """
        def filled(w: float) -> float:
            cell = self.stride(w) * self.cadence_s
            return (math.ceil(w / cell - 1e-9) + 2) * cell if self.stride(w) > 1 \
                else w + self.cadence_s

        return max(filled(w) for w in self.windows_s)

    def refilled_after_s(self) -> float:
        """Event-time seconds of readings before an asset's last one that rebuild every
        window and leave the warm-up behind (a service start replays at least this
        much): the longest of the warm-up, ``filled_after_s`` and the cleaning
        windows, and one tick more — the replay's first cell holds only the end of
        its readings, and the last one's is still open (its tick must not be in the
        warm-up).  Not the EWMAs, whose memory has no end (``[pipeline] restore_s``)."""
        cleaning = [s.clean.hampel_window_s for _n, s in self.sensors if s.clean]
        if self.clean is not None:
            cleaning.append(self.clean.hampel_window_s)
        return max(self.warmup_s, self.filled_after_s(), *cleaning) + self.cadence_s

    @property
    def warmup_ticks(self) -> int:
        """Ticks at the start of each stretch of activity that make no rows."""
        return math.ceil(self.warmup_s / self.cadence_s - 1e-9)

    def tick_index(self, ts: float) -> int:
        """Index k of the first grid tick k × cadence_s at or after event time ``ts``.

        Ticks are computed as k × cadence_s from an integer k in batch and live
        alike, so both see bit-identical tick times.
        """
        return int(-(-ts // self.cadence_s))


def _resolve(cfg: PipelineConfig, s: SensorConfig) -> SensorSpec:
    """A sensor's table over ``[pipeline]``: each key it leaves out keeps the pipeline's."""
    def pick(own: float | bool | None, default: float | bool) -> float | bool:
        return default if own is None else own

    clean = None
    if pick(s.clean, cfg.clean):
        clean = CleanSpec(pick(s.hampel_window_s, cfg.hampel_window_s),
                          pick(s.hampel_k, cfg.hampel_k))
    return SensorSpec(max_gap_s=pick(s.max_gap_s, cfg.max_gap_s),
                      max_gap_intervals=pick(s.max_gap_intervals, cfg.max_gap_intervals),
                      clean=clean,
                      valid_min=s.valid_min, valid_max=s.valid_max,
                      max_rate_per_s=s.max_rate_per_s)
