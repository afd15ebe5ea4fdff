"""Live features: one asset's readings in, one feature row per completed tick out.

The same grid rule and the same kernels as ``batch``, one sample at a time.
"""

from __future__ import annotations

import math

import numpy as np

from appliance.kernels import rolling
from appliance.pipeline.spec import PipelineSpec

_STREAMING = {
    "mean": rolling.MoveMean,
    "std": rolling.MoveStd,
    "min": rolling.MoveMin,
    "max": rolling.MoveMax,
    "slope": rolling.MoveSlope,
}


class SensorState:
    """Grid cell accumulator and rolling kernels of one sensor of one asset."""

    __slots__ = ("_cell_count", "_cell_sum", "_kernels", "_last_grid", "_last_ts", "_max_gap_s")

    def __init__(self, spec: PipelineSpec) -> None:
        self._max_gap_s = spec.max_gap_s
        self._kernels = [_STREAMING[stat](w) for w in spec.windows_s for stat in spec.stats]
        self._cell_sum = 0.0
        self._cell_count = 0
        self._last_grid = math.nan
        self._last_ts = -math.inf

    def add(self, ts: float, value: float) -> None:
        if math.isfinite(value):
            self._cell_sum += value
            self._cell_count += 1
            self._last_ts = ts

    def close(self, tick: float, out: np.ndarray) -> None:
        """Finish the cell ending at ``tick``; write this sensor's features into ``out``."""
        if self._cell_count:
            grid = self._cell_sum / self._cell_count
            self._last_grid = grid
        elif tick - self._last_ts <= self._max_gap_s:
            grid = self._last_grid
        else:
            grid = math.nan
        self._cell_sum = 0.0
        self._cell_count = 0
        out[0] = grid
        for i, kernel in enumerate(self._kernels, start=1):
            out[i] = kernel.update(tick, grid).value


class AssetFeatures:
    """Streaming feature rows of one asset.

    ``push`` readings in event-time order; it returns (tick, names, row) for
    every tick the reading completed.  A sensor joins the row from its first
    reading on (earlier ticks had it missing, as batch does).  A reading in a
    cell already emitted is late: not used, counted in ``late``.
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._states: dict[str, SensorState] = {}
        self._names: tuple[str, ...] = ()
        self._width = len(spec.sensor_feature_names("x"))
        self._next_k: int | None = None
        self.late = 0

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self._states)

    def push(self, sensor: str, ts: float, value: float
             ) -> list[tuple[float, tuple[str, ...], np.ndarray]]:
        rows: list[tuple[float, tuple[str, ...], np.ndarray]] = []
        c = self.spec.cadence_s
        if self._next_k is None:
            self._next_k = self.spec.tick_index(ts)
        elif ts <= (self._next_k - 1) * c:
            self.late += 1
            return rows
        while ts > self._next_k * c:
            tick = self._next_k * c
            rows.append((tick, self._names, self._close(tick)))
            self._next_k += 1
        state = self._states.get(sensor)
        if state is None:
            state = self._add_sensor(sensor)
        state.add(ts, value)
        return rows

    def _add_sensor(self, sensor: str) -> SensorState:
        state = SensorState(self.spec)
        self._states = dict(sorted({**self._states, sensor: state}.items()))
        self._names = self.spec.feature_names(tuple(self._states))
        return state

    def _close(self, tick: float) -> np.ndarray:
        row = np.empty(len(self._names))
        w = self._width
        for i, state in enumerate(self._states.values()):
            state.close(tick, row[i * w:(i + 1) * w])
        return row
