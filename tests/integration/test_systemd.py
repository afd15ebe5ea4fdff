"""sd_notify as systemd sees it: READY, WATCHDOG only while the essential stages live,
STOPPING on SIGTERM.  A datagram socket stands where systemd's would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

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
