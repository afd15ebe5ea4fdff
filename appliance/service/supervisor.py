"""Runs each stage in its own thread and restarts one that raises.

Restarts back off exponentially (0.5 s doubling to 30 s) and are budgeted: a
stage that fails more than ``max_restarts`` times within ``window_s`` is marked
failed and left down while the others run on.  A stage that makes no progress
for ``hung_after_s`` (on the supervisor's clock, which it gives every stage) while
its ``start`` runs, or while it runs with input waiting and room on its output,
is reported hung (see ``state``).  Health is read
by the status snapshot and the systemd watchdog.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field

from appliance.clock import Clock, WallClock
from appliance.messages import EndOfStream
from appliance.models.contract import ModelError
from appliance.stages.base import Stage, StopSignals

log = logging.getLogger(__name__)


@dataclass
class StageHealth:
    state: str = "starting"  # starting | running | restarting | failed | stopped
    restarts: int = 0
    last_error: str = ""
    restart_times: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, stages: list[Stage], clock: Clock | None = None, *,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_restarts: int = 5, window_s: float = 300.0,
                 hung_after_s: float = 60.0) -> None:
        self.stages = stages
        self.clock = clock or WallClock()
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.hung_after_s = hung_after_s
        for stage in stages:
            stage.use_clock(self.clock)
        self.health = {s.name: StageHealth() for s in stages}
        self.signals = StopSignals()
        self._threads: dict[str, threading.Thread] = {}

    def start(self) -> None:
        """Start every stage thread, in the order given (sinks first)."""
        for stage in self.stages:
            t = threading.Thread(target=self._supervise, args=(stage,), name=stage.name,
                                 daemon=True)
            self._threads[stage.name] = t
            t.start()

    def _supervise(self, stage: Stage) -> None:
        health = self.health[stage.name]
        backoff = self.backoff_min_s
        while True:
            try:
                health.state = "starting"  # a start that never returns is hung (``state``)
                stage.progressed()  # the time it was down is not time without progress
                stage.start()
                stage.progressed()
                health.state = "running"
                stage.run(self.signals)
                health.state = "stopped"
                return
            except Exception as exc:  # a stage failure must never take the others down
                stage.counters.errors += 1
                health.last_error = f"{type(exc).__name__}: {exc}"[:500]
                # a model refused by its checks is a fact about the file, which the message
                # names; its traceback would only bury that line
                log.error("stage %s raised %s%s", stage.name, health.last_error,
                          "" if isinstance(exc, ModelError) else "\n" + traceback.format_exc())
            finally:
                _close(stage)
            now = self.clock.monotonic()
            health.restart_times = [t for t in health.restart_times if now - t < self.window_s]
            if not health.restart_times:
                backoff = self.backoff_min_s  # a quiet window forgives earlier failures
            if len(health.restart_times) >= self.max_restarts:
                health.state = "failed"
                log.error("stage %s failed %d times within %.0f s; leaving it down",
                          stage.name, len(health.restart_times) + 1, self.window_s)
                if not stage.essential:
                    self._discard_input(stage)
                return
            if self.signals.drain.is_set():
                health.state = "stopped"
                return
            health.state = "restarting"
            log.warning("restarting stage %s in %.1f s", stage.name, backoff)
            self.clock.sleep(backoff, self.signals.drain)
            backoff = min(backoff * 2, self.backoff_max_s)
            health.restart_times.append(self.clock.monotonic())
            health.restarts += 1

    def _discard_input(self, stage: Stage) -> None:
        """Take and drop what a failed non-essential stage would have taken, so its
        full input queue does not stall the stages above it (and the store) by
        back-pressure; pass an EndOfStream on so the stages below it still stop."""
        if stage.inbox is None:
            return
        while not self.signals.abort.is_set():
            item = stage.take()
            if isinstance(item, EndOfStream):
                stage.emit((item,), self.signals)
                return
            if item is not None:
                stage.counters.bump("discarded")

    def state(self, stage: Stage) -> str:
        """The stage's health state, or "hung" when it does not move for ``hung_after_s``:
        its ``start`` has not returned, or it runs with input waiting (a source's
        input, the network, always waits) and room on its output (else the stage
        below holds it up, and that one's own state says so)."""
        state = self.health[stage.name].state
        if self.clock.monotonic() - stage.last_progress < self.hung_after_s:
            return state
        if state == "starting":
            return "hung"
        waiting = stage.inbox is None or not stage.inbox.empty()
        held_up = stage.out is not None and stage.out.full()
        return "hung" if state == "running" and waiting and not held_up else state

    def essential_working(self) -> bool:
        """True while no essential stage has failed or hung (what feeds the watchdog)."""
        return all(self.state(s) in ("starting", "running", "restarting")
                   for s in self.stages if s.essential)

    def join(self, timeout_s: float) -> bool:
        """Wait for every stage thread; True if all ended within ``timeout_s``."""
        deadline = self.clock.monotonic() + timeout_s
        for t in self._threads.values():
            t.join(max(0.0, deadline - self.clock.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())

    def stop(self, timeout_s: float = 4.5, grace_s: float = 1.0) -> bool:
        """Drain, then abort.  True when every essential stage drained in time.

        Sources stop taking input and everything queued flows down to the
        sinks.  The essential stages (what stores readings) get ``timeout_s``;
        the others get ``grace_s`` more, since a stage that is down cannot pass
        the end-of-stream marker on to those below it.
        """
        self.signals.drain.set()
        deadline = self.clock.monotonic() + timeout_s
        essential = [self._threads[s.name] for s in self.stages if s.essential]
        for t in essential:
            t.join(max(0.0, deadline - self.clock.monotonic()))
        clean = not any(t.is_alive() for t in essential)
        self.join(min(grace_s, max(0.0, deadline - self.clock.monotonic())))
        alive = [n for n, t in self._threads.items() if t.is_alive()]
        if alive:
            log.warning("stages %s did not drain in time; aborting them", alive)
        self.signals.abort.set()
        self.join(0.5)
        return clean


def _close(stage: Stage) -> None:
    try:
        stage.close()
    except Exception:
        log.exception("stage %s raised while closing", stage.name)
