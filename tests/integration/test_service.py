"""The service as a real process against a real mosquitto and a real DuckDB file."""

from __future__ import annotations

import json
import threading
import time

import duckdb
import numpy as np
import pytest

from tests.support.service import TOPICS, publish_all, publisher, subscriber, write_config

T0 = time.time() - 3600.0  # event times in the last hour, inside the accepted range


def readings(n: int, assets: int = 4, sensors: int = 3) -> list[tuple[str, bytes]]:
    msgs = []
    for i in range(n):
        a, s = i % assets, (i // assets) % sensors
        ts = T0 + i * 0.01
        msgs.append((TOPICS.reading("l1", f"a{a}", f"s{s}"),
                     json.dumps({"ts": ts, "value": i}).encode()))
    return msgs


def query(tmp_path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(tmp_path / "appliance.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_n_readings_published_give_exactly_n_rows(tmp_path, broker, service_factory):
    svc = service_factory(write_config(tmp_path, broker)).start()
    pub = publisher(broker)
    n = 5000
    publish_all(pub, readings(n))
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= n, what=f"{n} readings stored")
    code, seconds = svc.terminate()
    assert code == 0 and seconds < 5
    rows = query(tmp_path, "SELECT count(*), count(DISTINCT (asset, sensor, ts)), "
                           "sum(value) FROM readings")[0]
    assert rows == (n, n, float(sum(range(n))))


def test_malformed_messages_go_to_dead_letters_with_reasons(tmp_path, broker, service_factory):
    svc = service_factory(write_config(tmp_path, broker)).start()
    pub = publisher(broker)
    temp = TOPICS.reading("l1", "a1", "temp")
    bad = [
        (temp, b"not a number"),
        (temp, b'{"ts": 1, "value": 3}'),
        (temp, b'{"value": NaN}'),
        (temp + "/extra", b"1"),
        (TOPICS.fault("l1", "a1"), b'{"state": "exploded"}'),
    ]
    publish_all(pub, [*bad, (temp, b"20.5")])
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= 1 and
                 s["stages"]["ingest"].get("dead_letters", 0) >= len(bad),
                 what="dead letters counted")
    svc.terminate()
    dead = query(tmp_path, "SELECT topic, reason, payload FROM dead_letters ORDER BY received_at")
    assert len(dead) == len(bad)
    reasons = " | ".join(r for _, r, _ in dead)
    for fragment in ("not a number or JSON", "older than max_past_s", "not finite",
                     "levels after the prefix", "fault state"):
        assert fragment in reasons
    assert {bytes(p) for _, _, p in dead} == {p for _, p in bad}
    assert query(tmp_path, "SELECT asset, sensor, value FROM readings") == [("a1", "temp", 20.5)]


def test_fault_events_are_stored(tmp_path, broker, service_factory):
    svc = service_factory(write_config(tmp_path, broker)).start()
    pub = publisher(broker)
    events = [(T0 + 10, "start", "E1"), (T0 + 70, "end", "E1")]
    publish_all(pub, [(TOPICS.fault("l1", "a2"), json.dumps({"ts": ts, "state": st, "code": c})
                       .encode()) for ts, st, c in events])
    publish_all(pub, [(TOPICS.reading("l1", "a2", "temp"), b"1")])
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= 1, what="stored")
    svc.terminate()
    rows = query(tmp_path, "SELECT asset, epoch(ts), state, code FROM faults ORDER BY ts")
    assert [(a, round(t, 3), s, c) for a, t, s, c in rows] == [
        ("a2", round(T0 + 10, 3), "start", "E1"), ("a2", round(T0 + 70, 3), "end", "E1")]


@pytest.mark.slow
def test_sigterm_under_load_stops_within_5s_and_keeps_everything_acknowledged(
        tmp_path, broker, service_factory):
    cfg = write_config(tmp_path, broker)
    svc = service_factory(cfg).start()
    pub = publisher(broker)
    msgs = readings(60_000, assets=20, sensors=5)
    done = threading.Event()

    def flood() -> None:
        publish_all(pub, msgs)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] > 5000, what="load flowing")
    code, seconds = svc.terminate()
    assert code == 0, svc.log.read_text()[-2000:]
    assert seconds < 5.0
    stored_at_stop = query(tmp_path, "SELECT count(*) FROM readings")[0][0]
    assert stored_at_stop > 0
    # Whatever was not committed was not acknowledged: a restart receives it, once.
    assert done.wait(60)
    svc2 = service_factory(cfg).start()
    svc2.wait_for(lambda s: s["stages"]["store"]["processed"] >= len(msgs) - stored_at_stop,
                  timeout_s=60, what="the rest after restart")
    svc2.terminate()
    total, distinct = query(tmp_path, "SELECT count(*), count(DISTINCT (asset, sensor, ts)) "
                                      "FROM readings")[0]
    assert (total, distinct) == (len(msgs), len(msgs))


@pytest.mark.slow
def test_degrading_asset_raises_an_alert_received_over_mqtt(tmp_path, broker, service_factory):
    from appliance.devtools.simulator import SENSORS, LineSimulator

    svc = service_factory(write_config(tmp_path, broker)).start()
    sub, received = subscriber(broker, TOPICS.alert("+", "+"))
    pub = publisher(broker)
    hours, hz = 3.0, 0.1
    sim = LineSimulator(assets=4, hz=hz, seed=3, start_ts=time.time() - hours * 3600 - 60)
    msgs = [(TOPICS.reading(r.key.line, r.key.asset, r.key.sensor),
             json.dumps({"ts": r.ts, "value": r.value}).encode())
            for readings_, _faults in sim.messages(int(hours * 3600 * hz)) for r in readings_]
    publish_all(pub, msgs)
    deadline = time.monotonic() + 60
    while not any(a["state"] == "raised" for a in received) and time.monotonic() < deadline:
        time.sleep(0.2)
    sub.loop_stop()
    svc.terminate()
    raised = [a for a in received if a["state"] == "raised"]
    assert raised, f"no alert among {len(received)} messages"
    a = raised[0]
    assert set(a) >= {"asset", "ts", "state", "probability", "threshold", "horizon_s", "model",
                      "top_factors"}
    assert a["probability"] >= a["threshold"] and a["horizon_s"] == 3600
    assert a["top_factors"] and {"feature", "value", "contribution"} <= set(a["top_factors"][0])
    # the reasons: one per sensor, the sensor's most telling feature among its own
    sensors = [r["sensor"] for r in a["reasons"]]
    assert sensors and len(sensors) == len(set(sensors)) and set(sensors) <= set(SENSORS)
    assert all(r["feature"].startswith(f"{r['sensor']}__") and r["contribution"] > 0
               and r["text"].startswith(f"{r['sensor']} {r['direction']}: ")
               for r in a["reasons"])
    stored = query(tmp_path, "SELECT count(*) FROM alerts WHERE state = 'raised'")[0][0]
    assert stored >= 1
    # stored as published
    (kept,) = query(tmp_path, f"SELECT reasons FROM alerts WHERE state = 'raised' AND "
                              f"asset = '{a['asset']}' ORDER BY ts LIMIT 1")[0]
    assert json.loads(kept) == a["reasons"]
    p = np.array(query(tmp_path, "SELECT probability FROM predictions"))
    assert len(p) > 0 and np.all((p >= 0) & (p <= 1))


def test_without_a_model_it_collects_history_says_so_and_serves_a_promoted_one(
        tmp_path, broker, service_factory):
    import subprocess
    import sys

    from appliance.models.contract import STARTER_MODEL, load_model

    # predictions from the first tick: five minutes of data are all warm-up otherwise
    cfg = write_config(tmp_path, broker, '[model]\npath = "nowhere.onnx"\nrequired = false\n'
                                         'poll_s = 0.2\n[pipeline]\nwarmup_s = 0\n')
    svc = service_factory(cfg).start()
    pub = publisher(broker)
    sensors = ("lube_temp", "vibration", "motor_current", "oil_pressure", "ambient_temp")
    # 5 minutes of event time, one reading per sensor every 5 s: ticks close
    msgs = [(TOPICS.reading("l1", "a1", s), json.dumps({"ts": T0 + 5 * i, "value": 1.0}).encode())
            for i in range(60) for s in sensors]
    publish_all(pub, msgs)
    snap = svc.wait_for(lambda s: s["stages"]["predict"].get("rows_without_model", 0) > 0,
                        what="feature rows passed over for want of a model")
    assert snap["model"] is None and snap["stages"]["store"]["processed"] == len(msgs)
    assert snap["state"] == "running" and "no model: storing readings only" in snap["notes"][0]
    assert snap["stages"]["predict"]["processed"] == 0
    assert "WITHOUT A MODEL" in svc.log.read_text()
    # a model promoted later serves from the next tick, no restart needed
    for verb in (["add", str(STARTER_MODEL)], ["promote", load_model(STARTER_MODEL).name]):
        done = subprocess.run([sys.executable, "-m", "appliance", "models", *verb, "--config",
                               str(cfg)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    svc.wait_for(lambda s: s["model"] is not None, what="the promoted model served")
    publish_all(pub, [(TOPICS.reading("l1", "a1", s),
                       json.dumps({"ts": T0 + 300 + 5 * i, "value": 1.0}).encode())
                      for i in range(12) for s in sensors])
    svc.wait_for(lambda s: s["stages"]["predict"]["processed"] > 0, what="predictions")
    code, _ = svc.terminate()
    assert code == 0


def test_a_challenger_is_stored_and_scored_never_published(tmp_path, broker, service_factory):
    import onnx

    from appliance.models.contract import KEY_THRESHOLD, STARTER_MODEL
    from appliance.models.registry import Registry

    # champion: the starter (threshold 0.995, no alert on flat readings); challenger: the
    # same model with a threshold so low that it "raises" on every asset at once
    models = tmp_path / "models"
    keen = onnx.load(str(STARTER_MODEL))
    for prop in keen.metadata_props:
        if prop.key == KEY_THRESHOLD:
            prop.value = "0.0001"
    onnx.save(keen, str(tmp_path / "keen.onnx"))
    registry = Registry(models)
    champion = registry.add(STARTER_MODEL)
    challenger = registry.add(tmp_path / "keen.onnx")
    registry.promote(champion.name)
    registry.shadow(challenger.name, 2)
    cfg = write_config(tmp_path, broker, f'[model]\ndir = "{models}"\npoll_s = 0.2\n'
                                         'scores_every_s = 1\n'
                                         f'[pipeline]\nwarmup_s = 0\n')
    svc = service_factory(cfg).start()
    sub, received = subscriber(broker, TOPICS.alert("+", "+"))
    pub = publisher(broker)
    sensors = ("lube_temp", "vibration", "motor_current", "oil_pressure", "ambient_temp")
    msgs = [(TOPICS.reading("l1", f"a{a}", s),
             json.dumps({"ts": T0 + 5 * i, "value": 1.0 + a}).encode())
            for i in range(72) for a in range(3) for s in sensors]
    publish_all(pub, msgs)
    publish_all(pub, [(TOPICS.fault("l1", "a1"),
                       json.dumps({"ts": T0 + 300, "state": "start", "code": "F"}).encode())])
    snap = svc.wait_for(lambda s: s["stages"]["alert"].get("challenger_alerts_raised", 0) >= 3
                        and s["stages"]["scores"].get("fault_events", 0) >= 1
                        and challenger.name in s["stages"]["predict"].get("challengers", {}),
                        what="the challenger's alerts and the scores")
    time.sleep(1.0)  # anything published would have arrived by now
    sub.loop_stop()
    code, _ = svc.terminate()
    assert code == 0
    assert snap["model"] == champion.name
    assert {a["model"] for a in received} <= {champion.name}, "a challenger's alert went out"
    roles = dict(query(tmp_path, "SELECT role, count(DISTINCT model) FROM predictions "
                                 "GROUP BY role"))
    assert roles == {"champion": 1, "challenger": 1}
    same = query(tmp_path, "SELECT count(*) FROM predictions c JOIN predictions s "
                           "ON c.ts = s.ts AND c.asset = s.asset AND c.role = 'champion' "
                           "AND s.role = 'challenger'")[0][0]
    assert same == query(tmp_path, "SELECT count(*) FROM predictions WHERE role = 'champion'")[0][0]
    assert query(tmp_path, "SELECT DISTINCT role, model FROM alerts") == \
        [("challenger", challenger.name)]
    scored = {(m, r) for m, r in query(tmp_path, "SELECT model, role FROM model_scores")}
    assert scored == {(champion.name, "champion"), (challenger.name, "challenger")}




def test_drift_events_are_published_retained_and_stored(tmp_path, broker, service_factory):
    """The path of a drift event: drift stage → alert stage (retained on
    appliance/<line>/drift) → record stage (drift_events), with the stage's counters in
    the status.  Short 1 h windows against the uncalibrated starter model fire within
    seconds of event time once full (long-window statistics that move once per 10 min
    fill one bin of a 1 h window): that is the event this test follows.  Detection of a
    recalibration is tested on the statistic itself in tests/unit/test_drift.py."""
    from appliance.devtools.simulator import LineSimulator

    extra = ("[pipeline]\nwarmup_s = 0\n[drift]\nwindow_s = 3600\nsample_s = 30\n"
             "persist_s = 60\nuncalibrated_psi = 4.0\nuncalibrated_persist_s = 60\n")
    svc = service_factory(write_config(tmp_path, broker, extra)).start()
    hours, hz = 2.0, 0.1
    sim = LineSimulator(assets=4, hz=hz, seed=3, start_ts=time.time() - hours * 3600 - 60)
    msgs = [(TOPICS.reading(r.key.line, r.key.asset, r.key.sensor),
             json.dumps({"ts": r.ts, "value": r.value}).encode())
            for readings_, _faults in sim.messages(int(hours * 3600 * hz)) for r in readings_]
    publish_all(publisher(broker), msgs)
    svc.wait_for(lambda s: s["stages"]["drift"]["drift_events_started"] >= 1, timeout_s=60,
                 what="a drift event")
    sub, received = subscriber(broker, TOPICS.drift("line1"))
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    sub.loop_stop()
    svc.terminate()
    assert received, "no retained drift message"
    retained = received[0]
    assert retained["kind"] == "drift" and retained["line"] == "line1"
    assert retained["model"].startswith("starter-") and retained["threshold"] == 4.0
    rows = query(tmp_path, "SELECT epoch(ts), state, features FROM drift_events "
                           "WHERE kind = 'drift' ORDER BY ts")
    assert rows[0][1] == "started"
    assert (retained["ts"], retained["state"], retained["features"]) == \
        (rows[-1][0], rows[-1][1], json.loads(rows[-1][2]))
