"""The status of a service that is gone: the retained MQTT status stays JSON when the
broker publishes the last will (a killed service) and at a clean stop."""

from __future__ import annotations

from appliance import __version__
from tests.support.faults import StatusWatcher
from tests.support.service import write_config


def test_the_will_of_a_killed_service_is_a_json_offline_status(tmp_path, broker,
                                                               service_factory):
    svc = service_factory(write_config(tmp_path, broker)).start()
    watcher = StatusWatcher(broker)
    try:
        watcher.wait_for(lambda s: s["state"] == "running", 30, "a running status")
        svc.kill()  # SIGKILL: no DISCONNECT, the broker publishes the will
        will = watcher.wait_for(lambda s: s["state"] == "offline", 30, "the last will")
    finally:
        watcher.close()
    assert will["version"] == __version__ and isinstance(will["ts"], float)
    assert "connection lost" in will["reason"], will


def test_a_clean_stop_leaves_a_json_offline_status(tmp_path, broker, service_factory):
    svc = service_factory(write_config(tmp_path, broker)).start()
    watcher = StatusWatcher(broker)
    try:
        watcher.wait_for(lambda s: s["state"] == "running", 30, "a running status")
        code, _ = svc.terminate()
        last = watcher.wait_for(lambda s: s["state"] == "offline", 30, "the final status")
    finally:
        watcher.close()
    assert code == 0
    assert last["reason"] == "stopped cleanly" and "stages" in last, last
