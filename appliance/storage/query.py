"""``appliance sql``: one read-only query on the database, printed as a table.

The connection is read-only and has external access disabled, so a query can
neither change the data nor read or write files outside the database.
DuckDB lets one process hold a file for writing: while the service runs, query
a copy, or stop the service first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb


def main(path: Path, query: str) -> int:
    if not path.exists():
        print(f"no database at {path}", file=sys.stderr)
        return 1
    try:
        con = duckdb.connect(str(path), read_only=True,
                             config={"enable_external_access": False})
    except duckdb.IOException as exc:
        print(f"cannot open {path} read-only: {exc}\n(the running service holds it; stop it "
              "or copy the file and query the copy)", file=sys.stderr)
        return 1
    try:
        rel = con.sql(query)
        if rel is None:
            return 0
        print(format_table(rel.columns, rel.fetchall()))
    except duckdb.Error as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def format_table(columns: list[str], rows: list[tuple]) -> str:
    cells = [[str(c) for c in columns]] + [["NULL" if v is None else str(v) for v in r]
                                            for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
