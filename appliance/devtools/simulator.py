"""A simulated production line: sensor readings and faults, deterministic per seed.

Each asset carries a hidden *wear* that grows at a random rate per maintenance
cycle.  Over the last ``precursor_h`` (1 to 2 hours) before wear reaches 1 the
asset shows precursors: lubricant temperature rises above its ambient-driven
baseline, vibration grows, motor current rises and oil pressure drops.  When
wear crosses 1 a fault starts; the asset stands still for some minutes, then
maintenance resets wear and a new cycle begins.  A production load that
changes every few hours moves temperature, current and vibration too, so a
single-sensor limit cannot tell load from wear.

On top of the physics the sensors misbehave: Gaussian noise, quantisation,
occasional spikes, dropouts (single missing readings, sensor outages, whole
asset outages) and stuck values (a sensor repeating its last value).

Design: the state of all assets lives in numpy arrays of shape (assets,) or
(assets, sensors) and one time step is a fixed sequence of vectorised
operations over them, so the cost per step hardly depends on the number of
assets.  Random numbers for noise and per-step events come in blocks of
``_BLOCK`` steps from one generator; rare events (fault durations, new cycles,
outage lengths) draw from a second one.  Both are spawned from
``numpy.random.default_rng(seed)``, so the same seed and arguments give the
same readings however the steps are consumed.

Three ways out:

* ``LineSimulator`` — a pure generator: ``steps()`` yields arrays per time step,
  ``messages()`` the same as ``Reading`` / ``FaultEvent`` messages;
* ``publish()`` — over MQTT, event time running ``speedup`` times faster than
  a clock (the wall clock, or a test's ``ManualClock``);
* ``simulate_history()`` / ``to_files()`` — a whole history in memory or as CSV.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.clock import Clock, WallClock
from appliance.config import Config
from appliance.messages import FaultEvent, Reading, SeriesKey
from appliance.mqtt.topics import Topics

log = logging.getLogger(__name__)

#: Sensors of every asset, in column order of ``Step.values``.
SENSORS: tuple[str, ...] = ("lube_temp", "vibration", "motor_current", "oil_pressure",
                            "ambient_temp")
_LUBE, _VIB, _CUR, _OIL, _AMB = range(len(SENSORS))
#: The sensors a degrading asset moves (``SimParams.precursors``).
PRECURSOR_SENSORS: tuple[str, ...] = SENSORS[:_AMB]

#: Reading resolution of each sensor (values are rounded to it).
RESOLUTION: dict[str, float] = {
    "lube_temp": 0.01, "vibration": 0.001, "motor_current": 0.01, "oil_pressure": 0.001,
    "ambient_temp": 0.1,
}
#: Fault codes, chosen at random per fault.
FAULT_CODES: tuple[str, ...] = ("LUBE_OVERTEMP", "BEARING_WEAR", "OIL_PRESSURE_LOW")

#: Start of simulated histories when none is given: 2025-01-01T00:00:00Z.
DEFAULT_START_TS = 1735689600.0

_HOUR = 3600.0
_DAY = 86400.0
_BLOCK = 256  # steps of pre-drawn random numbers
#: QoS 1 messages in flight (sent, not yet acknowledged) at once.  paho scans its whole
#: outgoing queue on every PUBACK, so a larger window is slower, not faster (measured:
#: 100 in flight ≈ 7,700 msg/s, 1,000 ≈ 4,300 msg/s against a local mosquitto).
MAX_INFLIGHT = 100


@dataclass(frozen=True, slots=True)
class Recalibration:
    """From ``at_s`` seconds after the start, ``sensor`` reads ``value × scale + offset``
    on every asset: a sensor swapped or recalibrated, the data drifting under a model."""

    at_s: float
    sensor: str
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.sensor not in SENSORS:
            raise ValueError(f"recalibration of unknown sensor {self.sensor!r}; "
                             f"expected one of {', '.join(SENSORS)}")
        if not (math.isfinite(self.at_s) and math.isfinite(self.offset)
                and math.isfinite(self.scale)):
            raise ValueError(f"recalibration values must be finite: {self!r}")


@dataclass(frozen=True, slots=True)
class SimParams:
    """The physics and the misbehaviour of the simulated line (defaults are the demo's)."""

    #: Length of a maintenance cycle (wear 0 → 1), uniform in this range, hours.
    cycle_h: tuple[float, float] = (8.0, 30.0)
    #: Precursors show over this many hours before a fault, uniform in this range.
    precursor_h: tuple[float, float] = (1.0, 2.0)
    #: Severity of an asset's precursors in one cycle, uniform multiplier.
    severity: tuple[float, float] = (0.7, 1.3)
    #: Fault duration, uniform, minutes.
    fault_min: tuple[float, float] = (5.0, 30.0)
    #: Production load levels and how long one lasts (uniform, hours).
    loads: tuple[float, ...] = (0.5, 0.75, 1.0)
    load_h: tuple[float, float] = (2.0, 8.0)
    #: Time constant of the lubricant temperature's response, seconds.
    lube_tau_s: float = 300.0
    #: Noise standard deviation per sensor, in SENSORS order (vibration: relative).
    noise: tuple[float, ...] = (0.3, 0.08, 0.6, 0.05, 0.2)
    #: Probability that one reading goes missing.
    p_missing: float = 0.002
    #: Probability that one reading is a spike, and the spike size per sensor.
    p_spike: float = 0.0005
    spike_size: tuple[float, ...] = (25.0, 6.0, 30.0, 2.0, 10.0)
    #: Mean time between outages of one sensor, and outage length (uniform, seconds).
    sensor_outage_every_h: float = 8.0
    sensor_outage_s: tuple[float, float] = (30.0, 600.0)
    #: Mean time between outages of a whole asset, and their length (seconds).
    asset_outage_every_h: float = 48.0
    asset_outage_s: tuple[float, float] = (60.0, 300.0)
    #: Mean time between stuck episodes of one sensor, and their length (seconds).
    stuck_every_h: float = 12.0
    stuck_s: tuple[float, float] = (300.0, 1800.0)
    #: The first asset to fail does so this many hours after the start (uniform), so
    #: a demo shows a fault soon — after the first hour, the warm-up in which the
    #: service predicts nothing; the others are spread over their first cycle.
    first_fault_h: tuple[float, float] = (2.0, 3.0)
    #: Sensor recalibrations (drift), none by default.
    recalibrations: tuple[Recalibration, ...] = ()
    #: The sensors that show the precursors (ambient_temp never does).  One alone makes
    #: a line whose degrading sensor is known: what an explanation must name.
    precursors: tuple[str, ...] = PRECURSOR_SENSORS

    def __post_init__(self) -> None:
        unknown = [s for s in self.precursors if s not in PRECURSOR_SENSORS]
        if unknown:
            raise ValueError(f"precursors {unknown} are not among {PRECURSOR_SENSORS}")


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """Everything the line produced in one time step.

    ``values[i, j]`` is asset i's reading of ``SENSORS[j]`` at ``ts[i]``; NaN
    means no reading (a dropout).  ``wear`` and ``in_fault`` are the hidden
    truth, for tests and plots only.
    """

    index: int
    ts: np.ndarray  # (assets,) float64
    values: np.ndarray  # (assets, sensors) float64, NaN = missing
    faults: tuple[FaultEvent, ...]
    wear: np.ndarray  # (assets,)
    in_fault: np.ndarray  # (assets,) bool


def asset_names(n: int) -> tuple[str, ...]:
    """``asset01``, ``asset02``, … (at least two digits)."""
    width = max(2, len(str(n)))
    return tuple(f"asset{i:0{width}d}" for i in range(1, n + 1))


class LineSimulator:
    """One production line of ``assets`` assets sampled at ``hz`` readings per sensor/s.

    >>> sim = LineSimulator(assets=3, hz=1.0, seed=1, start_ts=0.0)
    >>> step = next(sim.steps())
    >>> step.values.shape
    (3, 5)
    """

    def __init__(self, assets: int, hz: float, seed: int, start_ts: float,
                 line: str = "line1", params: SimParams | None = None) -> None:
        if not isinstance(assets, int) or assets < 1:
            raise ValueError(f"assets must be a positive integer, got {assets!r}")
        if not (isinstance(hz, int | float) and math.isfinite(hz) and hz > 0):
            raise ValueError(f"hz must be a positive number, got {hz!r}")
        if not math.isfinite(start_ts):
            raise ValueError(f"start_ts must be finite, got {start_ts!r}")
        if not line or "/" in line or "+" in line or "#" in line:
            raise ValueError(f"line must be a non-empty MQTT topic level, got {line!r}")
        self.n_assets = assets
        self.hz = float(hz)
        self.seed = seed
        self.start_ts = float(start_ts)
        self.line = line
        self.params = params or SimParams()
        self.assets = asset_names(assets)
        self.sensors = SENSORS
        self._reset()

    # -- state -------------------------------------------------------------------------

    def _reset(self) -> None:
        p = self.params
        n, s = self.n_assets, len(SENSORS)
        self._rng_noise, self._rng_events = np.random.default_rng(self.seed).spawn(2)
        ev = self._rng_events
        self._dt = 1.0 / self.hz
        self._k = 0
        self._block_pos = _BLOCK
        # Each asset reads at its own fixed phase inside the sampling period.
        self._phase = ev.uniform(0.0, min(self._dt, 1.0), n)
        # Fixed per-asset offsets (installation differences).
        self._off_lube = ev.uniform(-2.0, 2.0, n)
        self._off_vib = ev.uniform(-0.3, 0.3, n)
        self._off_cur = ev.uniform(-1.0, 1.0, n)
        self._off_oil = ev.uniform(-0.15, 0.15, n)
        # Maintenance cycles, staggered so that faults are spread from the start.
        self._rate = np.empty(n)
        self._rate_dt = np.empty(n)
        self._prec_frac = np.empty(n)
        self._prec_start = np.empty(n)
        self._severity = np.empty(n)
        for i in range(n):
            self._new_cycle(i)
        order = ev.permutation(n)
        cycle_s = 1.0 / self._rate
        first = ev.uniform(*p.first_fault_h) * _HOUR
        remaining = first + (cycle_s - first) * (order + ev.uniform(0.0, 1.0, n)) / n
        remaining[order == 0] = first
        self._wear = 1.0 - remaining * self._rate
        self._in_fault = np.zeros(n, dtype=bool)
        self._fault_until = np.zeros(n)
        self._fault_code = [""] * n
        self._load = ev.choice(np.asarray(p.loads), n)
        self._load_until = ev.uniform(*p.load_h, n) * _HOUR
        self._load_next = float(self._load_until.min())
        self._weather = float(ev.normal(0.0, 1.5))
        tau_w = 6 * _HOUR
        self._weather_a = math.exp(-self._dt / tau_w)
        self._weather_b = 1.5 * math.sqrt(1.0 - self._weather_a**2)
        self._lube: np.ndarray | None = None  # set at the first step from its target
        self._lube_a = 1.0 - math.exp(-self._dt / p.lube_tau_s)
        self._outage_until = np.zeros((n, s))
        self._outage_last = 0.0
        self._asset_outage_until = np.zeros(n)
        self._aout_last = 0.0
        self._stuck_until = np.zeros((n, s))
        self._stuck_last = 0.0
        self._stuck_value = np.full((n, s), np.nan)
        # Constants of the per-step arithmetic.
        self._ts0 = self.start_ts + self._phase
        self._noise_sd = np.asarray(p.noise, dtype=np.float64)
        self._spike_size = np.asarray(p.spike_size, dtype=np.float64)
        self._scale = np.asarray([round(1.0 / RESOLUTION[name]) for name in SENSORS],
                                 dtype=np.float64)
        self._p_stuck = min(1.0, self._dt / (p.stuck_every_h * _HOUR))
        self._p_outage = min(1.0, self._dt / (p.sensor_outage_every_h * _HOUR))
        self._p_asset_outage = min(1.0, self._dt / (p.asset_outage_every_h * _HOUR))

    def _new_cycle(self, i: int) -> None:
        p, ev = self.params, self._rng_events
        cycle_s = ev.uniform(*p.cycle_h) * _HOUR
        self._rate[i] = 1.0 / cycle_s
        self._rate_dt[i] = self._dt / cycle_s
        self._prec_frac[i] = ev.uniform(*p.precursor_h) * _HOUR / cycle_s
        self._prec_start[i] = 1.0 - self._prec_frac[i]
        self._severity[i] = ev.uniform(*p.severity)

    def _draw_block(self) -> None:
        """Draw the per-step random numbers of the next ``_BLOCK`` steps at once."""
        p, r = self.params, self._rng_noise
        n, s = self.n_assets, len(SENSORS)
        shape = (_BLOCK, n, s)
        noise = r.standard_normal(shape) * self._noise_sd
        u_missing = r.random(shape)
        u_spike = r.random(shape)
        u_outage = r.random(shape)
        u_stuck = r.random(shape)
        u_asset_outage = r.random((_BLOCK, n))
        sign = r.choice(np.array([-1.0, 1.0]), shape)
        self._b_weather = r.standard_normal(_BLOCK).tolist()
        self._b_noise = noise
        self._b_spike = np.where(u_spike < p.p_spike, sign * self._spike_size, 0.0)
        self._b_missing = u_missing < p.p_missing
        self._b_stuck = u_stuck < self._p_stuck
        self._b_stuck_any = self._b_stuck.any(axis=(1, 2)).tolist()
        self._b_outage = u_outage < self._p_outage
        self._b_outage_any = self._b_outage.any(axis=(1, 2)).tolist()
        self._b_aout = u_asset_outage < self._p_asset_outage
        self._b_aout_any = self._b_aout.any(axis=1).tolist()
        self._block_pos = 0

    # -- one step ----------------------------------------------------------------------

    def precursor(self) -> np.ndarray:
        """Current precursor intensity per asset, 0 (none) to 1 (at the fault)."""
        start = 1.0 - self._prec_frac
        return np.clip((self._wear - start) / self._prec_frac, 0.0, 1.0)

    def step(self) -> Step:
        """Advance one sampling period and return what the line produced."""
        p, dt, ev = self.params, self._dt, self._rng_events
        if self._block_pos >= _BLOCK:
            self._draw_block()
        j = self._block_pos
        self._block_pos += 1
        k = self._k
        self._k += 1
        t_rel = k * dt
        ts = self._ts0 + t_rel
        events: list[FaultEvent] = []

        # Faults: end the finished ones (maintenance resets wear), start new ones.
        if self._in_fault.any():
            for i in np.flatnonzero(self._in_fault & (t_rel >= self._fault_until)).tolist():
                events.append(FaultEvent(self.line, self.assets[i], float(ts[i]), "end",
                                         self._fault_code[i]))
                self._in_fault[i] = False
                self._wear[i] = 0.0
                self._new_cycle(i)
        running = ~self._in_fault
        self._wear += self._rate_dt * running
        if self._wear.max() >= 1.0:
            for i in np.flatnonzero(running & (self._wear >= 1.0)).tolist():
                code = FAULT_CODES[int(ev.integers(len(FAULT_CODES)))]
                self._fault_until[i] = t_rel + ev.uniform(*p.fault_min) * 60.0
                self._fault_code[i] = code
                self._in_fault[i] = True
                events.append(FaultEvent(self.line, self.assets[i], float(ts[i]), "start", code))
            running = ~self._in_fault

        # Production load changes every few hours.
        if t_rel >= self._load_next:
            for i in np.flatnonzero(t_rel >= self._load_until).tolist():
                self._load[i] = p.loads[int(ev.integers(len(p.loads)))]
                self._load_until[i] = t_rel + ev.uniform(*p.load_h) * _HOUR
            self._load_next = float(self._load_until.min())

        # Ambient: daily cycle (warmest at 15:00 UTC) plus slow weather (an OU process).
        self._weather = self._weather_a * self._weather + self._weather_b * self._b_weather[j]
        tod = (self.start_ts + t_rel) % _DAY
        ambient = 18.0 + 6.0 * math.sin(2 * math.pi * (tod - 9 * _HOUR) / _DAY) + self._weather

        sev = np.clip((self._wear - self._prec_start) / self._prec_frac, 0.0, 1.0)
        sev *= self._severity * running
        # the precursor of each sensor, 0 for one that does not show them
        sev_lube, sev_vib, sev_cur, sev_oil = (sev if s in p.precursors else 0.0 * sev
                                               for s in PRECURSOR_SENSORS)
        load = self._load
        lube_target = ambient + np.where(
            running, 30.0 + 8.0 * load + self._off_lube + 12.0 * sev_lube**1.5, 5.0)
        if self._lube is None:
            self._lube = lube_target
        else:
            self._lube = self._lube + (lube_target - self._lube) * self._lube_a

        noise = self._b_noise[j]
        values = np.empty((self.n_assets, len(SENSORS)))
        values[:, _LUBE] = self._lube + noise[:, _LUBE]
        vib = np.where(running, (2.2 + 1.2 * load + self._off_vib) * (1.0 + 1.2 * sev_vib**2),
                       0.05)
        values[:, _VIB] = vib * np.exp(noise[:, _VIB])  # multiplicative noise, stays > 0
        values[:, _CUR] = np.abs(np.where(running,
                                          25.0 + 20.0 * load + self._off_cur + 5.0 * sev_cur,
                                          0.2) + noise[:, _CUR])
        values[:, _OIL] = np.where(running, 4.2 - 0.3 * load + self._off_oil - 0.9 * sev_oil**1.5,
                                   0.3) + noise[:, _OIL]
        values[:, _AMB] = ambient + noise[:, _AMB]
        values += self._b_spike[j]
        values[:, _VIB] = np.abs(values[:, _VIB])

        # Stuck sensors repeat the value they had when they got stuck.
        if self._b_stuck_any[j] or t_rel < self._stuck_last:
            stuck = t_rel < self._stuck_until
            new = ~stuck & self._b_stuck[j]
            if new.any():
                ii, jj = np.nonzero(new)
                self._stuck_until[ii, jj] = t_rel + ev.uniform(*p.stuck_s, len(ii))
                self._stuck_value[ii, jj] = values[ii, jj]
                self._stuck_last = float(self._stuck_until.max())
                stuck |= new
            values = np.where(stuck, self._stuck_value, values)

        for rc in p.recalibrations:
            if t_rel >= rc.at_s:
                j_rc = SENSORS.index(rc.sensor)
                values[:, j_rc] = values[:, j_rc] * rc.scale + rc.offset

        # Quantise; dividing by the integer scale gives the double nearest the decimal.
        values = np.round(values * self._scale) / self._scale

        # Dropouts: single readings, sensor outages, whole-asset outages.
        missing = self._b_missing[j]
        if self._b_outage_any[j] or t_rel < self._outage_last:
            outage = t_rel < self._outage_until
            new = ~outage & self._b_outage[j]
            if new.any():
                ii, jj = np.nonzero(new)
                self._outage_until[ii, jj] = t_rel + ev.uniform(*p.sensor_outage_s, len(ii))
                self._outage_last = float(self._outage_until.max())
                outage |= new
            missing = missing | outage
        if self._b_aout_any[j] or t_rel < self._aout_last:
            a_out = t_rel < self._asset_outage_until
            new_a = ~a_out & self._b_aout[j]
            if new_a.any():
                ii = np.flatnonzero(new_a)
                self._asset_outage_until[ii] = t_rel + ev.uniform(*p.asset_outage_s, len(ii))
                self._aout_last = float(self._asset_outage_until.max())
                a_out |= new_a
            missing = missing | a_out[:, None]
        values[missing] = np.nan

        return Step(k, ts, values, tuple(events), self._wear.copy(), self._in_fault.copy())

    def steps(self, n: int | None = None) -> Iterator[Step]:
        """Yield ``n`` steps (forever when None)."""
        i = 0
        while n is None or i < n:
            yield self.step()
            i += 1

    def messages(self, n: int | None = None
                 ) -> Iterator[tuple[tuple[Reading, ...], tuple[FaultEvent, ...]]]:
        """Yield per step the readings and the fault events as pipeline messages."""
        keys = [[SeriesKey(self.line, a, s) for s in SENSORS] for a in self.assets]
        for step in self.steps(n):
            ii, jj = np.nonzero(~np.isnan(step.values))
            ts = step.ts[ii].tolist()
            vals = step.values[ii, jj].tolist()
            readings = tuple(Reading(keys[i][j], t, v)
                             for i, j, t, v in zip(ii.tolist(), jj.tolist(), ts, vals,
                                                   strict=True))
            yield readings, step.faults


# -- a whole history ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultRecord:
    asset: str
    ts_start: float
    ts_end: float  # NaN when the fault was still open at the end of the history
    code: str


@dataclass(frozen=True, slots=True, eq=False)
class History:
    """A simulated history held in memory: every reading of every asset, and the faults."""

    line: str
    assets: tuple[str, ...]
    sensors: tuple[str, ...]
    t_start: float
    t_end: float
    ts: np.ndarray = field(repr=False)  # (steps, assets)
    values: np.ndarray = field(repr=False)  # (steps, assets, sensors), NaN = missing
    faults: tuple[FaultRecord, ...] = ()

    def series(self, asset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """One asset's readings as {sensor: (sorted ts, values)}, missing readings left out."""
        i = self.assets.index(asset)
        out = {}
        for j, sensor in enumerate(self.sensors):
            v = self.values[:, i, j]
            ok = ~np.isnan(v)
            out[sensor] = (self.ts[ok, i].copy(), v[ok].copy())
        return out

    def fault_times(self, asset: str) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of one asset's faults, sorted; an open fault ends at NaN."""
        rows = [f for f in self.faults if f.asset == asset]
        return (np.array([f.ts_start for f in rows], dtype=np.float64),
                np.array([f.ts_end for f in rows], dtype=np.float64))

    @property
    def n_readings(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.values)))


def simulate_history(days: float, assets: int, hz: float, seed: int,
                     start_ts: float = DEFAULT_START_TS, line: str = "line1",
                     params: SimParams | None = None) -> History:
    """Simulate ``days`` of a line in memory, sampled at ``hz``."""
    if not (math.isfinite(days) and days > 0):
        raise ValueError(f"days must be a positive number, got {days!r}")
    sim = LineSimulator(assets, hz, seed, start_ts, line, params)
    n_steps = int(days * _DAY * sim.hz)
    if n_steps < 1:
        raise ValueError(f"{days} days at {hz} Hz is less than one reading")
    ts = np.empty((n_steps, assets))
    values = np.empty((n_steps, assets, len(SENSORS)))
    open_faults: dict[str, tuple[float, str]] = {}
    faults: list[FaultRecord] = []
    for step in sim.steps(n_steps):
        ts[step.index] = step.ts
        values[step.index] = step.values
        for ev in step.faults:
            if ev.state == "start":
                open_faults[ev.asset] = (ev.ts, ev.code)
            else:
                started, code = open_faults.pop(ev.asset)
                faults.append(FaultRecord(ev.asset, started, ev.ts, code))
    faults.extend(FaultRecord(a, t, math.nan, c) for a, (t, c) in open_faults.items())
    faults.sort(key=lambda f: (f.ts_start, f.asset))
    return History(line, sim.assets, SENSORS, start_ts, start_ts + n_steps / sim.hz,
                   ts, values, tuple(faults))


def rfc3339(ts: np.ndarray) -> np.ndarray:
    """Unix seconds → RFC 3339 UTC strings with milliseconds (``…T…Z``)."""
    ms = np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64)
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")


#: Bytes of a ``readings.csv`` row besides its line, asset and sensor names: the RFC 3339
#: time (24), four commas and the newline (5), a value as the simulator rounds it (~6).
ROW_BYTES_BESIDES_NAMES = 35


def estimate_readings_bytes(days: float, assets: int, hz: float, line: str = "line1") -> int:
    """About how large ``to_files`` writes ``readings.csv`` (within ~10 %: the gaps the
    simulator leaves make it smaller), to say before writing it."""
    rows = days * 86400.0 * hz * assets * len(SENSORS)
    names = len(line) + len("asset01") + sum(map(len, SENSORS)) / len(SENSORS)
    return int(rows * (ROW_BYTES_BESIDES_NAMES + names))


def to_files(out_dir: str | Path, days: float, assets: int, hz: float, seed: int,
             start_ts: float = DEFAULT_START_TS, line: str = "line1",
             params: SimParams | None = None) -> tuple[Path, Path]:
    """Write a simulated history as ``readings.csv`` and ``faults.csv`` in ``out_dir``.

    ``readings.csv``: ``ts,line,asset,sensor,value`` (long form, ts RFC 3339 UTC),
    ordered by time.  ``faults.csv``: ``asset,ts_start,ts_end,code``; ``ts_end``
    is empty for a fault still open at the end.  Returns both paths.
    """
    hist = simulate_history(days, assets, hz, seed, start_ts, line, params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    readings_path, faults_path = out / "readings.csv", out / "faults.csv"
    chunk = 4096
    with readings_path.open("w", encoding="utf-8", newline="") as f:
        f.write("ts,line,asset,sensor,value\n")
        prefixes = [[f",{line},{a},{s}," for s in hist.sensors] for a in hist.assets]
        for lo in range(0, len(hist.ts), chunk):
            vals = hist.values[lo:lo + chunk]
            stamps = rfc3339(hist.ts[lo:lo + chunk])
            tt, ii, jj = np.nonzero(~np.isnan(vals))
            f.writelines(
                f"{stamps[t, i]}{prefixes[i][j]}{v!r}\n"
                for t, i, j, v in zip(tt.tolist(), ii.tolist(), jj.tolist(),
                                      vals[tt, ii, jj].tolist(), strict=True))
    with faults_path.open("w", encoding="utf-8", newline="") as f:
        f.write("asset,ts_start,ts_end,code\n")
        for fault in hist.faults:
            start = rfc3339(np.array([fault.ts_start]))[0]
            end = "" if math.isnan(fault.ts_end) else rfc3339(np.array([fault.ts_end]))[0]
            f.write(f"{fault.asset},{start},{end},{fault.code}\n")
    return readings_path, faults_path


# -- over MQTT ---------------------------------------------------------------------------


def publish(host: str, port: int, assets: int, hz: float, speedup: float, seed: int,
            duration_s: float | None = None, topics: Topics | None = None,
            stop_event: threading.Event | None = None, line: str = "line1",
            max_pending: int = 1000, connect_timeout_s: float = 10.0,
            clock: Clock | None = None, params: SimParams | None = None) -> int:
    """Publish a simulated line to an MQTT broker until ``duration_s`` or ``stop_event``.

    Readings go to ``topics.reading(line, asset, sensor)`` as
    ``{"ts": <unix s>, "value": <number>}``, fault events to ``topics.fault(line, asset)``
    as ``{"ts", "state", "code"}``, all QoS 1; ``topics`` defaults to those of an
    appliance with the default configuration; ``params``, the simulated line's
    physics (e.g. a recalibration at a chosen moment).
    Event time starts at ``clock``'s now (default: the wall clock) and runs ``speedup``
    times faster; ``duration_s`` is seconds of ``clock`` (None: until ``stop_event`` is
    set).  At most ``max_pending`` messages wait unacknowledged: the simulator slows
    down (falls behind the clock) rather than queue without bound.
    Returns the number of messages the broker acknowledged.

    Raises ConnectionError when the broker cannot be reached or refuses us.
    """
    import paho.mqtt.client as mqtt

    if not (math.isfinite(speedup) and speedup > 0):
        raise ValueError(f"speedup must be a positive number, got {speedup!r}")
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
    stop = stop_event or threading.Event()
    topics = topics or Topics.from_config(Config())
    clock = clock or WallClock()
    connected = threading.Event()
    closing = threading.Event()
    refused: list[str] = []
    acked = [0]
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
            log.warning("simulator: broker %s:%s refused the connection: %s",
                        host, port, reason_code)
        else:
            connected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties) -> None:
        connected.clear()
        if not closing.is_set():
            log.warning("simulator: disconnected from %s:%s (%s); reconnecting",
                        host, port, reason_code)

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with lock:
            acked[0] += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"appliance-sim-{seed}-{int(clock.time() * 1000) % 10**9}")
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.max_inflight_messages_set(min(max_pending, MAX_INFLIGHT))
    client.max_queued_messages_set(max_pending + 1)
    client.reconnect_delay_set(0.5, 10)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"simulator: cannot connect to MQTT broker {host}:{port}: "
                              f"{exc}") from None
    client.loop_start()
    sent = 0
    try:
        deadline = clock.monotonic() + connect_timeout_s
        while not connected.is_set():
            if refused or clock.monotonic() > deadline:
                why = refused[0] if refused else f"no CONNACK within {connect_timeout_s} s"
                raise ConnectionError(f"simulator: MQTT broker {host}:{port}: {why}")
            if stop.is_set():
                return 0
            clock.sleep(0.05, connected)
        sim = LineSimulator(assets, hz, seed, clock.time(), line, params)
        reading_topic = [[topics.reading(line, a, s) for s in SENSORS] for a in sim.assets]
        fault_topic = {a: topics.fault(line, a) for a in sim.assets}
        start = clock.monotonic()
        period = 1.0 / (sim.hz * speedup)  # clock seconds per step
        last_report = start

        def put(topic: str, payload: str) -> bool:
            """Publish one message; wait while too many are pending. False when stopping."""
            nonlocal sent
            while True:
                while sent - acked[0] >= max_pending:
                    clock.sleep(0.002, stop)
                    if stop.is_set():
                        return False
                info = client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                    sent += 1
                    return True
                clock.sleep(0.005, stop)  # queue full (e.g. broker away): back off
                if stop.is_set():
                    return False

        for step in sim.steps():
            now = clock.monotonic()
            if duration_s is not None and now - start >= duration_s:
                break
            due = start + step.index * period
            if due > now:
                clock.sleep(due - now, stop)
            if stop.is_set():
                break
            ii, jj = np.nonzero(~np.isnan(step.values))
            for i, j, v in zip(ii.tolist(), jj.tolist(), step.values[ii, jj].tolist(),
                               strict=True):
                if not put(reading_topic[i][j], f'{{"ts":{step.ts[i]:.3f},"value":{v!r}}}'):
                    break
            for ev in step.faults:
                put(fault_topic[ev.asset],
                    json.dumps({"ts": round(ev.ts, 3), "state": ev.state, "code": ev.code}))
            if now - last_report >= 10.0:
                last_report = now
                lag = now - due
                log.info("simulator: %d messages sent, %d acknowledged, %.1f s behind",
                         sent, acked[0], max(0.0, lag))
        # Let the broker acknowledge what is in flight: briefly when asked to stop.
        drain_until = clock.monotonic() + (1.0 if stop.is_set() else 5.0)
        while acked[0] < sent and clock.monotonic() < drain_until:
            clock.sleep(0.01)
        return acked[0]
    finally:
        closing.set()
        client.disconnect()
        client.loop_stop()
