"""History snapshots: what training needs, copied out of the service's database as
Parquet files, and read back in another process.

DuckDB lets one process write a database file, and the service is that process:
a training child cannot open it.  So the service copies the history out
(``write_snapshot``, on a cursor of its own connection) and the child reads the
files (``open_snapshot``).  The copies run in one transaction, so the files are
one consistent state (DuckDB's MVCC: rows committed later are not in them, in
any of the files) while ingest goes on committing on its own cursor.

    <dir>/series.parquet     the series table
    <dir>/readings.parquet   readings_raw since ``since``, in insertion order (not
                             sorted here: a sort of millions of rows does not fit
                             the service's DuckDB memory limit, 32 MB by default,
                             and the reader sorts by series, time and ``rowid``,
                             which keeps that order)
    <dir>/faults.parquet     every fault event
    <dir>/ready.json         written last: {"ts": newest reading, "rows": ..., "seconds": ...}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb

from appliance.timefmt import from_us, to_us

READY = "ready.json"


def write_snapshot(con: duckdb.DuckDBPyConnection, directory: Path, since: float | None
                   ) -> dict[str, Any]:
    """Copy the history since ``since`` (all of it when None) into ``directory``;
    returns what ``ready.json`` says.  ``con``: a cursor no other thread uses."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    where = "" if since is None else f"WHERE ts >= make_timestamp({to_us(since)})"
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"COPY (SELECT * FROM series) TO '{directory / 'series.parquet'}' "
                    f"(FORMAT parquet)")
        con.execute(f"COPY (SELECT ts, series_id, value FROM readings_raw {where}) "
                    f"TO '{directory / 'readings.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY (SELECT * FROM faults) TO '{directory / 'faults.parquet'}' "
                    f"(FORMAT parquet)")
        rows, newest = con.execute(
            f"SELECT count(*), epoch_us(max(ts)) FROM read_parquet("
            f"'{directory / 'readings.parquet'}')").fetchone()
    finally:
        con.execute("COMMIT")
    ready = {"ts": None if newest is None else from_us(newest), "rows": int(rows),
             "since": since, "seconds": round(time.perf_counter() - started, 3)}
    tmp = directory / (READY + ".tmp")
    tmp.write_text(json.dumps(ready))
    os.replace(tmp, directory / READY)
    return ready


def is_ready(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / READY).read_text())
    except (FileNotFoundError, ValueError):
        return None


def open_snapshot(directory: Path, memory_limit: str = "512MB") -> duckdb.DuckDBPyConnection:
    """An in-memory database holding the snapshot's tables, for ``history.load_histories``
    (which reads ``series``, ``readings_raw`` and ``faults``).  Loaded into tables
    in file order, so ``rowid`` keeps the order readings were stored in (the order
    of readings at one timestamp, which validity depends on)."""
    if is_ready(directory) is None:
        raise ValueError(f"{directory}: not a finished snapshot (no {READY})")
    return open_tables({table: f"SELECT * FROM read_parquet('{directory / (name + '.parquet')}')"
                        for table, name in (("series", "series"), ("readings_raw", "readings"),
                                            ("faults", "faults"))}, memory_limit)


def open_tables(selects: dict[str, str], memory_limit: str = "512MB"
                ) -> duckdb.DuckDBPyConnection:
    """An in-memory database with a table per ``selects`` entry (name → SELECT over
    Parquet files), created in the order given (a later SELECT may join an earlier
    table): history read from files as ``load_histories`` reads a database."""
    con = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
    for table, select in selects.items():
        con.execute(f"CREATE TABLE {table} AS {select}")
    return con
