"""What ``appliance sql`` must refuse: shared by the test of the file opened by the
command and the test of the running service's socket."""

from __future__ import annotations

#: (name, query, a fragment of the refusal): every kind the guard refuses, one test
#: each; ``{data}`` is the data directory.
REFUSED = [
    ("insert", "INSERT INTO faults VALUES (now(), 'l', 'a', 'start', 'x', 'mqtt')",
     "INSERT statement"),
    ("update", "UPDATE readings_raw SET value = 0", "UPDATE statement"),
    ("delete", "DELETE FROM faults", "DELETE statement"),
    ("create", "CREATE TABLE x (a INTEGER)", "CREATE statement"),
    ("create_as", "CREATE TABLE x AS SELECT * FROM readings", "CREATE statement"),
    ("drop", "DROP TABLE faults", "DROP statement"),
    ("alter", "ALTER TABLE faults ADD COLUMN x INTEGER", "ALTER statement"),
    ("attach", "ATTACH '/tmp/other.duckdb' AS other", "ATTACH statement"),
    ("detach", "DETACH other", "DETACH statement"),
    ("copy_to", "COPY faults TO '/tmp/faults.csv'", "COPY statement"),
    ("copy_from", "COPY faults FROM '/etc/passwd'", "COPY statement"),
    ("install", "INSTALL httpfs", "LOAD statement"),
    ("load", "LOAD httpfs", "LOAD statement"),
    ("pragma", "PRAGMA enable_profiling", "PRAGMA statement"),
    ("set", "SET enable_external_access = true", "SET statement"),
    ("reset", "RESET memory_limit", "SET statement"),
    ("call", "CALL pragma_version()", "CALL statement"),
    ("checkpoint", "CHECKPOINT", "CALL statement"),
    ("export_db", "EXPORT DATABASE '/tmp/dump'", "EXPORT statement"),
    ("import_db", "IMPORT DATABASE '/tmp/dump'", "PRAGMA statement"),
    ("transaction", "BEGIN TRANSACTION", "TRANSACTION statement"),
    ("vacuum", "VACUUM", "VACUUM statement"),
    ("two_statements", "SELECT 1; DROP TABLE faults", "one statement per query, got 2"),
    ("read_csv", "SELECT * FROM read_csv('/etc/passwd')", "outside the data directory"),
    ("read_parquet", "SELECT * FROM read_parquet('/var/lib/other/*.parquet')",
     "outside the data directory"),
    ("read_text", "SELECT * FROM read_text('/etc/hostname')", "outside the data directory"),
    ("glob", "SELECT * FROM glob('/etc/*')", "outside the data directory"),
    ("climb_out", "SELECT * FROM read_text('{data}/../../etc/passwd')",
     "outside the data directory"),
    ("path_list", "SELECT * FROM read_parquet(['{data}/a.parquet', '/etc/b.parquet'])",
     "outside the data directory"),
    ("computed_path", "SELECT * FROM read_text('/e' || 'tc/passwd')", "constant strings"),
    ("in_subquery", "SELECT count(*) FROM readings WHERE value IN "
                    "(SELECT length(content) FROM read_text('/etc/passwd'))",
     "outside the data directory"),
    ("file_by_name", "SELECT * FROM '/etc/passwd'", "no table or view named '/etc/passwd'"),
    ("summarize_file", "SUMMARIZE '/etc/passwd'", "no table or view named '/etc/passwd'"),
    ("join_file", "SELECT * FROM faults, '/etc/hostname'", "no table or view named"),
    ("query_function", "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
     "table function query() is refused"),
    ("getenv", "SELECT getenv('HOME')", "getenv() is refused"),
]
