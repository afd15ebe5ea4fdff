"""What the pipeline computes, and the stable hash a model records it by.

Each sensor's readings are placed on a grid of ``cadence_s`` event-time seconds
(the mean of the readings in (t - cadence_s, t], the previous grid value carried
forward while the last reading is at most ``max_gap_s`` old, otherwise missing).
Over each window the rolling statistics of ``STATS`` are computed on that grid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from appliance.config import PipelineConfig

#: Rolling statistics per sensor and window, in feature order.
STATS: tuple[str, ...] = ("mean", "std", "min", "max", "slope")


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    cadence_s: float
    horizon_s: float
    max_gap_s: float
    windows_s: tuple[float, ...]
    stats: tuple[str, ...] = STATS

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> PipelineSpec:
        return cls(
            cadence_s=cfg.cadence_s,
            horizon_s=cfg.horizon_s,
            max_gap_s=cfg.max_gap_s,
            windows_s=tuple(float(w) for w in cfg.effective_windows()),
        )

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the spec, first 16 hex digits."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def sensor_feature_names(self, sensor: str) -> tuple[str, ...]:
        names = [f"{sensor}__last"]
        for w in self.windows_s:
            names.extend(f"{sensor}__{stat}_{w:g}s" for stat in self.stats)
        return tuple(names)

    def feature_names(self, sensors: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Feature names for a set of sensors, in the canonical (sorted) order."""
        return tuple(n for s in sorted(sensors) for n in self.sensor_feature_names(s))

    def tick_index(self, ts: float) -> int:
        """Index k of the first grid tick k × cadence_s at or after event time ``ts``.

        Ticks are computed as k × cadence_s from an integer k in batch and live
        alike, so both see bit-identical tick times.
        """
        return int(-(-ts // self.cadence_s))
