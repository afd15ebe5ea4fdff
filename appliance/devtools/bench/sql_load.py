"""``appliance bench sql``: durable ingest while ``appliance sql`` runs a heavy query.

    appliance bench sql [--messages N] [--rows N] [--memory-limit M] [--json]

1. a database holding ``rows`` readings (200 series, one reading a second per series,
   written with SQL: the import is not what is measured);
2. the whole service draining a QoS 1 backlog of ``messages`` readings from a private
   mosquitto (as ``bench/ingest.py``), once idle and once while a client asks the
   control socket, again and again until the drain ends, for an aggregate over every
   reading (per asset, sensor and minute: count, mean, standard deviation, min, max,
   through the ``readings`` view's join: a hash aggregate of ``rows / 60`` groups,
   which DuckDB spills to disk within the service's 32 MB memory limit);
3. the two rates and their ratio, how many queries ran and how long each took, and
   the errors they met.

The query shares DuckDB's memory limit (``--memory-limit``, the service's ``[storage]
memory_limit``) with the store: at the default 32 MB this aggregate (its hash table
peaks at ~22 MB, whatever ``operator_memory_limit`` says) leaves the store's commits
failing and retried while it runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.config import from_dict
from appliance.devtools.bench.ingest import _backlog
from appliance.devtools.mosquitto import PrivateBroker
from appliance.service import control
from appliance.storage.database import connect

SERIES = 200
HEAVY = ("SELECT asset, sensor, date_trunc('minute', ts) AS minute, count(*), avg(value), "
         "stddev(value), min(value), max(value) FROM readings GROUP BY ALL")


def _history(path: Path, rows: int) -> None:
    con, _report = connect(path)
    con.execute(f"INSERT INTO series SELECT i, 'hist', 'h' || (i // 10), 's' || (i % 10) "
                f"FROM range({SERIES}) t(i)")
    # an hour before now and back: the backlog's readings come after it
    t0 = time.time() - 3600.0 - rows / SERIES
    con.execute(f"INSERT INTO readings_raw SELECT make_timestamp(CAST(({t0} + i // {SERIES}) "
                f"* 1e6 AS BIGINT)), i % {SERIES}, (i % 997) * 0.1 FROM range({rows}) t(i)")
    con.execute("CHECKPOINT")
    con.close()


def _drain(broker: PrivateBroker, history: Path, work: Path, messages: int, load: bool,
           client_id: str, memory_limit: str) -> dict[str, Any]:
    from appliance.service.runner import Service

    db = work / f"{client_id}.duckdb"
    shutil.copy(history, db)
    cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                              "client_id": client_id},
                     "storage": {"path": str(db), "memory_limit": memory_limit},
                     "model": {"required": False},
                     "control": {"timeout_s": 600.0}}, source="<bench>")
    _backlog(broker, client_id, messages)
    service = Service(cfg)
    store = service.pipeline.stages["store"]
    ingest = service.pipeline.stages["ingest"]
    service.start()
    done = threading.Event()
    queries: list[float] = []
    errors: list[str] = []

    def ask() -> None:
        while not done.is_set():
            started = time.perf_counter()
            reply = control.ask(cfg.socket_path(), {"op": "sql", "query": HEAVY,
                                                    "limit": 10}, 600.0)
            if reply is None or not reply["ok"]:
                errors.append(str(reply))
            else:
                queries.append(time.perf_counter() - started)

    asker = threading.Thread(target=ask, daemon=True)
    if load:
        asker.start()
        # the first query is running when the drain starts
        time.sleep(0.5)
    while ingest.counters.processed == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while store.counters.processed < messages:
        time.sleep(0.02)
    rate = messages / (time.perf_counter() - t0)
    done.set()
    if load:
        asker.join(600)
    service.stop()
    return {"msg_per_s": round(rate), "queries": len(queries),
            "query_s": round(sum(queries) / len(queries), 2) if queries else None,
            "errors": sorted(set(errors))}


def run(messages: int = 200_000, rows: int = 10_000_000, memory_limit: str = "32MB",
        json_output: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-sql-") as tmp:
        work = Path(tmp)
        history = work / "history.duckdb"
        _history(history, rows)
        with PrivateBroker() as broker:
            idle = _drain(broker, history, work, messages, False, "bench-sql-idle",
                          memory_limit)
            busy = _drain(broker, history, work, messages, True, "bench-sql-load",
                          memory_limit)
    result = {"messages": messages, "rows": rows, "memory_limit": memory_limit,
              "idle": idle, "query": busy,
              "ratio": round(busy["msg_per_s"] / idle["msg_per_s"], 3)}
    if json_output:
        print(json.dumps(result))
    else:
        print(f"[storage] memory_limit {memory_limit}")
        print(f"durable ingest, no query:            {idle['msg_per_s']:10,} msg/s")
        print(f"durable ingest, heavy query looping: {busy['msg_per_s']:10,} msg/s  "
              f"ratio {result['ratio']:.2f}")
        print(f"the query (a per-minute aggregate over {rows:,} readings): {busy['queries']} "
              f"ran during the drain, {busy['query_s']} s each"
              + (f"; errors: {busy['errors']}" if busy["errors"] else ""))
    return result

