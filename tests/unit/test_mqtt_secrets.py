"""``[mqtt]`` TLS files and the password: checked at load, never read from a config file
others can read; systemd's credential first, then ``password_file``."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.mqtt.client import password


def write(tmp_path: Path, mqtt: str, mode: int = 0o640) -> Path:
    p = tmp_path / "appliance.toml"
    p.write_text(f'[mqtt]\nhost = "broker"\n{mqtt}')
    p.chmod(mode)
    return p


@pytest.mark.parametrize("key", config.MQTT_FILE_KEYS)
def test_a_missing_file_is_an_error_naming_the_file_and_the_key(tmp_path, key):
    needs = {"tls_cert": 'tls_key = "k.pem"\ntls_ca = "ca.pem"\n',
             "tls_key": 'tls_cert = "c.pem"\ntls_ca = "ca.pem"\n',
             "password_file": 'username = "u"\n'}.get(key, "")
    for name in ("k.pem", "c.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    path = write(tmp_path, needs + f'{key} = "missing.pem"\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(err.value) == (f"{path}: [mqtt] {key}: cannot read {tmp_path / 'missing.pem'}: "
                              f"No such file or directory")


def test_files_are_resolved_beside_the_config(tmp_path):
    for name in ("ca.pem", "c.pem", "k.pem", "pw"):
        (tmp_path / name).write_text("x")
    cfg = config.load(write(tmp_path, 'tls_ca = "ca.pem"\ntls_cert = "c.pem"\n'
                                      'tls_key = "k.pem"\nusername = "u"\n'
                                      'password_file = "pw"\n'))
    assert (cfg.mqtt.tls_ca, cfg.mqtt.tls_cert, cfg.mqtt.tls_key, cfg.mqtt.password_file) == \
        tuple(str(tmp_path / n) for n in ("ca.pem", "c.pem", "k.pem", "pw"))


@pytest.mark.parametrize(("mqtt", "expected"), [
    ('tls_cert = "c.pem"\ntls_ca = "ca.pem"\n', "[mqtt] tls_cert and tls_key go together"),
    ('tls_cert = "c.pem"\ntls_key = "c.pem"\n', "[mqtt] tls_cert needs tls_ca"),
    ('password_file = "c.pem"\n', "[mqtt] password_file needs [mqtt] username"),
])
def test_keys_that_go_together(tmp_path, mqtt, expected):
    for name in ("c.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    with pytest.raises(config.ConfigError, match=expected.replace("[", r"\[")):
        config.load(write(tmp_path, mqtt))


def test_a_password_in_a_file_others_can_read_is_refused(tmp_path):
    path = write(tmp_path, 'username = "u"\npassword = "hunter2"\n', mode=0o644)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}: [mqtt] password: this file is readable by "
                                     f"other users (mode 644)")
    assert "password_file" in str(err.value) and "hunter2" not in str(err.value)
    path.chmod(0o640)  # root:appliance 0640, as systemd/install.sh leaves it: accepted
    assert password(config.load(path).mqtt) == "hunter2"


def test_the_credential_wins_over_the_password_file_and_an_empty_one_is_none(
        tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("from-file\nignored\n")
    cfg = config.load(write(tmp_path, 'username = "u"\npassword_file = "pw"\n')).mqtt
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert password(cfg) == "from-file"
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert password(cfg) == "from-file"  # the unit names a credential the site did not set
    (creds / "mqtt_password").write_text("")  # install.sh leaves an empty one
    assert password(cfg) == "from-file"
    (creds / "mqtt_password").write_text("from-systemd\n")
    assert password(cfg) == "from-systemd"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert password(config.MqttConfig()) is None
