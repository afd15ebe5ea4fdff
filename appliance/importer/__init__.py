"""``appliance import``: reading and fault files into the database, one step a file.

* ``staging``  — DuckDB reads the file (``read_csv`` with a rejects table, so rows
  it cannot parse are reported with their line numbers; ``read_parquet``) into a
  temporary table in file order;
* ``checks``   — the checks DuckDB's reader does not make (an empty or invalid
  name, a non-finite value, a time in the future), one SQL ``CASE`` over that
  table; line numbers are recovered by walking the file with ``csv``, only as
  far as the reported rows need;
* ``readings`` — long form (``ts, asset, sensor, value``, optional ``line``) or
  wide form (a time column and one column per sensor) into ``readings_raw``;
  rows already stored (same series and time) and repeats inside the file are
  counted and skipped;
* ``faults``   — ``asset, ts_start, ts_end, code`` (optional ``line``) into
  ``faults`` as a ``start`` and an ``end`` event, source ``import``;
* ``report``   — what an import did, and ``ImportRefused``;
* ``command``  — ``import_into`` (``appliance import``) and ``load_files``
  (history straight from files, same checks, for a data scientist without the
  service's database).

The writes of one file are one transaction: an import that fails or is
interrupted stores nothing.
"""
