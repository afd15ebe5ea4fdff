"""Importing a readings file, long or wide form, into ``readings_raw``."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import duckdb

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
    Staged,
    drop_staged,
    drop_tables,
    file_columns,
    lit,
    non_numeric_columns,
    quote,
    session,
    stage,
    usable_columns,
)
from appliance.messages import SeriesKey
from appliance.mqtt.topics import FAULT_SENSOR, is_name
from appliance.storage import tables
from appliance.storage.history import Say
from appliance.storage.tables import SeriesRegistry
from appliance.timefmt import from_us

#: A sensor may not be called this: the topic level is taken by fault events.
RESERVED_SENSOR = FAULT_SENSOR
#: Column names understood as the time column, in order of preference.
TS_NAMES: tuple[str, ...] = ("ts", "timestamp", "time", "datetime")
#: Column names (any case) taken for labels, not sensors: a wide file's column of
#: these is left out (and named), not stored as a sensor.
LABEL_COLUMNS: tuple[str, ...] = ("anomaly", "is_anomaly", "label", "changepoint", "fault",
                                  "target", "outlier")


def import_readings(con: duckdb.DuckDBPyConnection, path: str | Path, *,
                    asset: str | None = None, line: str = DEFAULT_LINE,
                    max_future_s: float = 300.0, progress: Any = None,
                    max_problems: int = 20, now: float | None = None,
                    renames: Mapping[str, str] | None = None,
                    ignore: Collection[str] = ()) -> ImportReport:
    """Import a readings file (see the module docstring); returns what happened.

    ``asset`` names the asset of a file without an ``asset`` column; ``line``
    is the line of a file without a ``line`` column.  ``renames`` ({OLD: NEW},
    ``--rename``) and the sanitising rule map names (``appliance.importer.names``);
    ``ignore`` names columns to treat as absent (``--ignore``, any case).
    Raises ``ImportRefused`` for a file that cannot be read at all; bad rows are
    skipped and reported, and so are columns left out.
    """
    t0 = time.perf_counter()
    path = Path(path)
    say = progress or (lambda _m: None)
    report = ImportReport(str(path))
    session(con)
    names = file_columns(con, path)
    lower = usable_columns(names, ignore, report)
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
    name_map = NameMap(renames or {}, report)
    sensors: list[str] = []  # wide form: the sensor columns kept
    if "sensor" in lower and "value" in lower:
        report.form = "long"
        numeric = {"value"}
        report.left_out += [(lower[c], _label(c) or f"not a column of the long form (ts, "
                                                     f"asset, sensor, value, line); {SILENCE}")
                            for c in lower if c not in keys | {"sensor", "value"}]
    else:
        report.form = "wide"
        sensors = _sensor_columns(con, path, [lower[c] for c in lower if c not in keys],
                                  name_map, report)
        if not sensors:
            raise ImportRefused(f"{path}: no sensor columns: expected long form (ts, asset, "
                               f"sensor, value) or wide form (a time column and one column "
                               f"per sensor); the columns are {', '.join(names)}"
                               + "".join(f"; {c} left out: {why}"
                                         for c, why in report.left_out))
        numeric = {s.lower() for s in sensors}

    size = path.stat().st_size
    say(f"reading {path} ({size / 1e6:.1f} MB, {report.form} form)")
    future_us = future_limit_us(now, max_future_s)
    # Reading and checking make temporary tables only (committed at once, so their
    # rowids are the rows' places in the file); the writes are one transaction.
    staged = stage(con, path, numeric, {ts_col}, progress)
    try:
        report.rows = staged.rows + len(staged.rejected)
        say(f"read {report.rows} rows ({len(staged.rejected)} unreadable); checking")
        for low in ("line", "asset", "sensor") if report.form == "long" else ("line", "asset"):
            if low in lower:
                name_map.add_column(con, staged, low, low)
        name_map.store(con, f"{staged.table}_names")
        valid = _check_readings(con, staged, report, ts_col, set(lower), sensors, asset,
                                line, name_map, future_us, max_problems)
        con.execute("BEGIN")
        try:
            _store_readings(con, staged, valid, report, say)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        drop_staged(con, staged)
    report.seconds = time.perf_counter() - t0
    return report


def _label(column: str) -> str | None:
    """Why a column named like a label is left out, and what to do about it."""
    return (f"looks like a label column; store its events as faults with --faults, or "
            f"{SILENCE}" if column.lower() in LABEL_COLUMNS else None)


def _sensor_columns(con: duckdb.DuckDBPyConnection, path: Path, columns: list[str],
                    name_map: NameMap, report: ImportReport) -> list[str]:
    """The wide form's sensor columns of ``columns``: label-like and non-numeric ones,
    and those whose names cannot be sensor names, left out and named in the report."""
    report.left_out += [(c, why) for c in columns if (why := _label(c))]
    kept = [c for c in columns if not _label(c)]
    non_numeric = non_numeric_columns(con, path, kept)
    report.left_out += [(c, f"{why}; {SILENCE}") for c, why in non_numeric.items()]
    kept = [c for c in kept if c not in non_numeric]
    mapped = name_map.add("sensor", kept)
    for c in kept:
        if mapped[c] is None:
            report.left_out.append((c, f"no character a sensor name can keep (A-Z a-z 0-9 "
                                       f"_ . -); --rename it, or {SILENCE}"))
        elif mapped[c] == RESERVED_SENSOR:
            report.left_out.append((c, f"the sensor name {RESERVED_SENSOR!r} is reserved for "
                                       f"fault events; --rename it, or {SILENCE}"))
    return [c for c in kept if mapped[c] not in (None, RESERVED_SENSOR)]


def _check_readings(con: duckdb.DuckDBPyConnection, staged: Staged, report: ImportReport,
                    ts_col: str, columns: set[str], sensors: list[str], asset: str | None,
                    line: str, name_map: NameMap, future_us: int, max_problems: int) -> str:
    """Run the checks; fill the report's bad rows; return the table of valid long rows
    (ord, ts_us, line, asset, sensor, value), names as stored.  ``columns``: the
    lower-case names of the columns used (not ``--ignore``d)."""
    t = staged.table
    valid = f"{t}_valid"
    line_expr = name_map.sql("line", staged.col("line")) if "line" in columns else lit(line)
    asset_expr = (name_map.sql("asset", staged.col("asset")) if "asset" in columns
                  else lit(asset or ""))
    ts = staged.col(ts_col)
    row_checks = time_check(staged, ts_col, ts_col, future_us)
    if "line" in columns:
        row_checks += name_check(line_expr, "line")
    if "asset" in columns:
        row_checks += name_check(asset_expr, "asset")
    found: list[tuple[int, str]] = []
    if report.form == "long":
        sensor, value = name_map.sql("sensor", staged.col("sensor")), staged.col("value")
        checks = row_checks + name_check(sensor, "sensor") + [
            Check(f"{sensor} = '{RESERVED_SENSOR}'", f"'sensor name {RESERVED_SENSOR} is "
                  f"reserved for fault events; --rename it'", "reserved sensor name"),
            Check(f"{value} IS NULL", "'value is empty'", "empty value"),
            Check(f"isinf({value})",
                  f"'value ' || CAST({value} AS VARCHAR) || ' is not a finite number'",
                  "non-finite value")]
        judge_rows(con, staged, t, checks, report)
        found = problems(con, f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL",
                          max_problems)
        # a literal nan is how many writers say "no reading": missing, counted, not bad
        report.nan_values = con.execute(
            f"SELECT count(*) FROM {t} s JOIN {t}_chk c USING (ord) "
            f"WHERE c.reason IS NULL AND isnan({value})").fetchone()[0]
        con.execute(
            f"CREATE TEMP TABLE {valid} AS SELECT s.ord, epoch_us({ts}) AS ts_us, "
            f"{line_expr} AS line, {asset_expr} AS asset, {sensor} AS sensor, "
            f"{value} AS value FROM {t} s JOIN {t}_chk c USING (ord) "
            f"WHERE c.reason IS NULL AND NOT isnan({value})")
        drop_tables(con, f"{t}_chk")
    else:
        on = ", ".join(quote(c) for c in sensors)
        judge_rows(con, staged, t, row_checks, report)
        con.execute(
            f"CREATE TEMP TABLE {t}_cells AS SELECT ord, ts_us, line, asset, sensor, value "
            f"FROM (SELECT s.ord, epoch_us({ts}) AS ts_us, {line_expr} AS line, "
            f"{asset_expr} AS asset, {on} FROM {t} s JOIN {t}_chk c USING (ord) "
            f"WHERE c.reason IS NULL) UNPIVOT INCLUDE NULLS (value FOR sensor IN ({on}))")
        report.empty_values, report.nan_values = con.execute(
            f"SELECT count(*) FILTER (value IS NULL), count(*) FILTER (isnan(value)) "
            f"FROM {t}_cells").fetchone()
        report.bad_value_reasons = dict(con.execute(
            f"SELECT 'non-finite ' || sensor, count(*) FROM {t}_cells WHERE isinf(value) "
            f"GROUP BY sensor").fetchall())
        report.bad_values = sum(report.bad_value_reasons.values())
        found = problems(
            con,
            f"SELECT ord, reason FROM {t}_chk WHERE reason IS NOT NULL UNION ALL "
            f"SELECT ord, sensor || ': value ' || CAST(value AS VARCHAR) || "
            f"' is not a finite number' FROM {t}_cells WHERE isinf(value)", max_problems)
        con.execute(f"CREATE TEMP TABLE {valid} AS SELECT ord, ts_us, line, asset, "
                    f"{name_map.sql('sensor', 'sensor')} AS sensor, value FROM {t}_cells "
                    f"WHERE isfinite(value)")
        drop_tables(con, f"{t}_chk", f"{t}_cells")
    report.problems = first_problems(staged, found, max_problems)
    return valid


def _store_readings(con: duckdb.DuckDBPyConnection, staged: Staged, valid: str,
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
    drop_tables(con, valid)
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
    drop_tables(con, f"{t}_ok")
    total, lo, hi = con.execute(f"SELECT count(*), min(ts_us), max(ts_us) FROM {t}_new"
                                ).fetchone()
    report.already_stored = firsts - total
    if total:
        report.t_from, report.t_to = from_us(lo), from_us(hi)
    label = f"storing {total} readings"
    for start in range(0, total, chunk):
        tables.insert_readings_from(con, f"SELECT series_id, ts_us, value FROM {t}_new "
                                         f"WHERE rn >= {start} AND rn < {start + chunk} "
                                         f"ORDER BY rn")
        if hasattr(say, "bar"):
            say.bar(label, min(total, start + chunk) / total)
    drop_tables(con, f"{t}_new")
    report.stored = total
