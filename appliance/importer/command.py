"""``appliance import``, and history straight from files through an in-memory database."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from appliance.importer.faults import import_faults
from appliance.importer.readings import import_readings
from appliance.importer.report import ImportReport
from appliance.importer.staging import DEFAULT_LINE
from appliance.storage.database import open_memory, open_offline
from appliance.storage.history import StoredHistory, load_histories


def load_files(readings: str | Path, faults: str | Path | None = None, *,
               asset: str | None = None, line: str = DEFAULT_LINE,
               progress: Any = None) -> tuple[StoredHistory, list[ImportReport]]:
    """History straight from files, through an in-memory database (same checks as import)."""
    con = open_memory()
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
    con = open_offline(db_path)
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
