"""Exports: tables copied out of the database as hive-partitioned Parquet that stock
DuckDB (or any Parquet reader) opens without the appliance, and read back for
``appliance train --readings``.

    <dir>/table=readings/date=2025-01-01/data_0.parquet    ts, line, asset, sensor, value
    <dir>/table=faults/date=…/…                            ts, line, asset, state, code, source
    <dir>/table=predictions/date=…/…                       as the table
    <dir>/table=alerts/date=…/…                            as the table

Readings carry their line, asset and sensor names (the ``readings`` view), not the
internal series ids; every ``ts`` is a TIMESTAMP in UTC, as stored.  The copies run in
one transaction (as ``snapshot.write_snapshot``'s), so the tables are one consistent
state while ingest goes on committing.  ``write_export`` runs on the service's own
cursor (``service/control.py``) or on a file opened read-only by the command.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from appliance.storage.snapshot import open_tables
from appliance.timefmt import to_us

TABLES = ("readings", "faults", "predictions", "alerts")


def write_export(con: duckdb.DuckDBPyConnection, directory: Path, since: float,
                 until: float | None, tables: Sequence[str]) -> dict[str, Any]:
    """Copy the rows of ``tables`` with ``since <= ts < until`` into ``directory``
    (created; each ``table=<name>`` folder must not exist).  Returns the rows per
    table and the seconds taken.  ``con``: a cursor no other thread uses."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"no table {', '.join(unknown)} to export (tables: "
                         f"{', '.join(TABLES)})")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    where = f"ts >= make_timestamp({to_us(since)})"
    if until is not None:
        where += f" AND ts < make_timestamp({to_us(until)})"
    started = time.perf_counter()
    rows: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        for table in tables:
            target = directory / f"table={table}"
            if target.exists():
                raise ValueError(f"{target} exists already: export into a new folder")
            rows[table] = con.execute(f"SELECT count(*) FROM {table} WHERE {where}"
                                      ).fetchone()[0]
            days = [d for (d,) in con.execute(
                f"SELECT DISTINCT CAST(ts AS DATE) FROM {table} WHERE {where} ORDER BY 1"
            ).fetchall()]
            # A COPY per day rather than COPY … PARTITION_BY: DuckDB 2.0 buffers the
            # partitions and fails within the service's 32 MB memory limit (10 M
            # readings of one day); a plain COPY streams.  Each day is a range of ts,
            # which the table's zone maps skip to.
            for day in days:
                folder = target / f"date={day.isoformat()}"
                folder.mkdir(parents=True)
                con.execute(f"COPY (SELECT * FROM {table} WHERE {where} AND ts >= "
                            f"TIMESTAMP '{day.isoformat()}' AND ts < TIMESTAMP "
                            f"'{day.isoformat()}' + INTERVAL 1 DAY) TO "
                            f"'{folder / 'data_0.parquet'}' (FORMAT parquet)")
    except BaseException:
        # A half-written export is no export (an interrupt, a full disk): nothing is
        # left behind to be taken for one.
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        con.execute("ROLLBACK")
    return {"tables": rows, "seconds": round(time.perf_counter() - started, 3),
            "bytes": sum(f.stat().st_size for f in directory.rglob("*.parquet"))}


def export_files(pattern: str) -> list[str]:
    """The Parquet files ``pattern`` names: a folder (everything below it), or a glob
    (``**`` crosses folders)."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**")
    return sorted(f for f in glob.glob(pattern, recursive=True)
                  if f.endswith(".parquet") and os.path.isfile(f))


def open_export(readings: str, faults: str | None = None,
                memory_limit: str = "512MB") -> duckdb.DuckDBPyConnection:
    """An in-memory database with ``series``, ``readings_raw`` and ``faults`` (what
    ``history.load_histories`` reads) from an export: the readings are the files
    under a ``table=readings`` folder that ``readings`` names (all of them if none
    is in such a folder); the faults, those ``faults`` names, else the export's own
    ``table=faults`` beside its readings (none: no faults)."""
    files = export_files(readings)
    in_table = [f for f in files if "table=readings" in Path(f).parts]
    reading_files = in_table or [f for f in files if not any(
        p.startswith("table=") for p in Path(f).parts)]
    if not reading_files:
        raise ValueError(f"no readings in {readings} (an export's "
                         f"table=readings/**/*.parquet)")
    if faults is not None:
        fault_files = export_files(faults)
    else:
        roots = {Path(*Path(f).parts[:Path(f).parts.index("table=readings")])
                 for f in in_table}
        fault_files = [f for root in sorted(roots) for f in
                       export_files(str(root / "table=faults"))]
    source = f"read_parquet({_list(reading_files)}, hive_partitioning = true)"
    selects = {
        "series": "SELECT CAST(row_number() OVER (ORDER BY line, asset, sensor) AS INTEGER) "
                  "AS id, line, asset, sensor FROM (SELECT DISTINCT line, asset, sensor "
                  f"FROM {source})",
        # In time order per series (the order readings were stored in is not in an
        # export; two readings of one sensor at one timestamp are the only case where
        # it mattered).
        "readings_raw": f"SELECT r.ts, s.id AS series_id, r.value FROM {source} r JOIN "
                        "series s USING (line, asset, sensor) ORDER BY s.id, r.ts",
        "faults": (f"SELECT ts, line, asset, state, code, source FROM "
                   f"read_parquet({_list(fault_files)}, hive_partitioning = true)"
                   if fault_files else
                   "SELECT * FROM (VALUES (TIMESTAMP '2000-01-01', '', '', '', '', '')) "
                   "f(ts, line, asset, state, code, source) WHERE false"),
    }
    return open_tables(selects, memory_limit)


def _list(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
