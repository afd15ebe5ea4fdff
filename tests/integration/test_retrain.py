"""The retraining loop in a running service: a real broker, real DuckDB files, a real
training child (``python -m appliance.training.child``) on a Parquet snapshot.

A simulated history (5 assets × 7 days of 1-minute readings, with faults) is
imported and a champion trained and promoted with the CLI; the service then runs
in-process while a publisher sends readings that continue the history, so the
loop's event time follows on from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import duckdb
import pytest

from appliance import config
from appliance.models.registry import Registry
from appliance.service import runner
from tests.support.faults import fault_config, query, tally, wait_drained, wait_until
from tests.support.retrain import END, SECTIONS, copy_into, prepare, run_cli
from tests.support.service import subscriber

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The imported database and its registry with a promoted champion (copied per test)."""
    return prepare(tmp_path_factory.mktemp("retrain"))


def _service(tmp_path, history, broker, **retrain) -> tuple[runner.Service, config.Config]:
    db = copy_into(history, tmp_path)
    path = fault_config(
        tmp_path, broker, db=db, **SECTIONS,
        # by hand only, checked often; a holdout of the last day and a half
        retrain={"every_days": 0.0, "min_new_faults": 0, "drift_persist_s": 0.0,
                 "score_drop": 0.0, "check_every_s": 1.0, "holdout_days": 1.5,
                 "min_gap_s": 0.0, **retrain})
    cfg = config.load(path)
    return runner.Service(cfg), cfg


def _history(db) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        from appliance.storage.query import model_history

        return model_history(con)
    finally:
        con.close()


def _retrain(cfg_path: str) -> tuple[int, str]:
    return run_cli(["retrain", "--config", cfg_path, "--reason", "test", "--wait", "60"])


def test_a_retrain_by_hand_trains_in_a_child_while_readings_flow(
        tmp_path, history, broker, publishers):
    service, cfg = _service(tmp_path, history, broker)
    retained, received = subscriber(broker, "appliance/+/model")
    service.start()
    retrain = service.pipeline.stages["retrain"]
    # readings that continue the history (their event time is the loop's clock)
    pub = publishers(broker, 60_000, rate=2000.0, assets=5, step_s=60.0, t0=END).start()
    try:
        wait_until(lambda: service.pipeline.stages["store"].counters.processed > 1000, 30,
                   "readings stored")
        code, text = _retrain(cfg.source)
        assert code == 0, text
        assert "training started" in text
        wait_until(lambda: retrain.counters.extra.get("trainings_started") == 1, 10,
                   "a training started")
        stored_at_start = service.pipeline.stages["store"].counters.processed
        wait_until(lambda: retrain._child is None, 300, "the training child finished")
        stored_meanwhile = service.pipeline.stages["store"].counters.processed - stored_at_start
        acked = pub.wait_acked(120)
        # every acknowledged reading stored (the broker may still be handing over the
        # last of them after a quiet spell under a loaded CI machine)
        store = service.pipeline.stages["store"].counters
        wait_until(lambda: store.processed >= acked, 60,
                   f"all {acked} acknowledged readings stored")
        wait_drained(service.pipeline.status, timeout_s=60)
        wait_until(lambda: any(m.get("event") in ("shadow", "rejected") for m in received), 30,
                   "the outcome published on <line>/model")
    finally:
        clean = service.stop()
        retained.disconnect()
        retained.loop_stop()
    db = tmp_path / "appliance.duckdb"
    steps = _history(db)
    kinds = [s["event"] for s in steps]
    print(f"retrain_by_hand: steps {kinds}; stored while training {stored_meanwhile}; "
          f"detail {steps[-1]['detail'] if steps else None}")
    assert clean
    assert kinds[:2] == ["trigger", "training_started"] and kinds[2] in ("shadow", "rejected")
    outcome = steps[2]
    d = outcome["detail"]
    # both models scored on the same holdout, with the run's cost
    assert d["candidate"]["faults"] == d["champion"]["faults"] and d["peak_rss_mb"] > 50
    assert d["window"]["cut"] < d["window"]["holdout_to"]
    assert stored_meanwhile > 0, "ingest stood still while the child trained"
    runs = query(db, "SELECT status, model FROM training_runs ORDER BY started_at")
    assert runs[-1][0] == ("challenger" if kinds[2] == "shadow" else "rejected")
    registry = Registry(tmp_path / "models")
    assert (runs[-1][1] in registry.challenger_names()) == (kinds[2] == "shadow")
    t = tally(db, pub.acked)
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0), f"lost ids {t.lost_ids[:10]}"
    # the same story from the CLI
    code, text = run_cli(["models", "history", "--config", cfg.source])
    assert code == 0 and "training_started" in text and kinds[2] in text
    assert not list((tmp_path / "models" / "retrain").glob("*")), "job folder left behind"


def test_a_child_over_its_memory_cap_is_killed_and_recorded(tmp_path, history, broker):
    service, cfg = _service(tmp_path, history, broker, max_memory_mb=64.0)
    service.start()
    retrain = service.pipeline.stages["retrain"]
    try:
        code, text = _retrain(cfg.source)
        assert code == 0, text
        wait_until(lambda: retrain.counters.extra.get("trainings_failed") == 1, 120,
                   "the training recorded as failed")
        snap = service.pipeline.status()
    finally:
        service.stop()
    steps = _history(tmp_path / "appliance.duckdb")
    assert steps[-1]["event"] == "training_failed"
    assert "memory cap" in steps[-1]["reason"] and steps[-1]["detail"]["peak_rss_mb"] > 64
    assert all(s["state"] == "running" for s in snap["stages"].values()), snap["stages"]


def test_a_crashed_child_is_recorded_and_the_next_request_trains_again(
        tmp_path, history, broker):
    service, cfg = _service(tmp_path, history, broker)
    service.start()
    retrain = service.pipeline.stages["retrain"]
    try:
        assert _retrain(cfg.source)[0] == 0
        wait_until(lambda: retrain._child is not None, 10, "a child")
        os.kill(retrain._child.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        wait_until(lambda: retrain.counters.extra.get("trainings_failed") == 1, 60,
                   "the crash recorded")
        code, text = _retrain(cfg.source)
    finally:
        service.stop()
    steps = _history(tmp_path / "appliance.duckdb")
    failed = [s for s in steps if s["event"] == "training_failed"]
    assert len(failed) == 1 and "exited with code -9" in failed[0]["reason"]
    assert code == 0, text  # a crashed child does not block the next training
    assert query(tmp_path / "appliance.duckdb",
                 "SELECT count(*) FROM training_runs WHERE status = 'failed'")[0][0] == 1


def test_train_beside_a_running_service_asks_it_for_a_snapshot(tmp_path, history, broker):
    service, cfg = _service(tmp_path, history, broker)
    service.start()
    try:  # another process, as a user's shell is (DuckDB's lock is per process)
        done = subprocess.run([sys.executable, "-m", "appliance", "train", "--config",
                               cfg.source, "--family", "logistic"],
                              capture_output=True, text=True, timeout=600)
    finally:
        service.stop()
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "asking it for a snapshot" in text
    assert "recommended" in text or "no model is recommended" in text
    rows = query(tmp_path / "appliance.duckdb",
                 "SELECT status, json_extract_string(detail, '$.database') FROM training_runs")
    assert any(status == "candidate" and "(snapshot)" in source for status, source in rows)
    assert not list((tmp_path / "models" / "requests").glob("*.json"))
    assert not (tmp_path / "models" / "snapshots").exists() or \
        not list((tmp_path / "models" / "snapshots").iterdir())
