"""The broker down when the service starts, then up: the service says so in its log and
its status (degraded, and why), then connects and is running again.  Real mosquitto,
real ``appliance run``."""

from __future__ import annotations

import re

from tests.support.faults import fault_config


def test_a_broker_that_is_down_is_logged_and_reported_until_it_comes_up(
        tmp_path, broker, service_factory):
    broker.stop()  # its port stays reserved for it; nothing listens there now
    cfg = fault_config(tmp_path, broker, mqtt={"reconnect_max_s": 1},
                       service={"mqtt_down_after_s": 1.0})
    svc = service_factory(cfg).start(wait_connected=False)
    down = svc.wait_for(lambda s: s["state"] == "degraded", timeout_s=30,
                        what="degraded while the broker is down")
    where = f"127.0.0.1:{broker.port}"
    assert not down["mqtt_connected"]
    assert down["stages"]["ingest"]["problem"].startswith(f"MQTT not connected to {where}")
    assert any(p.startswith("ingest: MQTT not connected") for p in down["problems"])
    assert all(s["state"] == "running" for s in down["stages"].values())
    # rate-limited (exactly, on a ManualClock, in tests/unit/test_mqtt_connection.py): paho
    # retries every second, the log has fewer lines than failed attempts
    failed = svc.wait_for(lambda s: _attempts(s) >= 3, timeout_s=30, what="3 failed attempts")
    log = svc.log.read_text()
    assert f"MQTT ingest cannot connect to {where}: no connection" in log
    assert 1 <= len(re.findall("MQTT ingest cannot connect", log)) < _attempts(failed)

    broker.start()
    up = svc.wait_for(lambda s: s["state"] == "running" and s["mqtt_connected"],
                      timeout_s=30, what="running again once the broker is up")
    assert up["problems"] == [] and "problem" not in up["stages"]["ingest"]
    assert re.search(rf"MQTT ingest connected to {re.escape(where)} after \d+ failed attempts?",
                     svc.log.read_text())
    code, _ = svc.terminate()
    assert code == 0


def _attempts(snap: dict) -> int:
    """The failed connects the ingest's problem counts (0 without a problem)."""
    found = re.search(r"\((\d+) failed attempts", snap["stages"]["ingest"].get("problem", ""))
    return int(found.group(1)) if found else 0
