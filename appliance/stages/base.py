"""The one interface every stage implements.

A stage declares its queues through the base constructor: ``inbox`` (None for a
source) and ``out`` (None for a sink).  Call order, by the supervisor, in the
stage's own thread:

    start()            once per (re)start; may block briefly (open a file, connect)
    run(signals)       the work loop; returns after it has passed on an EndOfStream,
                       or when ``signals.abort`` is set.
    close()            once after run returns or raises; must not raise.

A transform stage implements only ``handle(item)``: the base's ``run`` takes from
the input queue, calls ``handle`` for each item and puts what it returns on the
output queue; an EndOfStream it passes on and returns.  ``periodic()`` is called
between items (at least every ``POLL_S`` seconds) for work that must happen while
no input arrives.  A source (no input queue) implements ``run`` itself and also
watches ``signals.drain``: when it is set it stops taking input, passes on what
it holds and an EndOfStream, and returns; the stages below drain their queues and
stop on that marker.  ``run`` may block on a full output queue (that is the
back-pressure) but looks at ``signals.abort`` at least every ``POLL_S`` seconds.

Progress: the loop records the monotonic time (of ``clock``, which the supervisor
sets to its own) each time it has handled an item or found its input empty.  A
stage with input waiting and no progress for a while is reported hung.
``status()`` is the stage's entry in the service status: its counters and
anything of its own, JSON-able; a ``problem`` entry (text) marks it degraded.

If ``run`` raises, the supervisor calls ``close()``, waits (back-off) and calls
``start()`` and ``run()`` again on the same object, so state that must survive a
restart (a batch not yet committed, rolling windows) lives on the object.
A stage never touches another stage: only the messages on its queues.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.clock import Clock, WallClock
from appliance.messages import EndOfStream

POLL_S = 0.2
END_OF_STREAM_WAIT_S = 3.0


@dataclass
class StageCounters:
    """Throughput and errors, reported in the stage's status."""

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


class Stage:
    #: Short name used in logs and status.
    name: str = "stage"
    #: A failed or hung essential stage stops the watchdog (systemd then restarts us).
    essential: bool = True

    def __init__(self, inbox: queue.Queue | None = None, out: queue.Queue | None = None
                 ) -> None:
        self.inbox = inbox
        self.out = out
        self.counters = StageCounters()
        self.clock: Clock = WallClock()
        self.last_progress = self.clock.monotonic()

    def start(self) -> None:
        """Acquire what the loop needs. Default: nothing."""

    def run(self, signals: StopSignals) -> None:
        """The work loop of a transform stage; a source overrides it."""
        while not signals.abort.is_set():
            self.emit(self.periodic(), signals)
            item = self.take()
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                self.emit((item,), signals)
                return
            self.emit(self.handle(item), signals)
            self.progressed()

    def handle(self, item: Any) -> Iterable[Any] | None:
        """One input item; returns the items for the output queue, or None."""
        raise NotImplementedError(f"stage {self.name} neither handles items nor runs")

    def periodic(self) -> Iterable[Any] | None:
        """Work between items, at least every ``POLL_S`` s; items for the output, or None."""
        return None

    def close(self) -> None:
        """Release what ``start`` acquired. Default: nothing."""

    def status(self) -> dict[str, Any]:
        """This stage's entry in the service status (JSON-able)."""
        c = self.counters
        return {"processed": c.processed, "errors": c.errors, **c.extra}

    # -- the shared pieces of a loop ---------------------------------------------------

    def take(self) -> Any:
        """The next input item, or None when none arrived within ``POLL_S`` (the
        caller then looks at its stop signals).  Waiting on an empty queue counts
        as progress: a stage with nothing to do is not stuck."""
        assert self.inbox is not None, f"stage {self.name} has no input queue"
        try:
            return self.inbox.get(timeout=POLL_S)
        except queue.Empty:
            self.progressed()
            return None

    def emit(self, items: Iterable[Any] | None, signals: StopSignals) -> None:
        """Put ``items`` on the output queue (a sink drops them: it has none)."""
        if items is None or self.out is None:
            return
        for item in items:
            put(self.out, item, signals.abort)

    def progressed(self) -> None:
        self.last_progress = self.clock.monotonic()

    def use_clock(self, clock: Clock) -> None:
        """Measure progress (and any waiting of the stage's own) on ``clock``."""
        self.clock = clock
        self.progressed()


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
