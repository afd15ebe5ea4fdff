"""``appliance bench memory``: the service's steady RSS with N assets.

The whole service runs (a private mosquitto, the DuckDB file, the model); the
readings enter at the store's queue as ingest would hand them on, so the figure
is reached in seconds rather than after an hour of MQTT traffic: 5 sensors per
asset, one reading per sensor every ``cadence`` seconds of event time, for
``minutes`` of event time (past the longest window, so every window is full).
Each minute is fed once the features stage has caught up with the last (no
backlog, as in steady operation); RSS is sampled then, and steady = the maximum
over the last half of the run.

Beside RSS, its anonymous part (``RssAnon``: the heaps, DuckDB's buffers, thread
stacks): the rest is library code and data mapped from files (~80 MB), of which
the kernel maps more or fewer pages depending on what the page cache holds, so it
moves by several MB between runs with other processes' memory use.  Compare two
builds by the anonymous figure, or by RSS measured back to back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.config import from_dict
from appliance.devtools.mosquitto import PrivateBroker
from appliance.messages import Inbound, SeriesKey

SENSORS = ("ambient_temp", "lube_temp", "motor_current", "oil_pressure", "vibration")


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def anon_mb(pid: int | None = None) -> float:
    """The anonymous part of RSS (``RssAnon``), MB."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(json_output: bool = False, assets: int = 1000, minutes: int = 75) -> int:
    from appliance.service.runner import Service

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp, PrivateBroker() as broker:
        cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                                  "client_id": "bench-memory"},
                         "storage": {"path": str(Path(tmp) / "bench.duckdb")}},
                        source="<bench>")
        service = Service(cfg)
        service.start()
        idle = rss_mb()
        keys = [SeriesKey("line1", f"asset{a:04d}", s) for a in range(assets) for s in SENSORS]
        base = np.array([40.0, 60.0, 12.0, 3.5, 2.0] * assets)
        inbound = service.pipeline.queues["inbound"]
        store = service.pipeline.stages["store"]
        features = service.pipeline.stages["features"]
        t0 = time.time() - minutes * 60 - 60
        samples = []
        anon = []
        started = time.perf_counter()
        for minute in range(minutes):
            for tick in range(6):  # one reading per sensor every 10 s
                ts = np.full(len(keys), t0 + minute * 60 + tick * 10 + 5.0)
                values = base + rng.normal(0, 0.5, len(keys))
                inbound.put(Inbound(tuple(keys), ts, values, (), (), 0, ()))
            fed = (minute + 1) * 6 * len(keys)
            while features.counters.processed < fed:  # steady: no backlog in the queues
                time.sleep(0.01)
            samples.append(rss_mb())
            anon.append(anon_mb())
        total = minutes * 6 * len(keys)
        while store.counters.processed < total or features.counters.processed < total:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        for _ in range(10):  # the queues below features empty out
            time.sleep(0.3)
            samples.append(rss_mb())
            anon.append(anon_mb())
        service.stop()
    steady = max(samples[len(samples) // 2:])
    steady_anon = max(anon[len(anon) // 2:])
    result = {"assets": assets, "series": len(keys), "event_minutes": minutes,
              "idle_rss_mb": round(idle, 1),
              "readings": total, "steady_rss_mb": round(steady, 1),
              "steady_anon_mb": round(steady_anon, 1),
              "readings_per_s": round(total / elapsed)}
    if json_output:
        print(json.dumps(result))
    else:
        print(f"{assets} assets ({len(keys)} series), {minutes} min of event time, "
              f"{total:,} readings through store → features → predict → record")
        print(f"RSS: {idle:.1f} MB started, {steady:.1f} MB steady "
              f"(throughput {total / elapsed:,.0f} readings/s); anonymous {steady_anon:.1f} MB "
              f"steady (the rest is mapped from library files)")
    return 0
