"""``appliance bench capacity``: what this gateway carries at the user's mix.

Three processes besides a private mosquitto, so none shares another's GIL:

* the service (``runner.Service`` in a spawned child, its threads named after their
  stages in ``/proc``, so the per-thread CPU time says which stage spends it; the
  MQTT network threads are ``mqtt-<role>``, ingest's ``ingest-mqtt``; threads Python
  did not start (DuckDB's, onnxruntime's) are ``native``);
* a publisher (another child) sending the mix's readings at their wall-clock rate,
  event time = the wall time of the tick, as one reading per message
  (``plant/<line>/<asset>/<sensor>``) or one batch per asset and tick
  (``plant/<line>/<asset>``, ``{"ts", "values"}``);
* this process, which reads the service's status file (per-stage counters, queue
  depths; written every second), ``/proc/<pid>`` (RSS, CPU per thread) and asks the
  control socket for the newest prediction's tick.

Steps: the mix's rate for ``seconds``, then ×1.5 per step for ``seconds / 3`` each,
while every step was sustained (at most ``MAX_STEPS``).  A step is sustained when
the publisher kept its schedule, a second after its last publish the features stage
is at most ``BEHIND_S`` of readings behind what was published, and the queue depths
at its end are no larger than at its start (+2 batches).  The bare paho subscriber's
rate (``bench ingest``'s ``bare_rate``) is measured on a backlog of one-reading
messages in the same run.

Latency: tick → prediction is the wall time at which a poll of the control socket
(every ~0.5 s: ``max(ts) FROM predictions``) first sees a tick's prediction rows,
less the tick's event time (the readings' ts is their publish time): it holds the
wait for the reading that closes the tick, the store's commit, features, predict,
record's commit, and up to one poll (an upper bound, ±0.5 s).  Tick → alert: the
arrival of each raised alert on MQTT less its ``ts`` (its tick).

The bench sets ``[pipeline] warmup_s = 0`` (the warm-up decides which ticks are
predicted, not what a prediction costs) so predictions start with the first ticks.

The mix and ``--config``: the service runs with the user's config (``--config FILE``,
else the defaults) but a private broker and database, and the publisher uses its
topic prefix and ``[mqtt] qos``.  The config names the sensors (``[pipeline.sensors]``
tables): without ``--sensors`` the mix has those, by those names (5 of the simulator's
when it names none).  It holds no asset count and no reading rate: ``--assets``
(default 1000) and ``--hz`` (default 1) say them; ``--payload`` (default ``reading``)
the form.  Flags override the config.  A mix the config's ``[limits]`` would refuse
(more series than ``max_series``, a batch larger than ``max_payload_bytes``) is
named in the report's ``notes``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from appliance.config import Config
from appliance.config import load as load_config
from appliance.devtools.bench.ingest import bare_rate
from appliance.devtools.bench.memory import SENSORS, rss_mb
from appliance.devtools.mosquitto import PrivateBroker
from appliance.mqtt.topics import Topics

LINE = "line1"
STEP_FACTOR = 1.5
MAX_STEPS = 5
#: One-reading messages in the bare paho backlog.
BARE_MESSAGES = 50_000
#: A step is sustained when, a second after its last publish, the readings the service
#: has not taken yet are at most this many seconds of the rate.
BEHIND_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


DEFAULT_ASSETS, DEFAULT_HZ, DEFAULT_PAYLOAD = 1000, 1.0, "reading"


@dataclasses.dataclass(frozen=True)
class Mix:
    assets: int
    sensors: int
    hz: float
    payload: str  # "reading" | "batch"
    #: The first sensors' names (the config's); the rest are the simulator's, then s<i>.
    names: tuple[str, ...] = ()

    @property
    def readings_per_s(self) -> float:
        return self.assets * self.sensors * self.hz

    def sensor_names(self) -> tuple[str, ...]:
        rest = [s for s in SENSORS if s not in self.names]
        pool = [*self.names, *rest]
        return tuple(pool[i] if i < len(pool) else f"s{i}" for i in range(self.sensors))

    def as_dict(self) -> dict[str, Any]:
        return {"assets": self.assets, "sensors": self.sensors, "hz": self.hz,
                "payload": self.payload, "readings_per_s": self.readings_per_s}


def resolve_mix(cfg: Config, assets: int | None = None, sensors: int | None = None,
                hz: float | None = None, payload: str | None = None
                ) -> tuple[Mix, dict[str, str]]:
    """The mix from the flags given (not None), else the config, else the defaults; and
    where each of its figures came from."""
    declared = tuple(name for name, _ in cfg.pipeline.sensors)
    source = {"assets": "flag" if assets is not None else "default (the config holds none)",
              "hz": "flag" if hz is not None else "default (the config holds none)",
              "payload": "flag" if payload is not None else "default"}
    if sensors is not None:
        source["sensors"] = "flag"
    elif declared:
        sensors, source["sensors"] = len(declared), "config [pipeline.sensors]"
    else:
        sensors, source["sensors"] = len(SENSORS), "default (the config names none)"
    mix = Mix(DEFAULT_ASSETS if assets is None else assets, sensors,
              DEFAULT_HZ if hz is None else hz, payload or DEFAULT_PAYLOAD, declared)
    return mix, source


def notes(cfg: Config, mix: Mix) -> list[str]:
    """What in the config's ``[limits]`` the mix runs into."""
    out = []
    series = mix.assets * mix.sensors
    if series > cfg.limits.max_series:
        out.append(f"{series:,} series exceed [limits] max_series = "
                   f"{cfg.limits.max_series:,}: the service refuses the rest")
    if mix.payload == "batch":
        size = len(json.dumps({"ts": time.time(), "values": dict.fromkeys(
            mix.sensor_names(), 99999.999)}))
        if size > cfg.limits.max_payload_bytes:
            out.append(f"a batch of {mix.sensors} sensors (~{size:,} bytes) exceeds [limits] "
                       f"max_payload_bytes = {cfg.limits.max_payload_bytes:,}")
    return out


def bench_config(base: Config, broker: PrivateBroker, data_dir: Path) -> Config:
    """The user's config with the private broker, a fresh database, a status every
    second and no warm-up."""
    return dataclasses.replace(
        base,
        mqtt=dataclasses.replace(base.mqtt, host=broker.host, port=broker.port,
                                 client_id="bench-capacity", username="", password="",
                                 password_file="", tls_ca="", tls_cert="", tls_key=""),
        storage=dataclasses.replace(base.storage, path=str(data_dir / "capacity.duckdb")),
        status=dataclasses.replace(base.status, interval_s=1.0),
        pipeline=dataclasses.replace(base.pipeline, warmup_s=0.0),
    )


# --- the service child -------------------------------------------------------------

def _name_threads(cfg: Config) -> None:
    """Give each thread's OS name (``/proc/self/task/<tid>/comm``) its stage's name."""
    for task in Path("/proc/self/task").iterdir():  # DuckDB's, onnxruntime's threads
        with contextlib.suppress(OSError):
            (task / "comm").write_text("native")
    for t in threading.enumerate():
        name = t.name
        if name.startswith("paho-mqtt-client-"):
            client = name.removeprefix("paho-mqtt-client-")
            role = client.removeprefix(cfg.mqtt.client_id).lstrip("-") or "ingest"
            name = "ingest-mqtt" if role == "ingest" else f"mqtt-{role}"
        if t.native_id is None:
            continue
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            Path(f"/proc/self/task/{t.native_id}/comm").write_text(name[:15])


def _serve(cfg: Config, stop: Any) -> None:
    from appliance.service.runner import Service

    service = Service(cfg)
    service.start()
    named = 0.0
    while not stop.wait(0.2):
        service.beat()
        if time.monotonic() >= named + 1.0:  # threads a stage starts later (its client's)
            _name_threads(cfg)
            named = time.monotonic()
    service.stop()


# --- the publisher child -----------------------------------------------------------

def _publish(host: str, port: int, topics: Topics, qos: int, mix: Mix, seconds: float,
             result: Any) -> None:
    """Publish ``mix`` for ``seconds``; put (readings sent, seconds, largest lag s, CPU s)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    sensors = mix.sensor_names()
    assets = [f"a{i:04d}" for i in range(mix.assets)]
    rng = np.random.default_rng(0)
    reading_topics = [[topics.reading(LINE, a, s) for s in sensors] for a in assets]
    batch_topics = [topics.batch(LINE, a) for a in assets]
    base = rng.uniform(1.0, 100.0, (mix.assets, mix.sensors))
    period = 1.0 / mix.hz
    start = time.time()
    sent, lag, k = 0, 0.0, 0
    while True:
        tick = start + k * period
        if tick >= start + seconds:
            break
        now = time.time()
        if now < tick:
            time.sleep(tick - now)
        lag = max(lag, time.time() - tick)
        values = (base + rng.normal(0.0, 0.5, base.shape)).round(3).tolist()
        for i, row in enumerate(values):
            if mix.payload == "batch":
                client.publish(batch_topics[i], json.dumps(
                    {"ts": tick, "values": dict(zip(sensors, row, strict=True))}), qos=qos)
            else:
                for topic, v in zip(reading_topics[i], row, strict=True):
                    client.publish(topic, json.dumps({"ts": tick, "value": v}), qos=qos)
            sent += mix.sensors
        k += 1
    elapsed = time.time() - start
    client.disconnect()
    client.loop_stop()
    result.put((sent, elapsed, lag, time.process_time()))


# --- measuring ---------------------------------------------------------------------

def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of ``pid`` (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def _status(cfg: Config) -> dict | None:
    from appliance.service.status import status_file

    try:
        return json.loads(status_file(cfg).read_text())
    except (OSError, ValueError):
        return None


def _newest_tick(cfg: Config) -> float | None:
    from appliance.service import control

    try:
        reply = control.ask(cfg.socket_path(), {"op": "sql", "limit": 1, "query":
                                                "SELECT epoch(max(ts)) FROM predictions"}, 5.0)
    except OSError:
        return None
    if not reply or not reply.get("ok") or not reply.get("rows"):
        return None
    value = reply["rows"][0][0]
    return None if value is None else float(value)


def _db_bytes(cfg: Config) -> int:
    path = cfg.resolve(cfg.storage.path)
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal"))
               if p.exists())


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "samples": 0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "samples": len(values)}


class Watch:
    """Samples the service while a step runs: status, RSS, newest prediction, alerts."""

    def __init__(self, cfg: Config, pid: int) -> None:
        self.cfg, self.pid = cfg, pid
        self.rss: list[tuple[float, float]] = []  # (monotonic s, MB) of the current step
        self.prediction_latency: list[float] = []
        self.alert_latency: list[float] = []
        self._last_tick = -math.inf
        self._alerts = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._alerts.on_message = self._on_alert
        self._alerts.connect(cfg.mqtt.host, cfg.mqtt.port)
        self._alerts.subscribe(f"{cfg.alerts.topic_prefix}/+/+/alert", 0)
        self._alerts.loop_start()

    def _on_alert(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if m.retain:
            return
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        if doc.get("state") == "raised" and isinstance(doc.get("ts"), int | float):
            self.alert_latency.append(time.time() - doc["ts"])

    def sample(self) -> None:
        self.rss.append((time.monotonic(), rss_mb(self.pid)))
        tick = _newest_tick(self.cfg)
        if tick is not None and tick > self._last_tick:
            if self._last_tick > -math.inf:  # the first seen may be old
                self.prediction_latency.append(time.time() - tick)
            self._last_tick = tick

    def step(self, mix: Mix, seconds: float) -> dict[str, Any]:
        """Publish ``mix`` for ``seconds`` from a child; what the service did meanwhile."""
        ctx = mp.get_context("spawn")
        result = ctx.Queue()
        before, cpu0, t0 = _status(self.cfg), thread_cpu(self.pid), time.monotonic()
        self.rss = []
        pub = ctx.Process(target=_publish, args=(self.cfg.mqtt.host, self.cfg.mqtt.port,
                                                 Topics.from_config(self.cfg),
                                                 self.cfg.mqtt.qos, mix, seconds, result))
        pub.start()
        depths = []
        while pub.is_alive():
            self.sample()
            snap = _status(self.cfg)
            if snap:
                depths.append(sum(snap["queues"].values()))
            time.sleep(0.5)
        sent, pub_s, lag, pub_cpu = result.get(timeout=30)
        pub.join()
        published = time.time()
        after = _status(self.cfg)
        # a snapshot taken a second after the last reading was published: what the
        # service took by then (a sustained rate leaves no backlog longer than that)
        while after is None or after["ts"] < published + 1.0:
            time.sleep(0.2)
            after = _status(self.cfg)
        cpu1, t1 = thread_cpu(self.pid), time.monotonic()
        assert before is not None
        took = (after["stages"]["features"]["processed"]
                - before["stages"]["features"]["processed"])
        start_depth = sum(before["queues"].values())
        end_depth = sum(after["queues"].values())
        kept_schedule = sent >= 0.95 * mix.readings_per_s * seconds and lag < 1.0
        # a second after the last publish the service is at most BEHIND_S behind
        behind_s = max(0, sent - took) / mix.readings_per_s
        sustained = kept_schedule and behind_s <= BEHIND_S and end_depth <= start_depth + 2
        span = t1 - t0
        cpu = {name: round(100 * (cpu1.get(name, 0.0) - cpu0.get(name, 0.0)) / span, 1)
               for name in cpu1}
        return {"hz": mix.hz, "readings_per_s_target": round(mix.readings_per_s, 1),
                "readings_sent": sent, "readings_per_s_sent": round(sent / pub_s, 1),
                "readings_per_s_taken": round(took / pub_s, 1),
                "behind_s": round(behind_s, 2), "publisher_lag_s": round(lag, 3),
                "publisher_kept_up": kept_schedule,
                "queue_depth_start": start_depth, "queue_depth_end": end_depth,
                "queue_depth_max": max(depths, default=0), "sustained": sustained,
                "seconds": round(span, 1),
                "cpu_percent": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
                "service_cpu_percent": round(sum(cpu.values()), 1),
                "publisher_cpu_percent": round(100 * pub_cpu / pub_s, 1),
                "steady_rss_mb": round(max(m for _, m in self.rss[len(self.rss) // 2:]), 1),
                "rss_slope_mb_per_min": round(_slope_mb_per_min(self.rss), 2),
                "readings_total": after["stages"]["features"]["processed"]}

    def close(self) -> None:
        self._alerts.disconnect()
        self._alerts.loop_stop()


def _slope_mb_per_min(rss: list[tuple[float, float]]) -> float:
    tail = rss[len(rss) // 2:]
    if len(tail) < 2:
        return 0.0
    t = np.array([s for s, _ in tail]) / 60.0
    return float(np.polyfit(t - t[0], [m for _, m in tail], 1)[0])


def measure(mix: Mix, seconds: float, base: Config, bare_messages: int = BARE_MESSAGES
            ) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="appliance-bench-capacity-") as tmp, \
            PrivateBroker() as broker:
        bare = bare_rate(broker, bare_messages)
        cfg = bench_config(base, broker, Path(tmp))
        stop = ctx.Event()
        child = ctx.Process(target=_serve, args=(cfg, stop), name="appliance-service")
        child.start()
        assert child.pid is not None
        deadline = time.monotonic() + 60
        while _status(cfg) is None:
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (see its log above)")
            time.sleep(0.2)
        watch = Watch(cfg, child.pid)
        try:
            db0 = _db_bytes(cfg)
            steps = [watch.step(mix, seconds)]
            rate = mix
            while steps[-1]["sustained"] and len(steps) <= MAX_STEPS:
                rate = dataclasses.replace(rate, hz=rate.hz * STEP_FACTOR)
                steps.append(watch.step(rate, max(5.0, seconds / 3)))
            stored = steps[-1]["readings_total"]
            db_bytes = _db_bytes(cfg) - db0
        finally:
            watch.close()
            stop.set()
            child.join(30)
    first = steps[0]
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["hz"], default=None)
    # the highest message rate the service took in a sustained step (the first step's
    # when none was): a lower bound of its ceiling unless the last step failed
    top_msg = (best or first)["readings_per_s_taken"] / (
        1 if mix.payload == "reading" else mix.sensors)
    bpr = db_bytes / stored if stored else float("nan")
    return {
        "mix": mix.as_dict(),
        "sensor_names": list(mix.sensor_names()),
        "sustained": first["sustained"],
        "highest_sustained_hz": best["hz"] if best else None,
        "highest_sustained_readings_per_s": best["readings_per_s_taken"] if best else None,
        "headroom_percent": (round(100 * (best["hz"] / mix.hz - 1)) if best else None),
        "bare_paho_msg_per_s": round(bare),
        "service_msg_per_s": round(top_msg),
        "ratio": round(top_msg / bare, 4),
        "reading_to_prediction_s": _percentiles(watch.prediction_latency),
        "tick_to_alert_s": _percentiles(watch.alert_latency),
        "cpu_percent": first["cpu_percent"],
        "service_cpu_percent": first["service_cpu_percent"],
        "publisher_cpu_percent": first["publisher_cpu_percent"],
        "steady_rss_mb": first["steady_rss_mb"],
        "rss_slope_mb_per_min": first["rss_slope_mb_per_min"],
        "bytes_per_reading": round(bpr, 1),
        "db_growth_mb_per_day": round(bpr * mix.readings_per_s * 86400 / 1e6, 1),
        "steps": steps,
    }


def verdict(r: dict[str, Any]) -> str:
    m = r["mix"]
    what = f"{m['assets']} assets × {m['sensors']} sensors at {m['hz']:g} Hz"
    if r["sustained"]:
        top = r["highest_sustained_hz"]
        more = " (or more: the last step was sustained)" if r["steps"][-1]["sustained"] else ""
        return f"this gateway sustains {what} with {r['headroom_percent']} % headroom " \
               f"(up to {top:.3g} Hz{more})"
    s = r["steps"][0]
    why = ("the publisher could not keep its schedule" if not s["publisher_kept_up"]
           else f"it took {s['readings_per_s_taken']:,.0f} of {s['readings_per_s_target']:,.0f}"
           f" readings/s, queues {s['queue_depth_start']} → {s['queue_depth_end']}")
    return f"this gateway does not sustain {what}: {why}"


def table(r: dict[str, Any]) -> str:
    def lat(d: dict) -> str:
        return "-" if d["p50"] is None else \
            f"{d['p50']:.2f} / {d['p99']:.2f} s ({d['samples']} samples)"

    m = r["mix"]
    rows = [
        ("mix", f"{m['assets']} assets × {m['sensors']} sensors at {m['hz']:g} Hz, "
                f"{m['payload']} payload = {m['readings_per_s']:,.0f} readings/s"),
        ("mix from", f"{r['config'] or 'default config'}: " + ", ".join(
            f"{k} {v}" for k, v in r["mix_source"].items()) + "; sensors "
            + ", ".join(r["sensor_names"])),
        ("sustained at the mix", "yes" if r["sustained"] else "no"),
        ("highest rate sustained", "-" if r["highest_sustained_hz"] is None else
         f"{r['highest_sustained_hz']:.3g} Hz = {r['highest_sustained_readings_per_s']:,.0f} "
         f"readings/s"),
        ("service / bare paho", f"{r['service_msg_per_s']:,} / {r['bare_paho_msg_per_s']:,} "
                                f"msg/s (ratio {r['ratio']:.2f}; bare = drained backlog)"),
        ("tick → prediction p50 / p99", lat(r["reading_to_prediction_s"])),
        ("tick → alert p50 / p99", lat(r["tick_to_alert_s"])),
        ("steady RSS, slope (at the mix)",
         f"{r['steady_rss_mb']:.0f} MB, {r['rss_slope_mb_per_min']:+.2f} MB/min"),
        ("database growth (before retention)", f"{r['bytes_per_reading']:.1f} B/reading = "
                                               f"{r['db_growth_mb_per_day']:,.0f} MB/day"),
        ("CPU % of a core", f"service {r['service_cpu_percent']:g}, publisher "
                            f"{r['publisher_cpu_percent']:g} (mosquitto not counted)"),
        ("CPU % per thread", ", ".join(f"{k} {v:g}" for k, v in r["cpu_percent"].items()
                                       if v >= 0.1)),
    ]
    lines = [f"| {k} | {v} |" for k, v in rows]
    lines.append("")
    lines.append("| step Hz | readings/s sent | taken | behind s | queues start → end (max) | "
                 "service CPU % | publisher lag s | sustained |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for s in r["steps"]:
        lines.append(f"| {s['hz']:.3g} | {s['readings_per_s_sent']:,.0f} | "
                     f"{s['readings_per_s_taken']:,.0f} | {s['behind_s']:.2f} | "
                     f"{s['queue_depth_start']} → {s['queue_depth_end']} "
                     f"({s['queue_depth_max']}) | {s['service_cpu_percent']:g} | "
                     f"{s['publisher_lag_s']:.2f} | {'yes' if s['sustained'] else 'no'} |")
    lines.append("")
    lines.extend(f"note: {n}" for n in r["notes"])
    lines.append(verdict(r))
    return "\n".join(["| | |", "|---|---|", *lines])


def run(config: str | None, assets: int | None, sensors: int | None, hz: float | None,
        payload: str | None, seconds: float, json_output: bool = False,
        bare_messages: int = BARE_MESSAGES) -> int:
    """The mix from the flags given (not None), else ``config``, else the defaults."""
    base = load_config(config) if config else Config()
    mix, source = resolve_mix(base, assets, sensors, hz, payload)
    result = measure(mix, seconds, base, bare_messages)
    result["config"] = config
    result["mix_source"] = source
    result["notes"] = notes(base, mix)
    result["verdict"] = verdict(result)
    print(json.dumps(result) if json_output else table(result))
    return 0
