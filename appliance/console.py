"""What the offline tools (import, train, backtest) show a person on a terminal.

* ``Progress`` — timestamped progress lines on stderr, and a bar for long steps
  (redrawn in place on a terminal, a line per tenth otherwise, so logs stay short);
* ``table`` — a plain-text table for the terminal, and ``markdown_table`` for reports;
* ``fmt`` and ``minutes`` — numbers as a table cell; ``short_list`` — a long list cut short.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import duckdb


class Progress:
    """Progress on a stream (stderr by default); callable with one message."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._end_bar()
            print(f"[{self.elapsed():6.1f}s] {message}", file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def bar(self, label: str, fraction: float) -> None:
        """Show ``label`` at ``fraction`` (0..1) done."""
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        with self._lock:
            if self._tty:
                filled = round(fraction * 30)
                self.stream.write(f"\r[{self.elapsed():6.1f}s] {label} "
                                  f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}")
                self.stream.flush()
                self._bar_open = True
                return
            decile = int(fraction * 10)
            if decile > self._last_decile.get(label, -1):
                self._last_decile[label] = decile
                print(f"[{self.elapsed():6.1f}s] {label} {decile * 10}%", file=self.stream,
                      flush=True)

    _bar_open = False

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    @contextlib.contextmanager
    def watch(self, con: duckdb.DuckDBPyConnection, label: str,
              interval_s: float = 0.2) -> Iterator[None]:
        """Show DuckDB's own progress of the query running on ``con`` inside the block."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval_s):
                try:
                    pct = con.query_progress()
                except Exception:  # the connection is busy closing; progress is optional
                    return
                if pct >= 0:
                    self.bar(label, pct / 100.0)

        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.bar(label, 1.0)
            with self._lock:
                self._end_bar()


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: '-' for None/NaN, ints as they are, floats rounded."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def minutes(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds / 60:.0f} min"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          text: Sequence[str] = ()) -> str:
    """A plain-text table: the first column and the ``text`` columns left-aligned,
    the others (numbers) right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    left = [i == 0 or h in text for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if left[i] else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]),
                      *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def short_list(items: Sequence[str], n: int = 8) -> str:
    """The first ``n`` items, and how many more."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
