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
    ("[pipline]\n", "unknown section [pipline]"),
    ("[mqtt]\nhost = \n", "not valid TOML"),
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
