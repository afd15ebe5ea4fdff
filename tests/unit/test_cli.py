"""The command line as a user meets it: version, config checks, models, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import __version__
from appliance.cli import main
from appliance.models.contract import STARTER_MODEL


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"appliance {__version__}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_check_config_accepts_a_minimal_file_outside_the_checkout(tmp_path, capsys):
    # the README's minimal config, away from the repository: the packaged starter serves
    cfg = write(tmp_path, f'[mqtt]\nhost = "127.0.0.1"\nport = 1883\n'
                          f'[storage]\npath = "{tmp_path / "a.duckdb"}"\n')
    assert main(["run", "--config", str(cfg), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "starter-" in out
    assert not (tmp_path / "a.duckdb").exists()  # checking starts nothing


def _retrained_for(spec_hash: str, path: Path) -> Path:
    """The starter model as if trained under another pipeline (its spec hash replaced)."""
    import onnx

    from appliance.models.contract import KEY_SPEC_HASH

    model = onnx.load(str(STARTER_MODEL))
    for prop in model.metadata_props:
        if prop.key == KEY_SPEC_HASH:
            prop.value = spec_hash
    onnx.save(model, str(path))
    return path


def test_check_config_checks_the_promoted_model_not_the_fallback(tmp_path, capsys):
    from appliance import config
    from appliance.service.runner import spec_hash

    # a changed [pipeline]: the starter no longer fits, a model trained for it was promoted
    cfg = write(tmp_path, f'[storage]\npath = "{tmp_path / "a.duckdb"}"\n'
                          f'[pipeline]\ncadence_s = 20\n')
    assert main(["run", "--config", str(cfg), "--check-config"]) == 2
    assert "spec" in capsys.readouterr().err
    trained = _retrained_for(spec_hash(config.load(cfg)), tmp_path / "retrained.onnx")
    assert main(["models", "add", str(trained), "--config", str(cfg)]) == 0
    name = capsys.readouterr().out.split()[1].rstrip(";")
    assert main(["models", "promote", name, "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert f"model {name}" in out and "starter-" not in out


def test_run_refuses_to_start_without_a_model_in_one_line(tmp_path, capsys):
    cfg = write(tmp_path, f'[storage]\npath = "{tmp_path / "a.duckdb"}"\n'
                          f'[model]\npath = "nowhere.onnx"\n')
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no model can serve" in err and "nowhere.onnx" in err and "required = false" in err
    assert not (tmp_path / "a.duckdb").exists()  # refused before opening anything


def test_check_config_passes_without_a_model_when_none_is_required(tmp_path, capsys):
    cfg = write(tmp_path, '[model]\npath = "nowhere.onnx"\nrequired = false\n')
    assert main(["run", "--config", str(cfg), "--check-config"]) == 0
    assert "model none" in capsys.readouterr().out


def test_check_config_names_the_file_and_the_bad_key(tmp_path, capsys):
    cfg = write(tmp_path, "[mqtt]\nhost = 1\n")
    assert main(["run", "--config", str(cfg), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "[mqtt] host" in err and "expected a string" in err


def test_check_config_refuses_a_missing_model(tmp_path, capsys):
    cfg = write(tmp_path, '[model]\npath = "nowhere.onnx"\n')
    assert main(["run", "--config", str(cfg), "--check-config"]) == 2
    assert "nowhere.onnx: model file not found" in capsys.readouterr().err


def test_models_add_promote_rollback_list(tmp_path, capsys):
    cfg = write(tmp_path, f'[model]\ndir = "{tmp_path / "models"}"\n')
    assert main(["models", "add", str(STARTER_MODEL), "--config", str(cfg)]) == 0
    name = capsys.readouterr().out.split()[1].rstrip(";")
    assert main(["models", "promote", name, "--config", str(cfg)]) == 0
    assert f"active model: {name}" in capsys.readouterr().out
    (tmp_path / "models" / "broken.onnx").write_bytes(b"not onnx")
    assert main(["models", "list", "--config", str(cfg)]) == 0
    listing = capsys.readouterr().out
    assert f"* {name}" in listing and "broken" in listing and "REFUSED" in listing
    assert main(["models", "promote", "broken", "--config", str(cfg)]) == 1
    assert "refused" in capsys.readouterr().err
    assert main(["models", "rollback", "--config", str(cfg)]) == 1  # nothing earlier
    assert main(["models", "show", name, "--config", str(cfg)]) == 0
    assert '"threshold"' in capsys.readouterr().out


def test_sql_is_read_only(tmp_path, capsys):
    from appliance.storage.database import connect

    db = tmp_path / "a.duckdb"
    connect(db)[0].close()
    assert main(["sql", "--db", str(db), "SELECT count(*) AS n FROM readings"]) == 0
    assert capsys.readouterr().out.split() == ["n", "-", "0"]
    # refused before running (exit 2, the reason named); tests/unit/test_sql_export.py
    # has one test per kind of refusal
    assert main(["sql", "--db", str(db), "DELETE FROM faults"]) == 2
    assert "refused: DELETE statement" in capsys.readouterr().err
    assert main(["sql", "--db", str(db),
                 f"COPY faults TO '{tmp_path / 'x.csv'}'"]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_status_shows_stage_health_and_each_stage_s_own_counters(tmp_path, capsys):
    import json
    import time

    cfg = write(tmp_path, f'[storage]\npath = "{tmp_path / "a.duckdb"}"\n')
    common = {"state": "running", "restarts": 0, "last_error": "", "errors": 0,
              "rate_per_s": 12.5}
    (tmp_path / "a.duckdb.status.json").write_text(json.dumps({
        "state": "running", "version": __version__, "ts": time.time(), "mqtt_connected": True,
        "model": "starter-x", "queues": {"store": 0},
        "stages": {"store": {**common, "processed": 10},
                   "features": {**common, "processed": 9, "late_readings": 2,
                                "invalid_readings": 1, "stuck_sensors": 3}}}))
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "features: late_readings 2, invalid_readings 1, stuck_sensors 3" in out
    assert "store:" not in out                 # nothing of its own to show


def test_status_exits_non_zero_and_says_why_when_degraded(tmp_path, capsys):
    import json
    import time

    cfg = write(tmp_path, f'[storage]\npath = "{tmp_path / "a.duckdb"}"\n')
    stage = {"state": "failed", "restarts": 5, "last_error": "RuntimeError: x", "errors": 6,
             "processed": 3}
    (tmp_path / "a.duckdb.status.json").write_text(json.dumps({
        "state": "degraded", "problems": ["predict failed"], "version": __version__,
        "ts": time.time(), "mqtt_connected": True, "model": "starter-x", "queues": {},
        "stages": {"predict": stage}}))
    assert main(["status", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("state degraded") and "!! predict failed" in out


def _train(tmp_path: Path, capsys, **history) -> tuple[int, str, Path, Path]:
    """Import a generated 600 s line into a database away from the config's, train on it."""
    from tests.support import lines

    readings, faults = lines.write_files(
        lines.histories(assets=3, days=8.0, interval_s=600.0, seed=1, **history),
        tmp_path / "files")
    cfg = write(tmp_path, f'[storage]\npath = "{tmp_path / "service.duckdb"}"\n'
                          '[pipeline]\ncadence_s = 600\n[training]\nmax_iter = 20\n')
    (tmp_path / "elsewhere").mkdir()
    db = tmp_path / "elsewhere" / "line.duckdb"
    assert main(["import", str(readings), "--faults", str(faults), "--db", str(db),
                 "--quiet"]) == 0
    capsys.readouterr()
    code = main(["train", "--config", str(cfg), "--db", str(db), "--quiet"])
    return code, capsys.readouterr().out, cfg, db


def _runs(db: Path) -> list[tuple[str, dict]]:
    import json

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT r.model, r.detail, m.metrics FROM training_runs r "
                           "JOIN models m ON m.name = r.model ORDER BY r.model").fetchall()
    finally:
        con.close()
    return [(name, {**json.loads(detail), "metrics": json.loads(metrics)})
            for name, detail, metrics in rows]


def test_train_recommends_the_best_usable_model_with_a_command_that_works(tmp_path, capsys):
    import shlex

    code, out, cfg, db = _train(tmp_path, capsys)
    assert code == 0, out
    # 600 s readings on a 600 s grid: the default 120 s Hampel window holds one point.
    assert ("note: hampel_window_s = 120 holds 1 point of the 600 s grid (cadence_s) for "
            "sensors good, noise: the Hampel filter needs 3 and does nothing; set "
            "hampel_window_s >= 1800") in out
    line = next(ln for ln in out.splitlines() if ln.startswith("recommended: "))
    name = line.split()[1]
    command = line.split("activate it with: ")[1]
    assert command == (f"appliance models promote {name} --config {shlex.quote(str(cfg))} "
                       f"--db {shlex.quote(str(db))}")
    runs = dict(_runs(db))
    assert runs[name]["usable"] is True and runs[name]["problems"] == []
    assert runs[name]["metrics"]["usable"] is True
    assert runs[name]["pipeline_notes"] == runs[name]["metrics"]["pipeline_notes"] != []
    # The models are beside the database trained on, not in the config's registry: the
    # command without --db does not find them, the printed one does.
    assert f"a service run with this config reads {tmp_path / 'models'}" in out
    assert main(["models", "promote", name, "--config", str(cfg)]) == 1
    capsys.readouterr()
    assert main(shlex.split(command)[1:]) == 0
    assert f"active model: {name}" in capsys.readouterr().out


def test_train_recommends_no_model_when_none_is_usable(tmp_path, capsys):
    # Every fault in the first half: validation, the last quarter, holds none.
    code, out, _cfg, db = _train(tmp_path, capsys, faults=3,
                                 faults_between=(3 * 3600.0, 3 * 86400.0))
    assert code == 0, out
    for family in ("gbt", "logistic"):
        assert (f"{family}: not usable: the validation window held no faults: the "
                f"threshold (") in out
    assert "activate it with" not in out and "models promote" not in out
    assert "no model is recommended: none is usable" in out
    for _name, run in _runs(db):
        assert run["usable"] is False and run["metrics"]["usable"] is False
        assert run["problems"][0].startswith("the validation window held no faults")


def test_train_recommends_no_model_when_none_catches_a_validation_fault(tmp_path, capsys):
    # The sensor that announces faults stops doing so after five of the eight days: the
    # validation window (the last quarter) has faults and nothing that foretells them.
    code, out, _cfg, db = _train(tmp_path, capsys, quiet_after=5 * 86400.0)
    assert code == 0, out
    for family in ("gbt", "logistic"):
        assert f"{family}: not usable: caught 0 of " in out
    assert "activate it with" not in out and "models promote" not in out
    assert "no model is recommended: none is usable" in out
    for _name, run in _runs(db):
        assert run["usable"] is False
        assert any(p.startswith("caught 0 of ") for p in run["problems"])


def _status_file(tmp_path: Path, age_s: float, state: str = "running") -> Path:
    """A config whose database has a status file written ``age_s`` seconds ago."""
    import json
    import time

    db = tmp_path / "a.duckdb"
    cfg = write(tmp_path, f'[storage]\npath = "{db}"\n[status]\ninterval_s = 5\n')
    snap = {"state": state, "ts": time.time() - age_s, "version": __version__,
            "model": "m", "mqtt_connected": True, "problems": [], "notes": [],
            "queues": {}, "stages": {}}
    (tmp_path / "a.duckdb.status.json").write_text(json.dumps(snap))
    return cfg


def test_status_of_a_dead_service_says_not_reporting(tmp_path, capsys):
    # 68 s old with a 5 s interval: the service stopped writing it long ago
    assert main(["status", "--config", str(_status_file(tmp_path, 68.0))]) == 3
    out = capsys.readouterr().out
    assert out.startswith("state not reporting (as of 68 s ago)"), out
    assert "running" not in out.splitlines()[0]
    assert main(["status", "--json", "--config", str(_status_file(tmp_path, 68.0))]) == 3
    assert '"state": "not reporting"' in capsys.readouterr().out


def test_status_of_a_live_service_says_running(tmp_path, capsys):
    assert main(["status", "--config", str(_status_file(tmp_path, 1.0))]) == 0
    assert capsys.readouterr().out.startswith("state running (as of 1 s ago)")
    # stopped cleanly: offline however old, not running
    assert main(["status", "--config", str(_status_file(tmp_path, 68.0, "offline"))]) == 3
    assert capsys.readouterr().out.startswith("state offline (as of 68 s ago)")


def test_models_commands_say_which_model_serves_and_why(tmp_path, capsys):
    import json

    from appliance.models.registry import Registry

    cfg = write(tmp_path, f'[model]\ndir = "{tmp_path / "models"}"\n')
    assert main(["models", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "serving: starter-" in out and "no model is active in the registry" in out
    assert main(["models", "add", str(STARTER_MODEL), "--config", str(cfg)]) == 0
    name = capsys.readouterr().out.split()[1].rstrip(";")
    assert main(["models", "promote", name, "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["models", "show", name, "--config", str(cfg)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["serving_now"] == f"{name}, the registry's active model"
    # the active model's file no longer fits (another [pipeline]): the fallback serves
    _retrained_for("0" * 16, tmp_path / "models" / f"{name}.onnx")
    assert main(["models", "list", "--config", str(cfg)]) == 0
    serving = capsys.readouterr().out.splitlines()[-1]
    assert serving.startswith("serving: starter-") and "the fallback (the starter model" in \
        serving and f"active model refused: {tmp_path / 'models' / name}.onnx" in serving
    assert main(["models", "rollback", "--config", str(cfg)]) == 1  # nothing earlier
    assert "serving: starter-" in capsys.readouterr().err
    assert Registry(tmp_path / "models").active_name() == name


def test_every_command_and_option_has_a_help_text():
    import argparse

    from appliance.cli import build_parser

    parser = build_parser()
    assert "`" not in parser.description and "appliance demo" in parser.description
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {c.dest: c.help for c in subs._choices_actions}
    for name, sub in subs.choices.items():
        assert listed.get(name), f"{name}: no summary in the command list"
        assert sub.description, f"{name}: no description in its --help"
        bare = [a.dest for a in sub._actions if not a.help]
        assert not bare, f"appliance {name}: options without help: {bare}"
