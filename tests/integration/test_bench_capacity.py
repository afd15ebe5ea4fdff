"""``appliance bench capacity --json`` on a tiny mix: the report's shape, and figures that
are positive and finite (not their size: the machine decides that).  The mix's sensors
come from the config (its ``[pipeline.sensors]``), its topics too; the rest from flags."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


@pytest.mark.broker
@pytest.mark.slow
def test_bench_capacity_reports_every_figure_of_a_tiny_mix(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text('[mqtt]\ntopic_prefix = "site"\n'
                      "[pipeline.sensors.lube_temp]\n[pipeline.sensors.vibration]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "capacity", "--json", "--assets", "5",
         "--config", str(config), "--hz", "1", "--seconds", "25"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["mix"] == {"assets": 5, "sensors": 2, "hz": 1.0, "payload": "reading",
                        "readings_per_s": 10.0}
    assert r["sensor_names"] == ["lube_temp", "vibration"]
    assert r["mix_source"]["sensors"] == "config [pipeline.sensors]"
    assert r["config"] == str(config) and r["notes"] == []
    assert r["sustained"] is True
    assert r["verdict"].startswith("this gateway sustains 5 assets × 2 sensors at 1 Hz")
    positive = [r["highest_sustained_hz"], r["highest_sustained_readings_per_s"],
                r["bare_paho_msg_per_s"], r["service_msg_per_s"], r["ratio"],
                r["steady_rss_mb"], r["bytes_per_reading"], r["db_growth_mb_per_day"],
                r["reading_to_prediction_s"]["p50"], r["reading_to_prediction_s"]["p99"]]
    assert all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in positive), \
        positive
    assert math.isfinite(r["rss_slope_mb_per_min"]) and r["headroom_percent"] >= 0
    assert {"ingest", "store", "features", "predict", "ingest-mqtt"} <= set(r["cpu_percent"])
    assert all(v >= 0 for v in r["cpu_percent"].values())
    step = r["steps"][0]
    assert step["sustained"] and step["readings_sent"] > 0 and step["publisher_kept_up"]
    assert set(r["tick_to_alert_s"]) == {"p50", "p99", "samples"}
