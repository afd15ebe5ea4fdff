"""``appliance replay``: a recorded readings file published over MQTT into a running service.

The file is read as ``appliance import`` reads it (same forms, checks and name rules,
into an in-memory database), then each reading is published, oldest first, to its
reading topic as ``{"ts": <event time>, "value": ...}`` with QoS 1, so the service
stores and scores it as a live reading with its recorded event time.

Pace: as fast as the broker acknowledges (at most ``MAX_PENDING`` unacknowledged),
or with ``speedup`` X, X event seconds per wall second from the first reading.

The service sets aside a reading more than ``[limits] max_future_s`` ahead of its
clock or more than ``max_past_s`` behind it.  Before publishing anything, replay
checks every reading against the time it will be published and refuses, naming
the key, when one would be set aside; ``shift_to_now`` moves every event time by
one offset so the last reading lands at the replay's end (the spacing kept).

The service deduplicates only MQTT redeliveries, not readings: a second replay
of the same file stores every reading again.  ``appliance import`` is the way to
load history that may already be stored (it skips what is).
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from appliance.clock import Clock, WallClock
from appliance.config import Config
from appliance.importer.command import import_files
from appliance.importer.report import ImportRefused, ImportReport
from appliance.importer.staging import DEFAULT_LINE
from appliance.mqtt.client import connect, make_client
from appliance.mqtt.topics import Topics
from appliance.storage.database import open_memory
from appliance.timefmt import rfc3339

#: Messages published and not yet acknowledged, at most: the replay waits for the
#: broker rather than queue a whole file in paho's memory.
MAX_PENDING = 100
#: Seconds to wait for the broker's CONNACK, and for each acknowledgement.
TIMEOUT_S = 30.0


@dataclass
class ReplayResult:
    """What a replay did: the file's import report and the messages acknowledged."""

    report: ImportReport
    published: int
    first_ts: float
    last_ts: float
    shift_s: float


def read(path: str | Path, *, asset: str | None = None, line: str = DEFAULT_LINE,
         renames: Mapping[str, str] | None = None, ignore: Collection[str] = ()
         ) -> tuple[ImportReport, list[tuple[str, str, str]], np.ndarray, np.ndarray]:
    """The file's readings as ``appliance import`` reads them: its report, the series
    (line, asset, sensor) of each reading, event times and values, oldest first."""
    con = open_memory()
    try:
        (report,) = import_files(con, path, None, renames, ignore, asset=asset, line=line,
                            max_future_s=math.inf)
        rows = con.execute("SELECT line, asset, sensor, epoch_us(ts) / 1e6, value "
                           "FROM readings ORDER BY ts, line, asset, sensor").fetchall()
    finally:
        con.close()
    keys = [(r[0], r[1], r[2]) for r in rows]
    return (report, keys, np.array([r[3] for r in rows], dtype=np.float64),
            np.array([r[4] for r in rows], dtype=np.float64))


def schedule(ts: np.ndarray, start: float, speedup: float | None, shift_to_now: bool
             ) -> tuple[np.ndarray, float]:
    """(wall time each reading is due, shift added to its event time).  As fast as
    acknowledged (None) every reading is due at ``start``."""
    if not len(ts):
        return ts, 0.0
    due = (np.full(len(ts), start) if speedup is None
           else start + (ts - ts[0]) / speedup)
    return due, (float(due[-1] - ts[-1]) if shift_to_now else 0.0)


def check_limits(ts: np.ndarray, due: np.ndarray, cfg: Config) -> None:
    """ImportRefused when the service would set aside a reading for its time (see the
    module docstring), naming the key, the first such reading, and the way out."""
    limits = cfg.limits
    ahead = ts - due
    for bad, key, what in ((ahead > limits.max_future_s, "max_future_s", "ahead of"),
                           (-ahead > limits.max_past_s, "max_past_s", "behind")):
        if bad.any():
            i = int(np.argmax(bad))
            raise ImportRefused(
                f"{int(bad.sum())} of {len(ts)} readings would be set aside by the service: "
                f"the first, at {rfc3339(float(ts[i]))}, is {abs(ahead[i]):.0f} s {what} the "
                f"clock when it is published, over [limits] {key} = "
                f"{getattr(limits, key):g} s; --shift-to-now moves the readings to end now, "
                f"or raise {key} in the service's config")


def replay(path: str | Path, cfg: Config, *, speedup: float | None = None,
           shift_to_now: bool = False, asset: str | None = None, line: str = DEFAULT_LINE,
           renames: Mapping[str, str] | None = None, ignore: Collection[str] = (),
           clock: Clock | None = None, progress: Any = None) -> ReplayResult:
    """Publish the readings of ``path`` to the broker of ``cfg`` (see the module docstring)."""
    if speedup is not None and not (math.isfinite(speedup) and speedup > 0):
        raise ValueError(f"--speedup must be a positive number, got {speedup!r}")
    clock = clock or WallClock()
    say = progress or (lambda _m: None)
    report, keys, ts, values = read(path, asset=asset, line=line, renames=renames,
                                    ignore=ignore)
    if not len(ts):
        raise ValueError(report.nothing_stored() or f"no readings in {path}")
    due, shift = schedule(ts, clock.time(), speedup, shift_to_now)
    check_limits(ts + shift, due, cfg)
    topics = Topics.from_config(cfg)
    client, props = make_client(cfg.mqtt, "replay")
    client.max_inflight_messages_set(MAX_PENDING)
    client.loop_start()
    try:
        _connect(client, cfg, props, clock)
        say(f"publishing {len(ts)} readings")
        pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        wall0 = clock.time()
        for i, (key, t, v) in enumerate(zip(keys, ts.tolist(), values.tolist(), strict=True)):
            wait = due[i] - due[0] - (clock.time() - wall0)
            if wait > 0:
                clock.sleep(wait)
            pending.append(client.publish(topics.reading(*key),
                                          json.dumps({"ts": t + shift, "value": v}), qos=1))
            while len(pending) >= MAX_PENDING:
                _acknowledged(pending.popleft(), i)
        while pending:
            _acknowledged(pending.popleft(), len(ts))
    finally:
        client.disconnect()
        client.loop_stop()
    return ReplayResult(report, len(ts), float(ts[0]) if len(ts) else math.nan,
                        float(ts[-1]) if len(ts) else math.nan, shift)


def _acknowledged(info: mqtt.MQTTMessageInfo, sent: int) -> None:
    """Wait for the broker's PUBACK; ConnectionError when it does not come (a dropped
    connection: paho raises from ``wait_for_publish`` then)."""
    try:
        info.wait_for_publish(TIMEOUT_S)
    except (RuntimeError, ValueError) as exc:
        raise ConnectionError(f"the connection to the broker failed after {sent} readings "
                              f"were published ({exc}); the broker keeps what it "
                              f"acknowledged: replay the rest with a file that holds it"
                              ) from None
    if not info.is_published():
        raise ConnectionError(f"the broker did not acknowledge a message within "
                              f"{TIMEOUT_S:g} s ({sent} readings published)")


def _connect(client: mqtt.Client, cfg: Config, props: Any, clock: Clock) -> None:
    """Connect, or ConnectionError naming the broker."""
    connected: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(
        not getattr(reason, "is_failure", False))
    connect(client, cfg.mqtt, props)
    deadline = clock.monotonic() + TIMEOUT_S
    while not connected and clock.monotonic() < deadline:
        clock.sleep(0.02)
    if not connected or not connected[-1]:
        raise ConnectionError(f"replay: MQTT broker {cfg.mqtt.host}:{cfg.mqtt.port} "
                              f"{'refused the connection' if connected else 'did not answer'}")
