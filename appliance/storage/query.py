"""``appliance sql``: one read-only query on the database, printed as a table; and the
fixed reads other commands print (``model_history``).

The connection is read-only and has external access disabled, so a query can
neither change the data nor read or write files outside the database.
DuckDB lets one process hold a file for writing: while the service runs, query
a copy, or stop the service first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import duckdb

from appliance.timefmt import from_us, rfc3339


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


def model_history(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The retraining loop's steps, oldest first (by event time, then as logged)."""
    rows = con.execute(
        "SELECT epoch_us(ts), epoch_us(logged_at), event, model, other, reason, detail, "
        "champion, challengers FROM model_history ORDER BY ts, logged_at").fetchall()
    return [{"ts": rfc3339(from_us(ts)), "logged_at": rfc3339(from_us(at)), "event": event,
             "model": model, "other": other, "reason": reason, "detail": json.loads(detail),
             "champion": champion, "challengers": json.loads(challengers)}
            for ts, at, event, model, other, reason, detail, champion, challengers in rows]


def format_table(columns: list[str], rows: list[tuple]) -> str:
    cells = [[str(c) for c in columns]] + [["NULL" if v is None else str(v) for v in r]
                                            for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
