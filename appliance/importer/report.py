"""What an import did: the counts, the first problems by line, and the refusal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from appliance.console import short_list
from appliance.timefmt import rfc3339
from appliance.training.verdict import intervals_text


class ImportRefused(ValueError):
    """A file that cannot be imported at all (unreadable, no time column, ...)."""


@dataclass
class Problem:
    """One skipped row or value: where (line or row number) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Renamed:
    """A name of the file stored under another: mapped by the rule or by ``--rename``."""

    kind: str  # "line" | "asset" | "sensor"
    old: str
    new: str
    by_option: bool

    def __str__(self) -> str:
        return (f"{self.kind} {self.old!r} → {self.new!r}"
                + (" (--rename)" if self.by_option else ""))


#: How a column left out unasked is accepted (``losses`` then no longer counts it).
SILENCE = "--ignore it to silence this"
#: The summary lists at most this many renamed names.
RENAMED_LISTED = 20


@dataclass
class ImportReport:
    """What an import did, for the terminal and the tests."""

    path: str
    form: str = ""  # "long" | "wide" | "faults"
    rows: int = 0  # data rows in the file (parsed or not)
    stored: int = 0  # readings (or fault events) written
    bad_rows: int = 0  # rows skipped whole
    bad_row_reasons: dict[str, int] = field(default_factory=dict)  # kind -> rows
    bad_values: int = 0  # wide form: single values skipped (the rest of the row kept)
    bad_value_reasons: dict[str, int] = field(default_factory=dict)  # kind -> values
    empty_values: int = 0  # wide form: empty cells (no reading), not an error
    #: Literal ``nan``/``NaN`` values: a missing reading (not stored, not an error),
    #: counted apart from empty cells so a file that writes its gaps so is seen to.
    nan_values: int = 0
    repeated_in_file: int = 0  # (series, ts) seen earlier in the same file
    already_stored: int = 0  # (series, ts) already in the database
    problems: list[Problem] = field(default_factory=list)  # the first few, in file order
    renamed: list[Renamed] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # columns left out as asked (--ignore)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (column, why), unasked
    notes: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    new_series: int = 0
    intervals: dict[str, float] = field(default_factory=dict)  # sensor -> typical seconds
    advice: list[str] = field(default_factory=list)  # [pipeline] keys that do not fit them
    fitting: dict[str, float | tuple[float, ...]] = field(default_factory=dict)  # would fit
    t_from: float = math.nan
    t_to: float = math.nan
    seconds: float = 0.0

    def losses(self, allow_skipped: bool = False) -> list[str]:
        """What the file held that was not stored and nobody asked to leave out; a
        non-empty list is why ``appliance import`` exits 1.

        A column left out counts unless ``--ignore``d; skipped rows and values (bad,
        or repeating an earlier row's series and time) unless ``allow_skipped``.
        Rows already stored do not: the database holds them.
        """
        out = [f"column {c!r} left out" for c, _ in self.left_out]
        if not allow_skipped:
            out += [f"{n} {what} skipped" for n, what in (
                (self.bad_rows, "bad rows"), (self.bad_values, "bad values"),
                (self.repeated_in_file, "repeated rows")) if n]
        return out

    def nothing_stored(self) -> str:
        """Why a readings file stored nothing, or "" when it stored some (or its
        readings were all stored before: the database holds them)."""
        if self.form == "faults" or self.stored or self.already_stored:
            return ""
        why = [f"{n} {what}" for n, what in (
            (self.bad_rows, "bad rows"), (self.empty_values, "empty cells"),
            (self.nan_values, "nan values"), (self.repeated_in_file, "repeated rows")) if n]
        return (f"nothing stored from {self.path}: its {self.rows} rows held "
                f"{', '.join(why) if why else 'no readings'}")

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
        if self.renamed:
            lines.append("  names stored under a topic name:")
            lines += [f"    {r}" for r in self.renamed[:RENAMED_LISTED]]
            if len(self.renamed) > RENAMED_LISTED:
                lines.append(f"    and {len(self.renamed) - RENAMED_LISTED} more")
        lines += [f"  left out: {c} ({why})" for c, why in self.left_out]
        if self.ignored:
            lines.append(f"  ignored as asked (--ignore): {', '.join(self.ignored)}")
        skipped = [f"{n} {what} ({_by_kind(kinds)})" for n, what, kinds in (
            (self.bad_rows, "bad rows", self.bad_row_reasons),
            (self.bad_values, "bad values", self.bad_value_reasons)) if n]
        if skipped:
            lines.append("  skipped " + " and ".join(skipped)
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
        if self.intervals:
            lines.append(f"  typical interval between readings: "
                         f"{intervals_text(self.intervals)}")
        lines += [f"  [pipeline] does not fit the data: {a}" for a in self.advice]
        if self.nan_values:
            lines.append(f"  {self.nan_values} nan values (a missing reading: not stored)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _by_kind(kinds: dict[str, int]) -> str:
    """``3 unreadable value, 1 empty asset``: the most frequent first."""
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kn: (-kn[1], kn[0])))
