import queue
import threading
import time

import pytest

from appliance.clock import ManualClock
from appliance.messages import EndOfStream
from appliance.service.supervisor import Supervisor
from appliance.stages.base import Stage, StopSignals, put, take


class Counter(Stage):
    """Passes items on; raises on the items listed in ``fail_on``."""

    def __init__(self, name: str, inbox: queue.Queue, out: queue.Queue | None,
                 fail_on: set[int] = frozenset()) -> None:
        super().__init__()
        self.name = name
        self.inbox, self.out = inbox, out
        self.fail_on = set(fail_on)
        self.starts = 0

    def start(self) -> None:
        self.starts += 1

    def run(self, signals: StopSignals) -> None:
        while True:
            item = take(self.inbox, signals.abort)
            if item is None:
                return
            if isinstance(item, int) and item in self.fail_on:
                self.fail_on.discard(item)
                raise RuntimeError(f"injected on {item}")
            self.counters.processed += 0 if isinstance(item, EndOfStream) else 1
            if self.out is not None:
                put(self.out, item, signals.abort)
            if isinstance(item, EndOfStream):
                return


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_a_stage_that_raises_is_restarted_and_the_others_flow():
    q1, q2, q3 = queue.Queue(10), queue.Queue(10), queue.Queue(1000)
    a = Counter("a", q1, q2, fail_on={3})
    b = Counter("b", q2, q3)
    sup = Supervisor([b, a], backoff_min_s=0.01)
    sup.start()
    for i in range(10):
        q1.put(i)
    assert wait_until(lambda: q3.qsize() == 9)
    assert a.starts == 2 and sup.health["a"].restarts == 1
    assert "injected on 3" in sup.health["a"].last_error
    assert sup.health["b"].restarts == 0
    assert sup.essential_alive()
    q1.put(EndOfStream())
    assert sup.join(2)


def test_a_stage_failing_past_its_budget_is_left_failed():
    q1, q2 = queue.Queue(10), queue.Queue(10)
    a = Counter("a", q1, None, fail_on={0, 1, 2})
    other = Counter("other", q2, None)
    sup = Supervisor([a, other], backoff_min_s=0.01, max_restarts=2, window_s=60)
    sup.start()
    for i in range(3):
        q1.put(i)
    assert wait_until(lambda: sup.health["a"].state == "failed")
    assert not sup.essential_alive()
    q2.put(7)
    assert wait_until(lambda: other.counters.processed == 1)
    assert sup.health["other"].state == "running"
    sup.signals.abort.set()
    assert sup.join(2)


def test_failures_further_apart_than_the_window_never_exhaust_the_budget():
    # the window is measured on the supervisor's clock: a ManualClock moved past it
    # between failures stands for a stage that fails once every few minutes
    clock = ManualClock()
    q1 = queue.Queue(10)
    a = Counter("a", q1, None, fail_on={0, 1, 2})
    sup = Supervisor([a], clock, backoff_min_s=0.01, max_restarts=2, window_s=60)
    sup.start()
    for i in range(3):
        q1.put(i)
        assert wait_until(lambda i=i: sup.health["a"].restarts == i + 1
                          and sup.health["a"].state == "running")
        clock.advance(61)
    # only the last restart is still inside the window: 2 × 61 s moved, 3 back-offs slept
    assert sup.health["a"].restart_times == [pytest.approx(2 * 61 + 3 * 0.01)]
    assert sup.essential_alive()
    sup.signals.abort.set()
    assert sup.join(2)


def test_drain_delivers_end_of_stream_and_everything_queued():
    q1, q2 = queue.Queue(100), queue.Queue(100)
    a = Counter("a", q1, q2)
    sup = Supervisor([a])
    for i in range(50):
        q1.put(i)
    q1.put(EndOfStream())
    sup.start()
    assert sup.stop(timeout_s=3)
    items = [q2.get_nowait() for _ in range(q2.qsize())]
    assert items[:-1] == list(range(50)) and isinstance(items[-1], EndOfStream)


def test_put_gives_up_when_aborted():
    q = queue.Queue(1)
    q.put(0)
    abort = threading.Event()
    abort.set()
    assert put(q, 1, abort) is False
