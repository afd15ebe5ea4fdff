import queue
import threading
import time

import pytest

from appliance.clock import ManualClock
from appliance.messages import EndOfStream
from appliance.service.status import snapshot
from appliance.service.supervisor import Supervisor
from appliance.stages.base import Stage, StopSignals, put


class Counter(Stage):
    """Passes items on; raises on the items listed in ``fail_on``."""

    def __init__(self, name: str, inbox: queue.Queue, out: queue.Queue | None,
                 fail_on: set[int] = frozenset()) -> None:
        super().__init__(inbox, out)
        self.name = name
        self.fail_on = set(fail_on)
        self.starts = 0

    def start(self) -> None:
        self.starts += 1

    def handle(self, item: object) -> tuple[object, ...]:
        if isinstance(item, int) and item in self.fail_on:
            self.fail_on.discard(item)
            raise RuntimeError(f"injected on {item}")
        self.counters.processed += 1
        return (item,)


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
    assert sup.essential_working()
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
    assert not sup.essential_working()
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
    assert sup.essential_working()
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


class Gate(Stage):
    """A transform stage whose ``handle`` waits until ``release`` is set: a stuck call."""

    name = "gate"

    def __init__(self, inbox: queue.Queue, out: queue.Queue, essential: bool = True) -> None:
        super().__init__(inbox, out)
        self.essential = essential
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle(self, item: object) -> tuple[object, ...]:
        self.entered.set()
        self.release.wait(10)
        self.counters.processed += 1
        return (item,)


def snap(sup: Supervisor, **queues: queue.Queue) -> dict:
    return snapshot(sup, queues, database="test.duckdb", damaged_wal="")


def test_a_stage_stuck_with_input_waiting_is_hung_after_hung_after_s_of_the_clock():
    clock = ManualClock()
    inbox, out = queue.Queue(10), queue.Queue(10)
    gate = Gate(inbox, out)
    sup = Supervisor([gate], clock, hung_after_s=60)
    sup.start()
    try:
        assert wait_until(lambda: sup.health["gate"].state == "running")
        clock.advance(600)  # idle: an empty input is not being stuck
        assert wait_until(lambda: gate.last_progress == clock.monotonic())
        assert sup.state(gate) == "running"
        inbox.put(1)
        assert gate.entered.wait(5)
        inbox.put(2)  # input waiting while handle(1) does not return
        clock.advance(59)
        assert sup.state(gate) == "running" and sup.essential_working()
        assert snap(sup, gate=inbox)["state"] == "running"
        clock.advance(1)
        assert sup.state(gate) == "hung"
        assert not sup.essential_working()  # the watchdog starves
        s = snap(sup, gate=inbox)
        assert s["state"] == "degraded" and s["problems"] == ["gate hung"]
        assert s["stages"]["gate"]["state"] == "hung"
        gate.release.set()
        assert wait_until(lambda: out.qsize() == 2 and sup.state(gate) == "running")
        assert sup.essential_working() and snap(sup, gate=inbox)["state"] == "running"
    finally:
        gate.release.set()
        sup.signals.abort.set()
        assert sup.join(2)


def test_a_stage_held_up_by_a_full_output_is_not_hung():
    clock = ManualClock()
    inbox, out = queue.Queue(10), queue.Queue(1)
    gate = Gate(inbox, out)
    gate.release.set()
    sup = Supervisor([gate], clock, hung_after_s=60)
    out.put("nobody takes this")
    for i in range(3):
        inbox.put(i)
    sup.start()
    try:
        assert wait_until(lambda: gate.counters.processed == 1)  # blocked putting it on
        clock.advance(3600)
        assert not inbox.empty() and sup.state(gate) == "running"
    finally:
        sup.signals.abort.set()
        assert sup.join(2)


class Source(Stage):
    """A source whose loop moves until ``stall`` is set, then waits for ``release``;
    with ``stall_in_start`` its ``start`` does not return until released."""

    name = "source"

    def __init__(self, out: queue.Queue, stall_in_start: bool = False) -> None:
        super().__init__(None, out)
        self.stall_in_start = stall_in_start
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def start(self) -> None:
        if self.stall_in_start:
            self.stalled.set()
            self.release.wait(10)

    def run(self, signals: StopSignals) -> None:
        while not signals.abort.is_set():
            if self.stall.is_set():
                self.stalled.set()
                self.release.wait(10)
                self.stall.clear()
            self.progressed()
            time.sleep(0.01)


@pytest.mark.parametrize("stall_in_start", [False, True], ids=["in its loop", "in start"])
def test_a_stage_that_stops_moving_is_hung_source_or_start(stall_in_start):
    clock = ManualClock()
    source = Source(queue.Queue(10), stall_in_start)
    sup = Supervisor([source], clock, hung_after_s=60)
    sup.start()
    try:
        if not stall_in_start:
            assert wait_until(lambda: sup.health["source"].state == "running")
            clock.advance(600)  # a loop that moves is never hung, however long
            assert wait_until(lambda: source.last_progress == clock.monotonic())
            assert sup.state(source) == "running"
            source.stall.set()
        assert source.stalled.wait(5)
        clock.advance(59)
        assert sup.state(source) in ("starting", "running") and sup.essential_working()
        clock.advance(1)
        assert sup.state(source) == "hung" and not sup.essential_working()
        source.release.set()
        assert wait_until(lambda: sup.state(source) == "running")
    finally:
        source.release.set()
        sup.signals.abort.set()
        assert sup.join(2)


def test_a_failed_stage_makes_the_service_degraded_even_when_not_essential():
    q1, q2 = queue.Queue(10), queue.Queue(10)
    a = Counter("a", q1, None, fail_on={0})
    a.essential = False
    b = Counter("b", q2, None)
    sup = Supervisor([a, b], backoff_min_s=0.01, max_restarts=0)
    sup.start()
    q1.put(0)
    assert wait_until(lambda: sup.health["a"].state == "failed")
    assert sup.essential_working()  # the watchdog is fed: storing goes on
    s = snap(sup, a=q1, b=q2)
    assert s["state"] == "degraded" and s["problems"] == [
        f"a failed: {sup.health['a'].last_error}"]
    assert sup.health["a"].last_error  # the reason, in the status where operators look
    assert s["stages"]["b"]["state"] == "running"
    sup.signals.abort.set()
    assert sup.join(2)


def test_a_problem_a_stage_reports_makes_the_service_degraded():
    class Troubled(Counter):
        def status(self) -> dict:
            return {**super().status(), "problem": "the disk is full"}

    q = queue.Queue(10)
    sup = Supervisor([Troubled("t", q, None)])
    s = snap(sup, t=q)
    assert s["state"] == "degraded" and s["problems"] == ["t: the disk is full"]
    assert s["stages"]["t"]["problem"] == "the disk is full"


def test_a_start_that_never_returns_after_a_restart_is_hung():
    class FailsThenStallsInStart(Source):
        def run(self, signals: StopSignals) -> None:
            self.stall_in_start = True  # the restart's start will not return
            raise RuntimeError("injected")

    clock = ManualClock()
    source = FailsThenStallsInStart(queue.Queue(10))
    sup = Supervisor([source], clock, backoff_min_s=0.01, hung_after_s=60)
    sup.start()
    try:
        assert source.stalled.wait(5)
        assert sup.health["source"].state == "starting"
        clock.advance(60)
        assert sup.state(source) == "hung" and not sup.essential_working()
    finally:
        source.release.set()
        sup.signals.abort.set()
        assert sup.join(2)


class Refusing(Counter):
    """Raises a ModelError (a model refused by its checks) on the items in ``fail_on``."""

    def handle(self, item: object) -> tuple[object, ...]:
        from appliance.models.contract import ModelError

        if isinstance(item, int) and item in self.fail_on:
            self.fail_on.discard(item)
            raise ModelError(f"m.onnx: refused on {item}")
        return super().handle(item)


def test_a_model_refusal_is_logged_in_one_line_without_its_traceback(caplog):
    q1, q2 = queue.Queue(10), queue.Queue(1000)
    a = Refusing("a", q1, q2, fail_on={1})
    sup = Supervisor([a], backoff_min_s=0.01)
    with caplog.at_level("ERROR", logger="appliance.service.supervisor"):
        sup.start()
        for i in range(3):
            q1.put(i)
        assert wait_until(lambda: q2.qsize() == 2)
        q1.put(EndOfStream())
        assert sup.join(2)
    raised = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert raised == ["stage a raised ModelError: m.onnx: refused on 1"]
