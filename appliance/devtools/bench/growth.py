"""``appliance bench growth``: how fast the database grows, and what retention keeps.

Method.  A simulated line (``devtools.simulator``: ``assets`` assets × 5 sensors at
1 Hz, its noise, quantisation and dropouts; each series read at its own fixed
millisecond phase, as polled sensors are) is written for ``hours`` of event time
through the service's own writes (``storage.tables``): one transaction per second of
readings, as the store commits, and one prediction per asset every 10 s (the default
cadence; probabilities at full float precision, one model), as the record stage
writes, into real DuckDB files with the service's 32 MB memory limit.  Readings and
predictions go to two files, so each table's bytes are its own.  After a checkpoint
the file sizes over the span give bytes per day (× 24 h / hours; DuckDB compresses
per row group of 122,880 rows, so a few hours are representative of a day).

Then:

* thinning: the predictions thinned (``tables.thin_predictions``: one per asset per
  10 min, whole within an hour of the simulator's faults) and the bytes DuckDB still
  uses after a checkpoint, per day;
* the steady state under the default retention (``[storage]``: readings 90 days,
  predictions 30 days whole then thinned to 365), computed from those rates;
* that the file stops growing: readings go on for ``hours`` more while readings older
  than ``hours`` are deleted every 10 simulated minutes (a checkpoint after each, as
  the maintenance stage does) — the file's size is printed as it goes;
* a checkpoint's duration on the readings file after 60 s of readings (the default
  ``checkpoint_every_s``), the log's bytes per reading, and the commit latency of a
  writer appending a second of readings every 0.1 s while checkpoints run beside it.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from appliance.config import Config
from appliance.devtools.simulator import SENSORS, LineSimulator
from appliance.messages import Prediction
from appliance.storage import tables
from appliance.storage.database import connect

_DAY_S = 86400.0
_MB = 1024 * 1024
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _size(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _used(con) -> int:
    block, used = con.execute("SELECT block_size, used_blocks FROM pragma_database_size()"
                              ).fetchone()
    return int(block * used)


class _Line:
    """The simulator's readings as the store writes them: one transaction a second."""

    def __init__(self, con, assets: int, seed: int) -> None:
        self.con = con
        self.sim = LineSimulator(assets, 1.0, seed, START)
        self.steps = self.sim.steps()
        n = assets * len(SENSORS)
        con.execute("INSERT INTO series SELECT range, 'line1', 'asset' || (range // 5), "
                    "'s' || (range % 5) FROM range(?)", [n])
        self.sid = np.arange(n, dtype=np.int32)
        self.phase_us = np.random.default_rng(seed).integers(0, 1_000_000, n)
        self.faults: list[tuple[float, str]] = []
        self.readings = 0
        self.now = START

    def second(self) -> None:
        step = next(self.steps)
        values = step.values.reshape(-1)
        ts_us = (np.repeat(step.ts, len(SENSORS)) * 1e6).astype(np.int64) + self.phase_us
        keep = ~np.isnan(values)
        self.con.execute("BEGIN")
        tables.insert_readings(self.con, self.sid[keep], ts_us[keep], values[keep])
        self.con.execute("COMMIT")
        self.readings += int(keep.sum())
        self.faults += [(f.ts, f.asset) for f in step.faults if f.state == "start"]
        self.now = float(step.ts[0])


def run(json_output: bool = False, assets: int = 1000, hours: float = 3.0, seed: int = 0
        ) -> int:
    cfg = Config()
    out: dict[str, object] = {"assets": assets, "sensors": len(SENSORS), "hz": 1.0,
                              "hours": hours, "cadence_s": cfg.pipeline.cadence_s}
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        rpath, ppath = Path(tmp) / "readings.duckdb", Path(tmp) / "predictions.duckdb"
        rdb, _ = connect(rpath, cfg.storage.memory_limit)
        pdb, _ = connect(ppath, cfg.storage.memory_limit)
        rdb.execute("CHECKPOINT")
        pdb.execute("CHECKPOINT")
        r0, p0, p_used0 = _size(rpath), _size(ppath), _used(pdb)
        line = _Line(rdb.cursor(), assets, seed)
        pcon = pdb.cursor()
        rng = np.random.default_rng(seed + 1)
        logit = rng.normal(-5.0, 1.0, assets)
        names = line.sim.assets
        seconds = int(hours * 3600)
        cadence = int(cfg.pipeline.cadence_s)
        t = time.perf_counter()
        for s in range(seconds):
            line.second()
            if s % cadence == cadence - 1:
                logit += rng.normal(0.0, 0.05, assets)
                proba = 1.0 / (1.0 + np.exp(-logit))
                tables.insert_predictions(pcon, [
                    Prediction("line1", a, line.now, float(p), 0.5, "gbt-20260101T000000")
                    for a, p in zip(names, proba.tolist(), strict=True)])
        write_s = time.perf_counter() - t
        rdb.execute("CHECKPOINT")
        pdb.execute("CHECKPOINT")
        span_days = seconds / _DAY_S
        predictions = pdb.execute("SELECT count(*) FROM predictions").fetchone()[0]
        r_day = (_size(rpath) - r0) / span_days
        p_day = (_size(ppath) - p0) / span_days
        out |= {"readings": line.readings, "predictions": predictions,
                "write_s": round(write_s, 1),
                "readings_bytes_per_reading": round((_size(rpath) - r0) / line.readings, 2),
                "readings_mb_per_day": round(r_day / _MB, 1),
                "predictions_bytes_per_prediction": round((_size(ppath) - p0) / predictions, 2),
                "predictions_mb_per_day": round(p_day / _MB, 1)}

        # thinning, as if the whole span were older than thin_predictions_after_days
        for ts, asset in line.faults:
            pcon.execute("INSERT INTO faults VALUES (to_timestamp(?), 'line1', ?, 'start', "
                         "'X', 'import')", [ts, asset])
        lo = int(START // 600 * 600 * 1e6)
        hi = int((line.now // 600 + 1) * 600 * 1e6)
        thinned, step = 0, int(1200 * 1e6)
        for start in range(lo, hi, step):  # the stage's slices (THIN_ROWS): they fit 32 MB
            pcon.execute("BEGIN")
            thinned += tables.thin_predictions(pcon, start, min(hi, start + step),
                                               cfg.storage.thin_predictions_every_s,
                                               cfg.pipeline.horizon_s, cfg.alerts.clear_ratio)
            pcon.execute("COMMIT")
        pdb.execute("CHECKPOINT")
        kept = predictions - thinned
        # what DuckDB still holds: deleted rows free their blocks once a checkpoint
        # rewrites (vacuums) their row groups
        thin_day = (_used(pdb) - p_used0) / span_days
        out |= {"faults": len(line.faults), "predictions_kept_after_thinning": kept,
                "thinned_mb_per_day": round(thin_day / _MB, 2),
                "thinned_mb_per_day_by_rows": round(p_day * kept / predictions / _MB, 2)}
        s = cfg.storage
        thinned_rate = p_day * kept / predictions
        steady = (r_day * s.keep_readings_days
                  + p_day * s.thin_predictions_after_days
                  + thinned_rate * (s.keep_predictions_days - s.thin_predictions_after_days))
        unbounded = (r_day + p_day) * 365
        out |= {"steady_state_gb_default_retention": round(steady / 1024**3, 1),
                "per_year_without_retention_gb": round(unbounded / 1024**3, 1)}

        # the file stops growing: keep `hours` of readings while `hours` more arrive
        sizes = []
        keep_us = int(seconds * 1e6)
        rcon = line.con
        for s_ in range(seconds):
            line.second()
            if s_ % 600 == 599:
                rcon.execute("BEGIN")
                tables.delete_readings_before(rcon, int(line.now * 1e6) - keep_us)
                rcon.execute("COMMIT")
                rcon.execute("CHECKPOINT")
                sizes.append(round(_size(rpath) / _MB, 1))
        out |= {"file_mb_while_retention_runs": sizes}

        # a checkpoint after 60 s of readings on this file; the log's bytes per reading
        rcon.execute("CHECKPOINT")
        before = line.readings
        for _ in range(int(s.checkpoint_every_s)):
            line.second()
        wal = rpath.with_name(rpath.name + ".wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        t = time.perf_counter()
        rcon.execute("CHECKPOINT")
        out |= {"checkpoint_s_after_60s": round(time.perf_counter() - t, 3),
                "file_mb": round(_size(rpath) / _MB, 1),
                "wal_bytes_per_reading": round(wal_bytes / (line.readings - before), 1)}
        out |= _checkpoint_beside_ingest(rdb, line)
        rdb.close()
        pdb.close()
    if json_output:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:40} {v}")
    return 0


def _checkpoint_beside_ingest(db, line: _Line) -> dict[str, object]:
    """Commit latency of a writer adding a second of readings every 0.1 s, with and
    without checkpoints running on another cursor."""
    stop = threading.Event()
    latencies: list[tuple[float, float]] = []

    def writer() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            line.second()
            latencies.append((t, time.perf_counter() - t))
            time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    con = db.cursor()
    spans, took = [], []
    time.sleep(3.0)
    for _ in range(5):
        t = time.perf_counter()
        con.execute("CHECKPOINT")
        spans.append((t, time.perf_counter()))
        took.append(spans[-1][1] - t)
        time.sleep(2.0)
    stop.set()
    thread.join()
    overlaps = [any(a <= t + lat and t <= b for a, b in spans) for t, lat in latencies]
    during = [lat for (_t, lat), o in zip(latencies, overlaps, strict=True) if o]
    other = [lat for (_t, lat), o in zip(latencies, overlaps, strict=True) if not o]
    return {"checkpoints_beside_ingest_s": [round(x, 3) for x in took],
            "commit_ms_median_without": round(1e3 * float(np.median(other)), 1),
            "commit_ms_max_without": round(1e3 * max(other), 1),
            "commit_ms_max_during_checkpoint": round(1e3 * max(during), 1) if during else None}
