"""Retention and the disk watch in the running service (real mosquitto, real DuckDB)."""

from __future__ import annotations

import json
import time

import duckdb

from tests.support.service import TOPICS, publish_all, publisher, subscriber, write_config

NOW = time.time()


def test_the_service_deletes_old_readings_and_publishes_its_disk_health(
        tmp_path, broker, service_factory):
    config = write_config(tmp_path, broker, "[retrain]\nenabled = false\n")
    storage = "keep_readings_days = 1.0\nmin_keep_readings_days = 0.5\nmax_disk_mb = 512\n"
    config.write_text(config.read_text().replace("batch_ms = 20\n", "batch_ms = 20\n" + storage))
    svc = service_factory(config).start()
    old = [(TOPICS.reading("l1", "a1", "s1"), json.dumps({"ts": NOW - 3 * 86400 + i,
                                                          "value": i}).encode())
           for i in range(300)]
    new = [(TOPICS.reading("l1", "a1", "s1"), json.dumps({"ts": NOW - 600 + i,
                                                          "value": 1000 + i}).encode())
           for i in range(300)]
    publish_all(publisher(broker), old + new)
    svc.wait_for(lambda s: s["stages"]["store"]["processed"] >= 600, what="600 readings stored")
    snap = svc.wait_for(lambda s: s["stages"]["maintenance"].get("readings_deleted", 0) >= 300,
                        timeout_s=40, what="the old readings deleted")
    sub, received = subscriber(broker, TOPICS.health)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    sub.loop_stop()
    code, _seconds = svc.terminate()
    assert code == 0
    con = duckdb.connect(str(tmp_path / "appliance.duckdb"), read_only=True)
    try:
        values = sorted(v for (v,) in con.execute("SELECT value FROM readings").fetchall())
    finally:
        con.close()
    assert values == [1000.0 + i for i in range(300)]
    assert snap["disk"]["budget_mb"] == 512.0 and snap["disk"]["state"] == "ok"
    assert snap["state"] == "running"
    assert received, "no retained health message"
    assert received[0]["state"] == "ok" and received[0]["disk"]["budget_mb"] == 512.0
    assert "MB of its 512 MB budget" in received[0]["message"]
