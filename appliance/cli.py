"""The ``appliance`` command: argparse sub-commands, each a thin call into a module."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__, logsetup
from appliance import config as config_mod

if TYPE_CHECKING:  # the commands import what they use when they run
    from appliance.models.registry import Registry

DEFAULT_CONFIG = "/etc/appliance/appliance.toml"
#: Exit codes as a shell reports a command ended by SIGINT or SIGPIPE (128 + signal).
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
#: ``appliance status`` of a service that is stopped or not reporting (LSB's "program is
#: not running"), apart from 1, a running service that is degraded.
EXIT_NOT_RUNNING = 3
#: ``simulate --to-files`` asks for ``--yes`` before writing a readings file larger than
#: this (the defaults, a day of 10 assets at 1 Hz, make about 250 MB).
TO_FILES_CONFIRM_MB = 100.0


def _load_config(path: str | None) -> config_mod.Config:
    if path is None:
        # os.path.exists, not Path.exists: the latter raises for a person outside the
        # service's group (/etc/appliance is 0750); load then says which file it is.
        folder = os.path.dirname(DEFAULT_CONFIG)
        if os.path.exists(DEFAULT_CONFIG) or (os.path.isdir(folder)
                                              and not os.access(folder, os.X_OK)):
            path = DEFAULT_CONFIG
        else:
            return config_mod.Config()
    return config_mod.load(path)


def _cmd_run(args: argparse.Namespace) -> int:
    from appliance.models.contract import ModelError

    cfg = _load_config(args.config)
    if args.check_config:
        return _check(cfg)
    from appliance.service import runner

    try:
        return runner.run(cfg)
    except ModelError as exc:
        print(f"appliance run: {cfg.source}: no model can serve ({exc}); promote one "
              f"(appliance models promote NAME) or set [model] required = false to collect "
              f"history without one", file=sys.stderr)
        return 2


def _check(cfg: config_mod.Config) -> int:
    """Validate the config and the model that will serve, without starting anything."""
    from appliance.models.contract import ModelError
    from appliance.models.watcher import serving_model
    from appliance.service.runner import spec_hash

    try:
        serving = serving_model(cfg)
    except ModelError as exc:
        if cfg.model.required:
            print(f"{cfg.source}: [model]: no model can serve: {exc}", file=sys.stderr)
            return 2
        model = f"none ({exc}; [model] required = false: history is collected, nothing " \
                f"predicted)"
    else:
        model = serving.model.name
        if serving.refused_active:
            print(f"{cfg.source}: warning: {serving.refused_active}; the fallback serves",
                  file=sys.stderr)
    print(f"{cfg.source}: OK (broker {cfg.mqtt.host}:{cfg.mqtt.port}, database "
          f"{cfg.resolve(cfg.storage.path)}, model {model}, spec {spec_hash(cfg)})")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from appliance.devtools import simulator

    if args.to_files:
        size_mb = simulator.estimate_readings_bytes(args.days, args.assets, args.hz) / 1e6
        if size_mb > TO_FILES_CONFIRM_MB and not args.yes:
            print(f"appliance simulate: {args.to_files}/readings.csv would be about "
                  f"{size_mb:,.0f} MB ({args.days:g} days of {args.assets} assets at "
                  f"{args.hz:g} Hz); lower --days, --assets or --hz, or write it anyway with "
                  f"--yes", file=sys.stderr)
            return 1
        print(f"writing about {size_mb:,.0f} MB to {args.to_files}/readings.csv ...",
              file=sys.stderr)
        simulator.to_files(args.to_files, days=args.days, assets=args.assets, hz=args.hz,
                           seed=args.seed)
        print(f"wrote {args.to_files}/readings.csv and faults.csv")
        return 0
    simulator.publish(args.host, args.port, assets=args.assets, hz=args.hz,
                      speedup=args.speedup, seed=args.seed, duration_s=args.duration)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from appliance.devtools import demo

    return demo.run(data_dir=Path(args.data_dir), assets=args.assets, speedup=args.speedup,
                    seed=args.seed, duration_s=args.duration, host=args.host, port=args.port,
                    drift_at_min=args.drift_at)


def _cmd_status(args: argparse.Namespace) -> int:
    from appliance.service import status

    cfg = _load_config(args.config)
    path = status.status_file(cfg)
    try:
        snap = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no status at {path}: is the service running with this config?",
              file=sys.stderr)
        return 3  # as for a stopped service (1 is degraded)
    age = time.time() - snap["ts"]
    interval_s = cfg.status.interval_s
    if args.json:
        print(json.dumps({**snap, "state": status.reporting_state(snap, age, interval_s)},
                         indent=2))
    else:
        print(status.text(snap, age, interval_s))
    state = status.reporting_state(snap, age, interval_s)
    return 0 if state == "running" else 1 if state == "degraded" else EXIT_NOT_RUNNING


def _cmd_sql(args: argparse.Namespace) -> int:
    """Ask the running service on its socket; when none answers, open the file read-only."""
    from appliance.service import control
    from appliance.storage import query as sql

    cfg = _load_config(args.config)
    if args.format == "parquet" and not args.out:
        print("appliance sql: --format parquet writes a file: give --out FILE", file=sys.stderr)
        return 2
    if (args.limit is not None and args.limit < 1) or (args.timeout is not None
                                                       and args.timeout <= 0):
        print("appliance sql: --limit and --timeout must be positive", file=sys.stderr)
        return 2
    db = _db_path(cfg, args.db)
    sock = cfg.socket_path(Path(args.db) if args.db else None)
    limit = args.limit or cfg.control.max_rows
    timeout_s = args.timeout or cfg.control.timeout_s
    try:
        reply = control.ask(sock, {"op": "sql", "query": args.query, "limit": limit,
                                   "timeout_s": timeout_s}, timeout_s + 30.0)
        if reply is None:
            result = sql.main(db, args.query, limit, timeout_s)
        elif not reply["ok"]:
            print(f"appliance sql: {'refused' if reply.get('refused') else 'failed'}: "
                  f"{reply['error']}", file=sys.stderr)
            return 2 if reply.get("refused") else 1
        else:
            result = sql.Result.from_dict(reply)
            if reply.get("capped"):
                print(f"note: the service returns at most {result.limit} rows ([control] "
                      f"max_rows)", file=sys.stderr)
    except sql.Refused as exc:
        print(f"appliance sql: refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"appliance sql: cannot ask the service on {sock}: {exc} (a person in the "
              f"service's group may connect)", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"appliance sql: {exc}", file=sys.stderr)
        return 1
    except sql.duckdb.InterruptException:
        print(f"appliance sql: interrupted after {timeout_s:g} s (--timeout)", file=sys.stderr)
        return 1
    except sql.duckdb.Error as exc:
        print(f"appliance sql: failed: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    sql.write(result, args.format, Path(args.out) if args.out else None)
    note = sql.truncation_note(result)
    if note:
        print(note, file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Hive-partitioned Parquet from the running service (written into its data folder,
    then copied here) or, when none answers, from the file opened read-only."""
    import shutil
    import uuid

    from appliance.service import control
    from appliance.storage import export
    from appliance.storage.database import open_offline
    from appliance.timefmt import parse_time

    cfg = _load_config(args.config)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = sorted(set(tables) - set(export.TABLES))
    try:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"appliance export: {exc}", file=sys.stderr)
        return 2
    to = Path(args.to)
    there = [str(to / f"table={t}") for t in tables if (to / f"table={t}").exists()]
    problems = [f"no table {', '.join(unknown)} (tables: {', '.join(export.TABLES)})"
                if unknown else "", "" if tables else "no tables named",
                f"{', '.join(there)} exists already: export into a new folder" if there else ""]
    if any(problems):
        print(f"appliance export: {'; '.join(p for p in problems if p)}", file=sys.stderr)
        return 2
    db = _db_path(cfg, args.db)
    sock = cfg.socket_path(Path(args.db) if args.db else None)
    try:
        reply = control.ask(sock, {"op": "export", "since": since, "until": until,
                                   "tables": tables}, timeout_s=3600.0)
    except OSError as exc:
        print(f"appliance export: cannot ask the service on {sock}: {exc}", file=sys.stderr)
        return 1
    to.mkdir(parents=True, exist_ok=True)
    if reply is not None:
        if not reply["ok"]:
            print(f"appliance export: the service could not export: {reply['error']}",
                  file=sys.stderr)
            return 1
        written, source = Path(reply["directory"]), "the running service"
        done = reply
    else:
        written, source = to / f".export-{uuid.uuid4().hex[:8]}", str(db)
        try:
            con = open_offline(db, read_only=True)
        except ValueError as exc:
            print(f"appliance export: {exc}", file=sys.stderr)
            return 1
        try:
            done = export.write_export(con, written, since, until, tables)
        finally:
            con.close()
    try:
        for t in tables:
            if (written / f"table={t}").exists():
                # The service's export is the group's to read, not to remove: copied,
                # then the service drops it; the file's own export is moved.
                (shutil.copytree if reply is not None else shutil.move)(
                    written / f"table={t}", to / f"table={t}")
        if reply is None:
            shutil.rmtree(written)
        else:
            control.ask(sock, {"op": "drop_export", "id": reply["id"]}, timeout_s=60.0)
    except OSError as exc:
        print(f"appliance export: written to {written} but not copied to {to}: {exc}",
              file=sys.stderr)
        return 1
    for t in tables:
        print(f"{t}: {done['tables'][t]} rows")
    print(f"exported from {source} to {to} ({done['bytes'] / 1e6:.1f} MB in "
          f"{done['seconds']:.1f} s); read it with DuckDB: SELECT * FROM read_parquet("
          f"'{to}/table=readings/**/*.parquet', hive_partitioning = true)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from appliance.features.spec import PipelineSpec
    from appliance.models.contract import ModelError, load_model
    from appliance.models.registry import Registry

    cfg = _load_config(args.config)
    spec_hash = PipelineSpec.from_config(cfg.pipeline).hash
    registry = Registry(cfg.models_dir(Path(args.db) if args.db else None))
    if args.action == "scores":
        return _models_scores(cfg, args)
    if args.action == "history":
        return _models_history(cfg, args)
    if args.action in ("show", "add", "promote", "shadow", "unshadow") and not args.name:
        print(f"appliance models {args.action} needs a model name", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            entries = registry.entries(spec_hash)
            if not entries:
                print(f"no models in {registry.directory}")
            for e in entries:
                # * the active model (champion), ~ a challenger (predicts, never publishes)
                mark = "*" if e.active else "~" if e.challenger else " "
                if e.model is None:
                    print(f"{mark} {e.name:32} REFUSED: {e.error}")
                else:
                    m = e.model
                    print(f"{mark} {e.name:32} {m.family:14} threshold {m.threshold:.3f}  "
                          f"trained {m.trained_from[:10]}..{m.trained_to[:10]}")
            print(f"serving: {_serving(cfg, registry)}")
            return 0
        if args.action == "show":
            model = load_model(registry.path_of(args.name), spec_hash)
            print(json.dumps({"name": model.name, "path": str(model.path),
                              "serving_now": _serving(cfg, registry),
                              "sha256": model.sha256, "family": model.family,
                              "spec_hash": model.spec_hash, "horizon_s": model.horizon_s,
                              "threshold": model.threshold, "features": model.feature_names,
                              "trained_from": model.trained_from,
                              "trained_to": model.trained_to,
                              "metrics": dict(model.metrics)}, indent=2))
            return 0
        if args.action == "add":
            model = registry.add(Path(args.name), spec_hash)
            print(f"added {model.name}; activate it with: appliance models promote {model.name}")
            return 0
        if args.action == "shadow":
            model = registry.shadow(args.name, cfg.model.max_challengers, spec_hash)
            print(f"challenger: {model.name}: predicted beside the active model, stored and "
                  f"scored, never published (a running service starts within "
                  f"{cfg.model.poll_s:g} s)")
            return 0
        if args.action == "unshadow":
            registry.unshadow(args.name)
            print(f"{args.name} is no longer a challenger")
            return 0
        if args.action == "promote":
            model = registry.promote(args.name, spec_hash)
        else:
            model = registry.rollback(spec_hash)
        print(f"active model: {model.name} (a running service switches within "
              f"{cfg.model.poll_s:g} s)")
        return 0
    except ModelError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        if args.action == "rollback":
            print(f"serving: {_serving(cfg, registry)}", file=sys.stderr)
        return 1


def _serving(cfg: config_mod.Config, registry: Registry) -> str:
    """Which model a service with this config would serve now, and why: the registry's
    active model, or the fallback (``[model] path`` or the packaged starter) when none is
    active or the active one is refused."""
    from appliance.models.contract import ModelError
    from appliance.models.watcher import serving_model

    try:
        serving = serving_model(cfg, registry)
    except ModelError as exc:
        return f"none: {exc}"
    fallback = f"[model] path {cfg.model.path}" if cfg.model.path else \
        "the starter model shipped in the package"
    if serving.refused_active:
        return f"{serving.model.name}, the fallback ({fallback}): the {serving.refused_active}"
    if registry.active_name():  # read without error: serving_model just did
        return f"{serving.model.name}, the registry's active model"
    return f"{serving.model.name}, the fallback ({fallback}): no model is active in the registry"


def _models_scores(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """``model_scores`` from the database; while the service holds the file, the same
    rows from its status file (the scores stage puts its last scores there)."""
    from appliance.console import fmt, table
    from appliance.models.scores import read_scores
    from appliance.storage.database import DatabaseBusy, open_offline

    db = _db_path(cfg, args.db)
    try:
        con = open_offline(db, read_only=True)
    except DatabaseBusy:
        status_path = db.with_name(db.name + ".status.json")
        try:
            entry = json.loads(status_path.read_text())["stages"].get("scores", {})
        except (OSError, ValueError, KeyError) as exc:
            print(f"appliance models scores: {db} is held by the running service and its "
                  f"status ({status_path}) is unreadable: {exc}", file=sys.stderr)
            return 1
        rows, source = entry.get("scores", []), f"the running service's status ({status_path})"
    except ValueError as exc:
        print(f"appliance models scores: {exc}", file=sys.stderr)
        return 1
    else:
        try:
            rows, source = read_scores(con), str(db)
        finally:
            con.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no scores yet in {source}: they are computed by the running service from "
              f"its predictions and the fault events it has")
        return 0
    headers = ["model", "role", "days", "faults", "caught", "recall", "lead (min)",
               "episodes", "false", "false/asset-week", "precision"]
    print(table(headers, [
        [r["model"], r["role"], str(r["window_days"]), fmt(r["faults"]), fmt(r["caught"]),
         fmt(r["recall"]),
         fmt(r["median_lead_s"] / 60 if r["median_lead_s"] is not None else None, 0),
         fmt(r["episodes"]), fmt(r["false_episodes"]), fmt(r["false_per_asset_week"]),
         fmt(r["episode_precision"])] for r in rows], text=["role"]))
    print(f"from {source}")
    return 0


def _models_history(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """The retraining loop's story (``model_history``), oldest first; while the service
    holds the database it is asked for the rows (on its control socket)."""
    from appliance.service import control
    from appliance.storage.database import DatabaseBusy, open_offline
    from appliance.storage.query import model_history

    db = _db_path(cfg, args.db)
    try:
        con = open_offline(db, read_only=True)
    except DatabaseBusy:
        sock = cfg.socket_path(Path(args.db) if args.db else None)
        try:
            answer = control.ask(sock, {"op": "history"}, 30.0)
        except OSError as exc:
            answer = {"ok": False, "error": str(exc)}
        if not answer or not answer.get("ok"):
            print(f"appliance models history: {db} is held by the running service and it did "
                  f"not answer on {sock}: {(answer or {}).get('error', 'no service there')}",
                  file=sys.stderr)
            return 1
        rows = answer["rows"]
    except ValueError as exc:
        print(f"appliance models history: {exc}", file=sys.stderr)
        return 1
    else:
        try:
            rows = model_history(con)
        finally:
            con.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no steps of the retraining loop yet")
    for r in rows:
        who = r["model"] or ""
        if r["other"]:
            who += f" (vs {r['other']})" if r["model"] else f"(champion {r['other']})"
        print(f"{r['ts'][:19]}  {r['event']:16} {who}: {r['reason']}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    """Ask the running service to train now (the loop's manual trigger)."""
    from appliance.clock import WallClock
    from appliance.service import requests

    cfg = _load_config(args.config)
    req = requests.submit(cfg.models_dir(Path(args.db) if args.db else None), "retrain",
                          {"reason": args.reason})
    answer = requests.wait(req, args.wait, WallClock())
    requests.forget(req)
    if answer is None:
        print(f"appliance retrain: the service did not answer within {args.wait:g} s; the "
              f"request stays in {req.parent} only while it is not answered — is the "
              f"service running with this registry?", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"appliance retrain: refused: {answer.get('error')}", file=sys.stderr)
        return 1
    print(f"training started (job {answer['job']}); follow it with: appliance models history")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    """A stored prediction recomputed and explained, with the readings behind it; read
    like ``appliance sql``: from the running service's socket, else the file."""
    from appliance.models import why
    from appliance.service import control
    from appliance.storage import query as sql
    from appliance.timefmt import parse_time

    cfg = _load_config(args.config)
    db = _db_path(cfg, args.db)
    sock = cfg.socket_path(Path(args.db) if args.db else None)
    limit, timeout_s = cfg.control.max_rows, cfg.control.timeout_s

    def ask(text: str) -> list[list[Any]]:
        reply = control.ask(sock, {"op": "sql", "query": text, "limit": limit,
                                   "timeout_s": timeout_s}, timeout_s + 30.0)
        if reply is None:
            return sql.main(db, text, limit, timeout_s).rows
        if not reply["ok"]:
            raise why.ExplainError(f"the service on {sock} answered: {reply['error']}")
        return reply["rows"]

    try:
        at = None if args.at is None else parse_time(args.at)
        story = why.explain(cfg, ask, args.asset, at, db)
    except (ValueError, OSError, sql.duckdb.Error) as exc:
        print(f"appliance explain: {exc}", file=sys.stderr)
        return 1
    print(why.text(story))
    return 0


def _db_path(cfg: config_mod.Config, db: str | None) -> Path:
    return Path(db) if db else cfg.resolve(cfg.storage.path)


def _cmd_import(args: argparse.Namespace) -> int:
    from appliance.console import Progress
    from appliance.importer.command import import_into
    from appliance.importer.names import parse_renames
    from appliance.importer.report import ImportRefused
    from appliance.storage.database import DatabaseBusy

    if not args.file and not args.faults:
        print("appliance import: name a readings file, --faults FILE, or both", file=sys.stderr)
        return 2
    cfg = _load_config(args.config)
    db = _db_path(cfg, args.db)
    try:
        reports = import_into(
            db, args.file, args.faults, asset=args.asset, line=args.line,
            max_future_s=cfg.limits.max_future_s, progress=Progress(enabled=not args.quiet),
            max_problems=args.show_bad, renames=parse_renames(args.rename),
            ignore=args.ignore, pipeline=cfg.pipeline)
    except DatabaseBusy as exc:
        print(f"appliance import: {exc}", file=sys.stderr)
        return 1
    except ImportRefused as exc:
        print(f"appliance import: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.summary())
    print(f"database: {db}")
    fitting = {k: v for r in reports for k, v in r.fitting.items()}
    if fitting:
        if not _fit_pipeline(args, fitting):
            return 2
    elif args.fit_pipeline:
        print("[pipeline] fits the data: nothing to write")
    # Done with problems (1): something of the files was not stored and nobody asked
    # for that, or nothing at all could be stored.
    losses = [loss for r in reports for loss in r.losses(args.allow_skipped)]
    if losses:
        print(f"appliance import: not everything was stored: {'; '.join(losses)} (--ignore "
              f"COL leaves a column out on purpose, --allow-skipped accepts skipped rows)",
              file=sys.stderr)
    # a readings file of which nothing was stored is a failure whatever the reason
    # (--allow-skipped accepts skipped rows, not an import that stored none)
    nothing = [why for r in reports if (why := r.nothing_stored())]
    for why in nothing:
        print(f"appliance import: {why}", file=sys.stderr)
    return 1 if losses or nothing else 0


def _fit_pipeline(args: argparse.Namespace, fitting: dict[str, Any]) -> bool:
    """``import --fit-pipeline``: write the values that fit the data into the config
    file (and check it still loads); without the option, say that it would."""
    from appliance.importer.command import toml_value, write_pipeline_keys

    keys = ", ".join(f"{k} = {toml_value(v)}" for k, v in fitting.items())
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if not args.fit_pipeline:
        print(f"to fit the data: [pipeline] {keys} (--fit-pipeline writes them into "
              f"{path or 'the --config file'})")
        return True
    if path is None:
        print("appliance import: --fit-pipeline writes into the config file: name it with "
              "--config FILE", file=sys.stderr)
        return False
    try:
        write_pipeline_keys(path, fitting)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError: nothing written
        print(f"appliance import: --fit-pipeline did not change {path}: {exc}",
              file=sys.stderr)
        return False
    print(f"wrote into {path}: [pipeline] {keys} (a model trained before this, and a "
          f"running service, use the old values: train again and restart)")
    return True


def _cmd_replay(args: argparse.Namespace) -> int:
    from appliance.console import Progress
    from appliance.importer.names import parse_renames
    from appliance.importer.replay import replay
    from appliance.importer.report import ImportRefused
    from appliance.timefmt import rfc3339

    cfg = _load_config(args.config)
    try:
        done = replay(args.file, cfg, speedup=args.speedup, shift_to_now=args.shift_to_now,
                      asset=args.asset, line=args.line, renames=parse_renames(args.rename),
                      ignore=args.ignore, progress=Progress(enabled=not args.quiet))
    except ImportRefused as exc:
        print(f"appliance replay: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, ValueError) as exc:
        print(f"appliance replay: {exc}", file=sys.stderr)
        return 1
    print(done.report.summary())
    shifted = f", event times shifted by {done.shift_s:+.0f} s" if done.shift_s else ""
    print(f"replayed {done.published} readings ({rfc3339(done.first_ts)} to "
          f"{rfc3339(done.last_ts)}{shifted}) to {cfg.mqtt.host}:{cfg.mqtt.port}, each "
          f"acknowledged by the broker; replaying the file again stores them again (the "
          f"service deduplicates MQTT redeliveries, not readings)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from appliance.console import Progress
    from appliance.storage.database import DatabaseBusy
    from appliance.training import command

    cfg = _load_config(args.config)
    families = list(config_mod.FAMILIES) if args.family == "both" else [args.family]
    db = _db_path(cfg, args.db)
    if args.faults and not args.readings:
        print("appliance train: --faults goes with --readings", file=sys.stderr)
        return 2
    try:
        if args.readings:
            trained = command.train_from_export(
                cfg, args.readings, args.faults, db, families,
                Path(args.out_dir) if args.out_dir else None,
                Progress(enabled=not args.quiet), seed=args.seed)
        else:
            trained = command.train_from_database(
                cfg, db, families,
                Path(args.out_dir) if args.out_dir else None,
                Progress(enabled=not args.quiet), seed=args.seed)
    except DatabaseBusy as busy:
        try:
            trained = command.train_beside_service(
                cfg, db, families, busy, Path(args.out_dir) if args.out_dir else None,
                Progress(enabled=not args.quiet), seed=args.seed)
        except DatabaseBusy as exc:
            print(f"appliance train: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"appliance train: cannot train: {exc}", file=sys.stderr)
            return 1
    except ValueError as exc:
        print(f"appliance train: cannot train: {exc}", file=sys.stderr)
        return 1
    print(command.summary_table(trained))
    print(f"validation metrics at the chosen threshold (budget "
          f"{cfg.alerts.max_false_per_asset_week:g} false alarms per asset-week)")
    for note in trained[0].result.notes:
        print(f"note: {note}")
    best = command.recommended(trained)
    if best is None:
        print("no model is recommended: none is usable (the reasons are above); they are "
              "in the registry as candidates, but do not promote one")
        return 0
    # The command must find the registry train used and check the model against the
    # same [pipeline]: the same config, and the database whose folder holds "models".
    promote = ["appliance", "models", "promote", best.name]
    if args.config:
        promote += ["--config", args.config]
    if args.db:
        promote += ["--db", args.db]
    print(f"recommended: {best.name} ({best.family}); activate it with: "
          f"{shlex.join(promote)}")
    if cfg.models_dir(db) != cfg.models_dir():
        print(f"note: the registry is {cfg.models_dir(db)}, beside {db}; a service run "
              f"with this config reads {cfg.models_dir()} (set [model] dir to share one)")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from appliance.training import backtest, backtest_report, walk_forward

    cfg = _load_config(args.config)
    if (args.faults or args.rename or args.ignore) and not args.readings:
        print("appliance backtest: --faults, --rename and --ignore go with --readings",
              file=sys.stderr)
        return 2
    if args.step is not None and not args.walk_forward:
        print("appliance backtest: --step goes with --walk-forward", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if args.walk_forward:
        # the static backtest in DIR/static, the walks and the side-by-side report in DIR
        def write_walks(so_far: walk_forward.WalkForwardResult) -> None:
            assert out is not None
            backtest_report.write_report(so_far.static, out / "static")
            walk_forward.write_report(so_far, out)

        result = _run_backtest(args, cfg, out, walk_forward.main, write_walks,
                               lambda r: r.static.progress_text(), step_s=args.step)
        if isinstance(result, int):
            return result
        print(walk_forward.terminal_table(result))
        if out is not None:
            print(f"report: {out / 'report.md'} (the static backtest: "
                  f"{out / 'static' / 'report.md'})")
        return 0

    def write_static(so_far: backtest.BacktestResult) -> None:
        # The report is rewritten as each variant finishes: one that stops later
        # (killed, or a variant that cannot train) leaves the earlier ones.
        assert out is not None
        backtest_report.write_report(so_far, out)

    result = _run_backtest(args, cfg, out, backtest.main, write_static,
                           lambda r: r.progress_text())
    if isinstance(result, int):
        return result
    print(backtest.terminal_table(result))
    if args.out:
        print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _run_backtest(args: argparse.Namespace, cfg: config_mod.Config, out: Path | None,
                  run: Any, write: Any, progress_text: Any, **extra: Any) -> Any:
    """Run ``run`` (``backtest.main`` or ``walk_forward.main``) with the command's
    history options, writing the report as each variant finishes; the result, or the
    exit code of a refusal (each printed as one line)."""
    from appliance.console import Progress
    from appliance.importer.names import parse_renames
    from appliance.importer.report import ImportRefused
    from appliance.storage.database import DatabaseBusy

    written: list[Any] = []

    def write_so_far(so_far: Any) -> None:
        write(so_far)
        written.append(so_far)

    try:
        return run(
            cfg, [n.strip() for n in args.variants.split(",") if n.strip()],
            train_until=args.train_until, test_until=args.test_until, out_dir=out,
            db=None if args.readings else _db_path(cfg, args.db),
            readings=args.readings, faults=args.faults, asset=args.asset, line=args.line,
            renames=parse_renames(args.rename), ignore=args.ignore, since=args.since,
            progress=Progress(enabled=not args.quiet), seed=args.seed,
            on_variant=write_so_far if out is not None else None, **extra)
    except DatabaseBusy as exc:
        print(f"appliance backtest: {exc}", file=sys.stderr)
        return 1
    except ImportRefused as exc:
        print(f"appliance backtest: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"appliance backtest: {exc}", file=sys.stderr)
        if written and out is not None:
            print(f"appliance backtest: {progress_text(written[-1])}; their results: "
                  f"{out / 'report.md'}", file=sys.stderr)
        return 1


def _cmd_bench(args: argparse.Namespace) -> int:
    assets = args.assets if args.assets is not None else 1000
    if args.what == "kernels":
        from appliance.devtools.bench import kernels

        return kernels.run(json_output=args.json)
    if args.what == "memory":
        from appliance.devtools.bench import memory

        return memory.run(json_output=args.json, assets=assets)
    if args.what == "drift":
        from appliance.devtools.bench import drift

        return drift.run(json_output=args.json, assets=assets)
    if args.what == "sql":
        from appliance.devtools.bench import sql_load

        sql_load.run(messages=args.messages or 200_000, rows=args.rows,
                     memory_limit=args.memory_limit, json_output=args.json)
        return 0
    if args.what == "capacity":
        from appliance.devtools.bench import capacity

        if args.payload == "both":
            print("appliance bench capacity: --payload is reading or batch", file=sys.stderr)
            return 2
        return capacity.run(args.config, args.assets, args.sensors, args.hz, args.payload,
                            args.seconds, json_output=args.json)
    if args.what == "growth":
        from appliance.devtools.bench import growth

        return growth.run(json_output=args.json, assets=assets, hours=args.hours)
    if args.what == "tick":
        from appliance.devtools.bench import tick

        return tick.run(json_output=args.json, assets=assets, ticks=args.ticks)
    if args.what == "train":
        from appliance.devtools.bench import train

        if args.split_day >= args.days and not args.no_backtest:
            print("appliance bench train: --split-day must be before --days (or give "
                  "--no-backtest)", file=sys.stderr)
            return 2
        train.run(args.days, args.assets if args.assets is not None else 10, args.drift,
                  args.split_day, Path(args.work) if args.work else None, args.json, args.seed,
                  not args.quiet, backtest=not args.no_backtest)
        return 0
    from appliance.devtools.bench import ingest

    return ingest.run(json_output=args.json, messages=args.messages or ingest.MESSAGES,
                      payload=args.payload or "both",
                      sensors=args.sensors or ingest.BATCH_SENSORS)


def _add_name_options(p: argparse.ArgumentParser) -> None:
    """``--rename`` and ``--ignore``: for every command that reads history files."""
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="store the line, asset or sensor name OLD as NEW (repeatable); "
                   "other names a topic cannot carry are sanitised (see README)")
    p.add_argument("--ignore", action="append", default=[], metavar="COL",
                   help="leave the column COL out on purpose (repeatable)")


DESCRIPTION = """\
An edge appliance for predictive maintenance: it reads sensor readings from MQTT,
stores them in DuckDB, computes features, predicts each asset's probability of a
fault within the horizon with an ONNX model, and publishes alerts on MQTT.

Start here:
  appliance demo                      a private broker, a simulated line and the
                                      service, with a live view
  appliance run --config FILE         the service (systemd runs this)
  appliance status                    is it running, and how is each stage doing
  appliance import FILE --faults F    bring your own history and fault log
  appliance train                     train candidate models on the stored history
  appliance models promote NAME       serve a model (a running service switches in seconds)
  appliance sql "SELECT ..."          query the database, also while it runs

Each command has its own --help."""

#: The --config option's help, the same on every command that reads the config.
CONFIG_HELP = f"the config file (default {DEFAULT_CONFIG} if it exists, else the built-in " \
              f"defaults)"
DB_HELP = "the database file (default: [storage] path of the config)"


def _command(sub: Any, name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
    """A sub-command: ``summary`` in the command list, with ``details`` in its --help."""
    return sub.add_parser(name, help=summary, description=f"{summary}. {details}".strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at debug level (the default is info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "run", "run the service",
                 "MQTT in, DuckDB, features, the model, MQTT alerts, until SIGTERM or "
                 "Ctrl-C (then it drains: every reading received is stored).")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--check-config", action="store_true",
                   help="check the config and load the model that would serve, then exit "
                   "(0: fine; 2: what is wrong) without starting anything")
    p.set_defaults(func=_cmd_run)

    p = _command(sub, "demo", "a private broker, a simulated line and the service, with a "
                 "live view", "Each run starts afresh in its --data-dir; Ctrl-C stops it.")
    p.add_argument("--data-dir", default="data",
                   help="the demo's own folder for its database and models, emptied at each "
                   "start (default data)")
    p.add_argument("--assets", type=int, default=8, help="simulated assets (default 8)")
    p.add_argument("--speedup", type=float, default=60.0,
                   help="event time runs this many times faster than the clock (default 60)")
    p.add_argument("--seed", type=int, default=1,
                   help="the simulation's random seed: the same seed, the same line")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: at Ctrl-C)")
    p.add_argument("--drift-at", type=float, default=None, metavar="MIN",
                   help="recalibrate every asset's lube_temp sensor (+10 °C) MIN minutes of "
                   "event time in: the drift stage reports it, the models keep predicting")
    p.add_argument("--host", help="use this broker instead of starting a private one")
    p.add_argument("--port", type=int, default=1883, help="with --host: its port (1883)")
    p.set_defaults(func=_cmd_demo)

    p = _command(sub, "simulate", "publish a simulated line over MQTT, or write its history "
                 "as files", "Assets with five sensors each that degrade towards faults; "
                 "Ctrl-C stops publishing.")
    p.add_argument("--host", default="127.0.0.1", help="the broker (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="the broker's port (default 1883)")
    p.add_argument("--assets", type=int, default=10, help="simulated assets (default 10)")
    p.add_argument("--hz", type=float, default=1.0,
                   help="readings per second per sensor, in event time (default 1)")
    p.add_argument("--speedup", type=float, default=1.0,
                   help="event time runs this many times faster than the clock (default 1); "
                   "a service takes readings at most [limits] max_future_s ahead of its clock")
    p.add_argument("--seed", type=int, default=1,
                   help="the simulation's random seed: the same seed, the same line")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds of the clock (default: at Ctrl-C)")
    p.add_argument("--to-files", metavar="DIR",
                   help="write DIR/readings.csv and DIR/faults.csv (for appliance import) "
                   "instead of publishing; the size is said first")
    p.add_argument("--days", type=float, default=1.0,
                   help="with --to-files: days of history (default 1)")
    p.add_argument("--yes", action="store_true",
                   help=f"with --to-files: write a readings file larger than "
                   f"{TO_FILES_CONFIRM_MB:g} MB (refused without it; the size is estimated "
                   f"first)")
    p.set_defaults(func=_cmd_simulate)

    p = _command(sub, "status", "is the service running: stage health, queue depths, rates, "
                 "last errors", "Read from the status file the service writes beside its "
                 "database; exits 0 when it is running and reporting, 1 when degraded, 3 "
                 "when stopped or not reporting.")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="the whole status as JSON")
    p.set_defaults(func=_cmd_status)

    p = _command(sub, "sql", "read-only SQL on the database, also while the service runs",
                 "The running service answers on its control socket; without one the file "
                 "is opened read-only. Only one SELECT is allowed.")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="table (default), csv, json (one object a line), parquet (needs --out)")
    p.add_argument("--out", metavar="FILE", help="write the result here instead of stdout")
    p.add_argument("--limit", type=int, metavar="N",
                   help="rows at most (default and ceiling: [control] max_rows, 10,000)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="interrupt the query after S seconds (default and ceiling: "
                   "[control] timeout_s, 30)")
    p.add_argument("query", help="one SQL query, e.g. \"SELECT count(*) FROM readings\"")
    p.set_defaults(func=_cmd_sql)

    p = _command(sub, "explain", "why an asset's prediction was high",
                 "Each sensor that pushed it up, which way it moved, its value against its "
                 "normal range over the feature's window, with the readings behind it.")
    p.add_argument("asset", help="the asset, as in its topic (plant/<line>/<asset>/...)")
    p.add_argument("--at", metavar="TS", help="the prediction at or before this time "
                   "(RFC 3339 or Unix seconds; default: the latest)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.set_defaults(func=_cmd_explain)

    p = _command(sub, "export", "tables as hive-partitioned Parquet files",
                 "DIR/table=readings/date=.../...parquet, from the running service or "
                 "the file.")
    p.add_argument("--since", required=True, metavar="TS",
                   help="first time exported (RFC 3339 or Unix seconds)")
    p.add_argument("--until", metavar="TS", help="exported up to, not including, this time")
    p.add_argument("--to", required=True, metavar="DIR", help="the export's folder")
    p.add_argument("--tables", default="readings,faults,predictions,alerts",
                   help="comma-separated (default readings,faults,predictions,alerts)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.set_defaults(func=_cmd_export)

    p = _command(sub, "models", "the model registry: which model serves, and changing it",
                 "list: the models and which one serves now, and why; show NAME: one "
                 "model's metadata; add FILE: check a model file and copy it in; promote "
                 "NAME: serve it (the running service switches within [model] poll_s); "
                 "rollback: serve the previous one again; shadow/unshadow NAME: predict "
                 "beside the served model without publishing; scores: each model's live "
                 "event scores; history: the retraining loop's steps.")
    p.add_argument("action", choices=["list", "show", "add", "promote", "rollback", "shadow",
                                      "unshadow", "scores", "history"],
                   help="what to do (see above)")
    p.add_argument("name", nargs="?",
                   help="model name (show, promote, shadow, unshadow) or file (add)")
    p.add_argument("--json", action="store_true", help="scores, history: as JSON")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help="the registry is \"models\" beside this database file, "
                   "as for `appliance train --db` (unless [model] dir is set)")
    p.set_defaults(func=_cmd_models)

    p = _command(sub, "retrain", "ask the running service to train a candidate now",
                 "It is validated, shadowed and promoted as the retraining loop does.")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help="the registry is \"models\" beside this database file")
    p.add_argument("--reason", default="appliance retrain", help="recorded with the trigger")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the service to answer (default 30)")
    p.set_defaults(func=_cmd_retrain)

    p = _command(sub, "import", "store a history of readings (CSV or Parquet) and a fault "
                 "log in the database", "Bad rows are reported with their line numbers; "
                 "exits 1 when something was not stored, 2 when a file is refused whole. "
                 "Stop the service first: it holds the database.")
    p.add_argument("file", nargs="?", help="readings: long form (ts, asset, sensor, value, "
                   "optional line) or wide form (a time column, one column per sensor)")
    p.add_argument("--faults", metavar="FAULTS.csv",
                   help="fault log: asset, ts_start, ts_end, code (optional line)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--asset", help="the asset of a file without an asset column")
    p.add_argument("--line", default="line1", help="the line of a file without a line "
                   "column (default line1)")
    p.add_argument("--show-bad", type=int, default=20, metavar="N",
                   help="print the first N bad rows with their line numbers (default 20)")
    _add_name_options(p)
    p.add_argument("--allow-skipped", action="store_true",
                   help="exit 0 even when bad or repeated rows were skipped (still counted)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--fit-pipeline", action="store_true",
                   help="write the [pipeline] values that fit the data's interval between "
                        "readings (cadence_s, hampel_window_s, max_gap_s, windows_s) into "
                        "the config file")
    p.set_defaults(func=_cmd_import)

    p = _command(sub, "replay", "publish a recorded readings file over MQTT into a running "
                 "service, event times kept",
                 "Each reading is published once at QoS 1; replaying a file again stores it "
                 "again (the service deduplicates MQTT redeliveries, not readings).")
    p.add_argument("file", help="readings, CSV or Parquet, in a form appliance import reads")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--speedup", type=float, metavar="X", help="X event seconds per wall "
                   "second (default: as fast as the broker acknowledges)")
    p.add_argument("--shift-to-now", action="store_true",
                   help="move every event time by one offset so the last reading lands at "
                        "the replay's end (else a file outside [limits] max_future_s / "
                        "max_past_s of now is refused)")
    p.add_argument("--asset", help="the asset of a file without an asset column")
    p.add_argument("--line", default="line1", help="the line of a file without a line "
                   "column")
    _add_name_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_replay)

    p = _command(sub, "train", "train candidate models on the stored history",
                 "Each family's model is validated, added to the registry and not "
                 "promoted: appliance models promote NAME serves it. While the service runs "
                 "it trains on a snapshot the service gives.")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--family", choices=[*config_mod.FAMILIES, "both"], default="both",
                   help="model family (default both)")
    p.add_argument("--out-dir", help="also keep the ONNX files and a JSON summary here")
    p.add_argument("--readings", metavar="GLOB", help="train from an export instead of the "
                   "database (appliance export; e.g. 'DIR/**'): its table=readings files, and "
                   "its table=faults unless --faults is given; the registry and the records "
                   "are still those of --db / the config")
    p.add_argument("--faults", metavar="GLOB", help="with --readings: the fault events' Parquet "
                   "files (columns ts, line, asset, state, code, source)")
    p.add_argument("--seed", type=int, default=0,
                   help="the fit's random seed: the same seed and data, the same model")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_train)

    p = _command(sub, "backtest", "compare pipeline variants on the stored history",
                 "Train on the start of the history, test on the rest, and report each "
                 "variant's faults caught, false alarms and lead time.")
    p.add_argument("--variants", default="full,no_filter,static_threshold",
                   help="comma-separated variant names (default full,no_filter,"
                   "static_threshold; more as [variants.NAME] in the config)")
    p.add_argument("--train-until", metavar="TS",
                   help="end of the training window (RFC 3339 or Unix seconds; default: "
                   "where three quarters of the data lie before it)")
    p.add_argument("--since", metavar="TS", help="leave out the history before this time "
                   "(e.g. an old import far from the live data)")
    p.add_argument("--test-until", metavar="TS", help="end of the test window (default: "
                   "the end of the history)")
    p.add_argument("--out", metavar="DIR", help="write report.md, plots and per variant "
                   "DIR/<variant>/predictions.parquet here")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--readings", metavar="FILE", help="history from this readings file "
                   "instead of the database")
    p.add_argument("--faults", metavar="FILE", help="the fault log that goes with --readings")
    p.add_argument("--asset", help="with --readings: the asset of a file without an asset "
                   "column")
    p.add_argument("--line", default="line1", help="with --readings: the line of a file "
                   "without a line column")
    _add_name_options(p)
    p.add_argument("--walk-forward", action="store_true",
                   help="also replay the retraining loop ([retrain]) over the test window "
                   "by event time, from each model variant's static model; with --out: "
                   "DIR/<variant>/predictions.parquet and loop_events.jsonl, the static "
                   "backtest in DIR/static, both side by side in DIR/report.md")
    p.add_argument("--step", type=float, metavar="SECONDS",
                   help="with --walk-forward: how often the loop looks, in event time "
                   "(default [retrain] check_every_s; at least one cadence)")
    p.add_argument("--seed", type=int, default=0,
                   help="the fits' random seed: the same seed and data, the same report")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_backtest)

    p = _command(sub, "bench", "measure this machine: the numbers in the README's "
                 "benchmarks", "kernels: the feature kernels; ingest: readings through a "
                 "private broker into DuckDB, one reading per message and batches of "
                 "--sensors; memory: the service's memory per asset; "
                 "drift: the drift stage; sql: queries beside the store; growth: the "
                 "database's size over time; capacity: the whole service at a mix of assets, "
                 "sensors and rate (the highest rate sustained, latency, CPU per stage, RSS, "
                 "database growth); tick: one tick of a line through features, predict "
                 "(explanations, two challengers) and alert, per stage; train: import and "
                 "training (its wall time and peak RSS) and a backtest on a simulated "
                 "history of 1-minute readings.")
    p.add_argument("what", choices=["kernels", "ingest", "memory", "drift", "sql", "growth",
                                    "capacity", "tick", "train"],
                   help="which benchmark (see above)")
    p.add_argument("--json", action="store_true", help="the results as JSON")
    p.add_argument("--messages", type=int,
                   help="ingest: messages of each form to send (default 50,000); sql: "
                   "messages to send (default 200,000)")
    p.add_argument("--payload", choices=["reading", "batch", "both"],
                   help="ingest: one reading per message, batches of --sensors readings, or "
                   "both and their ratio (default both); capacity: one reading per message "
                   "or one batch per asset and tick (default reading)")
    p.add_argument("--rows", type=int, default=10_000_000,
                   help="sql: readings in the database the heavy query aggregates")
    p.add_argument("--memory-limit", default="32MB",
                   help="sql: the service's [storage] memory_limit (default 32MB)")
    p.add_argument("--ticks", type=int, default=200, help="tick: ticks timed")
    p.add_argument("--assets", type=int,
                   help="memory, drift, growth, capacity, tick: assets to simulate (default 1000; "
                   "the config holds no asset count); train: assets of the history "
                   "(default 10)")
    p.add_argument("--sensors", type=int,
                   help="capacity: sensors per asset (default: those the config's "
                   "[pipeline.sensors] names, else 5); ingest: readings per batch message "
                   "(default 10)")
    p.add_argument("--hz", type=float,
                   help="capacity: readings per sensor per second (default 1; the config "
                   "holds no reading rate)")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="capacity: the span measured at the mix (each faster step a third)")
    p.add_argument("--config", help="capacity: the service's settings (its broker and "
                   "database are replaced by private ones): topic prefix, QoS, limits, "
                   "pipeline, model, and the sensors its [pipeline.sensors] names; flags "
                   "override")
    p.add_argument("--hours", type=float, default=3.0,
                   help="growth: hours of event time written (then as many under retention)")
    p.add_argument("--days", type=float, default=45.0,
                   help="train: days of 1-minute readings simulated")
    p.add_argument("--split-day", type=float, default=30.0,
                   help="train: the backtest trains on days before it, tests on the rest; "
                   "the lubricant temperature is recalibrated there")
    p.add_argument("--drift", type=float, default=4.0,
                   help="train: the recalibration's offset at --split-day, °C")
    p.add_argument("--seed", type=int, default=11,
                   help="train: the simulation's and the fits' random seed")
    p.add_argument("--work", metavar="DIR",
                   help="train: keep the files (history, database, models, backtest) here")
    p.add_argument("--no-backtest", action="store_true",
                   help="train: only import and training")
    p.add_argument("--quiet", action="store_true", help="train: no progress on stderr")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logsetup.configure(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a short output fails on a closed pipe only here, not at print
        return code
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how a person stops a command (simulate, a long import): not a crash
        # (the service handles SIGINT itself and stops cleanly)
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``appliance status | head``): nothing is left to say, and
        # the interpreter's last flush of stdout must not fail again on the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
