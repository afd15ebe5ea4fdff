"""numpy, onnxruntime, DuckDB, the training child's nice and the whole service, run under
the unit's sandbox as far as it can be rebuilt without systemd as PID 1
(``tests/support/sandbox.py`` says what is and what is not)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support import sandbox

pytestmark = [pytest.mark.root,  # a mount namespace and setpriv
              pytest.mark.skipif(sandbox.available() is not None,
                                 reason=f"sandbox: {sandbox.available()}")]

PROBE = r"""
import errno, json, mmap, os, subprocess, sys
import duckdb, numpy as np
from appliance.models.contract import STARTER_MODEL, load_model
from appliance.service.child import rss_mb

def fails(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None

out = {}
model = load_model(STARTER_MODEL)
rng = np.random.default_rng(1)
out["proba"] = model.predict_proba(rng.normal(size=(8, len(model.feature_names)))).tolist()
db = duckdb.connect(os.path.join(sys.argv[1], "probe.duckdb"))
db.execute("SET memory_limit = '32MB'")
db.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
db.execute("CHECKPOINT")
out["rows"] = db.execute("SELECT count(*), sum(i) FROM t").fetchone()
child = subprocess.Popen([sys.executable, "-c", "import os, sys; os.nice(10); "
                          "print(os.nice(0)); sys.stdin.read()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
out["child_rss_mb"] = rss_mb(child.pid)
out["child_nice"] = int(child.communicate("")[0])
# what the sandbox must refuse, so that its passing means something
out["affinity"] = fails(lambda: os.sched_setaffinity(0, {0}))
out["write_exec"] = fails(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE
                                            | mmap.PROT_EXEC))
out["netlink"] = fails(lambda: __import__("socket").socket(16, 2))
out["usr"] = fails(lambda: open("/usr/appliance-probe", "w"))
print(json.dumps(out))
"""


def test_numpy_onnxruntime_duckdb_and_nice_work_in_the_sandbox(tmp_path):
    data = sandbox.owned_by_nobody(tmp_path / "state")
    done = subprocess.run(sandbox.sandboxed([sys.executable, "-c", PROBE, str(data)], data),
                          capture_output=True, text=True, timeout=300, cwd=data,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert len(out["proba"]) == 8 and all(0.0 <= p <= 1.0 for p in out["proba"])
    assert out["rows"] == [100000, sum(range(100000))]
    assert out["child_rss_mb"] is not None and out["child_rss_mb"] > 0  # /proc/<child>
    assert out["child_nice"] == 10  # setpriority, given back to the filter
    # the sandbox was really there: @resources, MemoryDenyWriteExecute, the address
    # families and ProtectSystem=strict each refused something
    assert (out["affinity"], out["write_exec"], out["netlink"]) == ("EPERM",) * 3
    assert out["usr"] == "EROFS"
    # onnxruntime found the CPU's features (it reads /proc/cpuinfo: no ProcSubset=pid)
    assert "cpuinfo" not in done.stderr.lower(), done.stderr


def test_the_service_predicts_in_the_sandbox(tmp_path, broker):
    from appliance.models.contract import STARTER_MODEL, load_model
    from tests.integration.test_minimal_config import SENSORS
    from tests.support.faults import wait_until
    from tests.support.service import TOPICS, publish_all, publisher

    data = sandbox.owned_by_nobody(tmp_path / "state")
    cfg = data / "appliance.toml"
    db = data / "appliance.duckdb"
    cfg.write_text(f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                   f'[storage]\npath = "{db}"\n[status]\ninterval_s = 0.5\n')
    status = db.with_name(db.name + ".status.json")

    def read() -> dict | None:
        assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
        try:
            return json.loads(status.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def connected() -> bool:
        snap = read()
        return bool(snap and snap["mqtt_connected"])

    log = (tmp_path / "service.log").open("wb")
    proc = subprocess.Popen(sandbox.sandboxed([sys.executable, "-m", "appliance", "run",
                                               "--config", str(cfg)], data),
                            stdout=log, stderr=subprocess.STDOUT, cwd=data,
                            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        wait_until(lambda: connected(), 60, "the sandboxed service's MQTT connection")
        t0 = time.time() - 2 * 3600.0
        msgs = [(TOPICS.reading("l1", "a1", s),
                 json.dumps({"ts": t0 + 10 * i, "value": 20.0 + i % 7}).encode())
                for i in range(420) for s in SENSORS]
        publish_all(publisher(broker), msgs)

        def predicted() -> dict | None:
            snap = read()
            return snap if snap and snap["stages"]["predict"]["processed"] > 0 else None

        wait_until(lambda: predicted() is not None, 90, "predictions in the sandbox")
        snap = predicted()
        assert snap is not None and snap["model"] == load_model(STARTER_MODEL).name
        assert (snap["state"], snap["problems"]) == ("running", []), snap
        assert snap["stages"]["store"]["processed"] == len(msgs)
        proc.terminate()
        assert proc.wait(30) == 0  # drained and stopped cleanly, in the sandbox too
    finally:
        proc.kill()
        proc.wait()
        log.close()
