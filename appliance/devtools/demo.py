"""``appliance demo``: a private broker, the simulator and the service, with a live view.

Everything runs in this process except mosquitto: a private one on a free port
(Debian package ``mosquitto``; ``make demo`` installs it), or the broker named
with ``--host``/``--port``.  Ctrl-C stops the simulator, drains the service
(every reading received is committed) and stops the broker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from appliance.config import Config, from_dict
from appliance.devtools import simulator
from appliance.devtools.mosquitto import PrivateBroker, find_mosquitto
from appliance.mqtt.topics import Topics
from appliance.service.runner import Service

SQL_HINT = ("SELECT asset, max(probability) AS p_max, count(*) AS ticks "
            "FROM predictions GROUP BY asset ORDER BY p_max DESC")


def demo_config(host: str, port: int, data_dir: Path) -> Config:
    return from_dict({
        # a client id of its own per run: a broker that outlives one demo (``--host``)
        # must not hand the next one the previous run's session and queued readings
        "mqtt": {"host": host, "port": port,
                 "client_id": f"appliance-demo-{os.getpid()}-{int(time.time())}"},
        "storage": {"path": str((data_dir / "appliance.duckdb").resolve())},
        "status": {"interval_s": 1.0},
        # The simulator runs event time ahead of the wall clock (speedup).
        "limits": {"max_future_s": 10 * 365 * 86400.0},
    }, source="<demo>")


#: The file that marks a folder as the demo's own, so a later run may empty it.
MARKER = ".appliance-demo"
#: What a demo leaves in its folder (the database and what sits beside it, the models the
#: retraining loop trained): emptied only in a folder that also holds ``MARKER`` (a
#: service's data folder holds the same names, and is never a demo's).
DEMO_STATE = ("appliance.duckdb*", "appliance.sock", ".appliance.sock.*", "models", MARKER)


def fresh_data_dir(data_dir: Path) -> str:
    """Empty the demo's folder of a previous run's state, or create it; a message for
    the person, or ValueError when the folder holds anything a demo did not write.

    Each run starts clean: the simulator starts its event time at now, and a previous
    run's database already holds later event times (it ran ``speedup`` times ahead), so
    its live view would stay on the old rows and the ticks would be predicted again."""
    if not data_dir.exists():
        data_dir.mkdir(parents=True)
        (data_dir / MARKER).touch()
        return f"demo data in {data_dir}"
    entries = list(data_dir.iterdir())
    foreign = [e.name for e in entries if not any(e.match(g) for g in DEMO_STATE)]
    if foreign:
        raise ValueError(f"{data_dir} holds files a demo did not write "
                         f"({', '.join(sorted(foreign)[:5])}): give the demo a folder of its "
                         f"own with --data-dir")
    if entries and not (data_dir / MARKER).exists():
        raise ValueError(f"{data_dir} holds an appliance database that is not a demo's (no "
                         f"{MARKER} in it): give the demo a folder of its own with "
                         f"--data-dir, or remove the folder yourself")
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (data_dir / MARKER).touch()
    return (f"demo data in {data_dir} (the previous demo's database and models removed: "
            f"each run starts clean)" if entries else f"demo data in {data_dir}")


#: The recalibration ``--drift-at`` injects: what a swapped lube temperature sensor does.
DRIFT_SENSOR, DRIFT_OFFSET = "lube_temp", 10.0


def run(data_dir: Path, assets: int, speedup: float, seed: int, duration_s: float | None,
        host: str | None, port: int, drift_at_min: float | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)  # the live view is the output
    with contextlib.ExitStack() as stack:
        if host is None:
            if find_mosquitto() is None:
                print("appliance demo: mosquitto not found: install the Debian package "
                      "'mosquitto' (apt-get install mosquitto), or name a broker with "
                      "--host and --port", file=sys.stderr)
                return 1
            broker = stack.enter_context(PrivateBroker())
            host, port = broker.host, broker.port
            print(f"started a private mosquitto on {host}:{port}")
        try:
            print(fresh_data_dir(data_dir))
        except ValueError as exc:
            print(f"appliance demo: {exc}", file=sys.stderr)
            return 1
        cfg = demo_config(host, port, data_dir)
        service = Service(cfg)
        service.start()
        stop = threading.Event()
        sim = threading.Thread(target=simulator.publish, name="simulator", daemon=True,
                               kwargs={"host": host, "port": port, "assets": assets, "hz": 1.0,
                                       "speedup": speedup, "seed": seed, "stop_event": stop,
                                       "topics": Topics.from_config(cfg),
                                       "params": _sim_params(drift_at_min)})
        sim.start()
        t_end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while t_end is None or time.monotonic() < t_end:
                service.beat()
                print(render(service, cfg), flush=True)
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        print("\nstopping: simulator, then the service (draining), then the broker ...")
        stop.set()
        sim.join(5)
        clean = service.stop()
        db = cfg.resolve(cfg.storage.path)
        print(f"\nThe data is in {db}. Try:\n  .venv/bin/appliance sql --db {db} \"{SQL_HINT}\"")
        return 0 if clean else 1


def _sim_params(drift_at_min: float | None) -> simulator.SimParams:
    if drift_at_min is None:
        return simulator.SimParams()
    return simulator.SimParams(recalibrations=(simulator.Recalibration(
        at_s=drift_at_min * 60.0, sensor=DRIFT_SENSOR, offset=DRIFT_OFFSET),))


def render(service: Service, cfg: Config) -> str:
    """One screen of the live view: per asset the latest probability and alert state."""
    con = service.pipeline.db.cursor()
    try:
        rows = con.execute("""
            WITH latest AS (
                SELECT asset, arg_max(probability, ts) AS p, max(ts) AS ts, count(*) AS n
                FROM predictions GROUP BY asset),
            last_alert AS (
                SELECT asset, arg_max(state, ts) AS state, count(*) FILTER (state = 'raised') AS k
                FROM alerts GROUP BY asset)
            SELECT l.asset, l.p, l.ts, l.n, a.state, coalesce(a.k, 0)
            FROM latest l LEFT JOIN last_alert a USING (asset) ORDER BY l.asset""").fetchall()
        readings = con.execute("SELECT count(*) FROM readings_raw").fetchone()[0]
        alerts = con.execute("SELECT count(*) FROM alerts WHERE state = 'raised'").fetchone()[0]
        last = con.execute("SELECT asset, ts, probability, reasons FROM alerts "
                           "WHERE state = 'raised' ORDER BY ts DESC LIMIT 1").fetchone()
        in_fault = {a for (a,) in con.execute(
            "SELECT asset FROM faults GROUP BY asset HAVING arg_max(state, ts) = 'start'"
        ).fetchall()}
        drift = con.execute(
            "SELECT ts, asset, kind, state, statistic, threshold, detail FROM drift_events "
            "ORDER BY ts DESC LIMIT 3").fetchall()
        scores = con.execute(
            "SELECT model, role, faults, caught, false_episodes, median_lead_s "
            "FROM model_scores WHERE window_days = 7 ORDER BY role, model").fetchall()
    finally:
        con.close()
    lines = ["\033[2J\033[H" + f"appliance demo  —  readings stored {readings:,}   "
             f"alerts raised {alerts}   (Ctrl-C to stop)",
             f"{'asset':10} {'event time':19} {'p(fault < 1 h)':16} {'':22} {'alert':8} "
             f"{'raised':>6}  line state"]
    for asset, p, ts, _n, state, k in rows:
        bar = "#" * round(p * 20)
        flag = "RAISED" if state == "raised" else ""
        fault = "FAULT" if asset in in_fault else "running"
        lines.append(f"{asset:10} {ts:%Y-%m-%d %H:%M:%S} {p:16.3f} {bar:22} {flag:8} {k:>6}  "
                     f"{fault}")
    if not rows:
        lines.append("(waiting for the first predictions: each asset's first hour of "
                     "event time is its warm-up, in which its windows fill)")
    if last is not None:
        asset, ts, p, reasons = last
        why = "; ".join(r["text"] for r in json.loads(reasons or "[]")) or "(no reason kept)"
        lines.append(f"\nlast alert: {asset} at {ts:%H:%M:%S} (p = {p:.3f}); why: {why}")
    lines += _drift_lines(drift) + _score_lines(scores)
    lines.append(f"\ndatabase: {cfg.resolve(cfg.storage.path)}")
    lines.append(f"try, now or after Ctrl-C: .venv/bin/appliance sql --db "
                 f"{cfg.resolve(cfg.storage.path)} "
                 f"\"{SQL_HINT}\"")
    return "\n".join(lines)


def _drift_lines(events: list[tuple]) -> list[str]:
    """The latest drift and sensor events, with the features that moved most."""
    if not events:
        return ["\ndrift: none (the inputs look like the model's reference)"]
    out = ["\ndrift and sensor events (latest first):"]
    for ts, asset, kind, state, statistic, threshold, detail in events:
        moved = json.loads(detail) if detail else {}
        if kind == "drift":
            what = "; ".join(f"{name} {_moved(d)}" for name, d in
                             list(moved.get("features", {}).items())[:3])
            psi = "" if statistic is None or threshold is None else \
                f" (PSI {statistic:.2f}, limit {threshold:.2f})"
            out.append(f"  {ts:%H:%M:%S} {asset} drift {state}{psi}{': ' + what if what else ''}")
        else:
            out.append(f"  {ts:%H:%M:%S} {asset} sensor {moved.get('sensor', '?')} "
                       f"{moved.get('kind', '')} {state}")
    return out


def _moved(d: dict) -> str:
    live, ref = d.get("live"), d.get("reference")
    if isinstance(live, int | float) and isinstance(ref, int | float):
        return f"{ref:.3g} → {live:.3g}"
    return ""


def _score_lines(scores: list[tuple]) -> list[str]:
    """Each model's live event scores over the last 7 days."""
    if not scores:
        return []
    out = ["\nlive scores, last 7 days (faults caught, false alarm episodes, median lead):"]
    for model, role, faults, caught, false_eps, lead in scores:
        lead_txt = "-" if lead is None else f"{lead / 60:.0f} min"
        out.append(f"  {model:24} {role:10} caught {caught}/{faults}  false {false_eps}  "
                   f"lead {lead_txt}")
    return out
