"""The checks DuckDB's reader does not make, as SQL ``CASE`` branches, and where the
failing rows are in the file."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from appliance.config import NAME_PATTERN
from appliance.importer.report import ImportReport, Problem
from appliance.importer.staging import Staged, lit, quote
from appliance.timefmt import to_us


@dataclass(frozen=True, slots=True)
class Check:
    """One ``CASE`` branch: the failing condition, the reason (an SQL expression that may
    quote the row's values) and the kind it is counted under in the summary."""

    when: str
    reason: str
    kind: str


def name_check(expr: str, what: str) -> list[Check]:
    """Refuse an empty name in ``expr``, or one that is still invalid after the names
    were mapped (``appliance.importer.names``: nothing of it could be kept)."""
    return [Check(f"{expr} IS NULL OR {expr} = ''", f"'{what} is empty'", f"empty {what}"),
            Check(f"NOT regexp_full_match({expr}, '{NAME_PATTERN}')",
                  f"'{what} ' || {expr} || ' has no character a name can keep (A-Z a-z 0-9 "
                  f"_ . -); --rename it'", f"invalid {what} name")]


def time_check(staged: Staged, low: str, what: str, future_us: int) -> list[Check]:
    q, text = staged.col(low), quote(low + "__text")
    return [Check(f"{q} IS NULL AND {text} IS NOT NULL",
                  f"'{what} ' || {text} || ' is not a time'", f"unreadable {what}"),
            Check(f"{q} IS NULL", f"'{what} is empty'", f"empty {what}"),
            Check(f"epoch_us({q}) > {future_us}",
                  f"'{what} ' || strftime({q}, '%Y-%m-%dT%H:%M:%SZ') || ' is in the future'",
                  f"{what} in the future")]


def judge_rows(con: duckdb.DuckDBPyConnection, staged: Staged, t: str,
                checks: Sequence[Check], report: ImportReport) -> None:
    """Table ``{t}_chk`` of (ord, the first failed check's reason or NULL) for every
    staged row; the bad rows, DuckDB's own rejects included, counted into ``report``
    by kind."""
    case = "CASE " + " ".join(f"WHEN {c.when} THEN {{'reason': {c.reason}, 'kind': "
                              f"{lit(c.kind)}}}" for c in checks) + " END"
    con.execute(f"CREATE TEMP TABLE {t}_chk AS SELECT ord, r.reason AS reason, r.kind AS kind "
                f"FROM (SELECT ord, {case} AS r FROM {t})")
    kinds = Counter(kind for kind, _ in staged.rejected.values())
    kinds.update(dict(con.execute(f"SELECT kind, count(*) FROM {t}_chk WHERE kind IS NOT NULL "
                                  f"GROUP BY kind").fetchall()))
    report.bad_row_reasons = dict(kinds)
    report.bad_rows = kinds.total()


def problems(con: duckdb.DuckDBPyConnection, sql: str, limit: int) -> list[tuple[int, str]]:
    """(ord, reason) of the first ``limit`` problem rows that ``sql`` selects."""
    return [(int(o), r) for o, r in con.execute(f"{sql} ORDER BY ord LIMIT {limit}").fetchall()]


def first_problems(staged: Staged, found: list[tuple[int, str]], limit: int
                    ) -> list[Problem]:
    """The first ``limit`` problems in file order: DuckDB's rejects and our checks."""
    where = staged.locate(o for o, _ in found)
    items = [(where[o][0], where[o][1], r) for o, r in found]
    items += [(line, f"line {line}", r)
              for line, (_, r) in list(staged.rejected.items())[:limit]]
    items.sort(key=lambda x: x[0])
    return [Problem(w, r) for _, w, r in items[:limit]]


def future_limit_us(now: float | None, max_future_s: float) -> int:
    """Times after this (µs) are refused as "in the future"; inf = no limit."""
    limit = (time.time() if now is None else now) + max_future_s
    return to_us(limit) if math.isfinite(limit) else 1 << 62
