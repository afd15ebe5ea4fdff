"""Time in one form each: Unix seconds in memory, int64 microseconds stored, RFC 3339 shown.

A leaf: imports nothing of ``appliance``.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import overload

import numpy as np


@overload
def to_us(ts: float) -> int: ...
@overload
def to_us(ts: np.ndarray) -> np.ndarray: ...
def to_us(ts: float | np.ndarray) -> int | np.ndarray:
    """Unix seconds → int64 microseconds, the unit stored (rounded half to even)."""
    us = np.round(np.asarray(ts, dtype=np.float64) * 1e6).astype(np.int64)
    return int(us) if us.ndim == 0 else us


@overload
def from_us(us: int) -> float: ...
@overload
def from_us(us: np.ndarray) -> np.ndarray: ...
def from_us(us: int | np.ndarray) -> float | np.ndarray:
    """Stored microseconds → Unix seconds (float64)."""
    seconds = np.asarray(us, dtype=np.float64) / 1e6
    return float(seconds) if seconds.ndim == 0 else seconds


def rfc3339(ts: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_rfc3339(text: str) -> float:
    """RFC 3339 / ISO 8601 → Unix seconds; a time without a zone is UTC.

    Raises ``ValueError`` for text that is not such a time.
    """
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_time(text: str) -> float:
    """A time typed by a person (``--train-until`` and friends): Unix seconds or RFC 3339."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    try:
        return parse_rfc3339(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time (e.g. 2025-01-31T00:00:00Z, 2025-01-31, "
                         f"or Unix seconds)") from None
