"""What the pipeline computes, and the stable hash a model records it by.

Per sensor, in this order:

1. grid: readings are placed on a grid of ``cadence_s`` event-time seconds (the
   mean of the readings in (t - cadence_s, t]; the previous grid value carried
   forward while the last reading is at most ``max_gap_s`` old; else missing);
2. clean (optional, ``PipelineSpec.clean``): a Hampel filter on the grid
   replaces a value more than k scaled MADs from the median of its trailing
   window by that median (``appliance.kernels.filters.hampel``).  On the grid,
   not on raw readings: its cost is then per tick, not per reading (a 10 Hz
   sensor would cost 100× more), and a spike still moves its cell's mean;
3. features: the grid value (``last``); ``missing``, the exponentially
   weighted fraction of ticks without a value (half-life a quarter of the
   longest window); ``stuck``, 1 when the grid did not move over the first
   window (its std is 0); ``dev``, the grid value minus its long EWMA baseline;
   and, over each window, the rolling
   statistics of ``STATS`` — the columns of ``appliance.kernels.rolling.RollingBank``,
   which the live driver runs for all series at once and the batch driver
   reproduces with the batch kernels.  A window sees at most about
   ``WINDOW_SAMPLES`` points: a long window runs on a coarser grid whose cell
   is ``stride`` ticks (the mean of the finite tick values in it), and its
   statistics are those of the last closed coarse cell.  That bounds memory per
   series and window (~3 KB) whatever the window, at the cost of long-window
   statistics moving once per coarse cell.
4. differences: for each configured pair (a, b), grid(a) − grid(b) per tick.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from appliance.config import PipelineConfig
from appliance.kernels.rolling import BANK_COLUMNS

#: Rolling statistics per sensor and window, in feature order.
STATS: tuple[str, ...] = tuple(BANK_COLUMNS)
#: The EWMA column's half-life, as a fraction of its window.
EWMA_HALFLIFE_FRACTION = 0.25
#: The per-sensor features before the window statistics, in order.
SENSOR_FEATURES: tuple[str, ...] = ("last", "missing", "stuck", "dev")
#: About this many grid points per rolling window (see ``PipelineSpec.stride``).
WINDOW_SAMPLES = 60
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
class PipelineSpec:
    cadence_s: float
    horizon_s: float
    max_gap_s: float
    windows_s: tuple[float, ...]
    stats: tuple[str, ...] = STATS
    #: The cleaning step before the grid; None = no cleaning (e.g. variant no_filter).
    clean: CleanSpec | None = None
    baseline_halflife_s: float = 6 * 3600.0
    differences: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> PipelineSpec:
        clean = CleanSpec(cfg.hampel_window_s, cfg.hampel_k) if cfg.clean else None
        return cls(
            cadence_s=cfg.cadence_s,
            horizon_s=cfg.horizon_s,
            max_gap_s=cfg.max_gap_s,
            windows_s=tuple(float(w) for w in cfg.effective_windows()),
            clean=clean,
            baseline_halflife_s=cfg.baseline_halflife_s,
            differences=tuple((a, b) for a, b in cfg.differences),
        )

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the spec, first 16 hex digits.

        ``clean`` enters the JSON only when set, so a spec without cleaning keeps
        the hash it had before the field existed.
        """
        fields = asdict(self)
        if fields["clean"] is None:
            del fields["clean"]
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

    def tick_index(self, ts: float) -> int:
        """Index k of the first grid tick k × cadence_s at or after event time ``ts``.

        Ticks are computed as k × cadence_s from an integer k in batch and live
        alike, so both see bit-identical tick times.
        """
        return int(-(-ts // self.cadence_s))
