"""The checks DuckDB's reader does not make, as SQL ``CASE`` branches, and where the
failing rows are in the file."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import duckdb

from appliance.config import NAME_PATTERN
from appliance.importer.report import ImportReport, Problem
from appliance.importer.staging import Staged, quote
from appliance.timefmt import to_us


def name_check(expr: str, what: str) -> list[str]:
    """CASE branches refusing an empty or invalid name in ``expr``."""
    return [f"WHEN {expr} IS NULL OR {expr} = '' THEN '{what} is empty'",
            f"WHEN NOT regexp_full_match({expr}, '{NAME_PATTERN}') THEN '{what} ' || "
            f"{expr} || ' is not a valid name (1-64 characters of A-Z a-z 0-9 _ . -)'"]


def time_check(staged: Staged, low: str, what: str, future_us: int) -> list[str]:
    q, text = staged.col(low), quote(low + "__text")
    return [f"WHEN {q} IS NULL AND {text} IS NOT NULL THEN '{what} ' || {text} || "
            f"' is not a time'",
            f"WHEN {q} IS NULL THEN '{what} is empty'",
            f"WHEN epoch_us({q}) > {future_us} THEN '{what} ' || "
            f"strftime({q}, '%Y-%m-%dT%H:%M:%SZ') || ' is in the future'"]


def _case(branches: Sequence[str]) -> str:
    return "CASE " + " ".join(branches) + " END"


def judge_rows(con: duckdb.DuckDBPyConnection, staged: Staged, t: str,
                checks: Sequence[str], report: ImportReport) -> None:
    """Table ``{t}_chk`` of (ord, the first failed check or NULL) for every staged
    row; the bad rows, DuckDB's own rejects included, counted into ``report``."""
    con.execute(f"CREATE TEMP TABLE {t}_chk AS SELECT ord, {_case(checks)} AS reason FROM {t}")
    report.bad_rows = len(staged.rejected) + con.execute(
        f"SELECT count(*) FROM {t}_chk WHERE reason IS NOT NULL").fetchone()[0]


def problems(con: duckdb.DuckDBPyConnection, sql: str, limit: int) -> list[tuple[int, str]]:
    """(ord, reason) of the first ``limit`` problem rows that ``sql`` selects."""
    return [(int(o), r) for o, r in con.execute(f"{sql} ORDER BY ord LIMIT {limit}").fetchall()]


def first_problems(staged: Staged, found: list[tuple[int, str]], limit: int
                    ) -> list[Problem]:
    """The first ``limit`` problems in file order: DuckDB's rejects and our checks."""
    where = staged.locate(o for o, _ in found)
    items = [(where[o][0], where[o][1], r) for o, r in found]
    items += [(line, f"line {line}", r) for line, r in list(staged.rejected.items())[:limit]]
    items.sort(key=lambda x: x[0])
    return [Problem(w, r) for _, w, r in items[:limit]]


def future_limit_us(now: float | None, max_future_s: float) -> int:
    """Times after this (µs) are refused as "in the future"; inf = no limit."""
    limit = (time.time() if now is None else now) + max_future_s
    return to_us(limit) if math.isfinite(limit) else 1 << 62
