"""Importing a fault log into ``faults``, as start and end events."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import duckdb

from appliance.console import short_list
from appliance.importer.checks import (
    Check,
    first_problems,
    future_limit_us,
    judge_rows,
    name_check,
    problems,
    time_check,
)
from appliance.importer.names import NameMap
from appliance.importer.report import SILENCE, ImportRefused, ImportReport
from appliance.importer.staging import (
    DEFAULT_LINE,
    drop_staged,
    file_columns,
    lit,
    quote,
    session,
    stage,
    usable_columns,
)
from appliance.mqtt.topics import is_name
from appliance.storage import tables
from appliance.timefmt import from_us

FAULT_COLUMNS: tuple[str, ...] = ("asset", "ts_start", "ts_end", "code")


def import_faults(con: duckdb.DuckDBPyConnection, path: str | Path, *,
                  line: str = DEFAULT_LINE, max_future_s: float = 300.0,
                  progress: Any = None, max_problems: int = 20,
                  now: float | None = None, renames: Mapping[str, str] | None = None,
                  ignore: Collection[str] = ()) -> ImportReport:
    """Import a fault log (``asset, ts_start, ts_end, code``, optional ``line``).

    Each fault becomes a ``start`` and, when ``ts_end`` is not empty, an ``end``
    event in ``faults`` with source ``import`` (a fault that ends where it starts
    is one of length 0).  Events already stored (same line, asset, state and time)
    are skipped, so importing a log twice is harmless.  Names are mapped as for
    readings (``renames``, the sanitising rule), so faults land on the assets the
    readings were stored under; ``ignore`` names columns to treat as absent.
    """
    t0 = time.perf_counter()
    path = Path(path)
    say = progress or (lambda _m: None)
    report = ImportReport(str(path), form="faults")
    session(con)
    names = file_columns(con, path)
    lower = usable_columns(names, ignore, report)
    missing = [c for c in ("asset", "ts_start") if c not in lower]
    if missing:
        raise ImportRefused(f"{path}: a fault log needs the columns asset, ts_start, ts_end, "
                            f"code; missing {', '.join(missing)} (found {', '.join(names)})")
    report.left_out += [(lower[c], f"not a column of a fault log ({', '.join(FAULT_COLUMNS)}, "
                                   f"line); {SILENCE}")
                        for c in lower if c not in (*FAULT_COLUMNS, "line")]
    if not is_name(line):
        raise ImportRefused(f"line {line!r} is not a valid name")
    future_us = future_limit_us(now, max_future_s)
    say(f"reading fault log {path}")
    time_cols = {c for c in ("ts_start", "ts_end") if c in lower}
    staged = stage(con, path, set(), time_cols, None)
    t = staged.table
    try:
        report.rows = staged.rows + len(staged.rejected)
        name_map = NameMap(renames or {}, report)
        for low in ("line", "asset"):
            if low in lower:
                name_map.add_column(con, staged, low, low)
        name_map.store(con, f"{t}_names")
        line_expr = name_map.sql("line", staged.col("line")) if "line" in lower else lit(line)
        asset_expr = name_map.sql("asset", staged.col("asset"))
        start = staged.col("ts_start")
        end = staged.col("ts_end") if "ts_end" in lower else "CAST(NULL AS TIMESTAMPTZ)"
        code = f"coalesce({staged.col('code')}, '')" if "code" in lower else "''"
        checks = time_check(staged, "ts_start", "ts_start", future_us)
        if "ts_end" in lower:
            text = quote("ts_end__text")
            checks += [Check(f"{end} IS NULL AND {text} IS NOT NULL",
                             f"'ts_end ' || {text} || ' is not a time'", "unreadable ts_end"),
                       Check(f"{end} < {start}", f"'the fault ends (' || "
                             f"strftime({end}, '%Y-%m-%dT%H:%M:%SZ') || ') before it starts'",
                             "ts_end before ts_start")]
        if "line" in lower:
            checks += name_check(line_expr, "line")
        checks += name_check(asset_expr, "asset")
        judge_rows(con, staged, t, checks, report)
        found = problems(con, f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL",
                          max_problems)
        report.problems = first_problems(staged, found, max_problems)
        # Events: a start per fault, an end where known; the first of repeats is kept.
        con.execute(
            f"CREATE TEMP TABLE {t}_ok AS WITH f AS (SELECT s.ord, {line_expr} AS line, "
            f"{asset_expr} AS asset, epoch_us({start}) AS start_us, "
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
            tables.insert_faults_from(con, f"SELECT ts_us, line, asset, state, code FROM "
                                           f"{t}_new ORDER BY ts_us, ord", "import")
            report.assets = [a for (a,) in con.execute(
                f"SELECT DISTINCT asset FROM {t}_ok ORDER BY asset").fetchall()]
            if report.stored:
                report.t_from, report.t_to = from_us(lo), from_us(hi)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        known = {a for (a,) in con.execute("SELECT DISTINCT asset FROM series").fetchall()}
        unknown = [a for a in report.assets if a not in known]
        if unknown:
            report.notes.append(f"no readings stored yet for the assets "
                                f"{short_list(unknown)}")
    finally:
        drop_staged(con, staged)
    report.seconds = time.perf_counter() - t0
    return report
