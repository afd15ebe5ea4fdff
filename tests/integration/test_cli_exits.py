"""How commands end when the person at the terminal ends them: Ctrl-C, or a reader that
closes the pipe (``| head``): an exit code, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from appliance.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from tests.support.faults import wait_until
from tests.support.service import subscriber


def test_ctrl_c_of_simulate_exits_130_without_a_traceback(broker, tmp_path):
    client, received = subscriber(broker, "#")
    err = tmp_path / "stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "simulate", "--host", broker.host,
             "--port", str(broker.port), "--assets", "1"], stderr=stderr)
    try:
        wait_until(lambda: received or proc.poll() is not None, 30, "simulated readings")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        proc.kill()
        client.disconnect()
        client.loop_stop()
    assert code == EXIT_INTERRUPTED, err.read_text()
    assert "Traceback" not in err.read_text() and received


@pytest.mark.parametrize("stages", [0, 50], ids=["short", "long"])
def test_a_closed_pipe_ends_status_quietly(tmp_path, stages):
    # short: all of it fits in stdout's buffer and fails at the last flush; long: at print
    db = tmp_path / "a.duckdb"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[storage]\npath = "{db}"\n')
    snap = {"state": "running", "ts": time.time(), "version": "0", "model": "m",
            "mqtt_connected": True, "problems": [], "notes": [], "queues": {},
            "stages": {f"s{i}": {"state": "running", "processed": i, "restarts": 0,
                                 "last_error": ""} for i in range(stages)}}
    (tmp_path / "a.duckdb.status.json").write_text(json.dumps(snap))
    # stdout buffered as a terminal user's pipe is (PYTHONUNBUFFERED would hide the flush)
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "appliance", "status", "--config",
                               str(cfg)], stdout=write, stderr=subprocess.PIPE, timeout=60,
                              env=buffered)
    finally:
        os.close(write)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr.decode()
    assert proc.stderr == b""
