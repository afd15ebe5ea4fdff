"""A service restart: the feature windows are refilled from stored readings, and the
alerts still standing go on (or are cleared when nothing backs them any more).

Real stages wired as the runner wires them, on a real DuckDB file; the alert stage
publishes to a real mosquitto.  Readings enter at the store as ingest hands them over,
so event times a day in the past are not refused as too old.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from appliance import config
from appliance.clock import ManualClock
from appliance.devtools import simulator
from appliance.devtools.mosquitto import PrivateBroker
from appliance.features.batch import asset_features
from appliance.features.spec import PipelineSpec
from appliance.messages import (
    EndOfStream,
    Inbound,
    Prediction,
    Predictions,
    SeriesKey,
)
from appliance.models.contract import LoadedModel
from appliance.models.registry import Registry
from appliance.models.watcher import ModelWatcher
from appliance.service.supervisor import Supervisor
from appliance.stages.alert import AlertStage
from appliance.stages.features import FeaturesStage
from appliance.stages.predict import PredictStage
from appliance.stages.record import RecordStage
from appliance.stages.store import StoreStage
from appliance.storage import database, recent
from appliance.timefmt import from_us, to_us
from appliance.training import export
from tests.support.faults import query
from tests.support.service import TOPICS, publish_all, publisher, subscriber, write_config

#: Short windows so a day has many ticks after the warm-up, and EWMAs short enough that
#: ``restore_s`` spans 48 half-lives of the longer one (``missing``: a quarter of the
#: 600 s window).  An EWMA has no end to its memory: one started 48 half-lives ago
#: differs from one started at the day's start by 2^-48 of their first difference
#: (``missing`` is 0 in one and 1e-16 in the other, ``dev`` differs by ~1e-13).
PIPELINE = {"cadence_s": 10.0, "horizon_s": 600.0, "idle_gap_s": 3600.0,
            "baseline_halflife_s": 100.0}
RESTORE_S = 7200.0
#: The EWMA features, and how far apart a restart may leave them (see above).
EWMA = ("__missing", "__dev")
EWMA_ATOL = 1e-9
ASSETS = 2
HZ = 0.1


def readings(seed: int) -> tuple[list[SeriesKey], np.ndarray, np.ndarray]:
    """A simulated day in arrival order (event time), with times as stored (whole µs)."""
    day = simulator.simulate_history(1, ASSETS, HZ, seed=seed)
    keys, ts, values = [], [], []
    for asset in day.assets:
        for sensor, (t, v) in day.series(asset).items():
            keys.extend([SeriesKey(day.line, asset, sensor)] * len(t))
            ts.append(t)
            values.append(v)
    t, v = from_us(to_us(np.concatenate(ts))), np.concatenate(values)
    order = np.argsort(t, kind="stable")
    return [keys[i] for i in order.tolist()], t[order], v[order]


def random_model(path: Path, spec: PipelineSpec, keys, ts, values) -> LoadedModel:
    """A boosted model fitted to random labels: its score moves with nearly every
    feature, so any difference in a restored window shows in the predictions."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    asset = keys[0].asset
    mine = np.array([k.asset == asset for k in keys])
    sensors = {k.sensor for k in keys}
    series = {s: (ts[mine & np.array([k.sensor == s for k in keys])],
                  values[mine & np.array([k.sensor == s for k in keys])]) for s in sensors}
    names, _ticks, X = asset_features(spec, series, ts[0] - 1, ts[-1])
    # A split inside the EWMAs' last 1e-9 would tell a restart from no restart (see
    # EWMA); a model trained on real rows has no reason to place one there, one fitted
    # to noise does: it learns from rows rounded that far.
    ewma = [i for i, n in enumerate(names) if n.endswith(EWMA)]
    X[:, ewma] = np.round(X[:, ewma], 8)
    y = np.random.default_rng(5).integers(0, 2, len(X))
    clf = HistGradientBoostingClassifier(max_iter=30, max_depth=4, random_state=0).fit(X, y)
    meta = export.build_metadata(
        feature_names=names, spec_hash=spec.hash, horizon_s=spec.horizon_s, threshold=0.5,
        reference=export.reference_distribution(X.astype(np.float32), names),
        trained_from=ts[0], trained_to=ts[-1], metrics={}, family="gbt")
    return export.write_model(export.to_onnx(clf, len(names), meta), path, spec.hash)


def run_service(cfg: config.Config, db_path: Path, model: LoadedModel, keys, ts, values,
                rows: dict, per_batch: int = 500) -> dict:
    """store → features → predict → record over ``db_path`` until the readings given
    are in; the stages' status at the end.  ``rows`` gets every feature row made,
    {(asset, tick): {name: value}}."""
    db, _ = database.connect(db_path)
    q = {n: queue.Queue(maxsize=64) for n in ("inbound", "stored", "features", "records")}
    tap: queue.Queue = queue.Queue()  # unbounded: the features stage never drops a row
    watcher = ModelWatcher(Registry(db_path.parent / "models"), model.spec_hash)
    stages = [RecordStage(db, q["records"]),
              PredictStage(cfg, watcher, model, q["features"], q["records"]),
              FeaturesStage(cfg, q["stored"], q["features"], tap),
              StoreStage(cfg, db, q["inbound"], q["stored"], queue.Queue())]
    supervisor = Supervisor(stages)
    supervisor.start()
    for lo in range(0, len(keys), per_batch):
        q["inbound"].put(Inbound(tuple(keys[lo:lo + per_batch]), ts[lo:lo + per_batch],
                                 values[lo:lo + per_batch], (), (), 0, ()))
    q["inbound"].put(EndOfStream())
    assert supervisor.join(300), "the pipeline did not drain"
    db.close()
    assert not any(h.last_error for h in supervisor.health.values()), supervisor.health
    while not isinstance(item := tap.get_nowait(), EndOfStream):
        for asset, row in zip(item.assets, item.values, strict=True):
            assert (asset, item.tick) not in rows, f"{asset} tick {item.tick} made twice"
            rows[(asset, item.tick)] = dict(zip(item.names, row.tolist(), strict=True))
    return {s.name: s.status() for s in stages}


def predictions(db_path: Path) -> list[tuple]:
    return query(db_path, "SELECT epoch_us(ts), line, asset, probability FROM predictions "
                          "ORDER BY ts, line, asset")


@pytest.mark.slow
def test_a_restart_predicts_as_a_service_that_never_stopped(tmp_path):
    cfg = config.from_dict({"pipeline": {**PIPELINE, "restore_s": RESTORE_S}})
    spec = PipelineSpec.from_config(cfg.pipeline)
    keys, ts, values = readings(seed=17)
    model = random_model(tmp_path / "m.onnx", spec, keys, ts, values)

    (tmp_path / "once").mkdir()
    want_rows: dict = {}
    run_service(cfg, tmp_path / "once" / "a.duckdb", model, keys, ts, values, want_rows)
    want = predictions(tmp_path / "once" / "a.duckdb")

    (tmp_path / "twice").mkdir()
    db = tmp_path / "twice" / "a.duckdb"
    # stopped in the middle of one time step: readings of that very time come after it
    stop = int(np.searchsorted(ts, ts[len(ts) // 2])) + 3
    rows: dict = {}
    first = run_service(cfg, db, model, keys[:stop], ts[:stop], values[:stop], rows)
    assert "replayed_readings" not in first["store"]  # nothing was stored yet
    before = predictions(db)
    second = run_service(cfg, db, model, keys[stop:], ts[stop:], values[stop:], rows)
    got = predictions(db)

    assert second["store"]["replayed_readings"] > RESTORE_S * HZ * 5
    assert second["features"]["ticks_not_repeated"] > 0
    # the feature rows: every tick of the uninterrupted run once, each feature equal,
    # the EWMAs within what 48 half-lives leave of a start
    assert rows.keys() == want_rows.keys()
    for key, row in rows.items():
        assert row.keys() == want_rows[key].keys(), key
        for name, value in row.items():
            other = want_rows[key][name]
            # windows as test_replay compares live with batch: running sums carry their
            # own rounding, ~1e-18 on a slope of 0
            atol = EWMA_ATOL if name.endswith(EWMA) else 1e-12
            assert np.isclose(value, other, rtol=1e-9, atol=atol, equal_nan=True), \
                (key, name, value, other)
    # the predictions stored: nothing before the stop touched, no tick twice, the same
    # ticks and scores as the service that never stopped
    assert set(before) <= set(got)
    ticks = [row[:3] for row in got]
    assert len(set(ticks)) == len(ticks), "a tick was predicted twice"
    assert ticks == [row[:3] for row in want]
    assert len(before) > 1000 and len(got) - len(before) > 1000
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=0, atol=1e-6)
    # the probabilities move: the rows are not equal because they are all alike
    assert np.std([r[3] for r in got[len(before):]]) > 0.01


@pytest.mark.slow
def test_without_the_replay_a_restart_predicts_otherwise(tmp_path):
    """What the replay is for: restarted cold, the asset warms up again (no rows for the
    warm-up after the restart) and its windows start empty."""
    cfg = config.from_dict({"pipeline": {**PIPELINE, "restore_s": 0.0}})
    spec = PipelineSpec.from_config(cfg.pipeline)
    keys, ts, values = readings(seed=17)
    model = random_model(tmp_path / "m.onnx", spec, keys, ts, values)
    db = tmp_path / "a.duckdb"
    stop = len(ts) // 2
    run_service(cfg, db, model, keys[:stop], ts[:stop], values[:stop], {})
    cut = to_us(float(ts[stop - 1]))
    status = run_service(cfg, db, model, keys[stop:], ts[stop:], values[stop:], {})
    assert "replayed_readings" not in status["store"]
    after = [t for t, *_ in predictions(db) if t > cut]
    # the first tick after the stop is predicted only after a warm-up
    assert after[0] - cut >= to_us(spec.warmup_s) - to_us(spec.cadence_s)


# -- alerts --------------------------------------------------------------------------


def alert_service(cfg: config.Config, db_path: Path, clock: ManualClock
                  ) -> tuple[Supervisor, queue.Queue, duckdb.DuckDBPyConnection]:
    """alert → record over ``db_path``, resuming the alerts stored there, as the runner
    wires them; its input queue."""
    db, _ = database.connect(db_path)
    inbox: queue.Queue = queue.Queue()
    records: queue.Queue = queue.Queue()
    stages = [RecordStage(db, records),
              AlertStage(cfg, inbox, records, recent.standing_alerts(db))]
    supervisor = Supervisor(stages, clock)
    supervisor.start()
    return supervisor, inbox, db


def connected(supervisor: Supervisor) -> None:
    """Wait for the alert stage's MQTT connection (what it publishes before is queued, and
    a stop right after would drop it)."""
    wait_for("the alert connection",
             lambda: (link := supervisor.stages[1].link) is not None and link.connected.is_set())


def stop(supervisor: Supervisor, inbox: queue.Queue, db: duckdb.DuckDBPyConnection) -> None:
    inbox.put(EndOfStream())
    assert supervisor.join(30)
    db.close()


def prediction(ts: float, p: float, asset: str = "a1") -> Predictions:
    return Predictions((Prediction("l1", asset, ts, p, 0.5, "m1"),))


def alerts_stored(db_path: Path) -> list[tuple]:
    return query(db_path, "SELECT asset, state, probability FROM alerts ORDER BY ts, asset")


def wait_for(what: str, predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def store_reading(db_path: Path, asset: str, ts: float) -> None:
    """A reading of ``asset`` as the store would have stored it."""
    from appliance.storage import tables

    con, _ = database.connect(db_path)
    registry = tables.SeriesRegistry(con)
    con.execute("BEGIN")
    tables.insert_readings(con, registry.ids(con, [SeriesKey("l1", asset, "temp")]),
                           np.array([to_us(ts)]), np.array([20.0]))
    con.execute("COMMIT")
    con.close()


def raise_and_stop(tmp_path: Path, broker: PrivateBroker, clock: ManualClock) -> Path:
    """A first service run that raises a1's alert (published retained, recorded) and
    stops; the database path."""
    cfg = config.from_dict({"mqtt": {"host": broker.host, "port": broker.port},
                            "pipeline": {"horizon_s": 600.0}})
    db = tmp_path / "a.duckdb"
    store_reading(db, "a1", clock.time())
    supervisor, inbox, con = alert_service(cfg, db, clock)
    connected(supervisor)
    inbox.put(prediction(clock.time(), 0.9))
    wait_for("the raise", lambda: supervisor.stages[1].counters.extra.get("alerts_raised"))
    stop(supervisor, inbox, con)
    assert alerts_stored(db) == [("a1", "raised", 0.9)]
    return db


@pytest.fixture
def retained(broker):
    """The retained alert state of a1 as a late subscriber sees it: (client, messages)."""
    made = []

    def latest() -> list[dict]:
        client, received = subscriber(broker, "appliance/l1/a1/alert")
        made.append(client)
        wait_for("the retained alert", lambda: received)
        return received

    yield latest
    for c in made:
        c.loop_stop()
        c.disconnect()


@pytest.mark.parametrize("case", ["quiet", "low"])
def test_a_raised_alert_left_standing_at_a_stop_is_cleared_after_the_restart(
        tmp_path, broker, retained, case):
    clock = ManualClock(1_700_000_000.0)
    db = raise_and_stop(tmp_path, broker, clock)
    assert retained()[-1]["state"] == "raised"
    cfg = config.from_dict({"mqtt": {"host": broker.host, "port": broker.port},
                            "pipeline": {"horizon_s": 600.0}})
    supervisor, inbox, con = alert_service(cfg, db, clock)
    connected(supervisor)
    alert = supervisor.stages[1]
    assert alert.status()["alerts_resumed"] == 1
    if case == "quiet":
        # quiet for longer than the horizon since the start (what the broker kept for
        # the service comes first): a1 sent nothing
        clock.advance(601.0)
    if case == "low":
        clock.advance(10.0)
        inbox.put(prediction(clock.time(), 0.1))
    wait_for("the clear", lambda: alert.counters.extra.get("alerts_cleared"
                                                           if case == "low"
                                                           else "alerts_cleared_quiet"))
    stop(supervisor, inbox, con)
    latest = retained()[-1]
    assert (latest["asset"], latest["state"]) == ("a1", "cleared")
    stored = alerts_stored(db)
    assert [s for _a, s, _p in stored] == ["raised", "cleared"]
    if case == "low":
        assert stored[-1][2] == pytest.approx(0.1)
    else:  # nothing new said: the clear carries the last probability known
        assert latest["ts"] == clock.time() and stored[-1][2] == pytest.approx(0.9)


def test_a_raised_alert_still_high_after_a_restart_is_not_raised_again(
        tmp_path, broker, retained):
    clock = ManualClock(1_700_000_000.0)
    db = raise_and_stop(tmp_path, broker, clock)
    cfg = config.from_dict({"mqtt": {"host": broker.host, "port": broker.port},
                            "pipeline": {"horizon_s": 600.0}})
    supervisor, inbox, con = alert_service(cfg, db, clock)
    connected(supervisor)
    client, received = subscriber(broker, "appliance/l1/+/alert")
    wait_for("the retained alert", lambda: received)
    for i in range(1, 100):  # a1 stays high past the quiet span; a2 shows the stage works
        clock.advance(10.0)
        inbox.put(prediction(clock.time(), 0.9))
        inbox.put(prediction(clock.time(), 0.2 if i < 99 else 0.95, asset="a2"))
    wait_for("a2's raise", lambda: any(m["asset"] == "a2" for m in received))
    stop(supervisor, inbox, con)
    client.loop_stop()
    client.disconnect()
    assert [(m["asset"], m["state"]) for m in received] == [("a1", "raised"), ("a2", "raised")]
    assert [(a, s) for a, s, _p in alerts_stored(db)] == [("a1", "raised"), ("a2", "raised")]



# -- the service as an operator runs it ----------------------------------------------


def test_appliance_run_restarted_goes_on_predicting_without_a_warm_up(
        tmp_path, broker, service_factory):
    """``appliance run`` stopped after 70 minutes of readings and started again: the
    second run replays the stored windows, predicts from its first tick on (the default
    warm-up is 62 minutes), and predicts no tick a second time."""
    t0 = time.time() - 90 * 60.0
    step = 10.0  # one reading per sensor per tick

    def messages(lo: float, hi: float) -> list[tuple[str, bytes]]:
        rng = np.random.default_rng(int(lo))
        return [(TOPICS.reading("l1", asset, sensor),
                 json.dumps({"ts": t0 + s, "value": float(rng.normal(50, 1))}).encode())
                for s in np.arange(lo, hi, step) for asset in ("a0", "a1")
                for sensor in ("lube_temp", "vibration")]

    config = write_config(tmp_path, broker)
    first = messages(0.0, 70 * 60.0)
    svc = service_factory(config).start()
    publish_all(publisher(broker), first)
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= len(first), what="stored")
    assert svc.terminate()[0] == 0
    stopped_at = max(t for (t,) in query_db(tmp_path, "SELECT epoch(max(ts)) FROM predictions"))

    second = messages(70 * 60.0, 80 * 60.0)
    svc = service_factory(config).start()
    publish_all(publisher(broker), second)
    snap = svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= len(second),
                        what="stored")
    assert snap["stages"]["store"]["replayed_readings"] >= 62 * 60 / step * 4
    assert svc.terminate()[0] == 0

    rows = query_db(tmp_path, "SELECT asset, epoch(ts) FROM predictions ORDER BY asset, ts")
    assert len(rows) == len(set(rows)), "a tick was predicted twice"
    for asset in ("a0", "a1"):
        ticks = np.array([t for a, t in rows if a == asset])
        # predicted before the stop, and after it every tick on, no warm-up in between
        assert ticks[0] < stopped_at < ticks[-1], asset
        assert set(np.diff(ticks)) == {10.0}, asset


def query_db(tmp_path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(tmp_path / "appliance.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
