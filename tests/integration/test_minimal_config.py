"""The configuration the README promises is enough — ``[mqtt] host, port`` and
``[storage] path``, nothing else — gives a service that predicts with the starter
model once an asset's warm-up has passed, and says so in its status."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from appliance.models.contract import STARTER_MODEL, load_model
from tests.support.service import TOPICS, publish_all, publisher

SENSORS = ("lube_temp", "vibration", "motor_current", "oil_pressure", "ambient_temp")


def test_the_minimal_config_predicts_with_the_starter_model(tmp_path, broker,
                                                             service_factory):
    cfg = tmp_path / "etc" / "appliance.toml"
    cfg.parent.mkdir()
    db = tmp_path / "data" / "appliance.duckdb"  # elsewhere than the config, as installed
    cfg.write_text(f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                   f'[storage]\npath = "{db}"\n')
    svc = service_factory(cfg)
    svc.status_path = db.with_name(db.name + ".status.json")
    svc.start()
    # 70 minutes of event time, one reading per sensor every 10 s: past the default
    # warm-up (the longest window and one grid step, 62 minutes)
    t0 = time.time() - 2 * 3600.0
    msgs = [(TOPICS.reading("l1", "a1", s), json.dumps({"ts": t0 + 10 * i,
                                                        "value": 20.0 + i % 7}).encode())
            for i in range(420) for s in SENSORS]
    publish_all(publisher(broker), msgs)
    snap = svc.wait_for(lambda s: s["stages"]["predict"]["processed"] > 0, timeout_s=60,
                        what="a prediction from the minimal config")
    assert snap["model"] == load_model(STARTER_MODEL).name
    assert (snap["state"], snap["problems"], snap["notes"]) == ("running", [], []), snap
    assert snap["stages"]["predict"]["restarts"] == 0
    done = subprocess.run([sys.executable, "-m", "appliance", "status", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("state running"), done.stdout
    # the registry the CLI writes is the one the service watches: beside the database
    done = subprocess.run([sys.executable, "-m", "appliance", "models", "add",
                           str(STARTER_MODEL), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list((db.parent / "models").glob("*.onnx")) and not (cfg.parent / "models").exists()
