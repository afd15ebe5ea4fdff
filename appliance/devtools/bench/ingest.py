"""``appliance bench ingest``: durable ingest rate against the bare paho rate, same run.

    appliance bench ingest [--payload reading|batch|both] [--messages N] [--sensors S]
                           [--json]

Both drain the same QoS 1 backlog from a private mosquitto:

* bare: a paho subscriber (MQTT v5, persistent session) that acknowledges in
  batches of ``batch`` messages and does nothing else — the ceiling;
* durable: the whole service (ingest → store → … ; each message acknowledged
  after its batch is committed to a DuckDB file).

The backlog is ``messages`` messages of one of two forms (``Topics``):

* ``reading``: one reading per message, ``plant/<line>/<asset>/<sensor>``,
  ``{"ts", "value"}`` (100 assets × 5 sensors);
* ``batch``: ``sensors`` readings per message, one asset's readings at one time,
  ``plant/<line>/<asset>``, ``{"ts", "values": {sensor: number, ...}}`` (100 assets).

``both`` (the default) measures the two forms one after the other, each on a
backlog of its own, and gives the ratio of their durable readings/s.

The backlog is published while the subscriber is away, so publishing speed
does not enter the figure: rate = messages / (last commit − first message).
The store counts readings, not messages: the durable run ends when it has stored
``messages × readings per message``.  The bare subscriber parses nothing: its
readings/s is its messages/s × the readings a message carries.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.config import Config, from_dict
from appliance.devtools.mosquitto import PrivateBroker
from appliance.mqtt.topics import Topics

ASSETS, SENSORS = 100, 5
#: Messages of each form in the default run (a ``both`` run then takes about a minute
#: and a half on a 2-core machine shared with other jobs).
MESSAGES = 50_000
#: Readings per message of the batch form, by default.
BATCH_SENSORS = 10
#: The durable run gives up when the store has taken nothing for this long.
STALL_S = 60.0
#: The durable run's config keeps the default topics: the backlog goes where it subscribes.
TOPICS = Topics.from_config(Config())


def per_message(payload: str, sensors: int) -> int:
    """Readings one message of the form carries."""
    return sensors if payload == "batch" else 1


def _backlog(broker: PrivateBroker, client_id: str, messages: int, payload: str = "reading",
             sensors: int = BATCH_SENSORS) -> None:
    """Register a persistent session, leave, and publish ``messages`` messages to it:
    one reading each (``payload="reading"``) or ``sensors`` readings each (``"batch"``)."""
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
    names = [f"s{j}" for j in range(sensors)]
    last = None
    for i in range(messages):
        asset = f"a{i % ASSETS:03d}"
        if payload == "batch":
            topic = TOPICS.batch("l1", asset)
            body = {"ts": t0 + i * 0.001,
                    "values": {s: (i + j) % 997 for j, s in enumerate(names)}}
        else:
            topic = TOPICS.reading("l1", asset, f"s{(i // ASSETS) % SENSORS}")
            body = {"ts": t0 + i * 0.001, "value": i % 997}
        last = pub.publish(topic, json.dumps(body), qos=1)
        if i % 5000 == 4999:
            last.wait_for_publish(60)
    if last is not None:
        last.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def bare_rate(broker: PrivateBroker, messages: int, batch: int = 1000,
              payload: str = "reading", sensors: int = BATCH_SENSORS,
              client_id: str = "bench-bare") -> float:
    """Messages/s a bare paho subscriber drains from a backlog of ``messages``."""
    _backlog(broker, client_id, messages, payload, sensors)
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
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
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


def durable_rate(broker: PrivateBroker, messages: int, data_dir: Path,
                 payload: str = "reading", sensors: int = BATCH_SENSORS,
                 client_id: str = "bench-durable") -> tuple[float, float]:
    """(messages/s, RSS MB after the run) of the whole service draining a backlog."""
    from appliance.service.runner import Service

    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                              "client_id": client_id},
                     "storage": {"path": str(data_dir / "bench.duckdb")}},
                    source="<bench>")
    _backlog(broker, client_id, messages, payload, sensors)
    readings = messages * per_message(payload, sensors)
    service = Service(cfg)
    store = service.pipeline.stages["store"]
    ingest = service.pipeline.stages["ingest"]
    service.start()
    while ingest.counters.processed == 0:  # messages
        time.sleep(0.001)
    t0 = time.perf_counter()
    seen, moved = 0, t0
    while store.counters.processed < readings:  # readings, not messages
        time.sleep(0.02)
        if store.counters.processed != seen:
            seen, moved = store.counters.processed, time.perf_counter()
        elif time.perf_counter() - moved > STALL_S:
            service.stop()
            raise RuntimeError(f"the service stored {seen:,} of {readings:,} readings and "
                               f"then none for {STALL_S:.0f} s")
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


def measure(broker: PrivateBroker, tmp: Path, messages: int, payload: str,
            sensors: int) -> dict[str, Any]:
    """One form's bare and durable rates, in messages/s and readings/s."""
    k = per_message(payload, sensors)
    suffix = "" if payload == "reading" else f"-{payload}"
    bare = bare_rate(broker, messages, payload=payload, sensors=sensors,
                     client_id=f"bench-bare{suffix}")
    durable, rss = durable_rate(broker, messages, tmp / payload, payload, sensors,
                                client_id=f"bench-durable{suffix}")
    return {"payload": payload, "messages": messages, "readings_per_message": k,
            "bare_paho_msg_per_s": round(bare), "bare_paho_readings_per_s": round(bare * k),
            "durable_msg_per_s": round(durable), "durable_readings_per_s": round(durable * k),
            "ratio": round(durable / bare, 3), "service_rss_mb": round(rss, 1)}


def run(json_output: bool = False, messages: int = MESSAGES, payload: str = "both",
        sensors: int = BATCH_SENSORS) -> int:
    forms = ["reading", "batch"] if payload == "both" else [payload]
    with tempfile.TemporaryDirectory() as tmp, PrivateBroker() as broker:
        results = {form: measure(broker, Path(tmp), messages, form, sensors) for form in forms}
    out: dict[str, Any] = dict(results)
    if len(results) == 2:
        out["batch_over_reading_readings_per_s"] = round(
            results["batch"]["durable_readings_per_s"]
            / results["reading"]["durable_readings_per_s"], 2)
    if json_output:
        print(json.dumps(out))
        return 0
    for r in results.values():
        what = ("one reading per message" if r["payload"] == "reading" else
                f"batches of {r['readings_per_message']} readings per message")
        print(f"{r['messages']:,} messages, {what}:")
        print(f"  bare paho (manual acks in batches): {r['bare_paho_msg_per_s']:10,} msg/s "
              f"{r['bare_paho_readings_per_s']:10,} readings/s")
        print(f"  durable (committed, then acked):    {r['durable_msg_per_s']:10,} msg/s "
              f"{r['durable_readings_per_s']:10,} readings/s  ratio {r['ratio']:.2f}")
        print(f"  service RSS after the run:          {r['service_rss_mb']:10.1f} MB")
    if "batch_over_reading_readings_per_s" in out:
        print(f"durable readings/s, batch / one per message: "
              f"{out['batch_over_reading_readings_per_s']:.2f}×")
    return 0
