"""``appliance bench ingest``: durable ingest rate against the bare paho rate, same run.

Both drain the same QoS 1 backlog from a private mosquitto:

* bare: a paho subscriber (MQTT v5, persistent session) that acknowledges in
  batches of ``batch`` messages and does nothing else — the ceiling;
* durable: the whole service (ingest → store → … ; each message acknowledged
  after its batch is committed to a DuckDB file).

The backlog is published while the subscriber is away, so publishing speed
does not enter the figure: rate = messages / (last commit − first message).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import Config, from_dict
from appliance.devtools.mosquitto import PrivateBroker
from appliance.mqtt.topics import Topics

ASSETS, SENSORS = 100, 5
#: The durable run's config keeps the default topics: the backlog goes where it subscribes.
TOPICS = Topics.from_config(Config())


def _backlog(broker: PrivateBroker, client_id: str, messages: int) -> None:
    """Register a persistent session, leave, and publish ``messages`` readings to it."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                      protocol=mqtt.MQTTv5)
    sub.connect(broker.host, broker.port, clean_start=True, properties=props)
    sub.subscribe([(t, 1) for t in TOPICS.subscriptions()])
    sub.loop(1.0)
    sub.disconnect()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    t0 = time.time() - 3600
    last = None
    for i in range(messages):
        topic = TOPICS.reading("l1", f"a{i % ASSETS:03d}", f"s{(i // ASSETS) % SENSORS}")
        last = pub.publish(topic, json.dumps({"ts": t0 + i * 0.001, "value": i % 997}), qos=1)
        if i % 5000 == 4999:
            last.wait_for_publish(60)
    if last is not None:
        last.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def bare_rate(broker: PrivateBroker, messages: int, batch: int = 1000) -> float:
    _backlog(broker, "bench-bare", messages)
    done = threading.Event()
    got: list[int] = []
    first: list[float] = []

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if not first:
            first.append(time.perf_counter())
        got.append(m.mid)
        if len(got) % batch == 0 or len(got) == messages:
            for mid in got[-batch:]:
                c.ack(mid, 1)
        if len(got) >= messages:
            done.set()

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 50_000
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare",
                    protocol=mqtt.MQTTv5)
    c.manual_ack_set(True)
    c.on_message = on_message
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    done.wait(600)
    end = time.perf_counter()
    c.disconnect()
    c.loop_stop()
    return len(got) / (end - first[0])


def durable_rate(broker: PrivateBroker, messages: int, data_dir: Path) -> tuple[float, float]:
    from appliance.service.runner import Service

    cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                              "client_id": "bench-durable"},
                     "storage": {"path": str(data_dir / "bench.duckdb")}},
                    source="<bench>")
    _backlog(broker, "bench-durable", messages)
    service = Service(cfg)
    store = service.pipeline.stages["store"]
    ingest = service.pipeline.stages["ingest"]
    service.start()
    while ingest.counters.processed == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while store.counters.processed < messages:
        time.sleep(0.02)
    end = time.perf_counter()
    rss_mb = _rss_mb()
    service.stop()
    return messages / (end - t0), rss_mb


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(json_output: bool = False, messages: int = 200_000) -> int:
    with tempfile.TemporaryDirectory() as tmp, PrivateBroker() as broker:
        bare = bare_rate(broker, messages)
        durable, rss = durable_rate(broker, messages, Path(tmp))
    result = {"messages": messages, "bare_paho_msg_per_s": round(bare),
              "durable_msg_per_s": round(durable), "ratio": round(durable / bare, 3),
              "service_rss_mb": round(rss, 1)}
    if json_output:
        print(json.dumps(result))
    else:
        print(f"bare paho (manual acks in batches): {bare:10,.0f} msg/s")
        print(f"durable (committed, then acked):    {durable:10,.0f} msg/s  "
              f"ratio {durable / bare:.2f}")
        print(f"service RSS after the run:          {rss:10.1f} MB")
    return 0
