"""The alarm rule, once: the service runs it tick by tick, backtests score it in batch.

An alarm is *raised* at the first tick whose probability reaches the threshold
and *cleared* at the first tick below threshold × ``clear_ratio`` (hysteresis:
a probability hovering at the threshold does not flap).  A NaN probability is
no evidence either way: it neither raises nor clears, so an alarm stands until
a real probability says the risk has passed.

``AlarmState`` is the streaming form (the alert stage keeps one per asset, and at a
service start resumes the ones the ``alerts`` table shows raised);
``alarm_active`` the batch form (the event metrics).  They give the same
states for the same sequence: ``tests/unit/test_alarm.py`` holds that.
"""

from __future__ import annotations

import numpy as np

RAISED = "raised"
CLEARED = "cleared"


class AlarmState:
    """The hysteresis of one asset: ``update`` returns ``RAISED`` or ``CLEARED`` on a change.

    ``raised``: the state to go on from (an alarm raised before a restart stands until
    a tick clears it, and is not raised a second time).
    """

    __slots__ = ("clear_ratio", "raised")

    def __init__(self, clear_ratio: float, raised: bool = False) -> None:
        self.clear_ratio = clear_ratio
        self.raised = raised

    def update(self, probability: float, threshold: float) -> str | None:
        if not self.raised and probability >= threshold:
            self.raised = True
            return RAISED
        if self.raised and probability < threshold * self.clear_ratio:
            self.raised = False
            return CLEARED
        return None

    def clear(self) -> str | None:
        """End a raised alarm without a probability (nothing backs it any more):
        ``CLEARED`` when it was raised."""
        if not self.raised:
            return None
        self.raised = False
        return CLEARED


def alarm_active(probability: np.ndarray, usable: np.ndarray, threshold: float,
                 clear_ratio: float) -> np.ndarray:
    """Per tick, whether the alarm is active after that tick.

    ``usable`` is the backtest's mask of scored ticks: a tick left out (inside a
    fault or its cool-down, see ``scoring.labels``) clears the alarm, as if the
    line had been stopped.  The service scores every tick (all usable).

    Cost: two running maxima over the ticks, O(n).
    """
    p = np.asarray(probability, dtype=np.float64)
    ok = np.asarray(usable, dtype=bool)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    idx = np.arange(len(p))
    raise_at = ok & (p >= threshold)  # NaN compares False: neither raises ...
    clear_at = ~ok | (p < threshold * clear_ratio)  # ... nor clears
    last_raise = np.maximum.accumulate(np.where(raise_at, idx, -1))
    last_clear = np.maximum.accumulate(np.where(clear_at, idx, -1))
    return last_raise > last_clear
