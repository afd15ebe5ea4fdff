"""The DuckDB file: migrations, dedup checks, and a damaged write-ahead log."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np

from appliance.storage import tables
from appliance.storage.database import connect
from appliance.timefmt import to_us

TABLES = {"readings", "readings_raw", "series", "faults", "predictions", "alerts",
          "dead_letters", "models", "drift_events", "training_runs", "schema_migrations"}


def test_a_new_file_gets_every_table_and_reopening_migrates_nothing(tmp_path):
    path = tmp_path / "a.duckdb"
    con, report = connect(path)
    names = {r[0] for r in
             con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert names >= TABLES
    assert report.migrated_to >= 1 and report.backups == []
    con.close()
    con, again = connect(path)
    assert again.migrated_to == report.migrated_to and again.backups == []
    assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == \
        report.migrated_to
    con.close()


def test_stored_already_finds_exactly_the_stored_pairs(tmp_path):
    con, _ = connect(tmp_path / "a.duckdb")
    sid = np.array([0, 0, 1], dtype=np.int32)
    ts = to_us(np.array([100.0, 101.0, 100.0]))
    tables.insert_readings(con, sid, ts, np.array([1.0, 2.0, 3.0]))
    cand_sid = np.array([0, 1, 1, 0], dtype=np.int32)
    cand_ts = to_us(np.array([101.0, 100.0, 101.0, 100.5]))
    assert tables.stored_already(con, cand_sid, cand_ts).tolist() == [True, True, False, False]
    con.close()


WRITE_AND_DIE = """
import os, sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SET checkpoint_threshold = '1GB'")
con.execute("INSERT INTO faults VALUES (now()::TIMESTAMP, 'l', 'a', 'start', 'x', 'test')")
os._exit(0)  # a power cut: no checkpoint, the WAL stays behind
"""


def _die_with_a_wal(path) -> bytes:
    subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(path)], check=True)
    wal = path.with_name(path.name + ".wal")
    return wal.read_bytes()


def test_a_corrupt_wal_is_set_aside_and_the_file_opens(tmp_path, caplog):
    path = tmp_path / "a.duckdb"
    con, _ = connect(path)
    con.execute("INSERT INTO faults VALUES (now()::TIMESTAMP, 'l', 'a', 'start', 'kept', 'test')")
    con.execute("CHECKPOINT")
    con.close()
    data = _die_with_a_wal(path)
    wal = path.with_name(path.name + ".wal")
    damaged = data[: len(data) // 3] + b"\xde\xad\xbe\xef" * 64  # a torn, checksum-failing tail
    wal.write_bytes(damaged)
    try:
        duckdb.connect(str(path)).close()
        raise AssertionError("DuckDB opened a corrupt WAL: this test no longer damages it")
    except duckdb.Error as exc:
        assert "WAL" in str(exc)
    wal.write_bytes(damaged)
    con, report = connect(path)
    codes = [r[0] for r in con.execute("SELECT code FROM faults").fetchall()]
    con.close()
    assert codes == ["kept"]  # checkpointed data survives; the torn entry is gone
    assert report.damaged_wal.startswith(str(wal) + ".damaged-")
    assert (tmp_path / report.damaged_wal).read_bytes() == damaged
    assert "could not replay its write-ahead log" in caplog.text


def test_a_truncated_wal_replays_what_it_can(tmp_path):
    path = tmp_path / "a.duckdb"
    connect(path)[0].close()
    data = _die_with_a_wal(path)
    path.with_name(path.name + ".wal").write_bytes(data[: len(data) // 2])
    con, report = connect(path)
    con.close()
    assert report.damaged_wal == ""


def test_a_snapshot_bigger_than_the_memory_limit_reads_back_as_the_stored_history(tmp_path):
    """The retraining loop copies the history out of the service's connection, whose
    DuckDB memory limit is small: the copy streams (a sort of the rows there ran out of
    memory), and the reader restores the order the history loader gives."""
    from appliance.storage.history import load_histories
    from appliance.storage.snapshot import open_snapshot, write_snapshot

    con, _ = connect(tmp_path / "big.duckdb", memory_limit="16MB")
    rng = np.random.default_rng(0)
    n = 2_000_000
    con.execute("INSERT INTO series VALUES (1, 'l1', 'a1', 's1'), (2, 'l1', 'a2', 's1')")
    ts_us = (1_750_000_000 + rng.permutation(n) // 2).astype(np.int64) * 1_000_000
    tables.insert_readings(con, rng.integers(1, 3, n).astype(np.int32), ts_us,
                           rng.normal(size=n))
    con.execute("INSERT INTO faults VALUES (make_timestamp(1750000100000000), 'l1', 'a1', "
                "'start', 'F', 'mqtt')")
    ready = write_snapshot(con.cursor(), tmp_path / "snap", since=None)
    con.close()
    for path, opened in ((tmp_path / "snap", open_snapshot),
                         (tmp_path / "big.duckdb", lambda p: duckdb.connect(str(p)))):
        reader = opened(path)
        try:
            if path.name == "snap":
                copied = load_histories(reader)
            else:
                stored = load_histories(reader)
        finally:
            reader.close()
    assert ready["rows"] == n == copied.readings
    for a, b in zip(stored.histories, copied.histories, strict=True):
        assert a.asset == b.asset and list(a.series) == list(b.series)
        for s in a.series:
            assert np.array_equal(a.series[s][0], b.series[s][0])
            assert np.array_equal(a.series[s][1], b.series[s][1])
        assert np.array_equal(a.fault_starts, b.fault_starts)
