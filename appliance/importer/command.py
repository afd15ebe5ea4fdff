"""``appliance import``, and history straight from files through an in-memory database."""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from appliance.config import ConfigError, PipelineConfig, from_dict
from appliance.features.spec import PipelineSpec
from appliance.importer.faults import import_faults
from appliance.importer.readings import import_readings
from appliance.importer.report import ImportRefused, ImportReport
from appliance.importer.staging import DEFAULT_LINE, file_columns
from appliance.storage.database import open_memory, open_offline
from appliance.storage.history import StoredHistory, load_histories
from appliance.training.verdict import fitting_values, pipeline_advice


def load_files(readings: str | Path, faults: str | Path | None = None, *,
               asset: str | None = None, line: str = DEFAULT_LINE,
               progress: Any = None, renames: Mapping[str, str] | None = None,
               ignore: Collection[str] = ()) -> tuple[StoredHistory, list[ImportReport]]:
    """History straight from files, through an in-memory database (same checks as import)."""
    con = open_memory()
    try:
        reports = import_files(con, readings, faults, renames, ignore, asset=asset, line=line,
                          progress=progress, max_future_s=math.inf)
        return load_histories(con, progress), reports
    finally:
        con.close()


def import_into(db_path: str | Path, readings: str | Path | None = None,
                faults: str | Path | None = None, *, asset: str | None = None,
                line: str = DEFAULT_LINE, max_future_s: float = 300.0,
                progress: Any = None, max_problems: int = 20,
                renames: Mapping[str, str] | None = None,
                ignore: Collection[str] = (),
                pipeline: PipelineConfig | None = None) -> list[ImportReport]:
    """``appliance import``: open the database (refusing while the service holds it) and
    import a readings file and/or a fault log into it.  A readings report gets its
    sensors' typical intervals between readings (as stored, so earlier imports count)
    and what of ``pipeline`` (default: the default ``[pipeline]``) does not fit them."""
    con = open_offline(db_path)
    try:
        reports = import_files(con, readings, faults, renames, ignore, asset=asset, line=line,
                          max_future_s=max_future_s, progress=progress,
                          max_problems=max_problems)
        spec = PipelineSpec.from_config(pipeline or PipelineConfig())
        for r in reports:
            if r.form != "faults" and r.sensors:
                r.intervals = stored_intervals(con, r.assets, r.sensors)
                r.advice = pipeline_advice(spec, r.intervals)
                r.fitting = fitting_values(spec, r.intervals)
        con.execute("CHECKPOINT")
        return reports
    finally:
        con.close()


def stored_intervals(con: duckdb.DuckDBPyConnection, assets: Sequence[str],
                     sensors: Sequence[str]) -> dict[str, float]:
    """Per sensor of ``assets``, the typical seconds between its stored readings: the
    median over its series of each one's median interval (as ``verdict.typical_intervals``
    on loaded histories; here in SQL, without loading the readings)."""
    rows = con.execute(
        "WITH g AS (SELECT s.sensor, r.series_id, date_diff('microsecond', lag(r.ts) OVER "
        "(PARTITION BY r.series_id ORDER BY r.ts), r.ts) / 1e6 AS gap "
        "FROM readings_raw r JOIN series s ON s.id = r.series_id "
        "WHERE list_contains(?, s.asset) AND list_contains(?, s.sensor)), "
        "per AS (SELECT sensor, median(gap) AS m FROM g WHERE gap > 0 GROUP BY sensor, series_id) "
        "SELECT sensor, median(m) FROM per GROUP BY sensor ORDER BY sensor",
        [list(assets), list(sensors)]).fetchall()
    return {sensor: float(m) for sensor, m in rows}


def import_files(con: duckdb.DuckDBPyConnection, readings: str | Path | None,
            faults: str | Path | None, renames: Mapping[str, str] | None,
            ignore: Collection[str], *, line: str, asset: str | None,
            **kwargs: Any) -> list[ImportReport]:
    """Import the readings file and then the fault log; ``--ignore`` must name a column of
    one of them (checked first: a misspelt one would ignore nothing), and a ``--rename``
    that matched no name is noted."""
    files = [Path(f) for f in (readings, faults) if f is not None]
    columns = {c.lower() for f in files for c in file_columns(con, f)}
    unknown = [c for c in ignore if c.lower() not in columns]
    if unknown:
        raise ImportRefused(f"--ignore {', '.join(unknown)}: no such column in "
                            f"{' or '.join(map(str, files))}")
    reports = []
    if readings is not None:
        reports.append(import_readings(con, readings, asset=asset, line=line, renames=renames,
                                       ignore=ignore, **kwargs))
    if faults is not None:
        reports.append(import_faults(con, faults, line=line, renames=renames, ignore=ignore,
                                     **kwargs))
    used = {r.old for report in reports for r in report.renamed if r.by_option}
    unused = [f"{old}={new}" for old, new in (renames or {}).items() if old not in used]
    if unused:
        reports[-1].notes.append(f"--rename {', '.join(unused)}: no such name in the files")
    return reports


def write_pipeline_keys(path: str | Path,
                        values: Mapping[str, float | tuple[float, ...]]) -> None:
    """Set ``values`` in the ``[pipeline]`` table of the TOML file ``path``
    (``import --fit-pipeline``), by text, so the file's other lines and comments stay
    as they are: a key's line in the table is replaced, a key not there is added under
    the table's header, and a file without the table gets one at its end.  The new
    text is checked as a config before it replaces the file (atomically, mode kept):
    raises ``ConfigError`` (nothing written) when it would not load, ``ValueError``
    for a key whose value spans several lines, ``OSError`` when it cannot write."""
    path = Path(path)
    lines = path.read_text().splitlines()
    set_by = "  # appliance import --fit-pipeline"
    new = {k: f"{k} = {toml_value(v)}{set_by}" for k, v in values.items()}
    header = next((i for i, ln in enumerate(lines)
                   if re.fullmatch(r"\s*\[\s*pipeline\s*\]\s*(#.*)?", ln)), None)
    if header is None:
        lines += ["", "[pipeline]", *new.values()]
    else:
        end = next((i for i in range(header + 1, len(lines))
                    if re.match(r"\s*\[", lines[i])), len(lines))
        for i in range(header + 1, end):
            key = re.match(r"""\s*["']?([A-Za-z0-9_]+)["']?\s*=\s*(.*)""", lines[i])
            if key and key.group(1) in new:
                if key.group(2).startswith(("[", '"""', "'''")) and \
                        not _closed(key.group(2)):
                    raise ValueError(f"{path}: [pipeline] {key.group(1)} spans several "
                                     f"lines: set it to {toml_value(values[key.group(1)])} "
                                     f"by hand")
                lines[i] = new.pop(key.group(1))
        lines[header + 1:header + 1] = new.values()
    text = "\n".join(lines) + "\n"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: writing [pipeline] {', '.join(values)} would make it "
                          f"invalid TOML ({exc}): set them by hand") from None
    from_dict(raw, source=str(path))  # a ConfigError names the key, nothing written
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    os.replace(tmp, path)


def _closed(value: str) -> bool:
    """Whether a TOML value that opens an array or a multi-line string closes on its line."""
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def toml_value(value: float | tuple[float, ...]) -> str:
    """A ``fitting_values`` value as TOML: ``300`` or ``[900, 3600]``."""
    return (f"[{', '.join(f'{v:g}' for v in value)}]" if isinstance(value, tuple)
            else f"{value:g}")
