"""``appliance bench train --json`` on a tiny history: the report's shape, and training
figures that are positive (not their size: the machine decides that)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_train_reports_the_training_time_and_peak_rss(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "bench", "train", "--json", "--quiet",
         "--assets", "2", "--days", "3", "--no-backtest", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (r["assets"], r["days"]) == (2, 3.0)
    assert r["rows"] > 2 * 3 * 1440 * 4  # 5 sensors a minute, a few gaps
    runs = ("gbt", "logistic", "both")
    assert set(r["seconds"]) == {"simulate", "import"} | {f"train_{n}" for n in runs}
    for figures in (r["train_wall_s"], r["train_peak_rss_mb"], r["train_start_rss_mb"]):
        assert set(figures) == set(runs)
        assert all(isinstance(v, int | float) and v > 0 for v in figures.values()), figures
    assert all(r["seconds"][f"train_{n}"] > 0 for n in runs)
    # the child's wall time holds its training; its peak holds its start
    assert all(r["train_wall_s"][n] >= r["seconds"][f"train_{n}"] for n in runs)
    assert all(r["train_peak_rss_mb"][n] >= r["train_start_rss_mb"][n] for n in runs)
    assert r["import_rows_per_s"] > 0
    assert set(r["validation"]) == set(r["train_rows"]) == {"gbt", "logistic"}
    assert all(rows["train"] > 0 for rows in r["train_rows"].values())
    assert "backtest" not in r and "backtest" not in r["seconds"]
    assert (tmp_path / "appliance.duckdb").exists()
