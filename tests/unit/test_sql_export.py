"""``appliance sql`` without a service (the guard, the limit, the timeout, the formats, on
a real DuckDB file opened read-only) and ``appliance export`` of a stopped file, read
back by stock DuckDB and by ``train --readings``'s loader."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import duckdb
import numpy as np
import pytest

from appliance.cli import main
from appliance.storage import database, export, history, query
from tests.support.sql import REFUSED

DAY = 86400.0
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z



@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A migrated database: 2 assets × 2 sensors × 3 days of 10-minute readings, faults,
    a prediction."""
    path = tmp_path / "data" / "appliance.duckdb"
    con, _ = database.connect(path)
    (path.parent / "out").symlink_to("/etc")  # see REFUSED "symlink_out"
    con.execute("INSERT INTO series VALUES (1, 'l1', 'a1', 'temp'), (2, 'l1', 'a1', 'vib'), "
                "(3, 'l1', 'a2', 'temp'), (4, 'l2', 'a3', 'temp')")
    steps = int(3 * DAY / 600)
    con.execute(f"INSERT INTO readings_raw SELECT make_timestamp(CAST(({T0} + i * 600) * 1e6 "
                f"AS BIGINT)), s, s * 1000 + i * 0.5 FROM range({steps}) t(i), "
                f"range(1, 5) u(s)")
    con.execute(f"INSERT INTO faults VALUES (make_timestamp(CAST({T0 + DAY} * 1e6 AS BIGINT)),"
                f" 'l1', 'a1', 'start', 'F1', 'mqtt'), (make_timestamp(CAST({T0 + DAY + 3600} "
                f"* 1e6 AS BIGINT)), 'l1', 'a1', 'end', 'F1', 'mqtt')")
    con.execute(f"INSERT INTO predictions VALUES (make_timestamp(CAST({T0 + 2 * DAY} * 1e6 "
                f"AS BIGINT)), 'l1', 'a1', 0.25, 0.5, 'm1', 'champion')")
    con.close()
    return path


def _run(db: Path, text: str, limit: int = 100, timeout_s: float = 30.0) -> query.Result:
    return query.main(db, text.replace("{data}", str(db.parent)), limit, timeout_s)


@pytest.mark.parametrize(("name", "text", "why"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_guard_refuses(db, name, text, why):
    with pytest.raises(query.Refused) as refused:
        _run(db, text)
    assert why in str(refused.value), name


@pytest.mark.parametrize("text", [
    "SELECT count(*) FROM readings", "SHOW TABLES", "DESCRIBE readings",
    "SUMMARIZE faults", "FROM range(3)", "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
    "SELECT * FROM duckdb_tables()", "SELECT * FROM glob('{data}/*.duckdb')",
])
def test_the_guard_admits_reads(db, text):
    result = _run(db, text)
    assert result.columns and result.rows, text


def test_files_in_the_data_directory_may_be_read(db):
    duckdb.sql(f"COPY (SELECT 42 AS answer) TO '{db.parent / 'x.parquet'}' (FORMAT parquet)")
    assert _run(db, "SELECT answer FROM read_parquet('{data}/x.parquet')").rows == [[42]]


def test_the_transaction_is_read_only_even_past_the_guard(db):
    # nextval writes a sequence from inside a SELECT; the read-only transaction stops it
    con = duckdb.connect(str(db))
    con.execute("CREATE SEQUENCE s")
    with pytest.raises(duckdb.Error, match="read-only"):
        query.run(con.cursor(), "SELECT nextval('s')", db.parent, 10, 30.0)
    con.close()


def test_a_result_past_the_limit_is_cut_and_says_so(db):
    result = _run(db, "SELECT * FROM readings ORDER BY ts, sensor", limit=7)
    assert len(result.rows) == 7 and result.truncated
    assert "cut at 7 rows" in query.truncation_note(result)
    exact = _run(db, "SELECT * FROM faults", limit=2)
    assert len(exact.rows) == 2 and not exact.truncated and query.truncation_note(exact) is None


def test_a_query_past_its_timeout_is_interrupted(db):
    # far more work than any machine does in the timeout: interrupted, not finished
    with pytest.raises(duckdb.InterruptException):
        _run(db, "SELECT count(*) FROM range(1000000000000) a", timeout_s=0.3)


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a killed service leaves."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def test_cli_opens_the_file_when_no_service_answers(db, tmp_path, capsys):
    _stale_socket(db.parent / "appliance.sock")
    assert main(["sql", "--db", str(db), "--format", "json",
                 "SELECT asset, count(*) AS n FROM readings GROUP BY asset ORDER BY asset"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"asset": "a1", "n": 864}, {"asset": "a2", "n": 432},
                    {"asset": "a3", "n": 432}]


def test_cli_refusal_exits_2_with_the_reason(db, capsys):
    assert main(["sql", "--db", str(db), "DROP TABLE faults"]) == 2
    assert "refused" in capsys.readouterr().err
    assert _run(db, "SELECT count(*) FROM faults").rows == [[2]]


def test_cli_formats(db, tmp_path, capsys):
    text = "SELECT ts, asset, probability FROM predictions"
    assert main(["sql", "--db", str(db), "--format", "csv", text]) == 0
    assert capsys.readouterr().out.splitlines() == ["ts,asset,probability",
                                                    "2025-01-03T00:00:00,a1,0.25"]
    assert main(["sql", "--db", str(db), "--limit", "5", "SELECT * FROM readings"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 + 5 and "cut at 5 rows" in out.err
    assert main(["sql", "--db", str(db), "--format", "parquet", text]) == 2
    assert main(["sql", "--db", str(db), "--limit", "0", text]) == 2
    assert "must be positive" in capsys.readouterr().err
    out_file = tmp_path / "p.parquet"
    assert main(["sql", "--db", str(db), "--format", "parquet", "--out", str(out_file),
                 text]) == 0
    back = duckdb.sql(f"SELECT typeof(ts), ts, asset, probability FROM '{out_file}'").fetchall()
    assert [(t, str(ts), a, p) for t, ts, a, p in back] == [
        ("TIMESTAMP", "2025-01-03 00:00:00", "a1", 0.25)]


def test_export_of_a_stopped_file_is_read_by_stock_duckdb(db, tmp_path, capsys):
    to = tmp_path / "export"
    assert main(["export", "--db", str(db), "--since", "2025-01-01T12:00:00Z",
                 "--until", "2025-01-03T12:00:00Z", "--to", str(to)]) == 0
    assert "readings: 1152 rows" in capsys.readouterr().out
    dates = sorted(p.name for p in (to / "table=readings").iterdir())
    assert dates == ["date=2025-01-01", "date=2025-01-02", "date=2025-01-03"]
    got = duckdb.sql(
        f"SELECT ts, line, asset, sensor, value, typeof(ts) FROM read_parquet("
        f"'{to}/table=readings/**/*.parquet', hive_partitioning = true) "
        f"ORDER BY ts, line, asset, sensor").fetchall()
    src = duckdb.connect(str(db), read_only=True)
    want = src.execute("SELECT ts, line, asset, sensor, value, 'TIMESTAMP' FROM readings "
                       "WHERE ts >= '2025-01-01 12:00:00' AND ts < '2025-01-03 12:00:00' "
                       "ORDER BY ts, line, asset, sensor").fetchall()
    faults = src.execute("SELECT * FROM faults ORDER BY ts").fetchall()
    src.close()
    assert got == want and len(got) == 1152
    assert duckdb.sql(f"SELECT * EXCLUDE (\"table\", date) FROM read_parquet("
                      f"'{to}/table=faults/**/*.parquet', hive_partitioning = true) "
                      f"ORDER BY ts").fetchall() == faults
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet("
                      f"'{to}/table=predictions/**/*.parquet')").fetchall() == [(1,)]
    assert not (to / "table=alerts").exists()  # no alerts in the window: no folder
    # a second export into the same folder would mix two: refused before anything runs
    assert main(["export", "--db", str(db), "--since", "0", "--to", str(to)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_an_export_loads_as_the_database_does(db, tmp_path):
    con = database.open_offline(db, read_only=True)
    try:
        done = export.write_export(con, tmp_path / "x", 0.0, None, ["readings", "faults"])
        want = history.load_histories(con)
    finally:
        con.close()
    assert done["tables"] == {"readings": 4 * 432, "faults": 2}
    loaded = export.open_export(str(tmp_path / "x" / "**"))
    try:
        got = history.load_histories(loaded)
    finally:
        loaded.close()
    assert (got.t_start, got.t_end, got.readings, got.faults) == (
        want.t_start, want.t_end, want.readings, want.faults)
    for g, w in zip(got.histories, want.histories, strict=True):
        assert g.asset == w.asset and sorted(g.series) == sorted(w.series)
        for sensor, (ts, values) in w.series.items():
            np.testing.assert_array_equal(g.series[sensor][0], ts)
            np.testing.assert_array_equal(g.series[sensor][1], values)
        np.testing.assert_array_equal(g.fault_starts, w.fault_starts)


def test_control_settings_are_checked_and_the_socket_found(tmp_path):
    from appliance import config

    path = tmp_path / "appliance.toml"
    path.write_text('[storage]\npath = "data/a.duckdb"\n[control]\nmax_rows = 0\n')
    with pytest.raises(config.ConfigError) as bad:
        config.load(path)
    assert str(path) in str(bad.value) and "max_rows" in str(bad.value)
    path.write_text('[storage]\npath = "data/a.duckdb"\n')
    assert config.load(path).socket_path() == tmp_path / "data" / "appliance.sock"
    path.write_text('[storage]\npath = "data/a.duckdb"\n[control]\nsocket = "run/x.sock"\n')
    assert config.load(path).socket_path() == tmp_path / "run" / "x.sock"


def test_parquet_output_keeps_bytes_and_nulls(db, tmp_path):
    # bytes travel as base64 in the JSON reply; the Parquet file has the bytes again
    out = tmp_path / "b.parquet"
    assert main(["sql", "--db", str(db), "--format", "parquet", "--out", str(out),
                 "SELECT '\\x00ab'::BLOB AS b, NULL::DOUBLE AS n"]) == 0
    assert duckdb.sql(f"SELECT b, n FROM '{out}'").fetchall() == [(b"\x00ab", None)]
