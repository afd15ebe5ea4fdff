"""Reading a file into a temporary staging table, in file order, with DuckDB's rejects."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from appliance.importer.report import ImportRefused, ImportReport

#: The line of a file without a ``line`` column.
DEFAULT_LINE = "line1"


@dataclass
class Staged:
    """A file read into the temporary table ``table`` (column ``ord`` = order in the file)."""

    table: str
    columns: dict[str, str]  # lower-case name -> the file's name
    kind: str  # "csv" | "parquet"
    path: Path
    delim: str = ","
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)  # CSV line -> kind, reason
    rows: int = 0  # rows in the table

    def col(self, low: str) -> str:
        """The quoted column of lower-case name ``low``."""
        return quote(self.columns[low])

    def locate(self, ords: Iterable[int]) -> dict[int, tuple[int, str]]:
        """Where staged rows are in the file: (sort key, 'line N' or 'row N')."""
        ords = sorted(set(ords))
        if self.kind == "parquet":
            return {o: (o + 1, f"row {o + 1}") for o in ords}
        lines = csv_lines(self.path, self.delim, ords, set(self.rejected))
        return {o: (lines[o], f"line {lines[o]}") if o in lines
                else (1 << 62, f"data row {o + 1}") for o in ords}


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq", ".parq")


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def csv_header(path: Path) -> tuple[str, list[str]]:
    """(delimiter, column names) from the header line."""
    try:
        with open_text(path) as f:
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


def csv_lines(path: Path, delim: str, ords: Sequence[int], rejected: set[int]
               ) -> dict[int, int]:
    """Line numbers of staged rows ``ords`` (sorted): the k-th data record DuckDB kept.

    DuckDB skips the header, blank lines and the lines it rejected; the k-th
    remaining record is staged row k.  Walks the file only up to the last
    wanted row.
    """
    out: dict[int, int] = {}
    if not ords:
        return out
    with open_text(path) as f:
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


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def file_columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """The file's column names, without reading the data."""
    if not path.exists():
        raise ImportRefused(f"{path}: file not found")
    if not is_parquet(path):
        return csv_header(path)[1]
    try:
        rel = con.sql(f"SELECT * FROM read_parquet({lit(str(path))}) LIMIT 0")
    except duckdb.Error as exc:
        raise ImportRefused(f"{path}: cannot read the file: {first_line(exc)}") from None
    return list(rel.columns)


def usable_columns(names: Sequence[str], ignore: Collection[str], report: ImportReport
                   ) -> dict[str, str]:
    """The file's columns (lower-case name -> name) less those the user asked to
    ``--ignore`` (in any case), which the report names."""
    ignore = {c.lower() for c in ignore}
    report.ignored += [n for n in names if n.lower() in ignore]
    return {n.lower(): n for n in names if n.lower() not in ignore}


def _csv_sql_columns(names: Sequence[str], types: dict[str, str]) -> str:
    return "{" + ", ".join(f"{lit(n)}: {lit(types[n.lower()])}" for n in names) + "}"


#: How many of a CSV column's first non-empty values say whether it holds numbers.
SNIFF_VALUES = 200


def _csv_sniff_numbers(con: duckdb.DuckDBPyConnection, path: Path, delim: str,
                       names: Sequence[str], columns: Iterable[str]
                       ) -> dict[str, tuple[int, int, str | None]]:
    """Per column (lower-case name): of its first ``SNIFF_VALUES`` non-empty values, how
    many there are, how many are numbers, and the first that is not."""
    types = {n.lower(): "VARCHAR" for n in names}
    src = (f"read_csv({lit(str(path))}, delim={lit(delim)}, header=true, quote='\"', "
           f"auto_detect=false, columns={_csv_sql_columns(names, types)}, "
           f"ignore_errors=true)")
    out = {}
    for low in columns:
        q = quote(next(n for n in names if n.lower() == low))
        out[low] = con.execute(
            f"SELECT count(*), count(TRY_CAST(v AS DOUBLE)), "
            f"first(v) FILTER (TRY_CAST(v AS DOUBLE) IS NULL) FROM (SELECT trim({q}) AS v "
            f"FROM {src} WHERE trim({q}) <> '' LIMIT {SNIFF_VALUES})").fetchone()
    return out


def _csv_epoch_columns(con: duckdb.DuckDBPyConnection, path: Path, delim: str,
                       names: Sequence[str], time_cols: set[str]) -> set[str]:
    """Time columns whose first values are numbers (Unix seconds) rather than times."""
    sniffed = _csv_sniff_numbers(con, path, delim, names, time_cols)
    return {low for low, (values, numbers, _) in sniffed.items() if values and values == numbers}


def non_numeric_columns(con: duckdb.DuckDBPyConnection, path: Path, columns: Sequence[str]
                        ) -> dict[str, str]:
    """The columns (file names) of ``columns`` that do not hold numbers, and why: in
    Parquet a type that is not a number, in CSV more than half of the first
    ``SNIFF_VALUES`` non-empty values not numbers (a column of numbers with a few
    bad cells is kept, and those rows are reported)."""
    if is_parquet(path):
        rel = con.sql(f"SELECT * FROM read_parquet({lit(str(path))}) LIMIT 0")
        types = dict(zip(rel.columns, map(str, rel.types), strict=True))
        return {c: f"type {types[c]}, not numbers" for c in columns
                if not _is_numeric_type(types[c])}
    delim, names = csv_header(path)
    sniffed = _csv_sniff_numbers(con, path, delim, names, [c.lower() for c in columns])
    out = {}
    for c in columns:
        values, numbers, example = sniffed[c.lower()]
        if 2 * numbers < values:
            out[c] = f"not numbers (e.g. {example!r})"
    return out


def stage(con: duckdb.DuckDBPyConnection, path: Path, numeric: set[str],
           time_cols: set[str], progress: Any) -> Staged:
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
    if is_parquet(path):
        rel = con.sql(f"SELECT * FROM read_parquet({lit(str(path))}) LIMIT 0")
        types = {c.lower(): str(t) for c, t in zip(rel.columns, rel.types, strict=True)}
        staged = Staged(table, {c.lower(): c for c in rel.columns}, "parquet", path)
        select = ["file_row_number AS ord"]
        for low, name in staged.columns.items():
            q, t = quote(name), types[low]
            if low in time_cols:
                expr, text = _parquet_time(q, t)
                select += [f"{expr} AS {q}", f"{text} AS {quote(low + '__text')}"]
            elif low in numeric:
                if not _is_numeric_type(t):
                    raise ImportRefused(f"{path}: column {name!r} has type {t}; in a Parquet "
                                       f"file a value column must be numeric")
                select.append(f"CAST({q} AS DOUBLE) AS {q}")
            else:
                select.append(f"CAST({q} AS VARCHAR) AS {q}")
        sql = (f"CREATE TEMP TABLE {table} AS SELECT {', '.join(select)} "
               f"FROM read_parquet({lit(str(path))}, file_row_number=true)")
        with watch:
            try:
                con.execute(sql)
            except duckdb.Error as exc:
                raise ImportRefused(f"{path}: cannot read the file: {first_line(exc)}") from None
    else:
        delim, names = csv_header(path)
        staged = Staged(table, {c.lower(): c for c in names}, "csv", path, delim)
        epoch = _csv_epoch_columns(con, path, delim, names, time_cols)
        types = {low: "DOUBLE" if low in numeric or low in epoch
                 else "TIMESTAMPTZ" if low in time_cols else "VARCHAR"
                 for low in staged.columns}
        rejects, scans = f"_rejects_{n}", f"_rejscans_{n}"
        src = (f"read_csv({lit(str(path))}, delim={lit(delim)}, header=true, quote='\"', "
               f"auto_detect=false, columns={_csv_sql_columns(names, types)}, "
               f"store_rejects=true, rejects_table={lit(rejects)}, "
               f"rejects_scan={lit(scans)})")
        with watch:
            try:
                con.execute(f"CREATE TEMP TABLE {raw} AS SELECT * FROM {src}")
            except duckdb.Error as exc:
                raise ImportRefused(f"{path}: cannot read the file: {first_line(exc)}") from None
        select = ["rowid AS ord"]
        for low, name in staged.columns.items():
            q, text = quote(name), quote(low + "__text")
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


def _reject_reason(etype: str, column: str | None, message: str) -> tuple[str, str]:
    """(kind, reason) of a row DuckDB's reader rejected."""
    message = " ".join((message or "").split())
    if etype == "CAST":
        m = re.search(r'Could not convert string "(.*?)" to \'?([A-Z ]+)', message)
        if m:
            what = "a time" if "TIME" in m.group(2) else "a number"
            return f"unreadable {column}", f"{column}: {m.group(1)!r} is not {what}"
    if etype in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
        return etype.lower(), f"{etype.lower()} ({message})"
    return etype.lower(), f"{etype.lower()}: {message}"


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


def session(con: duckdb.DuckDBPyConnection) -> None:
    """Zone-less times are UTC; DuckDB tracks query progress for ``Progress.watch`` but
    does not draw its own bar."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")


def drop_tables(con: duckdb.DuckDBPyConnection, *tables: str) -> None:
    for t in tables:
        con.execute(f"DROP TABLE IF EXISTS {t}")


def drop_staged(con: duckdb.DuckDBPyConnection, staged: Staged) -> None:
    t = staged.table
    drop_tables(con, f"{t}_chk", f"{t}_cells", f"{t}_valid", f"{t}_keys", f"{t}_ok", f"{t}_new",
                f"{t}_names")
    if staged.kind == "csv":
        con.execute(f"DROP VIEW IF EXISTS {t}")
        drop_tables(con, f"{t}_raw")
    else:
        drop_tables(con, t)
