import math
from pathlib import Path

import pytest

from appliance import config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "appliance.toml"
    p.write_text(text)
    return p


def test_minimal_config_is_enough(tmp_path):
    cfg = config.load(write(tmp_path, '[mqtt]\nhost = "broker"\nport = 1884\n'
                                       '[storage]\npath = "x.duckdb"\n'))
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker", 1884)
    assert cfg.pipeline.cadence_s == 10 and cfg.pipeline.horizon_s == 3600
    assert cfg.mqtt.qos == 1
    assert cfg.resolve(cfg.storage.path) == tmp_path / "x.duckdb"


def test_empty_file_gives_defaults(tmp_path):
    assert config.load(write(tmp_path, "")).storage == config.StorageConfig()


@pytest.mark.parametrize(("text", "expected"), [
    ("[mqtt]\nhots = 1\n", "unknown key 'hots' in [mqtt]"),
    ("[mqtt]\nport = \"1883\"\n", "[mqtt] port: expected an integer, got '1883'"),
    ("[mqtt]\nport = 70000\n", "[mqtt] port: expected a value <= 65535"),
    ("[mqtt]\nqos = true\n", "[mqtt] qos: expected an integer"),
    ("[alerts]\nthreshold = 1.5\n", "[alerts] threshold: expected a value <= 1.0"),
    ("[pipeline]\ncadence_s = \"10\"\n", "[pipeline] cadence_s: expected a number"),
    ("[pipeline]\nwindows_s = [600, \"x\"]\n", "[pipeline] windows_s[1]: expected a number"),
    ("[pipeline]\nwindows_s = [1]\n", "shorter than cadence_s"),
    ("[pipeline]\nidle_gap_s = 5\n", "idle_gap_s (5) must be 0 (never) or at least cadence_s"),
    ("[pipline]\n", "unknown section [pipline]"),
    ("[mqtt]\nhost = \n", "not valid TOML"),
    ("[pipeline.sensors.lube_temp]\nvalid_min = 200\nvalid_max = -20\n",
     "[pipeline.sensors.lube_temp] valid_min must be < valid_max"),
    ("[pipeline.sensors.lube_temp]\nvalid_min = 5\nvalid_max = 5\n",
     "[pipeline.sensors.lube_temp] valid_min must be < valid_max"),
    ("[pipeline.sensors.lube_temp]\nvalid_mx = 5\n",
     "unknown key 'valid_mx' in [pipeline.sensors.lube_temp]"),
    ("[pipeline.sensors.lube_temp]\nmax_rate_per_s = 0\n",
     "[pipeline.sensors.lube_temp] max_rate_per_s: expected a value > 0.0"),
    ("[pipeline.sensors.lube_temp]\nvalid_max = inf\n",
     "[pipeline.sensors.lube_temp] valid_max: expected a finite number"),
    ("[pipeline.sensors.lube_temp]\nhampel_k = -1\n",
     "[pipeline.sensors.lube_temp] hampel_k: expected a value > 0.0"),
    ("[pipeline.sensors.lube_temp]\nclean = 1\n",
     "[pipeline.sensors.lube_temp] clean: expected true or false"),
    ("[pipeline.sensors.lube_temp]\nmax_gap_s = -1\n",
     "[pipeline.sensors.lube_temp] max_gap_s: expected a value >= 0.0"),
    ("[pipeline.sensors.lube_temp]\nmax_gap_intervals = -2\n",
     "[pipeline.sensors.lube_temp] max_gap_intervals: expected a value >= 0.0"),
    ("[pipeline]\nmax_gap_intervals = -1\n",
     "[pipeline] max_gap_intervals: expected a value >= 0.0"),
    ("[service]\nhung_after_s = 0.5\n", "[service] hung_after_s: expected a value >= 1.0"),
    ("[service]\nmqtt_down_after_s = \"10\"\n",
     "[service] mqtt_down_after_s: expected a number"),
    ("[pipeline.sensors.\"lube temp\"]\n", "[pipeline.sensors.lube temp]: a sensor name is"),
    ("[pipeline]\nsensors = 3\n", "[pipeline] sensors must be a table"),
    ("[pipeline.sensors]\nlube_temp = 3\n", "[pipeline.sensors] lube_temp must be a table"),
])
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_config_is_frozen():
    cfg = config.Config()
    with pytest.raises(AttributeError):
        cfg.mqtt.port = 1  # type: ignore[misc]


def test_windows_default_scale_with_horizon():
    cfg = config.from_dict({"pipeline": {"horizon_s": 600}})
    assert cfg.pipeline.effective_windows() == (100.0, 600.0)


def test_sensor_tables_are_read_typed_in_file_order(tmp_path):
    cfg = config.load(write(tmp_path, """
[pipeline]
max_gap_s = 120
[pipeline.sensors.vibration]
max_rate_per_s = 2.5
clean = false
[pipeline.sensors."lube.temp"]
valid_min = -20
valid_max = 150
hampel_window_s = 300
hampel_k = 4
max_gap_s = 600
max_gap_intervals = 0
"""))
    assert cfg.pipeline.max_gap_s == 120
    assert [n for n, _ in cfg.pipeline.sensors] == ["vibration", "lube.temp"]
    vib, lube = (s for _, s in cfg.pipeline.sensors)
    assert vib == config.SensorConfig(max_rate_per_s=2.5, clean=False)
    assert (vib.valid_min, vib.valid_max, vib.max_gap_s) == (-math.inf, math.inf, None)
    assert lube == config.SensorConfig(valid_min=-20.0, valid_max=150.0, hampel_window_s=300.0,
                                       hampel_k=4.0, max_gap_s=600.0, max_gap_intervals=0.0)
    assert lube.max_rate_per_s == math.inf and lube.clean is None


def test_no_sensor_tables_means_none_configured(tmp_path):
    assert config.load(write(tmp_path, "[pipeline]\ncadence_s = 5\n")).pipeline.sensors == ()
