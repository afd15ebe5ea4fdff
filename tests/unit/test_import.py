"""Importing history files: forms, bad rows with line numbers, duplicates, faults, the lock."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from appliance import cli
from appliance.config import NAME_PATTERN
from appliance.importer.faults import import_faults
from appliance.importer.readings import RESERVED_SENSOR, import_readings
from appliance.importer.report import ImportRefused
from appliance.storage import database, history

T0 = 1735689600.0  # 2025-01-01T00:00:00Z


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def con():
    c = database.open_memory()
    yield c
    c.close()


def stored(con, sql: str = "SELECT count(*) FROM readings_raw") -> int:
    return con.execute(sql).fetchone()[0]


def test_long_form_bad_rows_are_skipped_and_reported_with_their_line_numbers(tmp_path, con):
    f = write(tmp_path / "r.csv",
              "ts,asset,sensor,value\n"                       # line 1
              "2025-01-01T00:00:00Z,a1,temp,1.5\n"            # 2 ok
              "2025-01-01T00:00:10Z,a1,temp,abc\n"            # 3 not a number
              "2025-01-01T00:00:20Z,a1,temp\n"                # 4 missing column
              "2025-01-01T00:00:30Z,,temp,2\n"                # 5 empty asset
              "\n"                                            # 6 blank (skipped)
              "not-a-time,a1,temp,3\n"                        # 7 bad time
              "2025-01-01T00:00:40Z,a1,temp,4,5\n"            # 8 too many columns
              "2025-01-01T00:00:50Z,a1,temp,nan\n"            # 9 a missing value
              "2025-01-01T00:01:00Z,?!,temp,7\n"              # 10 nothing of the name kept
              "2025-01-01T00:01:10Z,a1,fault,7\n"             # 11 reserved sensor
              "2035-01-01T00:00:00Z,a1,temp,7\n"              # 12 in the future
              "2025-01-01T00:01:20Z,a1,temp,\n"               # 13 empty value
              "2025-01-01 00:01:30,a1,temp,8\n")              # 14 ok (zone-less = UTC)
    r = import_readings(con, f, now=T0 + 86400)
    assert r.form == "long" and r.rows == 12
    assert r.stored == 2 and stored(con) == 2
    assert r.bad_rows == 9 and r.nan_values == 1  # nan: no reading, not a bad row
    lines = {p.where: p.reason for p in r.problems}
    assert list(lines) == [f"line {n}" for n in (3, 4, 5, 7, 8, 10, 11, 12, 13)]
    assert "'abc' is not a number" in lines["line 3"]
    assert "missing columns" in lines["line 4"]
    assert lines["line 5"] == "asset is empty"
    assert "'not-a-time' is not a time" in lines["line 7"]
    assert "too many columns" in lines["line 8"]
    assert "no character a name can keep" in lines["line 10"]
    assert "reserved" in lines["line 11"]
    assert "in the future" in lines["line 12"]
    assert lines["line 13"] == "value is empty"
    ts = [t for (t,) in con.execute("SELECT epoch(ts) FROM readings ORDER BY ts").fetchall()]
    assert ts == [T0, T0 + 90]
    assert r.bad_row_reasons == {
        "unreadable value": 1, "missing columns": 1, "empty asset": 1, "unreadable ts": 1,
        "too many columns": 1, "invalid asset name": 1,
        "reserved sensor name": 1, "ts in the future": 1, "empty value": 1}
    text = r.summary()
    assert "skipped 9 bad rows (1 empty asset, 1 empty value, " in text
    assert "1 nan values (a missing reading: not stored)" in text
    assert "line 3: value: 'abc' is not a number" in text
    assert r.losses() == ["9 bad rows skipped"] and r.losses(allow_skipped=True) == []


def test_only_the_first_n_problems_are_listed_but_all_are_counted(tmp_path, con):
    rows = "".join(f"2025-01-01T00:00:{i:02d}Z,a1,temp,x{i}\n" for i in range(30))
    f = write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + rows)
    r = import_readings(con, f, max_problems=5)
    assert r.bad_rows == 30 and r.stored == 0
    assert [p.where for p in r.problems] == [f"line {n}" for n in range(2, 7)]


def test_rows_already_stored_or_repeated_in_the_file_are_not_stored_twice(tmp_path, con):
    f = write(tmp_path / "r.csv",
              "ts,line,asset,sensor,value\n"
              "2025-01-01T00:00:00Z,l1,a1,temp,1\n"
              "2025-01-01T00:00:10Z,l1,a1,temp,2\n"
              "2025-01-01T00:00:00Z,l1,a1,temp,9\n"   # repeats line 2
              "2025-01-01T00:00:00Z,l1,a2,temp,3\n")
    r1 = import_readings(con, f)
    assert (r1.stored, r1.repeated_in_file, r1.already_stored) == (3, 1, 0)
    assert any("line 4 repeats the series and time of line 2" in n for n in r1.notes)
    assert stored(con, "SELECT value FROM readings WHERE asset='a1' AND epoch(ts)="
                       f"{T0}") == 1.0
    r2 = import_readings(con, f)
    assert (r2.stored, r2.already_stored) == (0, 3)
    more = write(tmp_path / "more.csv", "ts,line,asset,sensor,value\n"
                 "2025-01-01T00:00:10Z,l1,a1,temp,2\n2025-01-01T00:00:20Z,l1,a1,temp,5\n")
    r3 = import_readings(con, more)
    assert (r3.stored, r3.already_stored) == (1, 1)
    assert stored(con) == 4


def test_an_import_interrupted_while_storing_stores_nothing(tmp_path, con):
    import io

    from appliance.console import Progress

    class Interrupted(Progress):
        """Ctrl-C as the first stored chunk's progress is drawn: rows already written."""

        def bar(self, label: str, fraction: float) -> None:
            if label.startswith("storing"):
                raise KeyboardInterrupt
            super().bar(label, fraction)

    first = write(tmp_path / "first.csv", "ts,line,asset,sensor,value\n"
                  "2025-01-01T00:00:00Z,l1,a1,temp,1\n")
    import_readings(con, first)
    before = (stored(con), stored(con, "SELECT count(*) FROM series"))
    more = write(tmp_path / "more.csv", "ts,line,asset,sensor,value\n" + "".join(
        f"2025-01-01T00:{m:02d}:00Z,l2,b{m % 3},temp,{m}\n" for m in range(1, 60)))
    with pytest.raises(KeyboardInterrupt):
        import_readings(con, more, progress=Interrupted(io.StringIO()))
    assert (stored(con), stored(con, "SELECT count(*) FROM series")) == before
    assert import_readings(con, more).stored == 59   # and it can be run again


def test_wide_form_with_asset_column_empty_cells_and_infinite_values(tmp_path, con):
    f = write(tmp_path / "w.csv",
              "timestamp,asset,temp,pressure\n"
              "1735689600,a1,20.5,1.0\n"        # Unix seconds
              "1735689610,a1,,1.1\n"            # empty cell: no reading
              "1735689620,a1,inf,1.2\n"         # line 4: a bad value, the rest kept
              "1735689630,a1,21.0,oops\n")      # line 5: unreadable row
    r = import_readings(con, f)
    assert r.form == "wide" and r.sensors == ["pressure", "temp"]
    assert (r.stored, r.empty_values, r.bad_values, r.bad_rows) == (4, 1, 1, 1)
    assert r.bad_value_reasons == {"non-finite temp": 1}
    assert r.bad_row_reasons == {"unreadable pressure": 1}
    where = {p.where: p.reason for p in r.problems}
    assert "temp: value inf is not a finite number" in where["line 4"]
    assert "'oops' is not a number" in where["line 5"]
    got = con.execute("SELECT sensor, epoch(ts), value FROM readings ORDER BY sensor, ts"
                      ).fetchall()
    assert got == [("pressure", T0, 1.0), ("pressure", T0 + 10, 1.1),
                   ("pressure", T0 + 20, 1.2), ("temp", T0, 20.5)]


def test_wide_form_names_its_asset_from_the_caller(tmp_path, con):
    f = write(tmp_path / "nab.csv", "timestamp,value\n2013-12-02 21:15:00,73.9\n"
                                    "2013-12-02 21:20:00,74.9\n")
    with pytest.raises(ImportRefused, match="--asset"):
        import_readings(con, f)
    r = import_readings(con, f, asset="machine", line="hall2")
    assert r.stored == 2
    assert con.execute("SELECT DISTINCT line, asset, sensor FROM readings").fetchall() == \
        [("hall2", "machine", "value")]


def test_times_with_offsets_are_stored_in_utc(tmp_path, con):
    f = write(tmp_path / "r.csv", "ts,asset,sensor,value\n2025-01-01T02:00:00+02:00,a,s,1\n")
    import_readings(con, f)
    assert stored(con, "SELECT epoch(ts) FROM readings") == T0


def test_parquet_long_form_reports_row_numbers(tmp_path, con):
    path = tmp_path / "r.parquet"
    duckdb.execute(
        f"COPY (SELECT * FROM (VALUES (1, TIMESTAMP '2025-01-01 00:00:00', 'a1', 's', 1.0), "
        f"(2, TIMESTAMP '2025-01-01 00:00:10', 'a1', 's', 'NaN'::DOUBLE), "
        f"(3, NULL, 'a1', 's', 3.0), (4, TIMESTAMP '2025-01-01 00:00:30', 'a1', 's', 4.0)) "
        f"t(i, ts, asset, sensor, value) ORDER BY i) TO '{path}' (FORMAT parquet)")
    r = import_readings(con, path)
    assert r.stored == 2 and r.bad_rows == 1 and r.nan_values == 1
    assert [(p.where, p.reason) for p in r.problems] == [("row 3", "ts is empty")]


def test_a_file_that_cannot_be_imported_is_refused_whole(tmp_path, con):
    with pytest.raises(ImportRefused, match="not found"):
        import_readings(con, tmp_path / "missing.csv")
    with pytest.raises(ImportRefused, match="no time column"):
        import_readings(con, write(tmp_path / "a.csv", "when,asset,x\n1,a,2\n"))
    with pytest.raises(ImportRefused, match="empty"):
        import_readings(con, write(tmp_path / "b.csv", ""))
    with pytest.raises(ImportRefused, match=r"no sensor columns.*° left out: no character"):
        import_readings(con, write(tmp_path / "c.csv", "ts,asset,°\n1,a,2\n"))
    assert stored(con) == 0


# The shape of SKAB's files: a sensor named with spaces, label columns, ";" between.
SKAB_HEADER = "datetime;Accelerometer1RMS;Volume Flow RateRMS;anomaly;changepoint"


def skab_like(path: Path, n: int = 60) -> Path:
    """A wide file of SKAB's shape: an anomaly from row 20 to 39, its changepoint at 20."""
    return write(path, SKAB_HEADER + "\n" + "".join(
        f"{T0 + i};{0.2 + i / 1000};{32 + i % 3};{int(20 <= i < 40)};{int(i == 20)}\n"
        for i in range(n)))


def test_a_sensor_name_with_spaces_is_mapped_not_dropped_in_long_form(tmp_path, con):
    rows = "".join(f"{T0 + i},valve 1,{s},{i}\n" for i in range(50)
                   for s in ("Volume Flow RateRMS", "Accelerometer1RMS"))
    r = import_readings(con, write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + rows))
    assert (r.stored, r.bad_rows, r.losses()) == (100, 0, [])
    assert [str(x) for x in r.renamed] == ["asset 'valve 1' → 'valve_1'",
                                           "sensor 'Volume Flow RateRMS' → 'Volume_Flow_RateRMS'"]
    assert "    sensor 'Volume Flow RateRMS' → 'Volume_Flow_RateRMS'" in r.summary()
    assert con.execute("SELECT asset, sensor, count(*) FROM readings GROUP BY ALL ORDER BY ALL"
                       ).fetchall() == [("valve_1", "Accelerometer1RMS", 50),
                                        ("valve_1", "Volume_Flow_RateRMS", 50)]
    # The fault log names the asset as the readings file did: the faults land on it.
    f = import_faults(con, write(tmp_path / "f.csv", "asset,ts_start,ts_end,code\n"
                                                     f"valve 1,{T0 + 10},{T0 + 20},X\n"))
    assert f.stored == 2 and f.assets == ["valve_1"] and not f.notes
    assert history.load_histories(con).histories[0].fault_starts.tolist() == [T0 + 10]


def test_a_wide_file_maps_its_sensor_names_and_leaves_label_columns_out(tmp_path, con):
    r = import_readings(con, skab_like(tmp_path / "skab.csv"), asset="valve1")
    assert r.form == "wide" and r.stored == 120 and r.bad_rows == 0
    assert r.sensors == ["Accelerometer1RMS", "Volume_Flow_RateRMS"]
    assert [c for c, _ in r.left_out] == ["anomaly", "changepoint"]
    assert r.losses() == ["column 'anomaly' left out", "column 'changepoint' left out"]
    text = r.summary()
    assert "sensor 'Volume Flow RateRMS' → 'Volume_Flow_RateRMS'" in text
    assert ("left out: anomaly (looks like a label column; store its events as faults with "
            "--faults, or --ignore it to silence this)") in text
    assert stored(con, "SELECT count(DISTINCT sensor) FROM readings") == 2


def test_cli_import_exits_1_for_columns_left_out_unless_ignored(tmp_path, capsys):
    f, db = skab_like(tmp_path / "skab.csv"), str(tmp_path / "d.duckdb")
    assert cli.main(["import", str(f), "--asset", "valve1", "--db", db, "--quiet"]) == 1
    out = capsys.readouterr()
    assert "stored 120 readings" in out.out and "left out: changepoint" in out.out
    assert "column 'anomaly' left out; column 'changepoint' left out" in out.err
    assert cli.main(["import", str(f), "--asset", "valve2", "--db", db, "--quiet",
                     "--ignore", "ANOMALY", "--ignore", "changepoint"]) == 0
    out = capsys.readouterr().out
    assert "ignored as asked (--ignore): anomaly, changepoint" in out and "left out" not in out
    assert cli.main(["import", str(f), "--asset", "valve3", "--db", db, "--quiet",
                     "--ignore", "anomaly", "--ignore", "nosuch"]) == 2
    assert "--ignore nosuch: no such column" in capsys.readouterr().err


def test_an_ignored_column_is_as_if_absent(tmp_path, con):
    f = write(tmp_path / "r.csv", "ts,line,asset,sensor,value,note\n"
                                  f"{T0},hall 2,a,s,1,checked\n")
    r = import_readings(con, f, ignore=["LINE", "note"])
    assert (r.stored, r.ignored, r.left_out, r.losses()) == (1, ["line", "note"], [], [])
    assert con.execute("SELECT line FROM readings").fetchall() == [("line1",)]
    r = import_readings(con, f)
    assert r.left_out == [("note", "not a column of the long form (ts, asset, sensor, value, "
                                   "line); --ignore it to silence this")]
    assert con.execute("SELECT DISTINCT line FROM readings ORDER BY 1").fetchall() == \
        [("hall_2",), ("line1",)]


def test_rename_tells_apart_names_that_would_become_one(tmp_path, con, capsys):
    f = write(tmp_path / "w.csv", "ts,asset,Flow Rate,Flow_Rate\n"
                                  f"{T0},a,1,2\n{T0 + 10},a,3,4\n")
    with pytest.raises(ImportRefused, match="the sensor names 'Flow Rate' and 'Flow_Rate' "
                                            "would both be stored as 'Flow_Rate'"):
        import_readings(con, f)
    assert stored(con) == 0
    r = import_readings(con, f, renames={"Flow Rate": "flow_in"})
    assert r.stored == 4 and r.sensors == ["Flow_Rate", "flow_in"]
    assert [str(x) for x in r.renamed] == ["sensor 'Flow Rate' → 'flow_in' (--rename)"]
    db = str(tmp_path / "d.duckdb")
    assert cli.main(["import", str(f), "--db", db, "--rename", "Flow Rate=bad name"]) == 2
    assert "--rename 'Flow Rate=bad name': 'bad name' is not a valid name" in \
        capsys.readouterr().err
    assert cli.main(["import", str(f), "--db", db, "--quiet", "--rename", "Flow Rate=fin",
                     "--rename", "nosuch=x"]) == 0
    out = capsys.readouterr().out
    assert "sensor 'Flow Rate' → 'fin' (--rename)" in out
    assert "note: --rename nosuch=x: no such name in the files" in out


def test_history_from_files_takes_the_same_name_options(tmp_path, capsys):
    from appliance.importer.command import load_files

    f = skab_like(tmp_path / "skab.csv")
    h, reports = load_files(f, asset="valve1", renames={"Volume Flow RateRMS": "flow"},
                            ignore=["anomaly", "changepoint"])
    assert sorted(h.histories[0].series) == ["Accelerometer1RMS", "flow"]
    assert reports[0].losses() == []
    assert cli.main(["backtest", "--rename", "a=b"]) == 2
    assert "--rename and --ignore go with --readings" in capsys.readouterr().err


def test_sanitising_rule():
    from appliance.importer.names import sanitise
    from appliance.mqtt.topics import is_name

    cases = {"Volume Flow RateRMS": "Volume_Flow_RateRMS", "temp.1": "temp.1",
             "Drück (bar)": "Druck_bar", "Temp °C": "Temp_C", "_x y_": "_x_y_",
             "a/b//c": "a_b_c", "x" * 70: "x" * 64, "°": None, "日本": None, "": None}
    for name, want in cases.items():
        got = sanitise(name)
        assert got == want, name
        assert got is None or is_name(got)


def test_non_numeric_columns_are_left_out_not_their_rows(tmp_path, con):
    f = write(tmp_path / "w.csv", "ts,asset,temp,status\n" + "".join(
        f"{T0 + 10 * i},a,{i},{'RUNNING' if i % 2 else 'STOPPED'}\n" for i in range(10)))
    r = import_readings(con, f)
    assert (r.stored, r.bad_rows, r.sensors) == (10, 0, ["temp"])
    assert r.left_out == [("status", "not numbers (e.g. 'STOPPED'); --ignore it to "
                                     "silence this")]
    path = tmp_path / "w.parquet"
    duckdb.execute(f"COPY (SELECT to_timestamp({T0} + 10 * i) AS ts, 'b' AS asset, "
                   f"i * 1.0 AS temp, 'RUNNING' AS status FROM range(10) t(i)) "
                   f"TO '{path}' (FORMAT parquet)")
    r = import_readings(con, path)
    assert r.stored == 10 and [c for c, _ in r.left_out] == ["status"]


def test_a_fault_that_ends_where_it_starts_lasts_zero_seconds(tmp_path, con):
    from appliance.importer.command import load_files
    from appliance.messages import FaultEvent
    from appliance.storage import tables

    rows = "".join(f"{T0 + 10 * i},a1,temp,{i}\n{T0 + 10 * i},a2,temp,{i}\n"
                   for i in range(100))
    readings = write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + rows)
    faults = write(tmp_path / "f.csv", "asset,ts_start,ts_end,code\n"
                                       f"a1,{T0 + 100},{T0 + 100},BLIP\n"
                                       f"a1,{T0 + 500},{T0 + 600},X\n")
    import_readings(con, readings)
    r = import_faults(con, faults)
    assert (r.stored, r.bad_rows) == (4, 0)
    # Over MQTT on a2: two faults back to back (one ends as the next starts), then one
    # of length 0, its end stored first.
    ev = [(200, "start"), (300, "end"), (300, "start"), (400, "end"), (500, "end"),
          (500, "start")]
    tables.insert_faults(con, [FaultEvent("line1", "a2", T0 + t, s, "X") for t, s in ev],
                         "mqtt")
    h = history.load_histories(con)
    a1, a2 = h.histories
    assert a1.fault_starts.tolist() == [T0 + 100, T0 + 500]
    assert a1.fault_ends.tolist() == [T0 + 100, T0 + 600]
    assert a2.fault_starts.tolist() == [T0 + 200, T0 + 300, T0 + 500]
    assert a2.fault_ends.tolist() == [T0 + 300, T0 + 400, T0 + 500]
    assert h.notes == ()
    # History straight from files, as train and backtest read it.
    from_files, _ = load_files(readings, faults)
    assert from_files.histories[0].fault_ends.tolist() == [T0 + 100, T0 + 600]
    assert from_files.notes == ()


def test_fault_log_becomes_start_and_end_events(tmp_path, con):
    f = write(tmp_path / "faults.csv",
              "asset,ts_start,ts_end,code\n"
              "a1,2025-01-01T01:00:00Z,2025-01-01T01:20:00Z,OVERTEMP\n"
              "a1,2025-01-01T05:00:00Z,,\n"                                  # still open
              "a2,2025-01-01T03:00:00Z,2025-01-01T02:00:00Z,X\n"              # line 4: ends first
              "a2,yesterday,2025-01-01T02:00:00Z,X\n")                        # line 5
    r = import_faults(con, f)
    assert (r.rows, r.stored, r.bad_rows) == (4, 3, 2)
    where = {p.where: p.reason for p in r.problems}
    assert "before it starts" in where["line 4"] and "not a time" in where["line 5"]
    events = con.execute("SELECT asset, state, epoch(ts), code, source FROM faults "
                         "ORDER BY ts").fetchall()
    assert events == [("a1", "start", T0 + 3600, "OVERTEMP", "import"),
                      ("a1", "end", T0 + 4800, "OVERTEMP", "import"),
                      ("a1", "start", T0 + 5 * 3600, "", "import")]
    again = import_faults(con, f)
    assert (again.stored, again.already_stored) == (0, 3)


def test_load_histories_pairs_fault_events_per_asset(tmp_path, con):
    rows = "".join(f"{T0 + 10 * i},a1,temp,{i}\n{T0 + 10 * i},a2,temp,{-i}\n"
                   for i in range(100))
    import_readings(con, write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + rows))
    import_faults(con, write(tmp_path / "f.csv", "asset,ts_start,ts_end,code\n"
                                     f"a1,{T0 + 100},{T0 + 200},X\na1,{T0 + 500},,Y\n"))
    h = history.load_histories(con)
    assert [x.asset for x in h.histories] == ["a1", "a2"]
    assert (h.t_start, h.t_end, h.readings, h.faults) == (T0, T0 + 990, 200, 2)
    a1 = h.histories[0]
    ts, values = a1.series["temp"]
    assert np.array_equal(ts, T0 + 10 * np.arange(100)) and values[-1] == 99
    assert a1.fault_starts.tolist() == [T0 + 100, T0 + 500]
    assert a1.fault_ends[0] == T0 + 200 and math.isnan(a1.fault_ends[1])
    assert len(h.histories[1].fault_starts) == 0


def test_pairing_copes_with_missing_end_and_start_events():
    faults, notes = history._pair_faults([
        ("a", "end", 50_000_000), ("a", "start", 100_000_000), ("a", "start", 300_000_000),
        ("a", "end", 400_000_000)])
    assert faults["a"] == ([100.0, 300.0], [100.0, 400.0])
    assert len(notes) == 2


@pytest.mark.parametrize("order", [("end", "start"), ("start", "end")])
def test_pairing_at_one_time_depends_on_whether_a_fault_is_open(order):
    zero, _ = history._pair_faults([("a", s, 100_000_000) for s in order])
    assert zero["a"] == ([100.0], [100.0])
    back_to_back, notes = history._pair_faults(
        [("a", "start", 0)] + [("a", s, 100_000_000) for s in order] + [("a", "end", 2e8)])
    assert back_to_back["a"] == ([0.0, 100.0], [100.0, 200.0]) and notes == []
    # a fault [0, 10] and a zero-length one at 10: the second ends too
    after, notes = history._pair_faults([("a", "start", 0)] + [
        ("a", s, 10_000_000) for s in order] + [("a", "end", 10_000_000)])
    assert after["a"] == ([0.0, 10.0], [10.0, 10.0]) and notes == []


@pytest.fixture
def held_database(tmp_path):
    """A database file held open by another process, as the running service holds it."""
    path = tmp_path / "held.duckdb"
    database.open_offline(path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('open', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        yield path
    finally:
        proc.kill()
        proc.wait()


def test_a_database_held_by_the_service_gives_one_clear_error(held_database, tmp_path,
                                                             capsys):
    with pytest.raises(database.DatabaseBusy, match="the service is running"):
        database.open_offline(held_database)
    f = write(tmp_path / "r.csv", "ts,asset,sensor,value\n2025-01-01T00:00:00Z,a,s,1\n")
    assert cli.main(["import", str(f), "--db", str(held_database), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the service is running; stop it" in err[0]
    assert cli.main(["train", "--db", str(held_database), "--quiet"]) == 1
    assert "the service is running" in capsys.readouterr().err
    # The write-ahead log of the holder was left alone.
    assert not list(tmp_path.glob("*.damaged-*"))


def test_cli_import_prints_the_report(tmp_path, capsys):
    f = write(tmp_path / "r.csv", "ts,asset,sensor,value\n2025-01-01T00:00:00Z,a,s,1\n"
                                  "2025-01-01T00:00:10Z,a,s,zz\n")
    faults = write(tmp_path / "f.csv", "asset,ts_start,ts_end,code\na,2025-01-01T00:00:05Z,,X\n")
    db = tmp_path / "d.duckdb"
    # A skipped row is done with problems (1), unless the user accepts skipped rows.
    assert cli.main(["import", str(f), "--faults", str(faults), "--db", str(db)]) == 1
    out = capsys.readouterr()
    assert "stored 1 readings" in out.out and "line 3: value: 'zz' is not a number" in out.out
    assert "skipped 1 bad rows (1 unreadable value)" in out.out
    assert "stored 1 fault events" in out.out
    assert "reading" in out.err  # progress on stderr
    assert "not everything was stored: 1 bad rows skipped" in out.err
    assert cli.main(["import", str(f), "--db", str(db), "--allow-skipped", "--quiet"]) == 0
    assert "skipped 1 readings already stored" in capsys.readouterr().out
    assert cli.main(["import", str(tmp_path / "nope.csv"), "--db", str(db)]) == 2
    assert "file not found" in capsys.readouterr().err


def test_progress_bar_follows_a_long_read(tmp_path):
    import io

    from appliance.console import Progress

    n = 200_000
    rows = "\n".join(f"{T0 + i},a,s,{i % 7}" for i in range(n))
    f = write(tmp_path / "big.csv", "ts,asset,sensor,value\n" + rows + "\n")
    stream = io.StringIO()
    con = database.open_memory()
    t = time.perf_counter()
    r = import_readings(con, f, progress=Progress(stream))
    assert r.stored == n and time.perf_counter() - t < 30
    text = stream.getvalue()
    assert "reading big.csv 100%" in text and f"storing {n} readings 100%" in text


def test_names_follow_the_mqtt_topic_rule():
    from appliance.mqtt import topics

    con = database.open_memory()
    for name in ("press-7", "a.b_c", "x" * 64, "", "x" * 65, "a b", "a/b", "ü"):
        # the import's SQL check and the MQTT topic rule say the same
        in_sql = con.execute("SELECT regexp_full_match(?, ?)",
                             [name, NAME_PATTERN]).fetchone()[0]
        assert in_sql == topics.is_name(name), name
    assert RESERVED_SENSOR == topics.FAULT_SENSOR


def _five_minute_file(tmp_path: Path) -> Path:
    """Two sensors of one asset, one reading each every 5 minutes for a day."""
    rows = [f"{T0 + k * 300.0},a1,{s},{k % 7}" for k in range(288) for s in ("temp", "vib")]
    return write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + "\n".join(rows) + "\n")


def test_import_reports_the_typical_interval_and_the_pipeline_keys_that_would_fit(
        tmp_path, capsys):
    f = _five_minute_file(tmp_path)
    assert cli.main(["import", str(f), "--db", str(tmp_path / "d.duckdb"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "typical interval between readings: 300 s: temp, vib" in out
    # the default 10 s grid would make 30 points of each reading
    assert ("[pipeline] does not fit the data: cadence_s = 10 puts 30 grid points on each "
            "reading of the fastest sensor (temp, one every 300 s): set cadence_s = 300") in out
    assert "set hampel_window_s >= 900" in out
    # with those values set, nothing is said
    cfg = write(tmp_path / "a.toml", "[pipeline]\ncadence_s = 300\nhampel_window_s = 900\n"
                                     "windows_s = [900, 3600]\n")
    assert cli.main(["import", str(f), "--db", str(tmp_path / "e.duckdb"), "--config",
                     str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "typical interval between readings: 300 s" in out
    assert "does not fit" not in out


def test_train_and_backtest_warn_before_they_run_when_the_pipeline_does_not_fit(
        tmp_path, capsys, caplog):
    db = tmp_path / "d.duckdb"
    assert cli.main(["import", str(_five_minute_file(tmp_path)), "--db", str(db),
                     "--quiet"]) == 0
    # one day without faults cannot make a model: the warning comes before that refusal
    assert cli.main(["train", "--db", str(db), "--quiet"]) == 1
    assert cli.main(["backtest", "--db", str(db), "--quiet"]) == 1
    for command in ("train", "backtest"):
        assert (f"{command}: [pipeline] does not fit the data: cadence_s = 10 puts 30 grid "
                f"points") in caplog.text
        assert "set cadence_s = 300" in caplog.text


def test_fit_pipeline_sets_keys_in_the_pipeline_table_and_keeps_the_rest(tmp_path):
    import tomllib

    from appliance.importer.command import write_pipeline_keys

    cfg = write(tmp_path / "a.toml", '[storage]\npath = "x.duckdb"  # kept\n[pipeline]\n'
                                     'cadence_s = 10\nclean = true\n[variants.fast]\n'
                                     'cadence_s = 5\n')
    write_pipeline_keys(cfg, {"cadence_s": 300.0, "hampel_window_s": 900.0,
                              "windows_s": (900.0, 3600.0)})
    doc = tomllib.loads(cfg.read_text())
    assert doc["pipeline"] == {"cadence_s": 300, "hampel_window_s": 900,
                               "windows_s": [900, 3600], "clean": True}
    assert doc["variants"] == {"fast": {"cadence_s": 5}}  # another table's is not touched
    assert 'path = "x.duckdb"  # kept' in cfg.read_text()
    bare = write(tmp_path / "b.toml", "[storage]\npath = 'x.duckdb'\n")
    write_pipeline_keys(bare, {"cadence_s": 60.0})
    assert tomllib.loads(bare.read_text())["pipeline"] == {"cadence_s": 60}


def test_fit_pipeline_writes_nothing_it_could_not_load_again(tmp_path):
    from appliance.config import ConfigError
    from appliance.importer.command import write_pipeline_keys

    spaced = write(tmp_path / "s.toml", '[ pipeline ]\n"cadence_s" = 10\n')
    write_pipeline_keys(spaced, {"cadence_s": 300.0})  # neither a second table nor key
    assert "cadence_s = 300" in spaced.read_text() and "10" not in spaced.read_text()
    text = "[pipeline]\nwindows_s = [\n  600,\n  3600,\n]\n"
    multi = write(tmp_path / "m.toml", text)
    with pytest.raises(ValueError, match="windows_s spans several lines"):
        write_pipeline_keys(multi, {"windows_s": (900.0, 3600.0)})
    assert multi.read_text() == text
    bad = write(tmp_path / "b.toml", "[pipeline]\ncadence_s = 10\n")
    with pytest.raises(ConfigError, match="cadence_s"):  # out of its range
        write_pipeline_keys(bad, {"cadence_s": 0.01})
    assert bad.read_text() == "[pipeline]\ncadence_s = 10\n"


def test_replay_refuses_a_file_the_service_would_set_aside_and_shift_to_now_fits_it(
        tmp_path, capsys):
    import time as time_mod

    from appliance.config import Config
    from appliance.importer.replay import check_limits, schedule

    ahead = time_mod.time() + 3600.0  # an hour ahead of the clock: over max_future_s
    f = write(tmp_path / "r.csv", "ts,asset,sensor,value\n" + "".join(
        f"{ahead + 10.0 * k},a1,temp,{k}\n" for k in range(30)))
    cfg = write(tmp_path / "a.toml", '[mqtt]\nhost = "127.0.0.1"\nport = 9\n')
    # refused before connecting (the port has no broker), naming the key
    assert cli.main(["replay", str(f), "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "30 of 30 readings would be set aside by the service" in err
    assert "over [limits] max_future_s = 300 s; --shift-to-now" in err
    ts = ahead + 10.0 * np.arange(30)
    for speedup in (None, 1.0, 60.0):
        due, shift = schedule(ts, time_mod.time(), speedup, shift_to_now=True)
        check_limits(ts + shift, due, Config())  # fits: nothing raised
        assert ts[-1] + shift == pytest.approx(due[-1])  # the last lands at the end
        assert np.all(ts + shift <= due + 1e-6)  # none ahead of its publication
    with pytest.raises(ImportRefused, match=r"\[limits\] max_past_s = "):
        old = T0 - 20 * 365 * 86400.0 + 10.0 * np.arange(3)  # 20 years ago
        check_limits(old, schedule(old, time_mod.time(), None, False)[0], Config())


def test_wide_form_nan_cells_are_missing_readings_counted_apart_from_empty_ones(tmp_path,
                                                                                con):
    f = write(tmp_path / "w.csv", "ts,asset,temp,flow\n"
                                  "2025-01-01T00:00:00Z,a1,1.0,\n"      # flow empty
                                  "2025-01-01T00:00:10Z,a1,nan,2.0\n"   # temp nan
                                  "2025-01-01T00:00:20Z,a1,NaN,3.0\n")  # temp NaN
    r = import_readings(con, f)
    assert (r.stored, r.empty_values, r.nan_values, r.bad_values) == (3, 1, 2, 0)
    assert "1 empty cells (no reading)" in r.summary()
    assert "2 nan values (a missing reading: not stored)" in r.summary()
    assert r.losses() == []


def test_cli_import_exits_1_whenever_a_file_stored_nothing(tmp_path, capsys):
    db = str(tmp_path / "d.duckdb")
    only_nan = write(tmp_path / "n.csv", "ts,asset,sensor,value\n"
                                         "2025-01-01T00:00:00Z,a,s,nan\n")
    assert cli.main(["import", str(only_nan), "--db", db, "--quiet"]) == 1
    assert f"nothing stored from {only_nan}: its 1 rows held 1 nan values" in \
        capsys.readouterr().err
    only_bad = write(tmp_path / "b.csv", "ts,asset,sensor,value\n2025-01-01T00:00:00Z,a,s,x\n")
    # accepting skipped rows does not make an import that stored none a success
    assert cli.main(["import", str(only_bad), "--db", db, "--quiet", "--allow-skipped"]) == 1
    assert "nothing stored from" in capsys.readouterr().err
    good = write(tmp_path / "g.csv", "ts,asset,sensor,value\n2025-01-01T00:00:00Z,a,s,1\n")
    assert cli.main(["import", str(good), "--db", db, "--quiet"]) == 0
    # again: nothing new, but the database holds it all: not a failure
    assert cli.main(["import", str(good), "--db", db, "--quiet"]) == 0
    assert "nothing stored" not in capsys.readouterr().err
