"""``appliance bench ingest --json`` on a small backlog of both forms: the report's shape,
rates that are positive, and a batch run that ends (the store counts readings, so the
durable run must wait for messages × sensors of them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.broker
@pytest.mark.slow
def test_bench_ingest_measures_one_reading_per_message_and_batches():
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "ingest", "--json", "--messages", "2000",
         "--sensors", "4"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(r) == {"reading", "batch", "batch_over_reading_readings_per_s"}
    for form, k in (("reading", 1), ("batch", 4)):
        f = r[form]
        assert (f["payload"], f["messages"], f["readings_per_message"]) == (form, 2000, k)
        rates = [f["bare_paho_msg_per_s"], f["durable_msg_per_s"], f["ratio"],
                 f["service_rss_mb"]]
        assert all(v > 0 for v in rates), f
        assert f["bare_paho_readings_per_s"] == pytest.approx(k * f["bare_paho_msg_per_s"],
                                                              abs=k)
        assert f["durable_readings_per_s"] == pytest.approx(k * f["durable_msg_per_s"], abs=k)
    assert r["batch_over_reading_readings_per_s"] == pytest.approx(
        r["batch"]["durable_readings_per_s"] / r["reading"]["durable_readings_per_s"], abs=0.01)
