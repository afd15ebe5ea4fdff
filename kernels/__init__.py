"""Numeric kernels: rolling statistics and cleaning filters, batch and streaming.

Every kernel exists twice over one implementation: a batch function (arrays in,
arrays out) and a streaming object (``update(ts, x)``, ``value``) that gives the
same numbers.  See ``rolling.pyx`` and ``filters.pyx`` for the algorithms.
"""

from appliance.kernels.filters import (
    GridAccumulator,
    Hampel,
    Stuck,
    Validity,
    hampel,
    stuck,
    to_grid,
    validity,
)
from appliance.kernels.rolling import (
    BANK_COLUMNS,
    Ewma,
    MoveMax,
    MoveMean,
    MoveMedian,
    MoveMin,
    MoveQuantile,
    MoveSlope,
    MoveStd,
    RollingBank,
    ewma,
    move_max,
    move_mean,
    move_median,
    move_min,
    move_quantile,
    move_slope,
    move_std,
)

__all__ = [
    "BANK_COLUMNS",
    "Ewma",
    "GridAccumulator",
    "Hampel",
    "MoveMax",
    "MoveMean",
    "MoveMedian",
    "MoveMin",
    "MoveQuantile",
    "MoveSlope",
    "MoveStd",
    "RollingBank",
    "Stuck",
    "Validity",
    "ewma",
    "hampel",
    "move_max",
    "move_mean",
    "move_median",
    "move_min",
    "move_quantile",
    "move_slope",
    "move_std",
    "stuck",
    "to_grid",
    "validity",
]
