"""The line simulator: determinism, physics (precursors before faults), sensor faults, outputs."""

from __future__ import annotations

import csv
import json
import math
import re
import threading
import time
from datetime import datetime
from typing import ClassVar

import numpy as np
import pytest

from appliance.clock import ManualClock
from appliance.config import Config
from appliance.devtools import simulator
from appliance.devtools.simulator import (
    SENSORS,
    LineSimulator,
    SimParams,
    simulate_history,
    to_files,
)
from appliance.messages import FaultEvent, Reading
from appliance.mqtt.topics import Route, Topics
from tests.support.faults import wait_until

HOUR = 3600.0
TOPICS = Topics.from_config(Config())  # where publish() puts readings by default


@pytest.fixture(scope="module")
def history() -> simulator.History:
    """Two days of 8 assets at one reading per 10 s (seed 3)."""
    return simulate_history(days=2, assets=8, hz=0.1, seed=3)


def _steps(seed: int, n: int, assets: int = 4, hz: float = 1.0) -> list[simulator.Step]:
    return list(LineSimulator(assets, hz, seed, start_ts=1_700_000_000.0).steps(n))


def test_same_seed_gives_same_readings_and_events():
    a, b = _steps(11, 3000), _steps(11, 3000)
    np.testing.assert_array_equal(np.stack([s.values for s in a]),
                                  np.stack([s.values for s in b]))  # NaN == NaN here
    np.testing.assert_array_equal(np.stack([s.ts for s in a]), np.stack([s.ts for s in b]))
    assert [s.faults for s in a] == [s.faults for s in b]


def test_other_seed_gives_other_readings():
    a, b = _steps(11, 50), _steps(12, 50)
    va, vb = np.stack([s.values for s in a]), np.stack([s.values for s in b])
    both = ~np.isnan(va) & ~np.isnan(vb)
    assert np.mean(va[both] != vb[both]) > 0.9


def test_messages_carry_exactly_the_present_readings():
    sim_a = LineSimulator(3, 1.0, seed=5, start_ts=1000.0, line="lineX")
    sim_b = LineSimulator(3, 1.0, seed=5, start_ts=1000.0, line="lineX")
    for (readings, faults), step in zip(sim_a.messages(400), sim_b.steps(400), strict=True):
        assert len(readings) == np.count_nonzero(~np.isnan(step.values))
        assert faults == step.faults
        for r in readings:
            assert isinstance(r, Reading)
            i = sim_a.assets.index(r.key.asset)
            j = SENSORS.index(r.key.sensor)
            assert r.key.line == "lineX"
            assert r.ts == step.ts[i]
            assert r.value == step.values[i, j]


def test_history_equals_the_step_generator():
    hist = simulate_history(days=0.02, assets=3, hz=0.5, seed=9, start_ts=5000.0)
    steps = list(LineSimulator(3, 0.5, 9, 5000.0).steps(len(hist.ts)))
    np.testing.assert_array_equal(hist.values, np.stack([s.values for s in steps]))
    np.testing.assert_array_equal(hist.ts, np.stack([s.ts for s in steps]))


def test_asset_names_and_shapes():
    sim = LineSimulator(12, 2.0, seed=1, start_ts=0.0)
    assert sim.assets[0] == "asset01" and sim.assets[-1] == "asset12"
    step = sim.step()
    assert step.values.shape == (12, len(SENSORS)) and step.ts.shape == (12,)
    # Every asset reads within one sampling period after the step time.
    assert np.all((step.ts >= 0.0) & (step.ts < 0.5))


@pytest.mark.parametrize("kwargs", [
    {"assets": 0, "hz": 1.0}, {"assets": 2, "hz": 0.0}, {"assets": 2, "hz": math.nan},
])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        LineSimulator(seed=1, start_ts=0.0, **kwargs)


def test_faults_start_and_end_in_pairs_with_bounded_durations(history):
    p = SimParams()
    assert len(history.faults) >= 8  # 8 assets × 2 days, cycles of 8–30 h
    for f in history.faults:
        assert f.code in simulator.FAULT_CODES
        if not math.isnan(f.ts_end):
            minutes = (f.ts_end - f.ts_start) / 60
            assert p.fault_min[0] - 0.5 <= minutes <= p.fault_min[1] + 0.5
    for asset in history.assets:
        starts, ends = history.fault_times(asset)
        # Faults of one asset never overlap: each ends before the next starts.
        assert np.all(ends[:-1] < starts[1:])


def test_first_fault_comes_early_for_a_demo():
    # The demo needs an alert within minutes: some asset must fail within first_fault_h.
    for seed in (0, 1, 2, 7):
        sim = LineSimulator(10, 0.1, seed, start_ts=0.0)
        first = None
        for step in sim.steps(int(3.1 * HOUR * 0.1)):
            if step.faults:
                first = step.faults[0]
                break
        assert first is not None, f"seed {seed}: no fault in the first 3.1 h"
        assert first.state == "start"
        assert SimParams().first_fault_h[0] * HOUR <= first.ts <= 3.0 * HOUR + 10


def _near_and_far(history, sensor):
    """Readings of the last 30 min before fault starts, and readings far from any fault."""
    near, far = [], []
    for asset in history.assets:
        t, v = history.series(asset)[sensor]
        starts, ends = history.fault_times(asset)
        is_near = np.zeros(len(t), dtype=bool)
        is_far = np.ones(len(t), dtype=bool)
        for s, e in zip(starts, ends, strict=True):
            is_near |= (t >= s - 1800) & (t < s)
            is_far &= ~((t >= s - 3 * HOUR) & (t <= (np.inf if np.isnan(e) else e) + HOUR))
        near.append(v[is_near])
        far.append(v[is_far])
    return np.concatenate(near), np.concatenate(far)


def test_precursors_precede_faults(history):
    # In the last half hour before a fault the precursor intensity s is between ~0.5
    # and 1, times a severity of 0.7–1.3: lube +12·s^1.5 °C, vibration ×(1 + 1.2·s²),
    # current +5·s A, oil pressure −0.9·s^1.5 bar.  Margins are about half of that.
    lube_near, lube_far = _near_and_far(history, "lube_temp")
    vib_near, vib_far = _near_and_far(history, "vibration")
    cur_near, cur_far = _near_and_far(history, "motor_current")
    oil_near, oil_far = _near_and_far(history, "oil_pressure")
    assert len(lube_near) > 500 and len(lube_far) > 10_000
    assert np.median(lube_near) - np.median(lube_far) > 3.0
    assert np.median(vib_near) / np.median(vib_far) > 1.3
    assert np.median(cur_near) - np.median(cur_far) > 1.5
    assert np.median(oil_near) - np.median(oil_far) < -0.3


def test_precursors_show_only_on_the_sensors_named():
    # Same seed, same random draws: a sensor without precursors reads exactly as on a
    # line with none at all; vibration alone differs, and only before faults.
    kw = {"days": 1.0, "assets": 3, "hz": 1 / 60, "seed": 4}
    only_vib = simulate_history(**kw, params=SimParams(precursors=("vibration",)))
    none = simulate_history(**kw, params=SimParams(precursors=()))
    every = simulate_history(**kw)
    j = {s: i for i, s in enumerate(SENSORS)}
    for sensor in ("lube_temp", "motor_current", "oil_pressure", "ambient_temp"):
        np.testing.assert_array_equal(only_vib.values[..., j[sensor]],
                                      none.values[..., j[sensor]], err_msg=sensor)
    vib = j["vibration"]
    np.testing.assert_array_equal(only_vib.values[..., vib], every.values[..., vib])
    assert not np.array_equal(only_vib.values[..., vib], none.values[..., vib])
    assert not np.array_equal(only_vib.values[..., j["lube_temp"]],
                              every.values[..., j["lube_temp"]])
    with pytest.raises(ValueError, match="ambient_temp"):
        SimParams(precursors=("ambient_temp",))


def test_hidden_wear_rises_to_one_then_resets():
    sim = LineSimulator(3, 0.05, seed=4, start_ts=0.0)
    wear_at_start, reset_after_end = {}, {}
    prev = None
    for step in sim.steps(int(40 * HOUR * 0.05)):
        for ev in step.faults:
            i = sim.assets.index(ev.asset)
            if ev.state == "start":
                wear_at_start[ev.asset] = step.wear[i]
            elif prev is not None:
                reset_after_end[ev.asset] = step.wear[i]
            assert step.in_fault[i] == (ev.state == "start")
        prev = step
    assert wear_at_start and all(w >= 1.0 for w in wear_at_start.values())
    assert reset_after_end and all(w < 0.01 for w in reset_after_end.values())


def test_dropouts_spikes_and_stuck_values_exist(history):
    values = history.values  # (steps, assets, sensors)
    missing = np.isnan(values).mean()
    assert 0.002 < missing < 0.1
    lube = values[:, :, SENSORS.index("lube_temp")]
    # Spikes: a reading far (> 10 °C) from both neighbours, which noise (σ 0.3) never does.
    mid, before, after = lube[1:-1], lube[:-2], lube[2:]
    spikes = (np.abs(mid - before) > 10) & (np.abs(mid - after) > 10)
    assert spikes.sum() >= 5
    # Stuck: 10+ identical consecutive readings (resolution 0.01 °C, noise σ 0.3 °C).
    runs = 0
    for a in range(lube.shape[1]):
        v = lube[:, a]
        same = (v[1:] == v[:-1])
        run = 0
        for s in same:
            run = run + 1 if s else 0
            if run == 9:
                runs += 1
    assert runs >= 1
    # Outages: 3+ consecutive missing readings of one sensor.
    gaps = 0
    for a in range(values.shape[1]):
        miss = np.isnan(values[:, a, 0]).astype(np.int8)
        gaps += int(np.sum(np.convolve(miss, np.ones(3, dtype=np.int8), "valid") == 3) > 0)
    assert gaps >= 1


def test_values_are_plausible_and_quantised(history):
    for j, sensor in enumerate(SENSORS):
        v = history.values[:, :, j]
        v = v[~np.isnan(v)]
        res = simulator.RESOLUTION[sensor]
        assert np.allclose(np.round(v / res) * res, v, atol=1e-9), sensor
    vib = history.values[:, :, SENSORS.index("vibration")]
    assert np.nanmin(vib) >= 0.0


def test_recalibration_shifts_a_sensor_from_its_time_on():
    recal = simulator.Recalibration(at_s=2 * HOUR, sensor="lube_temp", offset=4.0)
    base = simulate_history(days=0.2, assets=3, hz=0.05, seed=6, start_ts=0.0)
    drift = simulate_history(days=0.2, assets=3, hz=0.05, seed=6, start_ts=0.0,
                             params=SimParams(recalibrations=(recal,)))
    j = SENSORS.index("lube_temp")
    before = base.ts[:, 0] < 2 * HOUR
    np.testing.assert_array_equal(drift.values[before], base.values[before])
    delta = drift.values[~before][:, :, j] - base.values[~before][:, :, j]
    delta = delta[~np.isnan(delta)]
    assert len(delta) > 100 and np.allclose(delta, 4.0, atol=0.011)
    others = np.delete(np.arange(len(SENSORS)), j)
    np.testing.assert_array_equal(drift.values[:, :, others], base.values[:, :, others])
    with pytest.raises(ValueError, match="unknown sensor"):
        simulator.Recalibration(at_s=0.0, sensor="pressure")


def test_generator_is_fast_enough():
    sim = LineSimulator(10, 1.0, seed=2, start_ts=0.0)
    t0 = time.perf_counter()
    n = sum(len(readings) for readings, _ in sim.messages(400))
    rate = n / (time.perf_counter() - t0)
    assert rate > 5000, f"{rate:.0f} readings/s"


def test_to_files_writes_the_history(tmp_path):
    readings_csv, faults_csv = to_files(tmp_path / "out", days=0.25, assets=3, hz=0.05, seed=8)
    hist = simulate_history(days=0.25, assets=3, hz=0.05, seed=8)
    with readings_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ts", "line", "asset", "sensor", "value"]
    assert len(rows) == hist.n_readings
    first = rows[0]
    stamp = datetime.fromisoformat(first["ts"])
    assert first["ts"].endswith("Z") and stamp.utcoffset().total_seconds() == 0
    i, j = hist.assets.index(first["asset"]), SENSORS.index(first["sensor"])
    k = int(np.flatnonzero(~np.isnan(hist.values[:, i, j]))[0])
    assert abs(stamp.timestamp() - hist.ts[k, i]) < 0.001
    assert float(first["value"]) == hist.values[k, i, j]
    with faults_csv.open() as f:
        faults = list(csv.DictReader(f))
    assert len(faults) == len(hist.faults) >= 1
    assert list(faults[0]) == ["asset", "ts_start", "ts_end", "code"]
    for row, fault in zip(faults, hist.faults, strict=True):
        assert row["asset"] == fault.asset and row["code"] == fault.code
        assert abs(datetime.fromisoformat(row["ts_start"]).timestamp() - fault.ts_start) < 0.001
        assert (row["ts_end"] == "") == math.isnan(fault.ts_end)


# -- publish, against a fake paho client ---------------------------------------------------


class _FakeInfo:
    def __init__(self, rc: int) -> None:
        self.rc = rc


class _FakeClient:
    """Records publishes; acknowledges each at once (or never, when ``ack`` is False)."""

    instances: ClassVar[list[_FakeClient]] = []
    ack = True

    def __init__(self, api_version, client_id="") -> None:
        import paho.mqtt.client as mqtt

        assert api_version == mqtt.CallbackAPIVersion.VERSION2
        self.published: list[tuple[str, str, int]] = []
        self.max_queued = None
        self.mid = 0
        _FakeClient.instances.append(self)

    def max_inflight_messages_set(self, n): pass
    def max_queued_messages_set(self, n): self.max_queued = n
    def reconnect_delay_set(self, lo, hi): pass
    def connect(self, host, port, keepalive=60): self.addr = (host, port)
    def disconnect(self): pass
    def loop_stop(self): pass

    def loop_start(self):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode

        self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def publish(self, topic, payload, qos=0):
        self.published.append((topic, payload, qos))
        self.mid += 1
        if _FakeClient.ack:
            self.on_publish(self, None, self.mid, None, None)
        return _FakeInfo(0)


@pytest.fixture
def fake_paho(monkeypatch):
    import paho.mqtt.client as mqtt

    _FakeClient.instances = []
    _FakeClient.ack = True
    monkeypatch.setattr(mqtt, "Client", _FakeClient)
    return _FakeClient


def test_publish_runs_event_time_speedup_times_faster_than_its_clock(fake_paho):
    # A ManualClock only moves when the publisher sleeps on it: 3.1 clock seconds are
    # 3.1 h of events however slow the machine is.
    clock = ManualClock()
    t_start, period = clock.time(), 1.0 / 3600.0
    acked = simulator.publish("broker", 1884, assets=3, hz=1.0, speedup=3600.0, seed=1,
                              duration_s=3.1, clock=clock)
    assert clock.monotonic() == pytest.approx(3.1, abs=2 * period)
    client = fake_paho.instances[0]
    assert client.addr == ("broker", 1884)
    assert acked == len(client.published)
    assert client.max_queued is not None
    assert all(q == 1 for _, _, q in client.published)
    routed = [(TOPICS.route(t), json.loads(p)) for t, p, _ in client.published]
    readings = [(r, p) for r, p in routed if r.route is Route.READING]
    faults = [(r, p) for r, p in routed if r.route is Route.FAULT]
    assert len(readings) + len(faults) == len(routed)
    for r, payload in readings:
        assert r.line == "line1" and r.sensor in SENSORS
        assert r.asset in ("asset01", "asset02", "asset03")
        assert set(payload) == {"ts", "value"} and math.isfinite(payload["value"])
    # Event time starts at the clock's now; steps are 1 s apart, each asset at its phase.
    ts = [p["ts"] for _, p in readings]
    assert t_start <= min(ts) < t_start + 1
    assert max(ts) - min(ts) == pytest.approx(3.1 * HOUR, abs=2.0)
    assert faults, "the first fault comes within 3 h"
    first = faults[0][1]
    assert first["state"] == "start" and first["code"] in simulator.FAULT_CODES
    assert t_start + SimParams().first_fault_h[0] * HOUR <= first["ts"] <= max(ts)


def test_publish_stops_on_the_event_and_bounds_pending_messages(fake_paho):
    fake_paho.ack = False  # the broker never acknowledges: the simulator must stall
    stop = threading.Event()
    thread = threading.Thread(target=simulator.publish, daemon=True, kwargs={
        "host": "h", "port": 1, "assets": 10, "hz": 1.0, "speedup": 1e6, "seed": 3,
        "stop_event": stop, "max_pending": 500})
    thread.start()
    wait_until(lambda: fake_paho.instances and len(fake_paho.instances[0].published) >= 500,
               timeout_s=30, what="500 messages pending")
    time.sleep(0.2)  # a simulator that did not stall would publish thousands meanwhile
    assert len(fake_paho.instances[0].published) == 500
    stop.set()
    thread.join(8)
    assert not thread.is_alive()


def test_publish_reports_an_unreachable_broker():
    with pytest.raises(ConnectionError, match=re.escape("127.0.0.1:1")):
        simulator.publish("127.0.0.1", 1, assets=1, hz=1.0, speedup=1.0, seed=0, duration_s=1)


def test_fault_events_are_typed():
    sim = LineSimulator(10, 0.1, seed=0, start_ts=0.0)
    events = [ev for _, faults in sim.messages(int(3 * HOUR * 0.1)) for ev in faults]
    assert events and all(isinstance(e, FaultEvent) and e.line == "line1" for e in events)


def test_to_files_size_is_estimated_before_and_a_large_one_refused(tmp_path, capsys):
    from appliance.cli import main
    from appliance.devtools.simulator import estimate_readings_bytes

    readings_csv, _ = to_files(tmp_path / "small", days=0.01, assets=2, hz=1.0, seed=3)
    actual = readings_csv.stat().st_size
    assert 0.85 * actual < estimate_readings_bytes(0.01, 2, 1.0) < 1.15 * actual
    # the defaults (a day of 10 assets at 1 Hz, 4.3 million rows): refused unasked
    assert main(["simulate", "--to-files", str(tmp_path / "big")]) == 1
    err = capsys.readouterr().err
    assert "would be about 251 MB" in err and "--yes" in err
    assert not (tmp_path / "big").exists()
    assert main(["simulate", "--to-files", str(tmp_path / "out"), "--days", "0.01",
                 "--assets", "1"]) == 0
    assert "writing about 0 MB" in capsys.readouterr().err
    assert (tmp_path / "out" / "readings.csv").stat().st_size > 0
