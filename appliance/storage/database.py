"""Opening the DuckDB file (the service's one connection, an offline tool's, or an
in-memory one), running numbered migrations, recovering a damaged log.

Every write to a table is in ``tables``.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

_MIGRATIONS = "migrations"
#: DuckDB's memory limit for an offline tool's connection (``open_offline``).
OFFLINE_MEMORY_LIMIT = "1GB"


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("appliance.storage").joinpath(_MIGRATIONS)
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


@dataclass
class OpenReport:
    """What happened while opening: shown in status so an operator sees it."""

    damaged_wal: str = ""
    migrated_to: int = 0
    backups: list[str] = field(default_factory=list)


def connect(path: str | Path, memory_limit: str = "128MB") -> tuple[duckdb.DuckDBPyConnection,
                                                                    OpenReport]:
    """Open (creating if needed) and migrate the database at ``path``.

    A write-ahead log that DuckDB cannot replay (torn by a power cut) is moved
    aside as ``<file>.wal.damaged-<unix time>`` with an error log line, and the
    file opened without it: the service runs on instead of crash-looping.
    What the damaged log held past the last checkpoint is not in the database;
    the broker redelivers whatever was not yet acknowledged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = OpenReport()
    # No extension is installed or loaded behind our back: a query on the control
    # socket naming an https:// or s3:// path would otherwise fetch httpfs.
    config = {"memory_limit": memory_limit, "threads": "2",
              "autoinstall_known_extensions": False, "autoload_known_extensions": False}
    try:
        con = _connect_waiting(path, config)
    except duckdb.Error as exc:
        wal = path.with_name(path.name + ".wal")
        if not wal.exists() or "WAL" not in str(exc):
            raise  # e.g. the file is locked by a running service: not damage
        aside = wal.with_name(f"{wal.name}.damaged-{int(time.time())}")
        wal.rename(aside)
        log.error("database %s could not replay its write-ahead log (%s); moved it to %s "
                  "and opened without it", path, exc, aside)
        report.damaged_wal = str(aside)
        con = duckdb.connect(str(path), config=config)
    report.migrated_to = migrate(con, path, report)
    return con, report


#: How long the service waits for a command that holds the file read-only (an
#: ``appliance sql`` or ``export`` run while it was stopped) before it gives up.
LOCK_WAIT_S = 120.0


def _connect_waiting(path: Path, config: dict[str, object]) -> duckdb.DuckDBPyConnection:
    """Open for writing; while another process holds the file's lock, wait (a command
    run while the service was down ends soon) rather than fail and be restarted."""
    deadline = time.monotonic() + LOCK_WAIT_S
    said = False
    while True:
        try:
            return duckdb.connect(str(path), config=config)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            if not said:
                log.warning("database %s is held by another process (%s); waiting up to "
                            "%g s for it", path, str(exc).splitlines()[0], LOCK_WAIT_S)
                said = True
            time.sleep(1.0)


def migrate(con: duckdb.DuckDBPyConnection, path: Path, report: OpenReport) -> int:
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    pending = [(v, sql) for v, sql in _migrations() if v > current]
    if pending and current > 0:
        # Copy the file before changing a schema that holds data.
        con.execute("CHECKPOINT")
        backup = path.with_name(f"{path.name}.before-{pending[0][0]:03d}")
        shutil.copy2(path, backup)
        report.backups.append(str(backup))
        log.warning("copied %s to %s before migrating", path, backup)
    for version, sql in pending:
        con.execute("BEGIN")
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
        con.execute("COMMIT")
        log.info("database %s migrated to version %d", path, version)
        current = version
    return current


class DatabaseBusy(RuntimeError):
    """The database file is held by another process (normally the running service)."""


def release_buffers(con: duckdb.DuckDBPyConnection,
                    memory_limit: str = OFFLINE_MEMORY_LIMIT) -> None:
    """Hand back DuckDB's buffer cache after a big read whose result now lives in
    numpy arrays: lowering ``memory_limit`` evicts the cached blocks (about 200 MB
    after reading 3 million readings sorted), then the limit is set back to
    ``memory_limit`` (the connection's, given: DuckDB reports it rounded).  For an
    offline tool that keeps its connection open while it computes (``train``)."""
    try:
        con.execute("SET memory_limit = '16MB'")
    except duckdb.Error:  # blocks still pinned: nothing to hand back now
        pass
    finally:
        con.execute("SET memory_limit = ?", [memory_limit])


def open_offline(path: str | Path, memory_limit: str = OFFLINE_MEMORY_LIMIT,
                 read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating if needed) the database file for an offline tool.

    Raises ``DatabaseBusy`` when another process holds the file.  That check
    comes first: ``connect`` treats any open error as a damaged
    write-ahead log and would move the running service's log aside.
    ``read_only`` opens an existing file without changing it.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise ValueError(f"no database at {path} (import a history first, or pass --db)")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only,
                             config={"memory_limit": memory_limit})
    except duckdb.Error as exc:
        text = str(exc)
        if "lock" not in text.lower():
            if read_only:
                raise ValueError(f"{path}: cannot open the database: "
                                 f"{_first_line(exc)}") from None
            con, _report = connect(path, memory_limit)
            return con
        pid = re.search(r"PID (\d+)", text)
        holder = f" (process {pid.group(1)})" if pid else ""
        raise DatabaseBusy(
            f"{path} is in use by another process{holder}: the service is running; stop it "
            f"(sudo systemctl stop appliance) and try again, or work from files "
            f"(appliance backtest --readings FILE --faults FILE)") from None
    if not read_only:
        migrate(con, path, OpenReport())
    return con


def open_memory() -> duckdb.DuckDBPyConnection:
    """A migrated in-memory database (history read from files)."""
    con = duckdb.connect(":memory:")
    migrate(con, Path(":memory:"), OpenReport())
    return con


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
