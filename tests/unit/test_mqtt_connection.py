"""Connection failures are logged once per ``FAILURE_LOG_EVERY_S`` with their count, and
ingest reports itself degraded after ``[service] mqtt_down_after_s`` without a broker.

The paho callbacks are called as paho's network thread calls them, through the client
they are attached to; the clock is a ManualClock."""

from __future__ import annotations

import logging
import queue

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from appliance import config
from appliance.clock import ManualClock
from appliance.config import MqttConfig
from appliance.devtools.mosquitto import free_port
from appliance.mqtt.client import FAILURE_LOG_EVERY_S, ConnectionMonitor
from appliance.stages.ingest import IngestStage
from tests.support.faults import wait_until


def lines(caplog) -> list[str]:
    out = [r.getMessage() for r in caplog.records]
    caplog.clear()
    return out


def test_failed_connects_are_logged_at_most_once_per_period_with_their_count(caplog):
    caplog.set_level(logging.INFO, logger="appliance.mqtt.client")
    clock = ManualClock()
    monitor = ConnectionMonitor(MqttConfig(host="10.0.0.9", port=1884), "ingest", clock)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    monitor.attach(client)

    client.on_connect_fail(client, None)
    assert lines(caplog) == [
        "MQTT ingest cannot connect to 10.0.0.9:1884: no connection (broker down or "
        "unreachable) (1 failed attempt since the last report, 1 since the last "
        "connection); retrying"]
    for _ in range(5):
        clock.advance(FAILURE_LOG_EVERY_S / 6)
        client.on_connect_fail(client, None)
    assert lines(caplog) == []
    clock.advance(FAILURE_LOG_EVERY_S / 6)
    refused = ReasonCode(PacketTypes.CONNACK, "Not authorized")
    client.on_connect(client, None, None, refused, None)
    assert lines(caplog) == [
        "MQTT ingest cannot connect to 10.0.0.9:1884: refused: Not authorized (check "
        "[mqtt] username and the password: credential mqtt_password, password_file or "
        "password) (6 failed attempts since the last report, 7 since the last connection); "
        "retrying every 30 s"]
    assert not monitor.connected.is_set() and monitor.down_for() == FAILURE_LOG_EVERY_S
    # a refused password will be refused again: retry slowly, and say so
    assert monitor.retry_every_s == MqttConfig().reconnect_max_s
    assert monitor.problem(0).endswith(f"retrying every {MqttConfig().reconnect_max_s} s)")

    client.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    assert monitor.connected.is_set() and monitor.down_for() == 0.0
    assert monitor.retry_every_s is None  # the next outage backs off from reconnect_min_s
    assert "MQTT ingest connected to 10.0.0.9:1884 after 7 failed attempts" in lines(caplog)[0]

    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    client.on_disconnect(client, None, None, lost, None)
    assert "MQTT ingest disconnected from 10.0.0.9:1884 (Unspecified error)" in \
        lines(caplog)[0]
    clock.advance(3)
    assert monitor.down_for() == 3
    client.on_connect_fail(client, None)  # a new outage: its first failure is logged at once
    assert len(lines(caplog)) == 1


def test_our_own_disconnect_is_not_a_lost_connection(caplog):
    caplog.set_level(logging.INFO, logger="appliance.mqtt.client")
    seen: list[bool] = []
    monitor = ConnectionMonitor(MqttConfig(), "alert", ManualClock(), on_down=seen.append)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    monitor.attach(client)
    client.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    caplog.clear()
    client.on_disconnect(client, None, None, ReasonCode(PacketTypes.DISCONNECT, "Success"),
                         None)
    assert seen == [False] and lines(caplog) == []


def test_ingest_without_a_broker_reports_a_problem_after_the_grace_period():
    cfg = config.from_dict({"mqtt": {"port": free_port(), "reconnect_max_s": 1},
                            "service": {"mqtt_down_after_s": 10}})
    clock = ManualClock()
    ingest = IngestStage(cfg, queue.Queue(), queue.Queue())
    ingest.use_clock(clock)
    ingest.start()  # connects in the background to a port where nothing listens
    try:
        assert wait_until(lambda: ingest.link.failures >= 1, 10, "a failed connect") >= 0
        assert ingest.status()["connected"] is False and "problem" not in ingest.status()
        clock.advance(10.5)
        problem = ingest.status()["problem"]
        assert problem.startswith(f"MQTT not connected to 127.0.0.1:{cfg.mqtt.port} for 10 s")
        assert "last: no connection (broker down or unreachable)" in problem
    finally:
        ingest.close()


def test_the_alert_publisher_without_a_broker_reports_that_alerts_are_not_published():
    from appliance.stages.alert import AlertStage

    cfg = config.from_dict({"mqtt": {"port": free_port(), "reconnect_max_s": 1},
                            "service": {"mqtt_down_after_s": 10}})
    clock = ManualClock()
    alert = AlertStage(cfg, queue.Queue(), queue.Queue())
    alert.use_clock(clock)
    alert.start()
    try:
        assert wait_until(lambda: alert.link.failures >= 1, 10, "a failed connect") >= 0
        assert "problem" not in alert.status()
        clock.advance(10.5)
        assert alert.status()["problem"].startswith(
            f"alerts are not published: MQTT not connected to 127.0.0.1:{cfg.mqtt.port}")
    finally:
        alert.close()
