"""``appliance sql`` and ``appliance export`` while the service runs: its control socket,
with a real mosquitto feeding it and its own DuckDB file (which only it may open).

The service runs in this process (``runner.Service``); the commands run as other
processes, as a person's shell does, so an answer can only have come over the socket.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import duckdb
import pytest

from appliance import config
from appliance.devtools.mosquitto import PrivateBroker
from appliance.service import control, runner
from appliance.storage.snapshot import write_snapshot
from tests.support.faults import ReadingPublisher, fault_config, wait_until
from tests.support.sql import REFUSED

#: A module-scoped broker (one service for every test here), so marked by hand.
pytestmark = pytest.mark.broker

READINGS = 2_000


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A service fed ``READINGS`` readings over MQTT; a stale socket was in its way."""
    tmp = tmp_path_factory.mktemp("control")
    with PrivateBroker() as broker:
        path = fault_config(tmp, broker, model={"required": False})
        cfg = config.load(path)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(cfg.socket_path()))  # what a killed service leaves behind
        stale.close()
        (cfg.socket_path().parent / "out").symlink_to("/etc")  # see REFUSED "symlink_out"
        service = runner.Service(cfg)
        service.start()
        _wait_subscribed(service)
        pub = ReadingPublisher(broker, READINGS, assets=4).start()
        try:
            pub.wait_acked(120)
            wait_until(lambda: service.pipeline.stages["store"].counters.processed >= READINGS,
                       60, "every reading stored")
            yield service, cfg
        finally:
            pub.close()
            service.stop()
    assert not cfg.socket_path().exists(), "the socket outlives the service"


def _wait_subscribed(service: runner.Service) -> None:
    """A new session: what is published before the service subscribes is not for it."""
    wait_until(lambda: service.pipeline.status()["mqtt_connected"], 30, "the MQTT connection")


def _ask(cfg: config.Config, text: str, **kw: object) -> dict:
    reply = control.ask(cfg.socket_path(), {"op": "sql", "query": text, **kw}, 60.0)
    assert reply is not None, "no service answered"
    return reply


def test_the_socket_is_for_the_services_user_and_group(running):
    _service, cfg = running
    st = os.stat(cfg.socket_path())
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getegid()


def test_sql_from_another_process_is_answered_by_the_service(running):
    _service, cfg = running
    done = _cli("sql", "--config", cfg.source, "--format", "json",
                "SELECT count(*) AS n, count(DISTINCT asset) AS assets FROM readings")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": READINGS, "assets": 4}


@pytest.mark.parametrize(("name", "text", "why"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_service_refuses(running, name, text, why):
    _service, cfg = running
    reply = _ask(cfg, text.replace("{data}", str(cfg.socket_path().parent)))
    assert reply["ok"] is False and reply.get("refused"), (name, reply)
    assert why in reply["error"], name


def test_refused_statements_changed_nothing(running):
    _service, cfg = running
    tables = _ask(cfg, "SELECT count(*) FROM duckdb_tables()")["rows"]
    faults = _ask(cfg, "SELECT count(*) FROM faults")["rows"]
    for _name, text, _why in REFUSED:
        _ask(cfg, text.replace("{data}", str(cfg.socket_path().parent)))
    assert _ask(cfg, "SELECT count(*) FROM duckdb_tables()")["rows"] == tables
    assert _ask(cfg, "SELECT count(*) FROM faults")["rows"] == faults


def test_the_service_cuts_and_interrupts(running):
    _service, cfg = running
    cut = _ask(cfg, "SELECT * FROM readings", limit=10)
    assert cut["ok"] and len(cut["rows"]) == 10 and cut["truncated"]
    capped = _ask(cfg, "SELECT * FROM readings", limit=10 ** 9)
    assert capped["capped"] and capped["limit"] == cfg.control.max_rows
    slow = _ask(cfg, "SELECT count(*) FROM range(1000000000000) a", timeout_s=0.3)
    assert slow["ok"] is False and "interrupted" in slow["error"]
    # the interrupted cursor left the service able to answer (and its store committing)
    assert _ask(cfg, "SELECT count(*) FROM readings")["rows"] == [[READINGS]]


def test_snapshots_still_write_parquet_beside_the_server(running, tmp_path):
    # the guard changes no DuckDB setting: the service's own COPY on its cursors works
    service, _cfg = running
    cursor = service.pipeline.db.cursor()
    try:
        ready = write_snapshot(cursor, tmp_path / "snap", None)
    finally:
        cursor.close()
    assert ready["rows"] == READINGS


def test_export_from_the_running_service(running, tmp_path):
    _service, cfg = running
    to = tmp_path / "export"
    done = _cli("export", "--config", cfg.source, "--since", "0", "--to", str(to),
                "--tables", "readings,faults")
    assert done.returncode == 0, done.stderr
    assert f"readings: {READINGS} rows" in done.stdout and "the running service" in done.stdout
    got = duckdb.sql(f"SELECT asset, sensor, count(*), sum(value), min(ts), max(ts) FROM "
                     f"read_parquet('{to}/table=readings/**/*.parquet', hive_partitioning "
                     f"= true) GROUP BY ALL ORDER BY ALL").fetchall()
    want = _ask(cfg, "SELECT asset, sensor, count(*), sum(value), min(ts), max(ts) "
                     "FROM readings GROUP BY ALL ORDER BY ALL")["rows"]
    assert [[a, s, n, v, lo.isoformat(), hi.isoformat()] for a, s, n, v, lo, hi in got] == want
    # copied out of the service's folder, then dropped there: nothing left behind
    assert not list((cfg.socket_path().parent / control.EXPORTS).iterdir())


@pytest.mark.slow
def test_a_model_trained_on_an_export_is_registered_and_promotable(tmp_path, tmp_path_factory,
                                                                    broker):
    """History imported (5 assets × 7 days, faults), the service fed more over MQTT,
    exported while it runs, trained from the export with ``--readings``, promoted."""
    from appliance.models.registry import Registry
    from tests.support.retrain import END, SECTIONS, copy_into, prepare

    db = copy_into(prepare(tmp_path_factory.mktemp("history")), tmp_path)
    cfg = config.load(fault_config(tmp_path, broker, db=db, **SECTIONS))
    before = {e.name for e in Registry(cfg.models_dir()).entries()}
    service = runner.Service(cfg)
    service.start()
    _wait_subscribed(service)
    pub = ReadingPublisher(broker, 500, assets=5, t0=END, step_s=60.0).start()
    try:
        pub.wait_acked(120)
        wait_until(lambda: service.pipeline.stages["store"].counters.processed >= 500, 60,
                   "the published readings stored")
        to = tmp_path / "export"
        done = _cli("export", "--config", cfg.source, "--since", "0", "--to", str(to))
        assert done.returncode == 0, done.stderr
        stored = _ask(cfg, "SELECT count(*) FROM readings")["rows"][0][0]
        assert f"readings: {stored} rows" in done.stdout
        trained = _cli("train", "--config", cfg.source, "--readings", f"{to}/**",
                       "--family", "logistic", "--quiet")
        assert trained.returncode == 0, trained.stdout + trained.stderr
        entries = {e.name: e for e in Registry(cfg.models_dir()).entries(runner.spec_hash(cfg))}
        (new,) = set(entries) - before
        assert entries[new].model is not None, entries[new].error  # the service's spec hash
        promoted = _cli("models", "promote", new, "--config", cfg.source)
        assert promoted.returncode == 0, promoted.stderr
        wait_until(lambda: _ask(cfg, f"SELECT count(*) FROM models WHERE name = '{new}' "
                                     f"AND status = 'active'")["rows"][0][0] > 0, 60,
                   "the service switching to the model trained on the export")
        runs = _ask(cfg, "SELECT json_extract_string(detail, '$.database') FROM "
                         "training_runs WHERE model = ?".replace("?", f"'{new}'"))["rows"]
        assert runs == [[f"{to}/**"]]
    finally:
        pub.close()
        service.stop()


def test_stop_interrupts_a_running_query_and_waiting_ones(tmp_path, broker):
    import threading

    cfg = config.load(fault_config(tmp_path, broker, model={"required": False},
                                   control={"timeout_s": 600.0}))
    service = runner.Service(cfg)
    service.start()
    replies: list[dict | None] = []
    refused: list[OSError] = []

    def ask() -> None:
        try:
            replies.append(control.ask(cfg.socket_path(), {
                "op": "sql", "query": "SELECT count(*) FROM range(1000000000000) a"}, 600.0))
        except OSError as exc:  # still in the listen queue when the server closed
            refused.append(exc)

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for t in askers:
        t.start()
    wait_until(lambda: service.control._running, 30, "a query running")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connects, never asks
    silent.connect(str(cfg.socket_path()))
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(service.stop()))
    stopper.start()
    stopper.join(60)  # a handler waiting on the silent client once held the stop forever
    silent.close()
    assert stopped == [True], "the stop waited for a client that never asked"
    for t in askers:
        t.join(30)
    # each query would run for hours: every asker answered means none was left running
    assert not any(t.is_alive() for t in askers)
    assert len(replies) + len(refused) == 3
    errors = sorted(r["error"] for r in replies if r is not None and not r["ok"])
    assert len(errors) == len(replies)
    assert "interrupted: the service is stopping" in errors, errors
    assert set(errors) <= {"interrupted: the service is stopping",
                           "the service is stopping"}, errors


def test_models_history_asks_the_running_service(running):
    _service, cfg = running
    done = _cli("models", "history", "--config", cfg.source, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []  # no step of the loop in this service's life


@pytest.mark.parametrize(("line", "why"), [
    (b"SELECT 1\n", "bad request"),
    (b"[1, 2]\n", "a request is a JSON object"),
    (b'{"op": "drop_table"}\n', "unknown request 'drop_table'"),
    (b'{"op": "drop_export", "id": "../../appliance.duckdb"}\n', "no export"),
    (b"x" * (control.MAX_REQUEST + 10) + b"\n", "at most"),
])
def test_a_malformed_request_gets_a_reason_and_the_service_answers_on(running, line, why):
    _service, cfg = running
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(cfg.socket_path()))
        sock.sendall(line)
        with sock.makefile("rb") as f:
            reply = json.loads(f.readline())
    assert reply["ok"] is False and why in reply["error"], reply
    assert _ask(cfg, "SELECT count(*) FROM readings")["rows"] == [[READINGS]]
    assert (cfg.socket_path().parent / "appliance.duckdb").exists()
