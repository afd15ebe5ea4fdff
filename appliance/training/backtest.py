"""Backtests: pipeline variants trained on one time window and scored on the next.

A *variant* is a pipeline spec and a model family.  Built in:

* ``full`` — the configured ``[pipeline]`` (with its cleaning step) and
  gradient-boosted trees: what ``appliance train`` builds;
* ``no_filter`` — the same with the cleaning step bypassed;
* ``static_threshold`` — no model: a tuned single-sensor limit on raw values,
  what a SCADA alarm does (``training.static_threshold``).

``[variants.<name>]`` tables in ``appliance.toml`` override these or define
new ones (``config.VariantConfig``).

Every variant sees the same history: it is trained on the ticks up to
``train_until`` (the last horizon held back, whose labels would look into the
test window; inside that, the usual train / gap / validation split chooses the
threshold) and scored on every tick in (``train_until``, ``test_until``] by
the exported ONNX model, i.e. what the service would have said while replaying
that history.  The scores use one set of event metrics (``scoring.metrics``),
and each variant gets the verdict ``appliance train`` gives a model
(``training.verdict``), on the test window: a variant that is not usable is
never the best one.  A variant whose test probabilities equal an earlier one's
is shown as identical to it, not as a second result; the notes say which
windows are too short for the data.

With ``on_variant``, the results so far are handed out as each variant
finishes (the command writes the report then), so a backtest that stops
part-way still leaves the variants it finished, marked partial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import (
    DEFAULT_CLEAR_RATIO,
    DEFAULT_FAMILY,
    STATIC_FAMILY,
    Config,
    PipelineConfig,
    TrainingConfig,
    VariantConfig,
)
from appliance.console import fmt, minutes, table
from appliance.features.spec import PipelineSpec
from appliance.importer.command import load_files
from appliance.scoring.metrics import (
    EventMetrics,
    best_within_budget,
    event_metrics,
    metrics_curve,
    threshold_candidates,
)
from appliance.storage.database import open_offline
from appliance.storage.history import Say, StoredHistory, load_histories
from appliance.timefmt import parse_time, rfc3339
from appliance.training.dataset import Dataset, build_dataset
from appliance.training.families import TrainParams
from appliance.training.fit import fit, write
from appliance.training.static_threshold import fit_static
from appliance.training.verdict import judge, rank, typical_intervals, warn_unfit, window_notes

#: The built-in variants: (description, overrides of the configured pipeline).
BUILTIN: dict[str, tuple[str, VariantConfig]] = {
    "full": ("The configured pipeline ([pipeline], with its cleaning step) and "
             "gradient-boosted trees, as `appliance train` builds it.",
             VariantConfig(family=DEFAULT_FAMILY)),
    "no_filter": ("The configured pipeline with its cleaning step (the Hampel filter) "
                  "bypassed, and gradient-boosted trees.",
                  VariantConfig(family=DEFAULT_FAMILY, clean=False)),
    "static_threshold": ("No model: one sensor's value (raw, or its mean over the "
                         "shortest window as a process-value filter) against a limit, what "
                         "a SCADA alarm does. The sensor, signal, direction and limit "
                         "are the ones with the best recall within the false-alarm budget "
                         "on the training window; raw (uncleaned) values.",
                         VariantConfig(family=STATIC_FAMILY, clean=False)),
}
#: VariantConfig keys that override ``[pipeline]``.
_PIPELINE_KEYS = ("clean", "hampel_window_s", "hampel_k", "cadence_s", "max_gap_s",
                  "windows_s")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    family: str  # gbt | logistic | static_threshold
    spec: PipelineSpec
    description: str
    #: The ``[pipeline]`` the spec was built from (None: not known, e.g. built by hand);
    #: the walk-forward trains its candidates with it.
    pipeline: PipelineConfig | None = None


def known_variants(cfg: Config) -> list[str]:
    return list(BUILTIN) + [n for n, _ in cfg.variants if n not in BUILTIN]


def resolve_variants(cfg: Config, names: Sequence[str]) -> list[Variant]:
    """The variants named, from the built-ins and the config's ``[variants.<name>]``."""
    out = []
    for name in names:
        base = BUILTIN.get(name)
        table = cfg.variant(name)
        if base is None and table is None:
            raise ValueError(f"unknown variant {name!r}; known: "
                             f"{', '.join(known_variants(cfg))} (define others as "
                             f"[variants.{name}] in the config)")
        description, merged = base if base else ("", VariantConfig(family=DEFAULT_FAMILY))
        if table is not None:
            given = {k: v for k, v in dataclasses.asdict(table).items() if v is not None}
            merged = dataclasses.replace(merged, **given)
            description = table.description or description or _describe(given)
        overrides = {k: getattr(merged, k) for k in _PIPELINE_KEYS
                     if getattr(merged, k) is not None}
        pipeline = dataclasses.replace(cfg.pipeline, **overrides)
        if merged.clean is False:
            # A variant that bypasses cleaning compares against no cleaning at all, so
            # it also wins over a sensor's own ``clean = true``.
            pipeline = dataclasses.replace(pipeline, sensors=tuple(
                (n, dataclasses.replace(s, clean=False)) for n, s in pipeline.sensors))
        out.append(Variant(name, merged.family or DEFAULT_FAMILY,
                           PipelineSpec.from_config(pipeline), description, pipeline))
    return out


def _describe(given: Mapping[str, object]) -> str:
    shown = ", ".join(f"{k} = {v}" for k, v in given.items() if k != "description")
    return f"The configured pipeline with {shown or 'no changes'}."


@dataclass(frozen=True, eq=False)
class VariantResult:
    variant: Variant
    threshold: float
    test: EventMetrics  # at the threshold chosen on the training window
    at_budget: EventMetrics  # the best test recall within the budget, any threshold
    budget_reachable: bool  # some threshold keeps the test window within the budget
    validation: EventMetrics  # at the chosen threshold, where it was chosen
    curve: list[EventMetrics] = field(repr=False)
    details: dict[str, str] = field(default_factory=dict)
    pred_asset: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object),
                                   repr=False)
    pred_ts: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    pred_probability: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    seconds: float = 0.0
    #: Why it is not usable (``verdict.judge`` on the test window); empty: usable.
    problems: tuple[str, ...] = ()
    #: The earlier variant whose test probabilities and threshold these equal, if any.
    identical_to: str | None = None

    @property
    def usable(self) -> bool:
        return not self.problems


@dataclass(frozen=True, eq=False)
class BacktestResult:
    assets: tuple[str, ...]
    t_start: float
    train_until: float
    test_until: float
    horizon_s: float
    budget: float
    fault_starts: Mapping[str, np.ndarray]
    variants: list[VariantResult]
    notes: tuple[str, ...] = ()
    #: Every variant asked for, in order; more than ``variants`` while it runs.
    planned: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return len(self.variants) >= len(self.planned)

    def progress_text(self) -> str:
        """'' when complete, else how far it got (for a report written part-way)."""
        if self.complete:
            return ""
        done = {vr.variant.name for vr in self.variants}
        return (f"partial: {len(self.variants)} of {len(self.planned)} variants done; not "
                f"finished: {', '.join(n for n in self.planned if n not in done)}")

    def best(self) -> VariantResult | None:
        """The usable variant with the best test metrics at its own threshold
        (``verdict.rank``); None when no variant is usable."""
        usable = [vr for vr in self.variants if vr.usable and vr.identical_to is None]
        if not usable:
            return None
        return max(usable, key=lambda vr: rank(vr.test))

    def verdict_lines(self) -> list[str]:
        """Per variant: identical to an earlier one, or why it is not usable; then the best."""
        lines = []
        for vr in self.variants:
            if vr.identical_to is not None:
                lines.append(f"{vr.variant.name}: identical to {vr.identical_to} (the same "
                             f"test probabilities and threshold)")
            else:
                lines += [f"{vr.variant.name}: not usable: {p}" for p in vr.problems]
        best = self.best()
        if best is not None:
            lines.append(f"best usable variant: {best.variant.name}")
        elif self.variants:
            lines.append("no variant is usable (the reasons are above)")
        return lines

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        """The side-by-side table: (headers, rows), one row per variant."""
        headers = ["variant", "family", "threshold", "recall", "caught", "false/asset-wk",
                   "episode precision", "median lead", "PR-AUC", "recall @ budget", "usable"]
        rows = []
        for vr in self.variants:
            t = vr.test
            if vr.identical_to is not None:
                # Its numbers are the other variant's: shown once, on that row.
                rows.append([vr.variant.name, vr.variant.family, *[""] * 8,
                             f"identical to {vr.identical_to}"])
                continue
            rows.append([vr.variant.name, vr.variant.family, fmt(vr.threshold, 3),
                         fmt(t.recall), f"{t.caught}/{t.faults}",
                         fmt(t.false_per_asset_week), fmt(t.episode_precision),
                         minutes(t.median_lead_s), fmt(t.pr_auc),
                         fmt(vr.at_budget.recall) + ("" if vr.budget_reachable else " (!)"),
                         "yes" if vr.usable else "NO"])
        return headers, rows

    def as_dict(self) -> dict[str, object]:
        best = self.best()
        return {
            "train_until": rfc3339(self.train_until), "test_until": rfc3339(self.test_until),
            "budget_false_per_asset_week": self.budget,
            "complete": self.complete, "variants_planned": list(self.planned),
            "variants_done": len(self.variants),
            "best_usable_variant": best.variant.name if best is not None else None,
            "notes": list(self.notes),
            "variants": {vr.variant.name: {
                "family": vr.variant.family, "spec_hash": vr.variant.spec.hash,
                "usable": vr.usable, "problems": list(vr.problems),
                "identical_to": vr.identical_to,
                "threshold": vr.threshold, "test": vr.test.as_dict(),
                "validation": vr.validation.as_dict(),
                "recall_at_budget": vr.at_budget.as_dict(),
                "budget_reachable": vr.budget_reachable, "details": vr.details,
                "seconds": round(vr.seconds, 2)} for vr in self.variants},
        }


def run(history: StoredHistory, variants: Sequence[Variant], train_until: float,
        test_until: float | None = None, *, budget: float = 1.0,
        clear_ratio: float = DEFAULT_CLEAR_RATIO,
        training: TrainingConfig | None = None, out_dir: Path | None = None,
        progress: Say | None = None, seed: int = 0,
        on_variant: Callable[[BacktestResult], None] | None = None,
        with_dataset: Callable[[Variant, Dataset, VariantResult, Path], None] | None = None
        ) -> BacktestResult:
    """Train each variant up to ``train_until``, score it on (train_until, test_until].

    ``on_variant`` is called with the results so far each time a variant finishes
    (``BacktestResult.complete`` is False until the last one).  ``with_dataset`` is
    called before that with the variant, its data set (the whole history's feature
    rows), its result and the folder its model file is in (the walk-forward
    continues from there without building the features again).
    """
    say = progress or (lambda _m: None)
    training = training or TrainingConfig()
    t_start = history.t_start
    test_until = history.t_end if test_until is None else min(test_until, history.t_end)
    if not t_start < train_until < test_until:
        raise ValueError("need history start < --train-until < --test-until (or the end of "
                         "the history)")
    horizons = {v.spec.horizon_s for v in variants}
    if len(horizons) != 1:
        raise ValueError("all variants must share one horizon to be compared")
    horizon = horizons.pop()
    notes = list(history.notes)
    full = next((v for v in variants if v.name == "full"), None)
    if full is not None and full.spec.clean is None:
        notes.append("[pipeline] clean is off, so full has no cleaning step either")
    notes += _window_notes(variants, typical_intervals(history.histories))
    for note in notes:
        say(f"note: {note}")
    datasets: dict[str, Dataset] = {}  # by spec hash, while a variant still to run needs it
    #: (variant, fingerprint of its matrix) per data set built: a digest, not the matrix,
    #: so that a data set no later variant needs leaves memory (one is ~100 B a tick)
    built: list[tuple[str, str]] = []
    needed = Counter(v.spec.hash for v in variants)
    results: list[VariantResult] = []

    def so_far() -> BacktestResult:
        return BacktestResult(tuple(h.asset for h in history.histories), t_start,
                              train_until, test_until, horizon, budget,
                              history.fault_starts(), list(results), tuple(notes),
                              tuple(v.name for v in variants))

    with tempfile.TemporaryDirectory(prefix="appliance-backtest-") as tmp:
        for v in variants:
            t0 = time.perf_counter()
            say(f"variant {v.name} ({v.family}, spec {v.spec.hash})")
            ds = datasets.get(v.spec.hash)
            same_matrix = None
            if ds is None:
                ds = build_dataset(v.spec, history.histories, t_start, test_until,
                                   training.cooldown_s, 1, say)
                # Settings that change nothing on this history (a filter whose window
                # holds one point) give the same matrix: say so.
                digest = _fingerprint(ds)
                same_matrix = next((name for name, d in built if d == digest), None)
                if same_matrix is not None:
                    say(f"{v.name}: the same feature matrix as {same_matrix}")
                datasets[v.spec.hash] = ds
                built.append((v.name, digest))
            model_dir = (out_dir / v.name) if out_dir is not None else Path(tmp) / v.name
            vr = _run_variant(v, ds, t_start, train_until, test_until, horizon, budget,
                              clear_ratio, training, model_dir, say, seed)
            if same_matrix is not None:
                vr.details["feature matrix"] = (f"identical to {same_matrix}'s: its pipeline "
                                                f"settings change nothing on this history")
            twin = next((r.variant.name for r in results if _same_scores(r, vr)), None)
            if twin is not None:
                say(f"{v.name}: identical to {twin}")
            results.append(dataclasses.replace(vr, seconds=time.perf_counter() - t0,
                                               identical_to=twin))
            if out_dir is not None:
                write_predictions(out_dir / v.name / "predictions.parquet", vr)
            if with_dataset is not None:
                with_dataset(v, ds, results[-1], model_dir)
            if on_variant is not None:
                on_variant(so_far())
            needed[v.spec.hash] -= 1
            if not needed[v.spec.hash]:
                del datasets[v.spec.hash]
            del ds, vr  # or the next variant's data set is built while this one is held
    return so_far()


def _window_notes(variants: Sequence[Variant], intervals: Mapping[str, float]) -> list[str]:
    """``verdict.window_notes`` of every variant, each note once with the variants it
    concerns (full and no_filter share their rolling windows)."""
    by_note: dict[str, list[str]] = {}
    for v in variants:
        for note in window_notes(v.spec, intervals):
            by_note.setdefault(note, []).append(v.name)
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _fingerprint(ds: Dataset) -> str:
    """A digest of the rows of a data set: equal digests, the same matrix."""
    h = hashlib.sha256("\0".join(ds.names).encode())
    for a in (ds.ticks, ds.asset_index, ds.X):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _same_scores(a: VariantResult, b: VariantResult) -> bool:
    """The same alarms on the test window: equal probabilities and threshold."""
    return (a.threshold == b.threshold
            and np.array_equal(a.pred_probability, b.pred_probability, equal_nan=True))


def _run_variant(v: Variant, ds: Dataset, t_start: float, train_until: float,
                 test_until: float, horizon: float, budget: float, clear_ratio: float,
                 training: TrainingConfig, model_dir: Path, say: Say,
                 seed: int) -> VariantResult:
    fit_until = train_until - horizon  # labels there would look into the test window
    test_rows = (ds.ticks > train_until) & (ds.ticks <= test_until)
    if not test_rows.any():
        raise ValueError("no ticks in the test window")
    fit_ds = ds.stride(v.spec, training.stride)
    details: dict[str, str] = {"spec hash": v.spec.hash}
    if v.family == STATIC_FAMILY:
        limit = fit_static(fit_ds, v.spec, t_start, fit_until, budget, clear_ratio,
                           progress=say)
        features, chosen_on = (limit.feature,), ("training", limit.training)
        X_test = ds.X[test_rows][:, [ds.names.index(limit.feature)]]
        p_test = limit.score(X_test, features)
        threshold, validation = limit.threshold, limit.training
        details["limit"] = f"`{limit.describe()}`"
        details["budget met on the training window"] = fmt(limit.met_budget)
    else:
        params = TrainParams.from_settings(v.family, training, budget, clear_ratio, seed)
        result = fit(fit_ds, v.spec, t_start, fit_until, params, say)
        loaded, agreement = write(result, model_dir / "model.onnx")
        # Scored by the exported model, as the service would run it.
        features, chosen_on = loaded.feature_names, ("validation", result.validation)
        X_test = ds.X[test_rows][:, loaded.column_index(ds.names)]
        p_test = loaded.predict_proba(X_test)
        threshold, validation = result.threshold, result.validation
        details["model"] = f"`{v.name}/model.onnx` ({loaded.name})"
        details["features"] = f"{len(result.feature_names)} ({len(result.dropped)} dropped)"
        details["budget met on validation"] = fmt(result.threshold_met_budget)
        details["ONNX vs scikit-learn, max |diff|"] = f"{agreement['max_abs_diff']:.2g}"
    scores = ds.scores(test_rows, p_test)
    test = event_metrics(scores, threshold, horizon, clear_ratio)
    curve = metrics_curve(scores, horizon, clear_ratio,
                          np.union1d(threshold_candidates(scores, 0.01, 0.9999), [threshold]))
    at_budget, reachable = best_within_budget(curve, budget)
    say(f"{v.name}: test recall {fmt(test.recall)} ({test.caught}/{test.faults}), "
        f"{fmt(test.false_per_asset_week)} false alarms per asset-week, median lead "
        f"{minutes(test.median_lead_s)}")
    assets = np.array(ds.assets, dtype=object)[ds.asset_index[test_rows]]
    problems = tuple(judge("test", test, budget, p_test, features, X_test, assets, chosen_on))
    for problem in problems:
        say(f"{v.name}: NOT USABLE: {problem}")
    return VariantResult(v, threshold, test, at_budget, reachable, validation, curve, details,
                         assets, ds.ticks[test_rows], p_test, problems=problems)


def write_predictions(path: Path, vr: VariantResult) -> None:
    """``asset, ts, probability`` of every test tick, as Parquet (ts: UTC timestamps)."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    predictions = {  # noqa: F841 - scanned by DuckDB below
        "asset": np.asarray(vr.pred_asset, dtype=object),
        "ts_s": np.asarray(vr.pred_ts, dtype=np.float64),
        "probability": np.asarray(vr.pred_probability, dtype=np.float64),
    }
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        target = "'" + str(path).replace("'", "''") + "'"
        con.execute(f"COPY (SELECT asset, to_timestamp(ts_s) AS ts, probability "
                    f"FROM predictions ORDER BY asset, ts) TO {target} (FORMAT parquet)")
    finally:
        con.close()


def terminal_table(result: BacktestResult) -> str:
    headers, rows = result.table_rows()
    lines = [f"test window {rfc3339(result.train_until)} to {rfc3339(result.test_until)}, "
             f"{len(result.assets)} assets; budget {result.budget:g} false alarms per "
             f"asset-week", table(headers, rows, text=("family",)),
             "recall @ budget: best test recall of any threshold within the budget "
             "((!) = no threshold met it); the other columns: at the threshold chosen on "
             "the training window"]
    lines += result.verdict_lines()
    lines += [f"note: {n}" for n in result.notes]
    if not result.complete:
        lines.append(result.progress_text())
    return "\n".join(lines)


def main(cfg: Config, names: Sequence[str], *, train_until: str | None = None,
         test_until: str | None = None, out_dir: Path | None = None,
         db: Path | None = None, readings: str | None = None, faults: str | None = None,
         asset: str | None = None, line: str = "line1", progress: Say | None = None,
         seed: int = 0, renames: Mapping[str, str] | None = None,
         ignore: Collection[str] = (), since: str | None = None,
         on_variant: Callable[[BacktestResult], None] | None = None) -> BacktestResult:
    """``appliance backtest``: history from the database (read-only) or from files,
    from ``since`` on if given; ``on_variant`` as in ``run``.  A ValueError of the run
    says which window it used and how it was chosen (``window_text``)."""
    say = progress or (lambda _m: None)
    if not names:
        raise ValueError("no variants named")
    variants = resolve_variants(cfg, names)
    history, t_train, t_test = history_and_window(
        cfg, since, train_until, test_until, db=db, readings=readings, faults=faults,
        asset=asset, line=line, progress=progress, renames=renames, ignore=ignore)
    with window_explained(history, t_train, t_test, since, train_until, test_until):
        return run(history, variants, t_train, t_test,
                   budget=cfg.alerts.max_false_per_asset_week,
                   clear_ratio=cfg.alerts.clear_ratio, training=cfg.training,
                   out_dir=out_dir, progress=say, seed=seed, on_variant=on_variant)


def history_and_window(cfg: Config, since: str | None, train_until: str | None,
                       test_until: str | None, **load: Any
                       ) -> tuple[StoredHistory, float, float | None]:
    """The history (``load_history(**load)``, from ``since`` on), warned about where
    ``[pipeline]`` does not fit it, and its train and test ends (``window_of``)."""
    history = load_history(**load)
    if since is not None:
        history = history.since(parse_time(since))
    warn_unfit(PipelineSpec.from_config(cfg.pipeline), history.histories, "backtest")
    return history, *window_of(cfg, history, train_until, test_until)


@contextmanager
def window_explained(history: StoredHistory, t_train: float, t_test: float | None,
                     since: str | None, train_until: str | None, test_until: str | None
                     ) -> Iterator[None]:
    """A ValueError inside (history too short, no faults, ...) says which window the
    backtest used and how, and the long gap in the data if there is one."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{exc}\n" + window_text(history, t_train, t_test, since,
                                                  train_until, test_until)) from exc


#: A time without readings longer than this share of the history's span (and a day) is
#: named with the options that leave it out: a window across it mostly holds nothing.
LONG_GAP_SHARE = 0.2


def window_text(history: StoredHistory, t_train: float, t_test: float | None,
                since: str | None, train_until: str | None, test_until: str | None) -> str:
    """Which window a backtest used and how each end was chosen, and the history's longest
    gap when it is long (with the options that leave it out)."""
    end = history.t_end if t_test is None else min(t_test, history.t_end)
    span = history.t_end - history.t_start
    chosen = "--train-until" if train_until else "where three quarters of the data lie before it"
    lines = [
        f"the window: the history from {rfc3339(history.t_start)} to "
        f"{rfc3339(history.t_end)} ({span / 86400:.1f} days, "
        f"{'from --since' if since else 'all of it'}); trained up to {rfc3339(t_train)} "
        f"({chosen}), tested from there to {rfc3339(end)} "
        f"({'--test-until' if test_until else 'the end of the history'})"]
    gap_from, gap_to = history.longest_gap()
    gap = gap_to - gap_from
    if gap > max(86400.0, LONG_GAP_SHARE * span):
        lines.append(
            f"the data has a gap from {rfc3339(gap_from)} to {rfc3339(gap_to)} "
            f"({gap / 86400:.0f} days, {gap / span:.0%} of the span): backtest one side of "
            f"it, e.g. --since {rfc3339(gap_to)} (the data after it) or --test-until "
            f"{rfc3339(gap_from)} (the data before it)")
    return "\n".join(lines)


def load_history(*, db: Path | None = None, readings: str | None = None,
                 faults: str | None = None, asset: str | None = None, line: str = "line1",
                 progress: Say | None = None, renames: Mapping[str, str] | None = None,
                 ignore: Collection[str] = ()) -> StoredHistory:
    """The history a backtest runs on: from files (``readings``) or the database (read-only)."""
    say = progress or (lambda _m: None)
    if readings is not None:
        history, reports = load_files(readings, faults, asset=asset, line=line,
                                      progress=progress, renames=renames, ignore=ignore)
        for r in reports:
            say(r.summary())
        # what the import did not store belongs in the report too (--quiet hides the above)
        return dataclasses.replace(history, notes=history.notes + tuple(
            f"{Path(r.path).name}: {loss}" for r in reports for loss in r.losses()))
    assert db is not None
    con = open_offline(db, read_only=True)
    try:
        return load_histories(con, say)
    finally:
        con.close()


def window_of(cfg: Config, history: StoredHistory, train_until: str | None,
              test_until: str | None) -> tuple[float, float | None]:
    """``--train-until`` (default: where three quarters of the data lie before it) and
    ``--test-until`` (default None: the end of the history) as event times."""
    t_train = (parse_time(train_until) if train_until
               else history.data_quantile(0.75, cfg.pipeline.cadence_s))
    return t_train, (parse_time(test_until) if test_until else None)
