"""``appliance replay``: a recorded file published into a running service over a real
broker, stored with its event times and values, once per replay."""

from __future__ import annotations

import json
import time

import numpy as np

from appliance import cli
from tests.support.faults import wait_until
from tests.support.service import Service, write_config


def _stored(cfg, capsys) -> list[list]:
    """[asset, sensor, ts µs, value] of every stored reading, asked of the running service
    (its JSON output is one object a line)."""
    capsys.readouterr()
    assert cli.main(["sql", "--config", str(cfg), "--format", "json",
                     "SELECT asset, sensor, epoch_us(ts) AS t, value FROM readings "
                     "ORDER BY ALL"]) == 0
    return [[r["asset"], r["sensor"], r["t"], r["value"]]
            for r in map(json.loads, capsys.readouterr().out.splitlines())]


def test_a_replayed_file_is_stored_once_with_its_times_and_values(tmp_path, broker, capsys):
    rng = np.random.default_rng(5)
    t0 = round(time.time()) - 3600.0  # an hour ago: inside the service's limits
    rows = [("a1" if k % 2 else "a2", s, t0 + 10.0 * (k // 2), float(rng.normal(50, 5)))
            for k in range(60) for s in ("temp", "vib")]
    path = tmp_path / "recorded.csv"
    path.write_text("ts,asset,sensor,value\n" + "".join(
        f"{t},{a},{s},{v!r}\n" for a, s, t, v in rows))
    expected = sorted([a, s, round(t * 1e6), v] for a, s, t, v in rows)
    cfg = write_config(tmp_path, broker)
    service = Service(cfg).start()
    try:
        assert cli.main(["replay", str(path), "--config", str(cfg), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "replayed 120 readings" in out and "stores them again" in out
        wait_until(lambda: len(_stored(cfg, capsys)) >= len(rows), 30, "the replay stored")
        assert _stored(cfg, capsys) == expected  # each once, times and values as recorded
        # A second replay is new messages to the service, not redeliveries: stored again.
        assert cli.main(["replay", str(path), "--config", str(cfg), "--quiet"]) == 0
        wait_until(lambda: len(_stored(cfg, capsys)) >= 2 * len(rows), 30, "the second replay")
        assert _stored(cfg, capsys) == sorted(expected * 2)
    finally:
        service.terminate()
