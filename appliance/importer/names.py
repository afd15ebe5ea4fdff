"""Names in a file that an MQTT topic cannot carry, mapped to names it can.

A line, asset or sensor name is 1-64 characters of ``A-Z a-z 0-9 _ . -``
(``appliance.mqtt.topics.is_name``): the service could never receive a reading
under another, so the import maps such a name instead of dropping its rows:

1. ``--rename OLD=NEW`` maps OLD (any line, asset or sensor name of the file,
   valid or not) to NEW, which must itself be a valid name;
2. otherwise a valid name is kept as it is, and an invalid one is *sanitised*
   (``sanitise``): accents are dropped (Unicode NFKD, so ``Drück`` becomes
   ``Druck``), characters other than ``A-Z a-z 0-9 _ . -`` at either end are
   removed, every run of them inside becomes one ``_``, and the result is cut to
   64 characters; the case is kept (``Volume Flow RateRMS`` becomes
   ``Volume_Flow_RateRMS``).  A name with nothing left (``°``, ``日本``) is not
   mapped: its rows are skipped (its column, in wide form, left out) and the
   summary says to ``--rename`` it.

The rule is deterministic and applies alike to readings and fault logs, so an
asset's faults land on the asset its readings were stored under.  Two names of
one kind in a file that would become one (``Flow Rate`` and ``Flow_Rate``) are
refused, naming both, unless ``--rename`` tells them apart.  Every mapping is
listed in the import summary.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import duckdb

from appliance.config import NAME_CHARS, NAME_MAX
from appliance.importer.report import ImportRefused, ImportReport, Renamed
from appliance.importer.staging import Staged, lit
from appliance.mqtt.topics import is_name

_ENDS = re.compile(rf"^[^{NAME_CHARS}]+|[^{NAME_CHARS}]+$")
_INSIDE = re.compile(rf"[^{NAME_CHARS}]+")


def sanitise(name: str) -> str | None:
    """``name`` as a valid name by the rule above, or None when nothing of it is left."""
    if is_name(name):
        return name
    plain = "".join(c for c in unicodedata.normalize("NFKD", name)
                    if not unicodedata.combining(c))
    out = _INSIDE.sub("_", _ENDS.sub("", plain))[:NAME_MAX]
    return out or None


def parse_renames(options: Sequence[str]) -> dict[str, str]:
    """``--rename OLD=NEW`` options as {OLD: NEW}; refuses a NEW that is not a valid name
    and an OLD renamed twice.  NEW holds no ``=``, so the last ``=`` splits."""
    out: dict[str, str] = {}
    for option in options:
        old, eq, new = option.rpartition("=")
        if not eq or not old:
            raise ImportRefused(f"--rename {option!r}: expected OLD=NEW")
        if not is_name(new):
            raise ImportRefused(f"--rename {option!r}: {new!r} is not a valid name (1-64 "
                                f"characters of A-Z a-z 0-9 _ . -)")
        if out.get(old, new) != new:
            raise ImportRefused(f"--rename {old!r} is given twice: {out[old]!r} and {new!r}")
        out[old] = new
    return out


class NameMap:
    """One file's names mapped to topic names: by kind (line, asset, sensor), each name
    to the name it is stored under (None: nothing of it could be kept).

    ``add`` maps names and refuses two that would become one; ``store`` puts the
    changed ones in a temporary table, which ``sql`` looks names up in.
    """

    def __init__(self, renames: Mapping[str, str], report: ImportReport) -> None:
        self.renames = renames
        self.report = report
        self.changed: dict[str, dict[str, str]] = {}  # kind -> {old: new}
        self.table = ""

    def add(self, kind: str, names: Iterable[str]) -> dict[str, str | None]:
        """Map ``names`` of one kind; the changes are listed in the report."""
        mapped = {n: self.renames.get(n) or sanitise(n) for n in names}
        became: dict[str, str] = {}
        for old, new in sorted(mapped.items()):
            if new is None:
                continue
            other = became.setdefault(new, old)
            if other != old:
                raise ImportRefused(
                    f"{self.report.path}: the {kind} names {other!r} and {old!r} would both "
                    f"be stored as {new!r}; tell them apart with --rename "
                    f"(e.g. --rename '{old}=NEW')")
        changed = {old: new for old, new in mapped.items() if new is not None and new != old}
        self.changed.setdefault(kind, {}).update(changed)
        self.report.renamed += [Renamed(kind, old, new, old in self.renames)
                                for old, new in sorted(changed.items())]
        return mapped

    def add_column(self, con: duckdb.DuckDBPyConnection, staged: Staged, low: str,
                   kind: str) -> None:
        """Map the names found in the staged column ``low``."""
        q = staged.col(low)
        self.add(kind, [n for (n,) in con.execute(
            f"SELECT DISTINCT {q} FROM {staged.table} WHERE {q} IS NOT NULL").fetchall()])

    def store(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """The changed names, if any, into the temporary table ``table`` (kind, old, new)."""
        rows = [(kind, old, new) for kind, changed in self.changed.items()
                for old, new in changed.items()]
        if rows:
            self.table = table
            con.execute(f"CREATE TEMP TABLE {table} (kind VARCHAR, old VARCHAR, new VARCHAR)")
            con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)

    def sql(self, kind: str, expr: str) -> str:
        """``expr`` (names of ``kind``) as stored: looked up only when some changed."""
        if not self.changed.get(kind):
            return expr
        return (f"coalesce((SELECT n.new FROM {self.table} n WHERE n.kind = {lit(kind)} "
                f"AND n.old = {expr}), {expr})")
