"""Labels of prediction ticks: one definition for training, backtests and scoring.

A tick t of an asset is *positive* when a fault of that asset starts in
(t, t + horizon].  Ticks during a fault and during a cool-down after it are
*not usable*: the machine is down or restarting, and what the model says then
is neither a hit nor a false alarm.  A fault occupies [start, end + cool-down];
a fault with no known end (still open when the history stops) occupies
everything from its start on.
"""

from __future__ import annotations

import numpy as np


def label_ticks(ticks: np.ndarray, fault_starts: np.ndarray, fault_ends: np.ndarray,
                horizon_s: float, cooldown_s: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Label one asset's ticks; return ``(positive, usable)``, two bool arrays like ``ticks``.

    ``fault_starts`` and ``fault_ends`` are that asset's faults in any order
    (NaN end = still open).  ``cooldown_s`` defaults to ``horizon_s``.
    ``positive`` is computed for every tick; use it where ``usable`` is True.

    >>> pos, ok = label_ticks(np.array([0., 10., 20., 30., 40.]), np.array([25.]),
    ...                       np.array([32.]), horizon_s=10.0, cooldown_s=5.0)
    >>> pos.tolist(), ok.tolist()
    ([False, False, True, False, False], [True, True, True, False, True])
    """
    ticks = np.asarray(ticks, dtype=np.float64)
    starts = np.asarray(fault_starts, dtype=np.float64)
    ends = np.asarray(fault_ends, dtype=np.float64)
    if starts.shape != ends.shape or starts.ndim != 1:
        raise ValueError(f"fault_starts and fault_ends must be 1-d of one length, got "
                         f"shapes {starts.shape} and {ends.shape}")
    if not horizon_s > 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
    cooldown = horizon_s if cooldown_s is None else float(cooldown_s)
    if not cooldown >= 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s!r}")
    if np.isnan(starts).any():
        raise ValueError("a fault start is NaN")
    if np.any(ends < starts):
        bad = int(np.flatnonzero(ends < starts)[0])
        raise ValueError(f"fault {bad} ends ({ends[bad]}) before it starts ({starts[bad]})")
    if len(starts) == 0:
        return np.zeros(len(ticks), dtype=bool), np.ones(len(ticks), dtype=bool)

    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    busy_until = np.where(np.isnan(ends[order]), np.inf, ends[order] + cooldown)

    # Positive: the first fault starting strictly after t starts no later than t + horizon.
    nxt = np.searchsorted(starts, ticks, side="right")
    has_next = nxt < len(starts)
    positive = np.zeros(len(ticks), dtype=bool)
    positive[has_next] = starts[nxt[has_next]] <= ticks[has_next] + horizon_s

    # Not usable: some fault with start <= t is busy until >= t.  Faults may overlap,
    # so compare with the latest "busy until" among all faults started so far.
    prev = nxt - 1
    latest_busy = np.maximum.accumulate(busy_until)
    started = prev >= 0
    busy = np.zeros(len(ticks), dtype=bool)
    busy[started] = latest_busy[prev[started]] >= ticks[started]
    return positive, ~busy
