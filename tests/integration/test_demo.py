"""``appliance demo`` twice in a row: each run starts from a clean folder, so each has
its own predictions and none twice (a reduced demo: one asset, fast event time)."""

from __future__ import annotations

import logging
import time

import duckdb
import pytest

from appliance.devtools import demo


def _run(data_dir, broker) -> tuple[float, tuple]:
    started = time.time()
    code = demo.run(data_dir=data_dir, assets=1, speedup=900.0, seed=1, duration_s=12.0,
                    host=broker.host, port=broker.port)
    assert code == 0
    con = duckdb.connect(str(data_dir / "appliance.duckdb"), read_only=True)
    try:
        return started, con.execute(
            "SELECT (SELECT count(*) FROM predictions), "
            "(SELECT count(DISTINCT (asset, ts, model)) FROM predictions), "
            "(SELECT min(epoch(ts)) FROM readings_raw)").fetchone()
    finally:
        con.close()


@pytest.fixture
def keep_log_level():
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)  # the demo quiets the root logger for its view


def test_a_second_demo_starts_clean(tmp_path, broker, capsys, keep_log_level):
    data_dir = tmp_path / "data"
    _, (n1, distinct1, _) = _run(data_dir, broker)
    started2, (n2, distinct2, first_reading2) = _run(data_dir, broker)
    assert n1 > 0 and n2 > 0, (n1, n2)
    assert (n1, n2) == (distinct1, distinct2)  # no tick predicted twice
    # nothing of the first run is left: the second's readings start at its own start
    assert first_reading2 >= started2 - 1.0
    assert "the previous demo's database and models removed" in capsys.readouterr().out


def test_the_demo_leaves_a_folder_of_other_files_alone(tmp_path):
    (tmp_path / "mine.csv").write_text("precious")
    with pytest.raises(ValueError, match=r"mine\.csv"):
        demo.fresh_data_dir(tmp_path)
    assert (tmp_path / "mine.csv").read_text() == "precious"


def test_the_demo_leaves_a_service_data_folder_alone(tmp_path):
    (tmp_path / "appliance.duckdb").write_text("a service's database")
    (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match="not a demo's"):
        demo.fresh_data_dir(tmp_path)
    assert (tmp_path / "appliance.duckdb").read_text() == "a service's database"
