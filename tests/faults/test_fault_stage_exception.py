"""Fault 5: an exception injected into each stage in turn, in-process.

The service is built in the test (``appliance.service.runner.Service``) so a public
method of one stage object (``handle`` for the transform stages) can be wrapped to
raise once.  The supervisor must restart that
stage (with back-off) while the others keep flowing, and the restarted stage
must flow again; in the end every reading is stored exactly once.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from appliance import config as config_mod
from appliance.service import runner
from tests.support.faults import fault_config, summary, tally, wait_drained, wait_until

QUEUE = 8  # [queues] size of the keeps-failing test


class InjectedFault(RuntimeError):
    pass


def raise_once(monkeypatch, obj: object, attr: str) -> threading.Event:
    """Wrap ``obj.attr`` so that its next call raises InjectedFault; set when it did."""
    original = getattr(obj, attr)
    fired = threading.Event()

    def wrapper(*args, **kwargs):
        if not fired.is_set():
            fired.set()
            raise InjectedFault(f"injected into {type(obj).__name__}.{attr}")
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, attr, wrapper)
    return fired


def _target(name: str) -> str:
    """What to break in each stage: the public method its loop calls for every batch
    or poll."""
    return {
        "ingest": "hand_on",  # the loop handing batches on
        "store": "commit",    # the commit (a non-DuckDB error), the batch held meanwhile
        "scores": "check",    # its poll for new faults (and the rescore they call for)
        "retrain": "check",   # its look at the triggers and reviews
        "maintenance": "tick",  # its look at what is due: a checkpoint, a retention pass
    }.get(name, "handle")     # a transform stage's work on one item


def _witness(p: runner.Pipeline, name: str) -> tuple[str, int]:
    """A counter of another stage that must keep moving while ``name`` is down."""
    if name == "store":
        return "ingest", p.stages["ingest"].counters.processed
    return "store", p.stages["store"].counters.processed


def _build(tmp_path, broker, **sections) -> tuple[runner.Service, object]:
    db = tmp_path / "appliance.duckdb"
    # predictions from the first tick: these tests are about stages, not the warm-up
    sections.setdefault("pipeline", {"warmup_s": 0})
    sections.setdefault("model", {"scores_every_s": 1})  # the scores stage polls often
    sections.setdefault("retrain", {"check_every_s": 1})  # so does the retrain stage
    cfg = config_mod.load(fault_config(tmp_path, broker, db=db, **sections))
    return runner.Service(cfg), db


def _start(service: runner.Service) -> None:
    """Start, and wait until ingest has subscribed: a new session gets nothing before."""
    service.start()
    wait_until(lambda: service.pipeline.status()["mqtt_connected"], 30, "MQTT connection")
    time.sleep(0.5)  # the SUBSCRIBE is on its way when ``connected`` is set


def test_an_exception_in_each_stage_restarts_it_while_the_others_flow(
        tmp_path, broker, publishers, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    rng = np.random.default_rng(5)
    service, db = _build(tmp_path, broker)
    p = service.pipeline
    _start(service)
    pub = publishers(broker, 200_000, rate=1000.0, assets=4, step_s=1.0).start()
    order = list(p.stages)
    rng.shuffle(order)
    figures = {}
    try:
        wait_until(lambda: p.stages["record"].counters.processed > 0, 30, "predictions recorded")
        for name in order:
            stage, health = p.stages[name], p.supervisor.health[name]
            fired = raise_once(monkeypatch, stage, _target(name))
            wait_until(fired.is_set, 10, f"the fault in {name}")
            t_fault = time.monotonic()
            # counted before the restart: the scores stage's first rescore after it can
            # finish before the test sees "running", and the next one needs a new fault
            n0 = stage.counters.processed
            witness, w0 = _witness(p, name)
            wait_until(lambda h=health: h.restarts == 1 and h.state == "running", 10,
                       f"{name} restarted")
            restart_s = time.monotonic() - t_fault
            _, w1 = _witness(p, name)
            wait_until(lambda s=stage, n=n0: s.counters.processed > n, 10, f"{name} flowing")
            flow_s = time.monotonic() - t_fault
            others = {n: (h.state, h.restarts) for n, h in p.supervisor.health.items()
                      if n != name}
            figures[name] = (round(restart_s, 2), round(flow_s, 2), witness, w1 - w0, pub.sent)
            assert all(state == "running" for state, _ in others.values()), others
            if name != "ingest":  # with the source down nothing new enters the pipeline
                assert w1 > w0, f"{witness} stood still while {name} was down"
        pub.stop_publishing()
        pub.wait_acked(30)
        wait_drained(p.status, timeout_s=30)
    finally:
        clean = service.stop()
    health = {n: (h.state, h.restarts, p.stages[n].counters.errors)
              for n, h in p.supervisor.health.items()}
    t = tally(db, pub.acked)
    raised = [r for r in caplog.records if "InjectedFault" in r.getMessage()]
    print(f"stage_exception: order {order}; per stage (restarted after s, flowing again "
          f"after s, witness, witness moved while down, published so far): {figures}; "
          f"health at stop {health}; "
          f"rows {t.rows}, distinct {t.distinct}, lost {t.lost} {t.lost_ids[:20].tolist()}")
    summary("stage_exception", t.published, t.distinct, t.duplicated, t.lost,
            max(f[1] for f in figures.values()))
    assert clean
    assert len(raised) == len(order)  # one "stage X raised InjectedFault" line each
    assert all(restarts == 1 and errors == 1 for _, restarts, errors in health.values()), health
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0)
    assert t.rows == t.published > 0


def test_a_stage_that_keeps_failing_is_reported_failed_and_readings_keep_being_stored(
        tmp_path, broker, publishers, monkeypatch):
    service, db = _build(tmp_path, broker, queues={"size": QUEUE})  # small: fills fast
    p = service.pipeline
    p.supervisor.backoff_min_s = 0.05  # reach the restart budget in ~2 s, not ~16 s
    predict = p.stages["predict"]

    def broken(rows):
        raise InjectedFault("the model call fails every time")

    _start(service)
    pub = publishers(broker, 200_000, rate=1000.0, assets=4, step_s=1.0).start()
    try:
        wait_until(lambda: predict.counters.processed > 0, 30, "predictions")
        monkeypatch.setattr(predict, "handle", broken)
        failed_s = wait_until(lambda: p.supervisor.health["predict"].state == "failed", 30,
                              "predict reported failed")
        # Nobody takes from predict's input now: left alone it fills in ~2 s, then features
        # blocks, its input fills, and back-pressure would reach the store.
        time.sleep(4.0)
        stored0, acked0 = (p.stages["store"].counters.processed,
                           p.stages["ingest"].counters.extra.get("acked", 0))
        time.sleep(3.0)
        snap = p.status()
        stored = p.stages["store"].counters.processed - stored0
        acked = p.stages["ingest"].counters.extra.get("acked", 0) - acked0
        pub.stop_publishing()
        pub.wait_acked(30)
        caught_up = True
        try:  # everything received acknowledged, i.e. stored (predict's queue stays full)
            wait_until(lambda: p.stages["ingest"].counters.extra.get("acked", 0)
                       == p.stages["ingest"].counters.processed == pub.acked, 15,
                       "everything published stored and acknowledged")
        except AssertionError:
            caught_up = False
    finally:
        drained = service.stop()
    # the end of the stream was handed on past the failed stage: the stages after it
    # stopped as asked (a drain, not an abort) instead of waiting for input that could
    # never come
    after = {n: p.supervisor.health[n].state for n in ("alert", "record")}
    t = tally(db, pub.acked)
    print(f"stage_keeps_failing: predict failed after {failed_s:.1f} s; in 3 s from 4 s after "
          f"that, {stored} readings stored and {acked} "
          f"acknowledged (published at 1000/s); queues {snap['queues']}; caught up "
          f"{caught_up}; rows {t.rows} of {t.published}")
    summary("stage_keeps_failing", t.published, t.distinct, t.duplicated, t.lost, failed_s)
    assert snap["stages"]["predict"]["state"] == "failed"
    assert snap["state"] == "degraded", snap
    assert any(p.startswith("predict failed: ") for p in snap["problems"]), snap
    assert all(s["state"] == "running" for n, s in snap["stages"].items() if n != "predict")
    assert stored >= 1000, "a failed non-essential stage stalled storage by back-pressure"
    assert acked >= 1000
    assert caught_up
    assert drained and after == {"alert": "stopped", "record": "stopped"}, after
    assert (t.lost, t.duplicated) == (0, 0)
