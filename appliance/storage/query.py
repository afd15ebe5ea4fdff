"""``appliance sql``: the guard that admits one read-only query, running it with a row
limit and a timeout, and printing its result; and the fixed reads other commands print
(``model_history``).

The same guard and the same runner serve a query on the running service's own
connection (``service/control.py``, over its socket) and on a file opened read-only
by the command itself when no service runs (``main``).  On the service's connection
DuckDB's own file switches (``enable_external_access``, ``allowed_directories``) are
of no use: they are global to the database and fixed before it starts, and the
service's snapshots and exports write Parquet with COPY on that same database.  So
what may run is decided here, from DuckDB's own parse of the text:

* exactly one statement, of type SELECT (which covers SHOW, DESCRIBE, SUMMARIZE,
  FROM-first and VALUES); every other type (INSERT … ALTER, ATTACH, COPY,
  INSTALL/LOAD, PRAGMA, SET/RESET, CALL, EXPORT/IMPORT, transactions, PREPARE) is
  refused by name;
* in its syntax tree (``json_serialize_sql``), every table function is one that
  reads only the catalog (``range``, ``duckdb_tables`` …) or a file reader whose
  paths are constant strings inside the data directory; every table name is a
  table or view of the database or a CTE (``FROM '/etc/passwd'`` is a replacement
  scan of a file, refused); ``getenv`` is refused;
* it runs in a ``READ ONLY`` transaction, so DuckDB itself refuses a write that
  got past the parse (``nextval`` on a sequence, say).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import glob
import io
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from appliance.timefmt import from_us, rfc3339

#: Rows a query returns at most unless told otherwise (``[control] max_rows``).
DEFAULT_LIMIT = 10_000
FORMATS = ("table", "csv", "json", "parquet")

#: Table functions that read only the catalog or make rows: always allowed.
_CATALOG_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "duckdb_tables", "duckdb_views",
    "duckdb_columns", "duckdb_schemas", "duckdb_types", "duckdb_functions",
    "duckdb_constraints", "duckdb_indexes", "duckdb_databases", "duckdb_settings",
    "pragma_table_info", "pragma_show", "pragma_storage_info", "pragma_database_size",
    "pragma_version", "pragma_metadata_info"})
#: Table functions that read files: allowed on constant paths inside the data directory.
_FILE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata", "read_csv", "read_csv_auto",
    "sniff_csv", "read_json", "read_json_auto", "read_json_objects",
    "read_ndjson", "read_ndjson_auto", "read_ndjson_objects", "read_text", "read_blob",
    "glob"})
#: A table name that reads as a file or a URL (DuckDB's replacement scans).
_PATH_LIKE = re.compile(r"[/.:~\\]")
#: Scalar functions that reach outside the database.
_REFUSED_SCALARS = frozenset({"getenv"})


class Refused(ValueError):
    """A query the guard does not run; the message says why."""


@dataclass(frozen=True, slots=True)
class Result:
    """A query's result with JSON-safe values (as it travels over the socket)."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    limit: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "types": self.types, "rows": self.rows,
                "truncated": self.truncated, "limit": self.limit, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Result:
        return cls(doc["columns"], doc["types"], doc["rows"], doc["truncated"],
                   doc["limit"], doc["seconds"])


def check(con: duckdb.DuckDBPyConnection, text: str, data_dir: Path) -> str:
    """The one statement of ``text`` if the guard admits it; raises ``Refused``."""
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise Refused(f"cannot parse the query: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise Refused(f"one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise Refused(f"only queries (SELECT, SHOW, DESCRIBE, SUMMARIZE) run here; "
                      f"refused: {kind.name} statement")
    query = statements[0].query
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error"):
        raise Refused(f"cannot parse the query: {tree.get('error_message', tree)}")
    names = {r[0].lower() for r in con.execute(
        "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()"
    ).fetchall()}
    ctes = {key.lower() for node in _nodes(tree) for key in _cte_names(node)}
    for node in _nodes(tree):
        kind_ = node.get("type")
        if kind_ == "TABLE_FUNCTION":
            _check_table_function(node["function"], data_dir)
        elif kind_ == "BASE_TABLE":
            name = node.get("table_name", "")
            # A CTE's name is not checked for its scope: one that looks like a path could
            # shadow nothing in its own scope and read the file in another.
            if name.lower() not in names | ctes or _PATH_LIKE.search(name):
                raise Refused(f"no table or view named {name!r} (reading files by name is "
                              f"refused; the tables: SHOW TABLES)")
        elif node.get("class") == "FUNCTION" and node.get("function_name") in _REFUSED_SCALARS:
            raise Refused(f"{node['function_name']}() is refused here")
    return query


def _check_table_function(fn: dict[str, Any], data_dir: Path) -> None:
    name = fn.get("function_name", "").lower()
    if name in _CATALOG_FUNCTIONS:
        return
    if name not in _FILE_FUNCTIONS:
        raise Refused(f"table function {name}() is refused here (allowed: reading the "
                      f"database's tables and views, catalog functions, and files inside "
                      f"{data_dir})")
    paths = [p for arg in fn.get("arguments", []) if not arg.get("name")
             for p in _constant_strings(arg["expression"], name)]
    if not paths:
        raise Refused(f"{name}() needs a constant path")
    root = os.path.realpath(data_dir)
    for path in paths:
        # Only plain absolute paths: DuckDB reads URLs (file://, https://, s3://: the
        # latter would also install an extension), expands '~' and resolves a relative
        # path against the process's directory, none of which the check below sees.
        if not os.path.isabs(path) or "://" in path:
            raise Refused(f"{name}('{path}'): give an absolute path inside the data "
                          f"directory {data_dir}")
        if ".." in Path(path).parts:
            raise Refused(f"{name}('{path}') reads outside the data directory {data_dir}")
        # A glob reads what it matches: every match, symlinks resolved, must be inside.
        fixed = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        for target in (fixed, *glob.glob(path, recursive=True)):
            if not _inside(os.path.realpath(target), root):
                raise Refused(f"{name}('{path}') reads outside the data directory "
                              f"{data_dir}")


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root + os.sep)


def _constant_strings(expr: dict[str, Any], name: str) -> list[str]:
    """The string constants of a path argument (a string or a list of strings)."""
    if expr.get("class") == "CONSTANT" and expr["literal"].get("kind") == "STRING":
        return [expr["literal"]["text"]]
    if expr.get("class") == "FUNCTION" and expr.get("function_name") == "list_value":
        return [s for arg in expr.get("arguments", []) for s in
                _constant_strings(arg["expression"], name)]
    raise Refused(f"{name}() needs its paths as constant strings")


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every dict in the serialized syntax tree, depth first."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _cte_names(node: dict[str, Any]) -> list[str]:
    cte_map = node.get("cte_map")
    return [entry["key"] for entry in cte_map.get("map", [])] if isinstance(cte_map, dict) \
        else []


def run(cursor: duckdb.DuckDBPyConnection, text: str, data_dir: Path, limit: int,
        timeout_s: float) -> Result:
    """Check and run ``text`` on ``cursor`` (one no other thread uses) in a read-only
    transaction: at most ``limit`` rows, interrupted after ``timeout_s``.  Raises
    ``Refused``, or ``duckdb.Error`` when the query fails (``InterruptException``
    when it was stopped)."""
    query = check(cursor, text, data_dir)
    started = time.perf_counter()
    timer = threading.Timer(timeout_s, cursor.interrupt)
    cursor.execute("BEGIN TRANSACTION READ ONLY")
    try:
        timer.start()
        # LIMIT on the relation: DuckDB stops producing rows past it, so a query
        # that selects a whole table does not build it in the service's memory.
        rel = cursor.sql(query).limit(limit + 1)
        rows = rel.fetchall()
        columns, types = list(rel.columns), [str(t) for t in rel.types]
    finally:
        timer.cancel()
        cursor.execute("ROLLBACK")
    return Result(columns, types, [[_jsonable(v) for v in r] for r in rows[:limit]],
                  len(rows) > limit, limit, round(time.perf_counter() - started, 3))


def _jsonable(value: Any) -> Any:
    """A value as JSON carries it: times as RFC 3339-like text, bytes as base64."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN: JSON has no such number
        return None
    return value


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """The file opened by the command itself (no service holds it): read-only, with
    DuckDB's own switch against files outside the data directory under the guard, and
    the configuration locked so no statement turns it back on."""
    con = duckdb.connect(str(path), read_only=True)
    # allowed_directories cannot be given to connect (DuckDB 2.0 refuses it before the
    # database is started), so set in order: the folder, then the switch, then the lock.
    con.execute("SET allowed_directories = ?", [[str(path.parent.resolve()) + os.sep]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def main(path: Path, text: str, limit: int, timeout_s: float) -> Result:
    """Run ``text`` on the file at ``path`` opened read-only (no service answers).
    Raises ``Refused``, ``ValueError`` (no file, cannot open) or ``duckdb.Error``."""
    if not path.exists():
        raise ValueError(f"no database at {path}")
    try:
        con = open_read_only(path)
    except duckdb.Error as exc:
        raise ValueError(f"cannot open {path} read-only: {_first_line(exc)} (the service "
                         f"holds it but did not answer on its socket: is [control] socket "
                         f"the same in this config?)") from None
    try:
        return run(con, text, path.parent, limit, timeout_s)
    finally:
        con.close()


def write(result: Result, fmt: str, out: Path | None) -> None:
    """Print ``result`` as ``fmt`` (to ``out`` when given; parquet needs ``out``)."""
    if fmt == "parquet":
        assert out is not None
        _write_parquet(result, out)
        return
    if fmt == "table":
        text = format_table(result.columns, result.rows) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(result.columns)
        w.writerows([_csv_cell(v) for v in r] for r in result.rows)
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(dict(zip(result.columns, r, strict=True))) + "\n"
                       for r in result.rows)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


def _csv_cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def _write_parquet(result: Result, out: Path) -> None:
    """The rows back into their DuckDB types in an in-memory database, then COPY: no
    Parquet library needed, and the service never writes where the command asks."""
    con = duckdb.connect(":memory:")
    try:
        cols = ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}" {t}'
                         for c, t in zip(result.columns, result.types, strict=True))
        con.execute(f"CREATE TABLE result ({cols})")
        if result.rows:
            marks = ", ".join("?" for _ in result.columns)
            blobs = [i for i, t in enumerate(result.types) if t == "BLOB"]
            rows = [[base64.b64decode(v) if i in blobs and v is not None else v
                     for i, v in enumerate(r)] for r in result.rows] if blobs else result.rows
            con.executemany(f"INSERT INTO result VALUES ({marks})", rows)
        con.execute("COPY result TO ? (FORMAT parquet)", [str(out)])
    finally:
        con.close()


def truncation_note(result: Result) -> str | None:
    if not result.truncated:
        return None
    return (f"note: the result was cut at {result.limit} rows (--limit N for more, or "
            f"aggregate in the query)")


def model_history(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The retraining loop's steps, oldest first (by event time, then as logged)."""
    rows = con.execute(
        "SELECT epoch_us(ts), epoch_us(logged_at), event, model, other, reason, detail, "
        "champion, challengers FROM model_history ORDER BY ts, logged_at").fetchall()
    return [{"ts": rfc3339(from_us(ts)), "logged_at": rfc3339(from_us(at)), "event": event,
             "model": model, "other": other, "reason": reason, "detail": json.loads(detail),
             "champion": champion, "challengers": json.loads(challengers)}
            for ts, at, event, model, other, reason, detail, champion, challengers in rows]


def format_table(columns: list[str], rows: list[list[Any]] | list[tuple]) -> str:
    cells = [[str(c) for c in columns]] + [["NULL" if v is None else str(v) for v in r]
                                            for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
