"""Backtest pieces: the config of variants, their resolution, the static limit, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pytest

from appliance import config
from appliance.config import PipelineConfig
from appliance.features.spec import PipelineSpec
from appliance.scoring.metrics import (
    AssetScores,
    best_within_budget,
    choose_threshold,
    metrics_curve,
)
from appliance.training import backtest
from appliance.training.static_threshold import fit_static
from tests.support import lines

H = 3600.0


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "appliance.toml"
    p.write_text(text)
    return p


def test_new_sections_have_defaults_and_load_typed(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.alerts.max_false_per_asset_week == 1.0
    assert cfg.training == config.TrainingConfig() and cfg.variants == ()
    cfg = config.load(write(tmp_path, (
        "[alerts]\nmax_false_per_asset_week = 0.5\n"
        "[training]\ncooldown_s = 600\nvalidation_fraction = 0.3\nstride = 2\n"
        "[variants.short_windows]\nwindows_s = [300, 1200]\nfamily = \"logistic\"\n"
        "description = \"shorter windows\"\n"
        "[variants.no_filter]\nhampel_k = 5\n")))
    assert cfg.alerts.max_false_per_asset_week == 0.5
    assert (cfg.training.cooldown_s, cfg.training.validation_fraction,
            cfg.training.stride) == (600.0, 0.3, 2)
    short = cfg.variant("short_windows")
    assert short.windows_s == (300.0, 1200.0) and short.family == "logistic"
    assert short.clean is None  # not given: inherited
    assert cfg.variant("no_filter").hampel_k == 5.0 and cfg.variant("nope") is None


@pytest.mark.parametrize(("text", "expected"), [
    ("[alerts]\nmax_false_per_asset_week = -1\n",
     "[alerts] max_false_per_asset_week: expected a value >= 0.0"),
    ("[training]\nvalidation_fraction = 0.95\n",
     "[training] validation_fraction: expected a value <= 0.9"),
    ("[training]\ncooldown_s = \"1h\"\n", "[training] cooldown_s: expected a number"),
    ("[training]\nepochs = 3\n", "unknown key 'epochs' in [training]"),
    ("[variants.x]\nfamily = \"svm\"\n",
     "[variants.x] family: expected one of gbt, logistic, static_threshold, got 'svm'"),
    ("[variants.x]\nclean = 1\n", "[variants.x] clean: expected true or false, got 1"),
    ("[variants.x]\nwindows_s = [5]\n", "[variants.x] windows_s: window 5.0 is shorter"),
    ("[variants.x]\nhampel_k = 0\n", "[variants.x] hampel_k: expected a value > 0.0"),
    ("[variants.x]\nspeed = 1\n", "unknown key 'speed' in [variants.x]"),
    ("[variants]\nx = 1\n", "[variants] x must be a table"),
    ("[variants.\"a/b\"]\n", "[variants.a/b]: a variant name is 1-64 characters"),
])
def test_bad_new_keys_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_builtin_variants_differ_only_where_they_say():
    cfg = config.from_dict({"pipeline": {"hampel_window_s": 600}})
    full, no_filter, static = backtest.resolve_variants(
        cfg, ["full", "no_filter", "static_threshold"])
    service = PipelineSpec.from_config(cfg.pipeline)
    assert full.spec == service and full.family == "gbt"
    assert full.spec.clean is not None and full.spec.clean.hampel_window_s == 600
    assert no_filter.spec.clean is None and no_filter.family == "gbt"
    assert no_filter.spec.windows_s == full.spec.windows_s
    assert no_filter.spec.hash != full.spec.hash
    assert static.family == "static_threshold" and static.spec == no_filter.spec


def test_config_tables_override_and_define_variants():
    cfg = config.from_dict({"variants": {
        "no_filter": {"family": "logistic"},
        "long": {"windows_s": [600.0, 7200.0], "description": "a 2-hour window"}}})
    no_filter, long = backtest.resolve_variants(cfg, ["no_filter", "long"])
    assert no_filter.family == "logistic" and no_filter.spec.clean is None  # built-in kept
    assert long.family == "gbt" and long.spec.windows_s == (600.0, 7200.0)
    assert long.spec.clean == PipelineSpec.from_config(cfg.pipeline).clean
    assert long.description == "a 2-hour window"
    with pytest.raises(ValueError, match="unknown variant 'nope'; known: full, no_filter, "
                                         "static_threshold, long"):
        backtest.resolve_variants(cfg, ["nope"])


def test_parse_time():
    assert backtest.parse_time("2025-01-01T00:00:00Z") == 1735689600.0
    assert backtest.parse_time("2025-01-01") == 1735689600.0
    assert backtest.parse_time("2025-01-01T02:00:00+02:00") == 1735689600.0
    assert backtest.parse_time("1735689600") == 1735689600.0
    with pytest.raises(ValueError, match="not a time"):
        backtest.parse_time("yesterday")


def test_static_limit_finds_the_sensor_that_announces_faults():
    ds, spec = lines.dataset(seed=3, days=2.0)
    limit = fit_static(ds, spec, 0.0, float(ds.ticks.max()), max_false_per_asset_week=1.0)
    assert limit.feature == "good__last" and limit.direction == "above"
    assert limit.met_budget and limit.training.recall > 0.8
    assert 1.0 < limit.limit < 6.0
    scores = limit.score(np.array([[-5.0, 0], [limit.limit + 1, 0], [np.nan, 0]]), ds.names)
    assert scores[0] < limit.threshold <= scores[1] and math.isnan(scores[2])


def test_choose_threshold_is_the_budget_point_of_the_curve():
    rng = np.random.default_rng(5)
    t = np.arange(2000) * 60.0
    s = AssetScores("a", t, rng.random(2000) ** 4, np.ones(2000, bool),
                    rng.random(2000) < 0.05, np.array([30000.0, 90000.0]))
    chosen, met = choose_threshold([s], H, 2.0)
    curve = metrics_curve([s], H)
    assert best_within_budget(curve, 2.0) == (chosen, met)


def test_predictions_parquet_has_asset_ts_probability(tmp_path):
    v = backtest.Variant("v", "gbt", PipelineSpec.from_config(PipelineConfig()), "")
    vr = backtest.VariantResult(
        v, 0.5, None, None, True, None, [], {},  # type: ignore[arg-type]
        np.array(["a2", "a1"], dtype=object), np.array([1735689610.0, 1735689600.0]),
        np.array([0.25, 0.75]))
    path = tmp_path / "v" / "predictions.parquet"
    backtest.write_predictions(path, vr)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(f"SELECT * FROM '{path}'")
    assert rel.columns == ["asset", "ts", "probability"]
    assert [str(t) for t in rel.types] == ["VARCHAR", "TIMESTAMP WITH TIME ZONE", "DOUBLE"]
    assert con.sql(f"SELECT asset, epoch(ts), probability FROM '{path}'").fetchall() == [
        ("a1", 1735689600.0, 0.75), ("a2", 1735689610.0, 0.25)]


def test_a_variant_without_cleaning_also_bypasses_a_sensors_own_cleaning():
    cfg = config.from_dict({"pipeline": {"clean": False, "sensors": {
        "temp": {"clean": True, "valid_max": 100.0}, "vib": {"hampel_k": 5.0}}}})
    full, no_filter = backtest.resolve_variants(cfg, ["full", "no_filter"])
    assert full.spec.sensor("temp").clean is not None  # the sensor's own clean = true
    assert full.spec.sensor("vib").clean is None  # hampel_k alone does not turn it on
    assert no_filter.spec.sensor("temp").clean is None
    assert no_filter.spec.sensor("temp").valid_max == 100.0  # its other settings stay


# Verdicts, identical variants and partial reports, on histories the tests make.

DAY = 86400.0


def _backtest_cli(tmp_path: Path, hists, variants: str, train_day: float,
                  config_text: str = "[pipeline]\ncadence_s = 600\n[training]\nmax_iter = 20\n"
                  ) -> tuple[int, str, str]:
    import contextlib
    import io

    from appliance import cli

    readings, faults = lines.write_files(hists, tmp_path / "files")
    cfg = write(tmp_path, config_text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["backtest", "--readings", str(readings), "--faults", str(faults),
                         "--config", str(cfg), "--variants", variants, "--train-until",
                         str(lines.START + train_day * DAY), "--out", str(tmp_path / "out"),
                         "--quiet"])
    return code, out.getvalue(), err.getvalue()


def test_at_600_s_no_filter_is_shown_as_identical_to_full_and_the_notes_say_why(tmp_path):
    hists = lines.histories(assets=3, days=8.0, interval_s=600.0, seed=1)
    code, text, err = _backtest_cli(tmp_path, hists, "full,no_filter", 6.0)
    assert code == 0, err
    # The 120 s Hampel window holds one point of the 600 s grid: the filter does nothing.
    assert ("note: full: hampel_window_s = 120 holds 1 point of the 600 s grid (cadence_s) "
            "for sensors good, noise: the Hampel filter needs 3 and does nothing; set "
            "hampel_window_s >= 1800") in text
    assert "note: full, no_filter: the 600 s window (windows_s) holds 1 point" in text
    row = next(r for r in text.splitlines() if r.startswith("no_filter "))
    assert row.split()[-3:] == ["identical", "to", "full"]
    assert "no_filter: identical to full (the same test probabilities and threshold)" in text
    result = json.loads((tmp_path / "out" / "backtest.json").read_text())
    assert result["complete"] and result["variants_done"] == 2
    assert result["variants"]["no_filter"]["identical_to"] == "full"
    assert result["variants"]["no_filter"]["details"]["feature matrix"].startswith(
        "identical to full's")
    assert result["best_usable_variant"] == (None if result["variants"]["full"]["problems"]
                                             else "full")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Identical to full**" in report and "hampel_window_s >= 1800" in report
    assert "Partial" not in report
    # With the window the note names, the filter has points to judge: no note about it.
    code, text, err = _backtest_cli(
        tmp_path, hists, "full", 6.0,
        "[pipeline]\ncadence_s = 600\nhampel_window_s = 1800\n[training]\nmax_iter = 20\n")
    assert code == 0, err
    assert "hampel_window_s" not in text


def test_a_static_limit_on_a_sensor_the_test_assets_lack_is_not_usable():
    from appliance.storage.history import AssetHistory, StoredHistory

    train_until = lines.START + 6 * DAY
    hists = []
    for h in lines.histories(assets=3, days=8.0, interval_s=600.0, seed=2):
        ts, values = h.series["good"]
        gone = ts <= train_until - H  # the sensor that announces faults is removed
        hists.append(AssetHistory(h.asset, {"good": (ts[gone], values[gone]),
                                            "noise": h.series["noise"]},
                                  h.fault_starts, h.fault_ends))
    history = StoredHistory(tuple(hists), lines.START, lines.START + 8 * DAY - 600.0, 0, 0)
    cfg = config.from_dict({"pipeline": {"cadence_s": 600.0}})
    variants = backtest.resolve_variants(cfg, ["static_threshold"])
    result = backtest.run(history, variants, train_until)
    vr = result.variants[0]
    assert vr.details["limit"].startswith("`good__")  # set where the sensor still was
    n = len(vr.pred_probability)
    assert np.isnan(vr.pred_probability).all() and not vr.usable
    assert f"every prediction is NaN ({n} test ticks)" in vr.problems
    assert any(p.startswith("features missing: 1 of the model's 1 features (good__") and
               p.endswith("is NaN on every test tick of assets a0, a1, a2")
               for p in vr.problems), vr.problems
    assert result.best() is None
    assert result.verdict_lines()[-1] == "no variant is usable (the reasons are above)"
    assert "NO" in backtest.terminal_table(result)


def test_a_backtest_that_stops_part_way_leaves_the_variants_it_finished(tmp_path):
    # Every fault falls in the last quarter of the training window: the limit is set on
    # the whole window, but the model's own split leaves it no positive tick to fit on.
    hists = lines.histories(assets=3, days=8.0, interval_s=600.0, seed=3, faults=2,
                            faults_between=(4.9 * DAY, 5.9 * DAY))
    code, _text, err = _backtest_cli(tmp_path, hists, "static_threshold,full", 6.0)
    assert code == 1 and "positive ticks" in err
    assert "partial: 1 of 2 variants done; not finished: full" in err
    out = tmp_path / "out"
    result = json.loads((out / "backtest.json").read_text())
    assert not result["complete"] and result["variants_planned"] == ["static_threshold", "full"]
    assert list(result["variants"]) == ["static_threshold"]
    report = (out / "report.md").read_text()
    assert report.splitlines()[2].startswith(
        "**Partial: 1 of 2 variants done; not finished: full.**")
    assert "## static_threshold" in report and "## full" not in report
    n = duckdb.connect().execute(
        f"SELECT count(*) FROM '{out / 'static_threshold' / 'predictions.parquet'}'"
    ).fetchone()[0]
    # every 600 s tick after day 6 up to the last reading, 600 s before day 8, per asset
    assert n == 3 * (2 * 144 - 1)
    assert not (out / "full" / "predictions.parquet").exists()


def test_a_failed_backtest_says_which_window_it_used_and_the_gap_to_leave_out(
        tmp_path, capsys):
    from appliance.cli import main

    # a day of 2013 readings and a day of 2025 readings, nothing between, no faults
    day = np.arange(0.0, 86400.0, 600.0)
    rows = [f"{t0 + t},a1,temp,{k % 5}" for t0 in (1356998400.0, 1735689600.0)
            for k, t in enumerate(day)]
    readings = tmp_path / "r.csv"
    readings.write_text("ts,asset,sensor,value\n" + "\n".join(rows) + "\n")
    db = tmp_path / "d.duckdb"
    assert main(["import", str(readings), "--db", str(db), "--quiet"]) == 0
    assert main(["backtest", "--db", str(db), "--quiet", "--variants", "full"]) == 1
    err = capsys.readouterr().err
    assert ("the window: the history from 2013-01-01T00:00:00Z to 2025-01-01T23:50:00Z "
            "(4384.0 days, all of it); trained up to ") in err
    assert "(where three quarters of the data lie before it)" in err
    assert ("the data has a gap from 2013-01-01T23:50:00Z to 2025-01-01T00:00:00Z (4382 "
            "days, 100% of the span): backtest one side of it, e.g. --since "
            "2025-01-01T00:00:00Z") in err
    # --since leaves 2013 out: the window says so, and there is no gap left to name
    assert main(["backtest", "--db", str(db), "--quiet", "--variants", "full", "--since",
                 "2025-01-01T00:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert "the history from 2025-01-01T00:00:00Z to 2025-01-01T23:50:00Z (1.0 days, " \
           "from --since)" in err
    assert "gap" not in err


def test_since_keeps_a_fault_still_going_on_at_its_start():
    from appliance.storage.history import AssetHistory, StoredHistory

    ts = np.arange(0.0, 1000.0, 10.0)
    h = AssetHistory("a1", {"temp": (ts, np.ones(len(ts)))},
                     np.array([100.0, 400.0, 700.0, 900.0]),
                     np.array([200.0, 600.0, np.nan, 950.0]))
    stored = StoredHistory((h,), 0.0, 990.0, len(ts), 4)
    cut = stored.since(500.0)
    (kept,) = cut.histories
    # 100-200 ended before; 400-600 goes on at 500; 700-open and 900-950 start after
    assert kept.fault_starts.tolist() == [400.0, 700.0, 900.0]
    assert cut.faults == 3 and cut.t_start == 500.0
