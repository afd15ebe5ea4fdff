"""What the offline tools (import, train, backtest) show a person.

* ``Progress`` — timestamped progress lines on stderr, and a bar for long steps
  (redrawn in place on a terminal, a line per tenth otherwise, so logs stay short);
* ``table`` — a plain-text table for the terminal, and ``markdown_table`` for reports;
* ``backtest_report`` — the backtest's Markdown file and its PNG plots.

Plots need matplotlib (the ``train`` extra); it is imported only when a report
is written.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

    from appliance.backtest import BacktestResult


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


# -- the backtest report ------------------------------------------------------------------


def backtest_report(result: BacktestResult, out_dir: Path, max_assets: int = 4) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    curve_png = out_dir / "recall_vs_false_alarms.png"
    _plot_curves(result, curve_png)
    prob_pngs = {}
    for vr in result.variants:
        path = out_dir / vr.variant.name / "probability.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _plot_probability(result, vr, path, max_assets)
        prob_pngs[vr.variant.name] = path

    from appliance.training.export import rfc3339

    lines = [
        "# Backtest",
        "",
        f"History: {len(result.assets)} assets, {rfc3339(result.t_start)} to "
        f"{rfc3339(result.test_until)}.  Every variant is trained on the ticks up to "
        f"{rfc3339(result.train_until)} (threshold chosen on the last part of that "
        f"window) and scored on the ticks in ({rfc3339(result.train_until)}, "
        f"{rfc3339(result.test_until)}].",
        "",
        f"False-alarm budget: {result.budget:g} per asset-week; horizon "
        f"{result.horizon_s / 60:g} min; the event metrics are defined in the README "
        "(\"Event metrics\").",
        "",
        "## Test window",
        "",
        markdown_table(*result.table_rows()),
        "",
        "*recall @ budget*: the best recall any threshold reaches on the test window "
        "while keeping false alarms within the budget (the threshold is picked looking at "
        "the test window, so this is an upper bound that compares the variants at the same "
        "false-alarm rate); the other columns are at the threshold chosen on the training "
        "window, as the appliance would have run.",
        "",
        "![recall against false alarms](recall_vs_false_alarms.png)",
        "",
    ]
    for vr in result.variants:
        v = vr.variant
        lines += [f"## {v.name}", "", v.description, ""]
        lines += [f"* {k}: {val}" for k, val in vr.details.items()]
        lines += ["", f"![probability of {v.name}]({v.name}/probability.png)", "",
                  f"Predictions: `{v.name}/predictions.parquet` (asset, ts, probability).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _plot_curves(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for vr in result.variants:
        fa = np.nan_to_num(np.array([m.false_per_asset_week for m in vr.curve], dtype=float))
        rc = np.nan_to_num(np.array([m.recall for m in vr.curve], dtype=float))
        order = np.argsort(fa, kind="stable")
        # The best recall reachable at or below each false-alarm rate (a step curve).
        line, = ax.step(fa[order], np.maximum.accumulate(rc[order]), where="post",
                        label=vr.variant.name)
        ax.plot([vr.test.false_per_asset_week], [vr.test.recall], marker="o",
                markersize=8, color=line.get_color(), markerfacecolor="none")
    ax.axvline(result.budget, color="grey", linestyle="--", linewidth=1,
               label=f"budget ({result.budget:g}/asset-week)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("false alarm episodes per asset-week (test window)")
    ax.set_ylabel("recall (faults caught within the horizon)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Recall against false-alarm rate (circles: chosen threshold)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _peaks(ts: np.ndarray, p: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` points to draw: the highest probability of each run of ticks
    (what crosses a threshold must stay visible; a plot cannot show more anyway)."""
    if len(p) <= points:
        return ts, p
    edges = np.linspace(0, len(p), points + 1).astype(np.intp)
    p = np.where(np.isnan(p), -np.inf, p)
    peak = np.maximum.reduceat(p, edges[:-1])
    return ts[edges[:-1]], np.where(np.isinf(peak), np.nan, peak)


def _plot_probability(result: BacktestResult, vr: Any, path: Path, max_assets: int) -> None:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    # The assets with the most faults in the test window show the most.
    counts = {a: int(np.sum((f > result.train_until) & (f <= result.test_until)))
              for a, f in result.fault_starts.items()}
    assets = sorted(result.assets, key=lambda a: (-counts.get(a, 0), a))[:max_assets]
    fig, axes = plt.subplots(len(assets), 1, figsize=(10, 1.9 * len(assets) + 0.6),
                             sharex=True, squeeze=False)
    for ax, asset in zip(axes[:, 0], assets, strict=True):
        sel = vr.pred_asset == asset
        ts, p = _peaks(vr.pred_ts[sel], vr.pred_probability[sel])
        t = (ts * 1e6).astype("datetime64[us]")
        ax.plot(t, p, linewidth=0.6, color="tab:blue")
        ax.axhline(vr.threshold, color="tab:orange", linestyle="--", linewidth=0.8)
        starts = result.fault_starts.get(asset, np.empty(0))
        starts = starts[(starts > result.train_until) & (starts <= result.test_until)]
        for s in starts:
            ax.axvline(np.datetime64(int(s * 1e6), "us"), color="tab:red", linewidth=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(asset, fontsize=8)
        ax.tick_params(labelsize=7)
    locator = mdates.AutoDateLocator()
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[0, 0].set_title(f"{vr.variant.name}: probability (blue), threshold (orange), "
                         f"fault starts (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
