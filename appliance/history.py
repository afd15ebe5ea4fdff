"""Stored history in and out: importing reading and fault files, reading history back.

* ``open_database`` — the DuckDB file for an offline tool, with one clear error
  while the service holds it (DuckDB lets one process open a file at a time);
* ``import_readings`` — CSV or Parquet, long form (``ts, asset, sensor, value``,
  optional ``line``) or wide form (a time column and one column per sensor;
  the asset from an ``asset`` column or the caller) into ``readings_raw``;
* ``import_faults`` — ``asset, ts_start, ts_end, code`` (optional ``line``) into
  ``faults`` as a ``start`` and an ``end`` event, source ``import``;
* ``load_histories`` — the stored readings and faults as one ``AssetHistory``
  per asset, the input of training and backtests;
* ``load_files`` — the same from files, through an in-memory database, so a
  data scientist can work without the service's database.

Design: DuckDB reads the files (``read_csv`` with a rejects table, so rows it
cannot parse are reported with their line numbers; ``read_parquet``) into a
temporary table in file order.  The checks DuckDB's reader does not make (an
empty or invalid name, a non-finite value, a time in the future) are one SQL
``CASE`` over that table; their line numbers are recovered by walking the file
with the ``csv`` module, only as far as the reported rows need.  Rows already
stored (same series and time) and repeats inside the file are counted and
skipped.  The writes are one transaction: an import that fails or is
interrupted stores nothing.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from appliance.config import NAME_PATTERN
from appliance.messages import SeriesKey
from appliance.storage import database
from appliance.storage.tables import SeriesRegistry
from appliance.topics import FAULT_SENSOR, is_name
from appliance.training.train import AssetHistory

#: A sensor may not be called this: the topic level is taken by fault events.
RESERVED_SENSOR = FAULT_SENSOR
#: Column names understood as the time column, in order of preference.
TS_NAMES: tuple[str, ...] = ("ts", "timestamp", "time", "datetime")
DEFAULT_LINE = "line1"

Say = Callable[[str], None]


class ImportRefused(ValueError):
    """A file that cannot be imported at all (unreadable, no time column, ...)."""


class DatabaseBusy(RuntimeError):
    """The database file is held by another process (normally the running service)."""


# -- the database --------------------------------------------------------------------------


def open_database(path: str | Path, memory_limit: str = "1GB", read_only: bool = False
                  ) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating if needed) the database file for an offline tool.

    Raises ``DatabaseBusy`` when another process holds the file.  That check
    comes first: ``database.connect`` treats any open error as a damaged
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
            con, _report = database.connect(path, memory_limit)
            return con
        pid = re.search(r"PID (\d+)", text)
        holder = f" (process {pid.group(1)})" if pid else ""
        raise DatabaseBusy(
            f"{path} is in use by another process{holder}: the service is running; stop it "
            f"(sudo systemctl stop appliance) and try again, or work from files "
            f"(appliance backtest --readings FILE --faults FILE)") from None
    if not read_only:
        database.migrate(con, path, database.OpenReport())
    return con


def memory_database() -> duckdb.DuckDBPyConnection:
    """A migrated in-memory database (history read from files)."""
    con = duckdb.connect(":memory:")
    database.migrate(con, Path(":memory:"), database.OpenReport())
    return con


# -- reports -------------------------------------------------------------------------------


@dataclass
class Problem:
    """One skipped row or value: where (line or row number) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did, for the terminal and the tests."""

    path: str
    form: str = ""  # "long" | "wide" | "faults"
    rows: int = 0  # data rows in the file (parsed or not)
    stored: int = 0  # readings (or fault events) written
    bad_rows: int = 0  # rows skipped whole
    bad_values: int = 0  # wide form: single values skipped (the rest of the row kept)
    empty_values: int = 0  # wide form: empty cells (no reading), not an error
    repeated_in_file: int = 0  # (series, ts) seen earlier in the same file
    already_stored: int = 0  # (series, ts) already in the database
    problems: list[Problem] = field(default_factory=list)  # the first few, in file order
    notes: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    new_series: int = 0
    t_from: float = math.nan
    t_to: float = math.nan
    seconds: float = 0.0

    def summary(self) -> str:
        from appliance.training.export import rfc3339

        what = "fault events" if self.form == "faults" else "readings"
        span = (f", {rfc3339(self.t_from)} to {rfc3339(self.t_to)}"
                if math.isfinite(self.t_from) else "")
        lines = [f"{self.path}: {self.form} form, {self.rows} rows; stored {self.stored} "
                 f"{what}{span} in {self.seconds:.1f} s"]
        if self.assets:
            lines.append(f"  assets: {_short_list(self.assets)}"
                         + (f"; sensors: {_short_list(self.sensors)}" if self.sensors else "")
                         + (f"; {self.new_series} new series" if self.new_series else ""))
        if self.bad_rows or self.bad_values:
            lines.append(f"  skipped {self.bad_rows} bad rows"
                         + (f" and {self.bad_values} bad values" if self.bad_values else "")
                         + (f"; the first {len(self.problems)}:" if self.problems else ""))
        lines += [f"    {p}" for p in self.problems]
        if self.repeated_in_file:
            what_repeats = "fault" if self.form == "faults" else "series and time"
            lines.append(f"  skipped {self.repeated_in_file} rows that repeat an earlier "
                         f"row's {what_repeats} in this file (the first was kept)")
        if self.already_stored:
            lines.append(f"  skipped {self.already_stored} {what} already stored")
        if self.empty_values:
            lines.append(f"  {self.empty_values} empty cells (no reading)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _short_list(items: Sequence[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# -- reading a file into a staging table ---------------------------------------------------



@dataclass
class _Staged:
    """A file read into the temporary table ``table`` (column ``ord`` = order in the file)."""

    table: str
    columns: dict[str, str]  # lower-case name -> the file's name
    kind: str  # "csv" | "parquet"
    path: Path
    delim: str = ","
    rejected: dict[int, str] = field(default_factory=dict)  # CSV line -> reason
    rows: int = 0  # rows in the table

    def col(self, low: str) -> str:
        """The quoted column of lower-case name ``low``."""
        return _quote(self.columns[low])

    def locate(self, ords: Iterable[int]) -> dict[int, tuple[int, str]]:
        """Where staged rows are in the file: (sort key, 'line N' or 'row N')."""
        ords = sorted(set(ords))
        if self.kind == "parquet":
            return {o: (o + 1, f"row {o + 1}") for o in ords}
        lines = _csv_lines(self.path, self.delim, ords, set(self.rejected))
        return {o: (lines[o], f"line {lines[o]}") if o in lines
                else (1 << 62, f"data row {o + 1}") for o in ords}


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq", ".parq")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _csv_header(path: Path) -> tuple[str, list[str]]:
    """(delimiter, column names) from the header line."""
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"{path}: cannot read the file: {exc}") from None
    if not first.strip():
        raise ImportRefused(f"{path}: the file is empty (expected a header line)")
    delim = max([",", ";", "\t", "|"], key=first.count)
    names = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
    if any(not n for n in names):
        raise ImportRefused(f"{path}: the header line has an empty column name: "
                           f"{first.strip()!r}")
    lower = [n.lower() for n in names]
    dup = sorted({n for n in lower if lower.count(n) > 1})
    if dup:
        raise ImportRefused(f"{path}: the header names a column twice: {', '.join(dup)}")
    return delim, names


def _csv_lines(path: Path, delim: str, ords: Sequence[int], rejected: set[int]
               ) -> dict[int, int]:
    """Line numbers of staged rows ``ords`` (sorted): the k-th data record DuckDB kept.

    DuckDB skips the header, blank lines and the lines it rejected; the k-th
    remaining record is staged row k.  Walks the file only up to the last
    wanted row.
    """
    out: dict[int, int] = {}
    if not ords:
        return out
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delim)
        next(reader, None)  # header
        k = i = 0
        first_line = reader.line_num + 1
        for record in reader:
            line, first_line = first_line, reader.line_num + 1
            if not record or line in rejected:
                continue
            if k == ords[i]:
                out[k] = line
                i += 1
                if i == len(ords):
                    break
            k += 1
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """The file's column names, without reading the data."""
    if not path.exists():
        raise ImportRefused(f"{path}: file not found")
    if not _is_parquet(path):
        return _csv_header(path)[1]
    try:
        rel = con.sql(f"SELECT * FROM read_parquet({_lit(str(path))}) LIMIT 0")
    except duckdb.Error as exc:
        raise ImportRefused(f"{path}: cannot read the file: {_first_line(exc)}") from None
    return list(rel.columns)


def _csv_sql_columns(names: Sequence[str], types: dict[str, str]) -> str:
    return "{" + ", ".join(f"{_lit(n)}: {_lit(types[n.lower()])}" for n in names) + "}"


def _csv_epoch_columns(con: duckdb.DuckDBPyConnection, path: Path, delim: str,
                       names: Sequence[str], time_cols: set[str]) -> set[str]:
    """Time columns whose first values are numbers (Unix seconds) rather than times."""
    types = {n.lower(): "VARCHAR" for n in names}
    src = (f"read_csv({_lit(str(path))}, delim={_lit(delim)}, header=true, quote='\"', "
           f"auto_detect=false, columns={_csv_sql_columns(names, types)}, "
           f"ignore_errors=true)")
    out = set()
    for low in time_cols:
        q = _quote(next(n for n in names if n.lower() == low))
        values, numbers = con.execute(
            f"SELECT count(*), count(TRY_CAST(v AS DOUBLE)) FROM (SELECT trim({q}) AS v "
            f"FROM {src} WHERE trim({q}) <> '' LIMIT 200)").fetchone()
        if values and values == numbers:
            out.add(low)
    return out


def _stage(con: duckdb.DuckDBPyConnection, path: Path, numeric: set[str],
           time_cols: set[str], progress: Any) -> _Staged:
    """Read ``path`` into a temporary table, in file order.

    Time columns become TIMESTAMPTZ (text in any form DuckDB reads, zone-less
    meaning UTC, or Unix seconds), ``numeric`` columns DOUBLE, the rest VARCHAR;
    ``ord`` numbers the rows and ``<time column>__text`` keeps the raw text of a
    time that could not be read.  A CSV row DuckDB cannot parse goes to its
    rejects table and from there, with its line number, to ``rejected``.
    """
    n = next(_counter)
    table, raw = f"_import_{n}", f"_import_{n}_raw"
    watch = (progress.watch(con, f"reading {path.name}") if hasattr(progress, "watch")
             else contextlib.nullcontext())
    if _is_parquet(path):
        rel = con.sql(f"SELECT * FROM read_parquet({_lit(str(path))}) LIMIT 0")
        types = {c.lower(): str(t) for c, t in zip(rel.columns, rel.types, strict=True)}
        staged = _Staged(table, {c.lower(): c for c in rel.columns}, "parquet", path)
        select = ["file_row_number AS ord"]
        for low, name in staged.columns.items():
            q, t = _quote(name), types[low]
            if low in time_cols:
                expr, text = _parquet_time(q, t)
                select += [f"{expr} AS {q}", f"{text} AS {_quote(low + '__text')}"]
            elif low in numeric:
                if not _is_numeric_type(t):
                    raise ImportRefused(f"{path}: column {name!r} has type {t}; in a Parquet "
                                       f"file a value column must be numeric")
                select.append(f"CAST({q} AS DOUBLE) AS {q}")
            else:
                select.append(f"CAST({q} AS VARCHAR) AS {q}")
        sql = (f"CREATE TEMP TABLE {table} AS SELECT {', '.join(select)} "
               f"FROM read_parquet({_lit(str(path))}, file_row_number=true)")
        with watch:
            try:
                con.execute(sql)
            except duckdb.Error as exc:
                raise ImportRefused(f"{path}: cannot read the file: {_first_line(exc)}") from None
    else:
        delim, names = _csv_header(path)
        staged = _Staged(table, {c.lower(): c for c in names}, "csv", path, delim)
        epoch = _csv_epoch_columns(con, path, delim, names, time_cols)
        types = {low: "DOUBLE" if low in numeric or low in epoch
                 else "TIMESTAMPTZ" if low in time_cols else "VARCHAR"
                 for low in staged.columns}
        rejects, scans = f"_rejects_{n}", f"_rejscans_{n}"
        src = (f"read_csv({_lit(str(path))}, delim={_lit(delim)}, header=true, quote='\"', "
               f"auto_detect=false, columns={_csv_sql_columns(names, types)}, "
               f"store_rejects=true, rejects_table={_lit(rejects)}, "
               f"rejects_scan={_lit(scans)})")
        with watch:
            try:
                con.execute(f"CREATE TEMP TABLE {raw} AS SELECT * FROM {src}")
            except duckdb.Error as exc:
                raise ImportRefused(f"{path}: cannot read the file: {_first_line(exc)}") from None
        select = ["rowid AS ord"]
        for low, name in staged.columns.items():
            q, text = _quote(name), _quote(low + "__text")
            if low in epoch:
                select += [f"CASE WHEN isfinite({q}) THEN to_timestamp({q}) END AS {q}",
                           f"CASE WHEN NOT isfinite({q}) THEN CAST({q} AS VARCHAR) END "
                           f"AS {text}"]
            elif low in time_cols:
                select += [q, f"CAST(NULL AS VARCHAR) AS {text}"]
            else:
                select.append(q)
        # A view, not a copy: the raw table's rowid is the row's place in the file.
        con.execute(f"CREATE TEMP VIEW {table} AS SELECT {', '.join(select)} FROM {raw}")
        for line, etype, column, message in con.execute(
                f"SELECT line, error_type, column_name, error_message FROM {rejects} "
                f"ORDER BY line, column_idx").fetchall():
            staged.rejected.setdefault(int(line), _reject_reason(etype, column, message))
        con.execute(f"DROP TABLE {rejects}")
        con.execute(f"DROP TABLE {scans}")
    staged.rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return staged


_counter = iter(range(1, 1 << 62))


def _reject_reason(etype: str, column: str | None, message: str) -> str:
    message = " ".join((message or "").split())
    if etype == "CAST":
        m = re.search(r'Could not convert string "(.*?)" to \'?([A-Z ]+)', message)
        if m:
            what = "a time" if "TIME" in m.group(2) else "a number"
            return f"{column}: {m.group(1)!r} is not {what}"
    if etype in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
        return f"{etype.lower()} ({message})"
    return f"{etype.lower()}: {message}"


def _is_numeric_type(t: str) -> bool:
    t = t.upper()
    return any(k in t for k in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL", "NUMERIC"))


def _parquet_time(q: str, t: str) -> tuple[str, str]:
    """(TIMESTAMPTZ expression, raw text where unreadable) for a Parquet column of type t."""
    t = t.upper()
    none = "CAST(NULL AS VARCHAR)"
    if "WITH TIME ZONE" in t:
        return q, none
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"CAST({q} AS TIMESTAMPTZ)", none  # the session's zone is UTC
    if _is_numeric_type(t):
        return (f"CASE WHEN isfinite({q}) THEN to_timestamp(CAST({q} AS DOUBLE)) END",
                f"CASE WHEN NOT isfinite({q}) THEN CAST({q} AS VARCHAR) END")
    return (f"TRY_CAST({q} AS TIMESTAMPTZ)",
            f"CASE WHEN {q} IS NOT NULL AND TRY_CAST({q} AS TIMESTAMPTZ) IS NULL "
            f"THEN CAST({q} AS VARCHAR) END")


# -- checks ---------------------------------------------------------------------------------


def _name_check(expr: str, what: str) -> list[str]:
    """CASE branches refusing an empty or invalid name in ``expr``."""
    return [f"WHEN {expr} IS NULL OR {expr} = '' THEN '{what} is empty'",
            f"WHEN NOT regexp_full_match({expr}, '{NAME_PATTERN}') THEN '{what} ' || "
            f"{expr} || ' is not a valid name (1-64 characters of A-Z a-z 0-9 _ . -)'"]


def _time_check(staged: _Staged, low: str, what: str, future_us: int) -> list[str]:
    q, text = staged.col(low), _quote(low + "__text")
    return [f"WHEN {q} IS NULL AND {text} IS NOT NULL THEN '{what} ' || {text} || "
            f"' is not a time'",
            f"WHEN {q} IS NULL THEN '{what} is empty'",
            f"WHEN epoch_us({q}) > {future_us} THEN '{what} ' || "
            f"strftime({q}, '%Y-%m-%dT%H:%M:%SZ') || ' is in the future'"]


def _case(branches: Sequence[str]) -> str:
    return "CASE " + " ".join(branches) + " END"


def _judge_rows(con: duckdb.DuckDBPyConnection, staged: _Staged, t: str,
                checks: Sequence[str], report: ImportReport) -> None:
    """Table ``{t}_chk`` of (ord, the first failed check or NULL) for every staged
    row; the bad rows, DuckDB's own rejects included, counted into ``report``."""
    con.execute(f"CREATE TEMP TABLE {t}_chk AS SELECT ord, {_case(checks)} AS reason FROM {t}")
    report.bad_rows = len(staged.rejected) + con.execute(
        f"SELECT count(*) FROM {t}_chk WHERE reason IS NOT NULL").fetchone()[0]


def _problems(con: duckdb.DuckDBPyConnection, sql: str, limit: int) -> list[tuple[int, str]]:
    """(ord, reason) of the first ``limit`` problem rows that ``sql`` selects."""
    return [(int(o), r) for o, r in con.execute(f"{sql} ORDER BY ord LIMIT {limit}").fetchall()]


def _first_problems(staged: _Staged, found: list[tuple[int, str]], limit: int
                    ) -> list[Problem]:
    """The first ``limit`` problems in file order: DuckDB's rejects and our checks."""
    where = staged.locate(o for o, _ in found)
    items = [(where[o][0], where[o][1], r) for o, r in found]
    items += [(line, f"line {line}", r) for line, r in list(staged.rejected.items())[:limit]]
    items.sort(key=lambda x: x[0])
    return [Problem(w, r) for _, w, r in items[:limit]]


# -- readings -------------------------------------------------------------------------------


def import_readings(con: duckdb.DuckDBPyConnection, path: str | Path, *,
                    asset: str | None = None, line: str = DEFAULT_LINE,
                    max_future_s: float = 300.0, progress: Any = None,
                    max_problems: int = 20, now: float | None = None) -> ImportReport:
    """Import a readings file (see the module docstring); returns what happened.

    ``asset`` names the asset of a file without an ``asset`` column; ``line``
    is the line of a file without a ``line`` column.  Raises ``ImportRefused``
    for a file that cannot be read at all; bad rows are skipped and reported.
    """
    t0 = time.perf_counter()
    path = Path(path)
    say = progress or (lambda _m: None)
    report = ImportReport(str(path))
    _session(con)
    names = _columns(con, path)
    lower = {n.lower(): n for n in names}
    ts_col = next((c for c in TS_NAMES if c in lower), None)
    if ts_col is None:
        raise ImportRefused(f"{path}: no time column (one of {', '.join(TS_NAMES)}); the "
                           f"columns are {', '.join(names)}")
    if asset is not None and "asset" in lower:
        raise ImportRefused(f"{path}: the file has an asset column; --asset is only for a "
                           f"file without one")
    if asset is None and "asset" not in lower:
        raise ImportRefused(f"{path}: no asset column; name the asset with --asset NAME")
    for value, what in ((asset, "asset"), (line, "line")):
        if value is not None and not is_name(value):
            raise ImportRefused(f"{what} {value!r} is not a valid name (1-64 characters of "
                               f"A-Z a-z 0-9 _ . -)")
    keys = {ts_col, "line", "asset"}
    long_form = "sensor" in lower and "value" in lower
    if long_form:
        report.form = "long"
        numeric = {"value"}
        ignored = [lower[c] for c in lower if c not in keys | {"sensor", "value"}]
        if ignored:
            report.notes.append(f"ignored columns: {', '.join(ignored)}")
    else:
        report.form = "wide"
        sensors = [lower[c] for c in lower if c not in keys]
        if not sensors:
            raise ImportRefused(f"{path}: no sensor columns: expected long form (ts, asset, "
                               f"sensor, value) or wide form (a time column and one column "
                               f"per sensor); the columns are {', '.join(names)}")
        bad = [s for s in sensors if not is_name(s) or s == RESERVED_SENSOR]
        if bad:
            raise ImportRefused(f"{path}: column names that cannot be sensor names: "
                               f"{', '.join(map(repr, bad))} (1-64 characters of A-Z a-z "
                               f"0-9 _ . -, and not {RESERVED_SENSOR!r})")
        numeric = {s.lower() for s in sensors}

    size = path.stat().st_size
    say(f"reading {path} ({size / 1e6:.1f} MB, {report.form} form)")
    future_us = _future_limit_us(now, max_future_s)
    # Reading and checking make temporary tables only (committed at once, so their
    # rowids are the rows' places in the file); the writes are one transaction.
    staged = _stage(con, path, numeric, {ts_col}, progress)
    try:
        report.rows = staged.rows + len(staged.rejected)
        say(f"read {report.rows} rows ({len(staged.rejected)} unreadable); checking")
        valid = _check_readings(con, staged, report, ts_col, asset, line, future_us,
                                max_problems)
        con.execute("BEGIN")
        try:
            _store_readings(con, staged, valid, report, say)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        _drop_staged(con, staged)
    report.seconds = time.perf_counter() - t0
    return report


def _future_limit_us(now: float | None, max_future_s: float) -> int:
    """Times after this (µs) are refused as "in the future"; inf = no limit."""
    limit = (time.time() if now is None else now) + max_future_s
    return int(limit * 1e6) if math.isfinite(limit) else 1 << 62


def _session(con: duckdb.DuckDBPyConnection) -> None:
    """Zone-less times are UTC; DuckDB tracks query progress for ``Progress.watch`` but
    does not draw its own bar."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")


def _drop(con: duckdb.DuckDBPyConnection, *tables: str) -> None:
    for t in tables:
        con.execute(f"DROP TABLE IF EXISTS {t}")


def _drop_staged(con: duckdb.DuckDBPyConnection, staged: _Staged) -> None:
    t = staged.table
    _drop(con, f"{t}_chk", f"{t}_cells", f"{t}_valid", f"{t}_keys", f"{t}_ok", f"{t}_new")
    if staged.kind == "csv":
        con.execute(f"DROP VIEW IF EXISTS {t}")
        _drop(con, f"{t}_raw")
    else:
        _drop(con, t)


def _check_readings(con: duckdb.DuckDBPyConnection, staged: _Staged, report: ImportReport,
                    ts_col: str, asset: str | None, line: str, future_us: int,
                    max_problems: int) -> str:
    """Run the checks; fill the report's bad rows; return the table of valid long rows
    (ord, ts_us, line, asset, sensor, value)."""
    t = staged.table
    valid = f"{t}_valid"
    line_expr = staged.col("line") if "line" in staged.columns else _lit(line)
    asset_expr = staged.col("asset") if "asset" in staged.columns else _lit(asset or "")
    ts = staged.col(ts_col)
    row_checks = _time_check(staged, ts_col, ts_col, future_us)
    if "line" in staged.columns:
        row_checks += _name_check(line_expr, "line")
    if "asset" in staged.columns:
        row_checks += _name_check(asset_expr, "asset")
    found: list[tuple[int, str]] = []
    if report.form == "long":
        sensor, value = staged.col("sensor"), staged.col("value")
        checks = row_checks + _name_check(sensor, "sensor") + [
            f"WHEN {sensor} = '{RESERVED_SENSOR}' THEN 'sensor name {RESERVED_SENSOR} is "
            f"reserved for fault events'",
            f"WHEN {value} IS NULL THEN 'value is empty'",
            f"WHEN NOT isfinite({value}) THEN 'value ' || CAST({value} AS VARCHAR) || "
            f"' is not a finite number'"]
        _judge_rows(con, staged, t, checks, report)
        found = _problems(con, f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL",
                          max_problems)
        con.execute(
            f"CREATE TEMP TABLE {valid} AS SELECT s.ord, epoch_us({ts}) AS ts_us, "
            f"{line_expr} AS line, {asset_expr} AS asset, {sensor} AS sensor, "
            f"{value} AS value FROM {t} s JOIN {t}_chk c USING (ord) WHERE c.reason IS NULL")
        _drop(con, f"{t}_chk")
    else:
        sensors = [c for c in staged.columns if c not in {ts_col, "line", "asset"}]
        on = ", ".join(staged.col(c) for c in sensors)
        _judge_rows(con, staged, t, row_checks, report)
        con.execute(
            f"CREATE TEMP TABLE {t}_cells AS SELECT ord, ts_us, line, asset, sensor, value "
            f"FROM (SELECT s.ord, epoch_us({ts}) AS ts_us, {line_expr} AS line, "
            f"{asset_expr} AS asset, {on} FROM {t} s JOIN {t}_chk c USING (ord) "
            f"WHERE c.reason IS NULL) UNPIVOT INCLUDE NULLS (value FOR sensor IN ({on}))")
        report.empty_values, report.bad_values = con.execute(
            f"SELECT count(*) FILTER (value IS NULL OR isnan(value)), "
            f"count(*) FILTER (isinf(value)) FROM {t}_cells").fetchone()
        found = _problems(
            con,
            f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL UNION ALL "
            f"SELECT ord, sensor || ': value ' || CAST(value AS VARCHAR) || "
            f"' is not a finite number' FROM {t}_cells WHERE isinf(value)", max_problems)
        con.execute(f"CREATE TEMP TABLE {valid} AS SELECT * FROM {t}_cells "
                    f"WHERE isfinite(value)")
        _drop(con, f"{t}_chk", f"{t}_cells")
    report.problems = _first_problems(staged, found, max_problems)
    return valid


def _store_readings(con: duckdb.DuckDBPyConnection, staged: _Staged, valid: str,
                    report: ImportReport, say: Say, chunk: int = 500_000) -> None:
    """Map valid rows to series, skip repeats and stored rows, insert the rest."""
    t = staged.table
    key_rows = con.execute(f"SELECT DISTINCT line, asset, sensor FROM {valid} "
                           f"ORDER BY ALL").fetchall()
    if not key_rows:
        report.stored = 0
        return
    registry = SeriesRegistry(con)
    before = len(registry)
    keys = [SeriesKey(*k) for k in key_rows]
    ids = registry.ids(con, keys)
    report.new_series = len(registry) - before
    report.assets = sorted({k.asset for k in keys})
    report.sensors = sorted({k.sensor for k in keys})
    con.execute(f"CREATE TEMP TABLE {t}_keys (line VARCHAR, asset VARCHAR, sensor VARCHAR, "
                f"id INTEGER)")
    con.executemany(f"INSERT INTO {t}_keys VALUES (?, ?, ?, ?)",
                    [(k.line, k.asset, k.sensor, int(i)) for k, i in zip(keys, ids,
                                                                          strict=True)])
    con.execute(
        f"CREATE TEMP TABLE {t}_ok AS SELECT v.ord, k.id AS series_id, v.ts_us, v.value, "
        f"min(v.ord) OVER (PARTITION BY k.id, v.ts_us) AS first_ord "
        f"FROM {valid} v JOIN {t}_keys k ON k.line = v.line AND k.asset = v.asset "
        f"AND k.sensor = v.sensor")
    _drop(con, valid)
    report.repeated_in_file = con.execute(
        f"SELECT count(*) FROM {t}_ok WHERE ord <> first_ord").fetchone()[0]
    if report.repeated_in_file:
        pairs = con.execute(f"SELECT ord, first_ord FROM {t}_ok WHERE ord <> first_ord "
                            f"ORDER BY ord LIMIT 3").fetchall()
        where = staged.locate([o for p in pairs for o in p])
        report.notes.append("repeats: " + "; ".join(
            f"{where[o][1]} repeats the series and time of {where[f][1]}" for o, f in pairs))
    stored_before = con.execute("SELECT count(*) FROM readings_raw").fetchone()[0]
    lo_hi = con.execute(f"SELECT min(ts_us), max(ts_us) FROM {t}_ok").fetchone()
    if stored_before and lo_hi[0] is not None:
        anti = (f"AND NOT EXISTS (SELECT 1 FROM readings_raw r WHERE r.series_id = "
                f"o.series_id AND r.ts = make_timestamp(o.ts_us) AND r.ts BETWEEN "
                f"make_timestamp({lo_hi[0]}) AND make_timestamp({lo_hi[1]}))")
    else:
        anti = ""
    con.execute(f"CREATE TEMP TABLE {t}_new AS SELECT row_number() OVER (ORDER BY ord) - 1 "
                f"AS rn, series_id, ts_us, value FROM {t}_ok o WHERE ord = first_ord {anti}")
    firsts = con.execute(f"SELECT count(*) FROM {t}_ok WHERE ord = first_ord").fetchone()[0]
    _drop(con, f"{t}_ok")
    total, lo, hi = con.execute(f"SELECT count(*), min(ts_us), max(ts_us) FROM {t}_new"
                                ).fetchone()
    report.already_stored = firsts - total
    if total:
        report.t_from, report.t_to = lo / 1e6, hi / 1e6
    label = f"storing {total} readings"
    for start in range(0, total, chunk):
        con.execute(f"INSERT INTO readings_raw SELECT make_timestamp(ts_us), series_id, value "
                    f"FROM {t}_new WHERE rn >= {start} AND rn < {start + chunk} ORDER BY rn")
        if hasattr(say, "bar"):
            say.bar(label, min(total, start + chunk) / total)
    _drop(con, f"{t}_new")
    report.stored = total


# -- faults ---------------------------------------------------------------------------------

FAULT_COLUMNS: tuple[str, ...] = ("asset", "ts_start", "ts_end", "code")


def import_faults(con: duckdb.DuckDBPyConnection, path: str | Path, *,
                  line: str = DEFAULT_LINE, max_future_s: float = 300.0,
                  progress: Any = None, max_problems: int = 20,
                  now: float | None = None) -> ImportReport:
    """Import a fault log (``asset, ts_start, ts_end, code``, optional ``line``).

    Each fault becomes a ``start`` and, when ``ts_end`` is not empty, an ``end``
    event in ``faults`` with source ``import``.  Events already stored (same
    line, asset, state and time) are skipped, so importing a log twice is harmless.
    """
    t0 = time.perf_counter()
    path = Path(path)
    say = progress or (lambda _m: None)
    report = ImportReport(str(path), form="faults")
    _session(con)
    names = _columns(con, path)
    lower = {n.lower(): n for n in names}
    missing = [c for c in ("asset", "ts_start") if c not in lower]
    if missing:
        raise ImportRefused(f"{path}: a fault log needs the columns asset, ts_start, ts_end, "
                            f"code; missing {', '.join(missing)} (found {', '.join(names)})")
    ignored = [lower[c] for c in lower if c not in (*FAULT_COLUMNS, "line")]
    if ignored:
        report.notes.append(f"ignored columns: {', '.join(ignored)}")
    if not is_name(line):
        raise ImportRefused(f"line {line!r} is not a valid name")
    future_us = _future_limit_us(now, max_future_s)
    say(f"reading fault log {path}")
    time_cols = {c for c in ("ts_start", "ts_end") if c in lower}
    staged = _stage(con, path, set(), time_cols, None)
    t = staged.table
    try:
        report.rows = staged.rows + len(staged.rejected)
        line_expr = staged.col("line") if "line" in lower else _lit(line)
        start = staged.col("ts_start")
        end = staged.col("ts_end") if "ts_end" in lower else "CAST(NULL AS TIMESTAMPTZ)"
        code = f"coalesce({staged.col('code')}, '')" if "code" in lower else "''"
        checks = _time_check(staged, "ts_start", "ts_start", future_us)
        if "ts_end" in lower:
            text = _quote("ts_end__text")
            checks += [f"WHEN {end} IS NULL AND {text} IS NOT NULL THEN 'ts_end ' || {text} "
                       f"|| ' is not a time'",
                       f"WHEN {end} < {start} THEN 'the fault ends (' || "
                       f"strftime({end}, '%Y-%m-%dT%H:%M:%SZ') || ') before it starts'"]
        if "line" in lower:
            checks += _name_check(line_expr, "line")
        checks += _name_check(staged.col("asset"), "asset")
        _judge_rows(con, staged, t, checks, report)
        found = _problems(con, f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL",
                          max_problems)
        report.problems = _first_problems(staged, found, max_problems)
        # Events: a start per fault, an end where known; the first of repeats is kept.
        con.execute(
            f"CREATE TEMP TABLE {t}_ok AS WITH f AS (SELECT s.ord, {line_expr} AS line, "
            f"{staged.col('asset')} AS asset, epoch_us({start}) AS start_us, "
            f"epoch_us({end}) AS end_us, {code} AS code FROM {t} s JOIN {t}_chk c "
            f"USING (ord) WHERE c.reason IS NULL), "
            f"ev AS (SELECT ord, line, asset, 'start' AS state, start_us AS ts_us, code FROM f "
            f"UNION ALL SELECT ord, line, asset, 'end', end_us, code FROM f "
            f"WHERE end_us IS NOT NULL) "
            f"SELECT *, min(ord) OVER (PARTITION BY line, asset, state, ts_us) AS first_ord "
            f"FROM ev")
        report.repeated_in_file = con.execute(
            f"SELECT count(DISTINCT ord) FROM {t}_ok WHERE ord <> first_ord").fetchone()[0]
        con.execute("BEGIN")
        try:
            total_first = con.execute(
                f"SELECT count(*) FROM {t}_ok WHERE ord = first_ord").fetchone()[0]
            con.execute(
                f"CREATE TEMP TABLE {t}_new AS SELECT * FROM {t}_ok o WHERE ord = first_ord "
                f"AND NOT EXISTS (SELECT 1 FROM faults x WHERE x.line = o.line AND "
                f"x.asset = o.asset AND x.state = o.state AND x.ts = make_timestamp(o.ts_us))")
            report.stored, lo, hi = con.execute(
                f"SELECT count(*), min(ts_us), max(ts_us) FROM {t}_new").fetchone()
            report.already_stored = total_first - report.stored
            con.execute(f"INSERT INTO faults SELECT make_timestamp(ts_us), line, asset, state, "
                        f"code, 'import' FROM {t}_new ORDER BY ts_us, ord")
            report.assets = [a for (a,) in con.execute(
                f"SELECT DISTINCT asset FROM {t}_ok ORDER BY asset").fetchall()]
            if report.stored:
                report.t_from, report.t_to = lo / 1e6, hi / 1e6
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        known = {a for (a,) in con.execute("SELECT DISTINCT asset FROM series").fetchall()}
        unknown = [a for a in report.assets if a not in known]
        if unknown:
            report.notes.append(f"no readings stored yet for the assets "
                                f"{_short_list(unknown)}")
    finally:
        _drop_staged(con, staged)
    report.seconds = time.perf_counter() - t0
    return report


# -- history for training and backtests --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StoredHistory:
    """Every asset's readings and faults, as training and backtests take them."""

    histories: tuple[AssetHistory, ...]
    t_start: float  # first reading
    t_end: float  # last reading
    readings: int
    faults: int
    notes: tuple[str, ...] = ()

    def fault_starts(self) -> dict[str, np.ndarray]:
        return {h.asset: np.sort(np.asarray(h.fault_starts, dtype=np.float64))
                for h in self.histories}


def load_histories(con: duckdb.DuckDBPyConnection, progress: Say | None = None
                   ) -> StoredHistory:
    """Read every stored reading and fault, one ``AssetHistory`` per asset.

    Assets are keyed by name; an asset name on two lines is one asset.  Fault
    events are paired per asset in time order: a start opens a fault, the next
    end closes it; a fault still open at the end of the log has no end (NaN).
    """
    say = progress or (lambda _m: None)
    series = {sid: (asset, sensor) for sid, _line, asset, sensor in
              con.execute("SELECT id, line, asset, sensor FROM series").fetchall()}
    data = con.execute("SELECT series_id, epoch_us(ts) AS t, value FROM readings_raw "
                       # rowid: readings at one timestamp in the order they were
                       # stored, as the service saw them (validity depends on it)
                       "ORDER BY series_id, ts, rowid").fetchnumpy()
    sid = np.asarray(data["series_id"], dtype=np.int64)
    ts = np.asarray(data["t"], dtype=np.float64) / 1e6
    values = np.asarray(data["value"], dtype=np.float64)
    if len(ts) == 0:
        raise ValueError("no readings stored: import a history first (appliance import)")
    bounds = np.flatnonzero(np.diff(sid)) + 1
    per_asset: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(sid)], strict=True):
        asset, sensor = series[int(sid[lo])]
        per_asset.setdefault(asset, {}).setdefault(sensor, []).append((ts[lo:hi],
                                                                       values[lo:hi]))
    events = con.execute("SELECT asset, state, epoch_us(ts) FROM faults "
                         "ORDER BY asset, ts, state = 'start'").fetchall()
    faults, notes = _pair_faults(events)
    histories = []
    for asset in sorted(per_asset):
        sensors = {}
        for sensor, parts in per_asset[asset].items():
            if len(parts) == 1:
                sensors[sensor] = parts[0]
            else:  # the same asset and sensor on two lines
                t = np.concatenate([p[0] for p in parts])
                order = np.argsort(t, kind="stable")
                sensors[sensor] = (t[order], np.concatenate([p[1] for p in parts])[order])
        starts, ends = faults.get(asset, ([], []))
        histories.append(AssetHistory(asset, sensors, np.asarray(starts, dtype=np.float64),
                                      np.asarray(ends, dtype=np.float64)))
    orphan = sorted(set(faults) - set(per_asset))
    if orphan:
        notes.append(f"faults of assets without readings ignored: {_short_list(orphan)}")
    n_faults = sum(len(h.fault_starts) for h in histories)
    say(f"history: {len(histories)} assets, {len(ts)} readings, {n_faults} faults")
    return StoredHistory(tuple(histories), float(ts.min()), float(ts.max()), len(ts),
                         n_faults, tuple(notes))


def _pair_faults(events: Sequence[tuple[str, str, int]]
                 ) -> tuple[dict[str, tuple[list[float], list[float]]], list[str]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    unmatched_end = restarted = 0
    open_at: dict[str, float] = {}
    for asset, state, ts_us in events:
        t = ts_us / 1e6
        starts, ends = out.setdefault(asset, ([], []))
        if state == "start":
            if asset in open_at:  # a start while open: the end was never logged
                restarted += 1
                ends[-1] = starts[-1]
            starts.append(t)
            ends.append(math.nan)
            open_at[asset] = t
        elif state == "end":
            if asset in open_at:
                ends[-1] = t
                del open_at[asset]
            else:
                unmatched_end += 1
    notes = []
    if unmatched_end:
        notes.append(f"{unmatched_end} fault end events without a start were ignored")
    if restarted:
        notes.append(f"{restarted} faults started again before an end was logged; the "
                     f"earlier one is taken to end where it started")
    return out, notes


def load_files(readings: str | Path, faults: str | Path | None = None, *,
               asset: str | None = None, line: str = DEFAULT_LINE,
               progress: Any = None) -> tuple[StoredHistory, list[ImportReport]]:
    """History straight from files, through an in-memory database (same checks as import)."""
    con = memory_database()
    try:
        reports = [import_readings(con, readings, asset=asset, line=line, progress=progress,
                                   max_future_s=math.inf)]
        if faults is not None:
            reports.append(import_faults(con, faults, line=line, progress=progress,
                                         max_future_s=math.inf))
        return load_histories(con, progress), reports
    finally:
        con.close()


def import_into(db_path: str | Path, readings: str | Path | None = None,
                faults: str | Path | None = None, *, asset: str | None = None,
                line: str = DEFAULT_LINE, max_future_s: float = 300.0,
                progress: Any = None, max_problems: int = 20) -> list[ImportReport]:
    """``appliance import``: open the database (refusing while the service holds it) and
    import a readings file and/or a fault log into it."""
    con = open_database(db_path)
    try:
        reports = []
        if readings is not None:
            reports.append(import_readings(con, readings, asset=asset, line=line,
                                           max_future_s=max_future_s, progress=progress,
                                           max_problems=max_problems))
        if faults is not None:
            reports.append(import_faults(con, faults, line=line, max_future_s=max_future_s,
                                         progress=progress, max_problems=max_problems))
        con.execute("CHECKPOINT")
        return reports
    finally:
        con.close()
