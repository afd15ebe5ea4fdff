"""sd_notify as systemd sees it: READY, WATCHDOG only while the essential stages live,
STOPPING on SIGTERM.  A datagram socket stands where systemd's would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.service import write_config


def listen(tmp_path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def messages_until(sock: socket.socket, wanted: str, timeout_s: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and wanted not in got:
        try:
            got.append(sock.recv(256).decode())
        except TimeoutError:
            continue
    return got


def test_ready_watchdog_and_stopping(tmp_path, broker):
    sock, path = listen(tmp_path)
    cfg = write_config(tmp_path, broker)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = messages_until(sock, "READY=1", 30)
        assert "READY=1" in got
        later = messages_until(sock, "never", 2.0)
        assert later.count("WATCHDOG=1") >= 2  # every half watchdog period at most
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in messages_until(sock, "STOPPING=1", 5)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        sock.close()


def test_watchdog_starves_when_an_essential_stage_has_failed(tmp_path, broker, monkeypatch):
    from appliance.config import load
    from appliance.service.runner import Service

    sock, path = listen(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    service = Service(load(write_config(tmp_path, broker)))
    service.start()
    try:
        assert "READY=1" in messages_until(sock, "READY=1", 5)
        service.beat()
        assert "WATCHDOG=1" in messages_until(sock, "WATCHDOG=1", 2)
        service.pipeline.supervisor.health["store"].state = "failed"
        service.beat()
        assert messages_until(sock, "WATCHDOG=1", 1.5) == []
        service.pipeline.supervisor.health["predict"].state = "failed"
        service.pipeline.supervisor.health["store"].state = "running"
        service.beat()  # predict is not essential: storing readings goes on
        assert "WATCHDOG=1" in messages_until(sock, "WATCHDOG=1", 2)
    finally:
        service.stop()
        sock.close()


UNIT = Path(__file__).resolve().parents[2] / "systemd" / "appliance.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze")


def runnable_unit(tmp_path: Path) -> Path:
    """The unit with its commands pointing at a binary that exists here: ``verify``
    checks that ExecStart is executable, and /opt/appliance is not installed on a
    development machine.  Nothing else in the unit changes."""
    unit = tmp_path / "appliance.service"
    unit.write_text(UNIT.read_text().replace("/opt/appliance/venv/bin/appliance", "/usr/bin/true"))
    return unit


@needs_analyze
def test_the_unit_verifies_without_a_word(tmp_path):
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(runnable_unit(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown or misspelt keys: it only warns, so any output is a fault
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_the_unit_is_locked_down(tmp_path):
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true",
                           str(runnable_unit(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for appliance\.service: (\d+\.\d)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


INSTALL = UNIT.with_name("install.sh")


def test_install_sh_parses_and_refuses_what_it_does_not_know():
    """What of install.sh runs without root and systemd: its syntax (and shellcheck where
    installed), and its options, which are checked before anything is touched."""
    assert subprocess.run(["bash", "-n", str(INSTALL)], timeout=30).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout
    for args, code, says in ((["--help"], 0, "--uninstall [--purge]"),
                             (["--bogus"], 2, "unknown option --bogus"),
                             (["--purge"], 2, "--purge goes with --uninstall")):
        done = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                              timeout=30)
        assert (done.returncode, says in done.stdout + done.stderr) == (code, True), done


def test_the_installed_default_config_passes_the_units_check(tmp_path):
    """systemd/appliance.toml as install.sh leaves it (without --with-training it appends
    [retrain] enabled = false) passes ``--check-config``, the unit's ExecStartPre."""
    (printf,) = [line.strip() for line in INSTALL.read_text().splitlines()
                 if line.strip().startswith("printf") and "[retrain]" in line]
    cfg = tmp_path / "appliance.toml"
    shutil.copy(UNIT.with_name("appliance.toml"), cfg)
    subprocess.run(["bash", "-c", f"{printf} >>{cfg}"], check=True, timeout=30)
    done = subprocess.run([sys.executable, "-m", "appliance", "run", "--config", str(cfg),
                           "--check-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and ": OK (broker 127.0.0.1:1883" in done.stdout, done.stderr
    from appliance.config import load
    assert load(cfg).retrain.enabled is False
