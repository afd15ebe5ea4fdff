"""Clocks: the wall clock the service uses and a manual one tests advance."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        ...

    def sleep(self, seconds: float, until: threading.Event | None = None) -> None:
        ...


class WallClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, until: threading.Event | None = None) -> None:
        if until is None:
            time.sleep(seconds)
        else:
            until.wait(seconds)


class ManualClock:
    """A clock that only moves when told; ``sleep`` advances it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def sleep(self, seconds: float, until: threading.Event | None = None) -> None:
        self.advance(seconds)
