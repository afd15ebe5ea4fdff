"""What an import did: the counts, the first problems by line, and the refusal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from appliance.console import short_list
from appliance.timefmt import rfc3339


class ImportRefused(ValueError):
    """A file that cannot be imported at all (unreadable, no time column, ...)."""


@dataclass
class Problem:
    """One skipped row or value: where (line or row number) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did, for the terminal and the tests."""

    path: str
    form: str = ""  # "long" | "wide" | "faults"
    rows: int = 0  # data rows in the file (parsed or not)
    stored: int = 0  # readings (or fault events) written
    bad_rows: int = 0  # rows skipped whole
    bad_values: int = 0  # wide form: single values skipped (the rest of the row kept)
    empty_values: int = 0  # wide form: empty cells (no reading), not an error
    repeated_in_file: int = 0  # (series, ts) seen earlier in the same file
    already_stored: int = 0  # (series, ts) already in the database
    problems: list[Problem] = field(default_factory=list)  # the first few, in file order
    notes: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    new_series: int = 0
    t_from: float = math.nan
    t_to: float = math.nan
    seconds: float = 0.0

    def summary(self) -> str:
        what = "fault events" if self.form == "faults" else "readings"
        span = (f", {rfc3339(self.t_from)} to {rfc3339(self.t_to)}"
                if math.isfinite(self.t_from) else "")
        lines = [f"{self.path}: {self.form} form, {self.rows} rows; stored {self.stored} "
                 f"{what}{span} in {self.seconds:.1f} s"]
        if self.assets:
            lines.append(f"  assets: {short_list(self.assets)}"
                         + (f"; sensors: {short_list(self.sensors)}" if self.sensors else "")
                         + (f"; {self.new_series} new series" if self.new_series else ""))
        if self.bad_rows or self.bad_values:
            lines.append(f"  skipped {self.bad_rows} bad rows"
                         + (f" and {self.bad_values} bad values" if self.bad_values else "")
                         + (f"; the first {len(self.problems)}:" if self.problems else ""))
        lines += [f"    {p}" for p in self.problems]
        if self.repeated_in_file:
            what_repeats = "fault" if self.form == "faults" else "series and time"
            lines.append(f"  skipped {self.repeated_in_file} rows that repeat an earlier "
                         f"row's {what_repeats} in this file (the first was kept)")
        if self.already_stored:
            lines.append(f"  skipped {self.already_stored} {what} already stored")
        if self.empty_values:
            lines.append(f"  {self.empty_values} empty cells (no reading)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
