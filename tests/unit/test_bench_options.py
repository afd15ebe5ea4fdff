"""``appliance bench``'s options reach each benchmark (no benchmark runs here), and
``bench capacity`` takes its mix from ``--config`` where the config says it."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import Config
from appliance.config import load as load_config
from appliance.devtools.bench import capacity, ingest, tick, train


def test_bench_train_passes_its_options(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(train, "run", lambda *a, **kw: seen.update(args=a, kw=kw))
    assert main(["bench", "train", "--days", "3", "--assets", "2", "--split-day", "2",
                 "--drift", "1.5", "--seed", "3", "--work", str(tmp_path), "--json",
                 "--quiet", "--no-backtest"]) == 0
    assert seen["args"] == (3.0, 2, 1.5, 2.0, tmp_path, True, 3, False)
    assert seen["kw"] == {"backtest": False}
    # the defaults: 10 assets × 45 days, not the other benchmarks' 1000 assets
    assert main(["bench", "train"]) == 0
    assert seen["args"] == (45.0, 10, 4.0, 30.0, None, False, 11, True)
    assert seen["kw"] == {"backtest": True}


def test_bench_train_refuses_a_split_after_the_history(capsys):
    assert main(["bench", "train", "--days", "3"]) == 2
    assert "--split-day" in capsys.readouterr().err


def test_bench_ingest_measures_both_forms_by_default(monkeypatch):
    seen = {}
    monkeypatch.setattr(ingest, "run", lambda **kw: seen.update(kw) or 0)
    assert main(["bench", "ingest"]) == 0
    assert seen == {"json_output": False, "messages": ingest.MESSAGES, "payload": "both",
                    "sensors": ingest.BATCH_SENSORS}
    assert main(["bench", "ingest", "--payload", "batch", "--sensors", "20",
                 "--messages", "1000", "--json"]) == 0
    assert seen == {"json_output": True, "messages": 1000, "payload": "batch", "sensors": 20}


def test_bench_tick_passes_its_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(tick, "run", lambda **kw: seen.update(kw) or 0)
    assert main(["bench", "tick"]) == 0
    assert seen == {"json_output": False, "assets": 1000, "ticks": 200}
    assert main(["bench", "tick", "--assets", "50", "--ticks", "9", "--json"]) == 0
    assert seen == {"json_output": True, "assets": 50, "ticks": 9}


def test_bench_capacity_refuses_both_payloads(capsys):
    assert main(["bench", "capacity", "--payload", "both"]) == 2
    assert "reading or batch" in capsys.readouterr().err


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return load_config(path)


def test_capacity_mix_from_the_config_and_flags(tmp_path):
    cfg = _config(tmp_path, "[pipeline.sensors.spindle_temp]\nvalid_max = 200\n"
                            "[pipeline.sensors.flow]\n[pipeline.sensors.pressure]\n"
                            "[limits]\nmax_series = 100\n")
    mix, source = capacity.resolve_mix(cfg)
    assert (mix.assets, mix.sensors, mix.hz, mix.payload) == (1000, 3, 1.0, "reading")
    assert mix.sensor_names() == ("spindle_temp", "flow", "pressure")
    assert source["sensors"] == "config [pipeline.sensors]"
    assert source["assets"].startswith("default") and source["hz"].startswith("default")
    assert capacity.notes(cfg, mix) == [
        "3,000 series exceed [limits] max_series = 100: the service refuses the rest"]
    # flags override; more sensors than the config names get the simulator's names
    mix, source = capacity.resolve_mix(cfg, assets=5, sensors=4, hz=2.0, payload="batch")
    assert (mix.assets, mix.sensors, mix.hz, mix.payload) == (5, 4, 2.0, "batch")
    assert mix.sensor_names()[:3] == ("spindle_temp", "flow", "pressure")
    assert len(set(mix.sensor_names())) == 4
    assert set(source.values()) == {"flag"}
    assert capacity.notes(cfg, mix) == []


def test_capacity_mix_without_a_config_is_the_old_default():
    mix, source = capacity.resolve_mix(Config(), sensors=2)
    assert mix.as_dict() == {"assets": 1000, "sensors": 2, "hz": 1.0, "payload": "reading",
                             "readings_per_s": 2000.0}
    assert mix.sensor_names() == capacity.SENSORS[:2]
    assert source["sensors"] == "flag"


@pytest.mark.parametrize("payload,k", [("reading", 1), ("batch", 10)])
def test_ingest_counts_readings_per_message(payload, k):
    assert ingest.per_message(payload, 10) == k
