"""The one interface every stage implements.

Call order, by the supervisor, in the stage's own thread:

    start()            once per (re)start; may block briefly (open a file, connect)
    run(signals)       the work loop: take from the input queue, put on the output
                       queue; returns after it has passed on an EndOfStream, or
                       when ``signals.abort`` is set.  A source stage (no input
                       queue) also watches ``signals.drain``: when it is set it
                       stops taking input, passes on what it holds and an
                       EndOfStream, and returns; the stages below drain their
                       queues and stop on that marker.  ``run`` may block on a
                       full output queue (that is the back-pressure) but looks
                       at ``signals.abort`` at least every ``POLL_S`` seconds.
    close()            once after run returns or raises; must not raise.

If ``run`` raises, the supervisor calls ``close()``, waits (back-off) and calls
``start()`` and ``run()`` again on the same object, so state that must survive a
restart (a batch not yet committed, rolling windows) lives on the object.
A stage never touches another stage: only the messages on its queues.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from appliance.messages import EndOfStream

POLL_S = 0.2
END_OF_STREAM_WAIT_S = 3.0


@dataclass
class StageCounters:
    """Throughput and errors, read by the supervisor for status."""

    processed: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        self.extra[name] = self.extra.get(name, 0) + n


@dataclass(frozen=True)
class StopSignals:
    #: Sources stop taking input and flush; set first on shutdown.
    drain: threading.Event = field(default_factory=threading.Event)
    #: Everyone stops now, even with items queued; set when draining overran.
    abort: threading.Event = field(default_factory=threading.Event)


class Stage(ABC):
    #: Short name used in logs and status.
    name: str = "stage"
    #: A failed essential stage stops the watchdog (systemd then restarts us).
    essential: bool = True

    def __init__(self) -> None:
        self.counters = StageCounters()

    def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire what the loop needs. Default: nothing."""

    @abstractmethod
    def run(self, signals: StopSignals) -> None:
        """The work loop; see the module docstring for what may block."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` acquired. Default: nothing."""


def take(q: queue.Queue, stop: threading.Event) -> Any:
    """Next item of ``q``; None when ``stop`` was set while waiting."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put with back-pressure: block while ``q`` is full. False if stopped first.

    An EndOfStream is delivered even when stopping, so the stages downstream
    flush what they hold (given up after ``END_OF_STREAM_WAIT_S`` if nobody
    takes it: the stage below has died).
    """
    deadline = None
    if isinstance(item, EndOfStream):
        deadline = time.monotonic() + END_OF_STREAM_WAIT_S
    while not stop.is_set() or (deadline is not None and time.monotonic() < deadline):
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False
