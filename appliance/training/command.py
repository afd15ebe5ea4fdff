"""``appliance train``: stored history in, candidate models in the registry out.

Reads every reading and fault from the database, builds the data set once with
the pipeline spec the service runs, fits each family, exports each model to
ONNX (checked against scikit-learn on validation rows), adds it to the model
registry *without* promoting it, and records it in the ``models`` table
(status ``candidate``) and in ``training_runs``, each with its verdict
(``verdict.judge``: why it is not usable, if it is not).  ``recommended`` picks
the model worth promoting, if any; ``appliance models promote NAME`` then makes
the running service switch to it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.clock import WallClock
from appliance.config import FAMILIES, Config
from appliance.console import Progress, fmt, minutes, table
from appliance.features.spec import PipelineSpec
from appliance.models.registry import Registry
from appliance.service import requests
from appliance.storage import tables
from appliance.storage.database import DatabaseBusy, open_offline, release_buffers
from appliance.storage.export import open_export
from appliance.storage.history import load_histories
from appliance.storage.snapshot import open_snapshot
from appliance.timefmt import rfc3339
from appliance.training.families import TrainParams
from appliance.training.fit import TrainResult, train_families, write
from appliance.training.verdict import rank, warn_unfit


@dataclass(frozen=True, slots=True)
class Trained:
    """One family's model, as registered."""

    family: str
    name: str
    path: Path
    sha256: str
    result: TrainResult
    onnx_check: dict[str, float]


def params_for(cfg: Config, families: Sequence[str], seed: int = 0) -> list[TrainParams]:
    """Training parameters of each family from ``[training]`` and ``[alerts]``."""
    return [TrainParams.from_settings(f, cfg.training, cfg.alerts.max_false_per_asset_week,
                                      cfg.alerts.clear_ratio, seed)
            for f in families]


def train_from_database(cfg: Config, db_path: Path, families: Sequence[str],
                        out_dir: Path | None = None, progress: Progress | None = None,
                        seed: int = 0) -> list[Trained]:
    """Train, export, register and record; see the module docstring.

    Raises ``DatabaseBusy`` while the service holds the database (``train_beside_service``
    then asks it for a snapshot) and ValueError when the history cannot make a model
    (too short, no faults, ...); a failed run is recorded in ``training_runs`` too.
    """
    con = open_offline(db_path)
    try:
        trained, records = _train(cfg, con, cfg.models_dir(db_path), str(db_path), families,
                                  out_dir, progress, seed)
        _insert(con, records)
        if not trained:
            raise ValueError(records["training_runs"][0]["detail"]["error"])
        return trained
    finally:
        con.close()


def train_beside_service(cfg: Config, db_path: Path, families: Sequence[str],
                         busy: DatabaseBusy, out_dir: Path | None = None,
                         progress: Progress | None = None, seed: int = 0,
                         timeout_s: float = 600.0) -> list[Trained]:
    """``train_from_database`` while the service holds the database: it copies the
    history out (``storage.snapshot``, one consistent state, ingest goes on), this
    process trains on the copy, and the service writes the rows of ``models`` and
    ``training_runs`` (the one writer of the file).  Raises ``busy`` again when no
    service takes the request (the file is held by something else)."""
    say = progress or Progress(enabled=False)
    models_dir = cfg.models_dir(db_path)
    say("the service holds the database: asking it for a snapshot of the history")
    req = requests.submit(models_dir, "snapshot")
    answer = requests.wait(req, timeout_s, WallClock())
    taken = requests.taken_path(req).exists()
    requests.forget(req)
    if answer is None and not taken:
        raise busy
    if answer is None:
        raise ValueError(f"the service took the request but did not answer within "
                         f"{timeout_s:.0f} s")
    if not answer.get("ok"):
        raise ValueError(f"the service could not copy the history: {answer.get('error')}")
    snapshot = Path(answer["snapshot"])
    say(f"snapshot: {answer['rows']} readings in {answer['seconds']:.1f} s")
    try:
        con = open_snapshot(snapshot)
        try:
            trained, records = _train(cfg, con, models_dir, f"{db_path} (snapshot)", families,
                                      out_dir, say, seed)
        finally:
            con.close()
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    rec = requests.submit(models_dir, "record", records)
    if (requests.wait(rec, 30.0, WallClock()) or {}).get("ok") is not True:
        say("note: the service did not record this run in models and training_runs")
    requests.forget(rec)
    if not trained:
        raise ValueError(records["training_runs"][0]["detail"]["error"])
    return trained


def train_from_export(cfg: Config, readings: str, faults: str | None, db_path: Path,
                      families: Sequence[str], out_dir: Path | None = None,
                      progress: Progress | None = None, seed: int = 0) -> list[Trained]:
    """``train_from_database`` on an export (``storage.export``: ``readings`` a folder or
    glob, ``faults`` the fault files or None for the export's own): registered in the
    registry of ``db_path``, recorded in its database (by the service while it holds
    the file; not at all when there is no such file)."""
    say = progress or Progress(enabled=False)
    models_dir = cfg.models_dir(db_path)
    con = open_export(readings, faults)
    try:
        trained, records = _train(cfg, con, models_dir, readings, families, out_dir, say,
                                  seed)
    finally:
        con.close()
    if not db_path.exists():
        say(f"note: no database at {db_path}: this run is not recorded in training_runs")
    else:
        try:
            db = open_offline(db_path)
        except DatabaseBusy:
            rec = requests.submit(models_dir, "record", records)
            if (requests.wait(rec, 30.0, WallClock()) or {}).get("ok") is not True:
                say("note: the service did not record this run in models and training_runs")
            requests.forget(rec)
        else:
            try:
                _insert(db, records)
            finally:
                db.close()
    if not trained:
        raise ValueError(records["training_runs"][0]["detail"]["error"])
    return trained


def _train(cfg: Config, con: Any, models_dir: Path, source: str, families: Sequence[str],
           out_dir: Path | None, progress: Progress | None, seed: int
           ) -> tuple[list[Trained], dict[str, list[dict[str, Any]]]]:
    """Train on the history in ``con``; the models registered and the rows to record."""
    say = progress or Progress(enabled=False)
    spec = PipelineSpec.from_config(cfg.pipeline)
    started = time.time()
    try:
        history = load_histories(con, say)
        release_buffers(con)  # the readings are in numpy now; the fit needs the memory
        for note in history.notes:
            say(f"note: {note}")
        warn_unfit(spec, history.histories, "train")
        say(f"window {rfc3339(history.t_start)} to {rfc3339(history.t_end)}, pipeline "
            f"spec {spec.hash}")
        results = train_families(spec, history.histories, history.t_start, history.t_end,
                                 params_for(cfg, families, seed), say, cfg.drift)
        trained = _export_and_register(models_dir, spec, results, out_dir, say)
    except ValueError as exc:
        return [], {"models": [], "training_runs": [{
            "started": started, "ended": time.time(), "model": None, "status": "failed",
            "detail": {"error": str(exc), "families": list(families)}}]}
    return trained, {
        "models": [{"ts": time.time(), "name": t.name, "sha256": t.sha256, "path": str(t.path),
                    "spec_hash": spec.hash, "status": "candidate",
                    "metrics": {"family": t.result.family, **t.result.metrics}}
                   for t in trained],
        "training_runs": [{"started": started, "ended": time.time(), "model": t.name,
                           "status": "candidate", "detail": _run_detail(t, source)}
                          for t in trained]}


def _insert(con: Any, records: dict[str, list[dict[str, Any]]]) -> None:
    for m in records["models"]:
        tables.insert_model(con, m["ts"], m["name"], m["sha256"], m["path"], m["spec_hash"],
                            m["status"], m["metrics"])
    for t in records["training_runs"]:
        tables.insert_training_run(con, t["started"], t["ended"], t["model"], t["status"],
                                   t["detail"])


def _export_and_register(directory: Path, spec: PipelineSpec,
                         results: Sequence[TrainResult], out_dir: Path | None,
                         say: Progress) -> list[Trained]:
    registry = Registry(directory)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    short = {family: name for name, family in FAMILIES.items()}
    out = []
    with tempfile.TemporaryDirectory(prefix="appliance-train-") as tmp:
        folder = out_dir if out_dir is not None else Path(tmp)
        for r in results:
            family = short.get(r.family, r.family)
            path = folder / f"{family}-{stamp}.onnx"
            _loaded, agreement = write(r, path)
            say(f"{family}: exported {path.name} (ONNX vs scikit-learn on "
                f"{agreement['rows']} validation rows: max |diff| "
                f"{agreement['max_abs_diff']:.2g})")
            model = registry.add(path, spec.hash)
            say(f"{family}: added {model.name} to {registry.directory} (not promoted)")
            out.append(Trained(family, model.name, model.path, model.sha256, r, agreement))
        if out_dir is not None:
            (out_dir / f"train-{stamp}.json").write_text(json.dumps(
                [{"family": t.family, "model": t.name, "sha256": t.sha256,
                  "metrics": dict(t.result.metrics), "timings": dict(t.result.timings)}
                 for t in out], indent=2))
    return out


def _run_detail(t: Trained, source: str) -> dict[str, Any]:
    r = t.result
    return {"family": t.family, "database": source, "sha256": t.sha256,
            "threshold": r.threshold, "threshold_met_budget": r.threshold_met_budget,
            "trained_from": rfc3339(r.trained_from), "trained_to": rfc3339(r.trained_to),
            "validation": r.validation.as_dict(), "rows": r.metrics.get("rows"),
            "features": len(r.feature_names), "dropped": len(r.dropped),
            "usable": r.usable, "problems": list(r.problems), "pipeline_notes": list(r.notes),
            "onnx_check": t.onnx_check,
            "timings_s": {k: round(v, 2) for k, v in r.timings.items()}}


def summary_table(trained: Sequence[Trained]) -> str:
    """Per family: the validation metrics at the chosen threshold and whether the model
    is usable; then why each one that is not, is not."""
    headers = ["family", "threshold", "recall", "caught", "false/asset-wk",
               "episode precision", "median lead", "PR-AUC", "budget met", "usable", "model"]
    rows = []
    for t in trained:
        v = t.result.validation
        rows.append([t.family, fmt(t.result.threshold, 3), fmt(v.recall),
                     f"{v.caught}/{v.faults}", fmt(v.false_per_asset_week),
                     fmt(v.episode_precision), minutes(v.median_lead_s), fmt(v.pr_auc),
                     fmt(t.result.threshold_met_budget), "yes" if t.result.usable else "NO",
                     t.name])
    lines = [table(headers, rows, text=("budget met", "usable", "model"))]
    lines += [f"{t.family}: not usable: {problem}" for t in trained
              for problem in t.result.problems]
    return "\n".join(lines)


def recommended(trained: Sequence[Trained]) -> Trained | None:
    """The model worth promoting: the usable one with the best validation metrics
    (``verdict.rank``); None when no model is usable."""
    usable = [t for t in trained if t.result.usable]
    return max(usable, key=lambda t: rank(t.result.validation)) if usable else None
