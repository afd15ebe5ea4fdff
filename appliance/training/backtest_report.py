"""The backtest's Markdown report and its PNG plots.

Plots need matplotlib (the ``train`` extra); it is imported only when a report
is written.  ``appliance backtest --out`` writes it after every variant, so a
report of a backtest that did not finish says so at its top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from appliance.console import markdown_table
from appliance.timefmt import rfc3339, to_us
from appliance.training.backtest import BacktestResult


def write_report(result: BacktestResult, out_dir: Path) -> Path:
    """``appliance backtest --out DIR``: report.md, its plots and backtest.json."""
    try:
        path = backtest_report(result, out_dir)
    except ModuleNotFoundError as exc:
        raise ValueError(f"the predictions are in {out_dir}, but the report's plots need "
                         f"{exc.name} (pip install 'appliance[train]')") from None
    _replace(out_dir / "backtest.json", json.dumps(result.as_dict(), indent=2))
    return path


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

    lines = ["# Backtest", ""]
    if not result.complete:
        partial = result.progress_text()
        lines += [f"**{partial[:1].upper()}{partial[1:]}.** The backtest stopped, or is "
                  "still running; this report holds the variants it finished.", ""]
    lines += [
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
        "window, as the appliance would have run; *usable*: whether the variant has none of "
        "the problems listed below (the verdict `appliance train` gives a model).",
        "",
        *[f"* {line}" for line in result.verdict_lines()],
        *[f"* note: {n}" for n in result.notes],
        "",
        "![recall against false alarms](recall_vs_false_alarms.png)",
        "",
    ]
    for vr in result.variants:
        v = vr.variant
        lines += [f"## {v.name}", "", v.description, ""]
        if vr.identical_to is not None:
            lines += [f"**Identical to {vr.identical_to}**: the same test probabilities and "
                      "threshold, so the same alarms and numbers.", ""]
        elif vr.problems:
            lines += ["**Not usable:**", "", *[f"* {p}" for p in vr.problems], ""]
        lines += [f"* {k}: {val}" for k, val in vr.details.items()]
        lines += ["", f"![probability of {v.name}]({v.name}/probability.png)", "",
                  f"Predictions: `{v.name}/predictions.parquet` (asset, ts, probability).", ""]
    path = out_dir / "report.md"
    _replace(path, "\n".join(lines))
    return path


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: the report is rewritten after every variant,
    and a backtest killed mid-write must leave the previous one readable."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _plot_curves(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for vr in result.variants:
        if vr.identical_to is not None:  # its curve is drawn already, under the other name
            continue
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
        t = to_us(ts).astype("datetime64[us]")
        ax.plot(t, p, linewidth=0.6, color="tab:blue")
        ax.axhline(vr.threshold, color="tab:orange", linestyle="--", linewidth=0.8)
        starts = result.fault_starts.get(asset, np.empty(0))
        starts = starts[(starts > result.train_until) & (starts <= result.test_until)]
        for s in starts:
            ax.axvline(np.datetime64(to_us(s), "us"), color="tab:red", linewidth=0.8)
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
