"""``appliance import``: reading and fault files into the database, one step a file.

* ``staging``  — DuckDB reads the file (``read_csv`` with a rejects table, so rows
  it cannot parse are reported with their line numbers; ``read_parquet``) into a
  temporary table in file order;
* ``names``    — names a topic cannot carry, mapped (``--rename OLD=NEW``, else the
  sanitising rule: accents dropped, other characters outside ``A-Z a-z 0-9 _ . -``
  removed at the ends and each run inside made one ``_``, cut to 64, case kept:
  ``Volume Flow RateRMS`` → ``Volume_Flow_RateRMS``), two that would become one
  refused; the same for readings and fault logs;
* ``checks``   — the checks DuckDB's reader does not make (an empty name or one with
  nothing to keep, a non-finite value, a time in the future), one SQL ``CASE`` over
  that table, each failure counted by kind; line numbers are recovered by walking
  the file with ``csv``, only as far as the reported rows need;
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

Nothing is dropped silently.  A column the import does not use is left out and
named: on request (``--ignore COL``) or else as a problem — in wide form a column
named like a label (``readings.LABEL_COLUMNS``: anomaly, is_anomaly, label,
changepoint, fault, target, outlier; any case), one that does not hold numbers,
or one whose name has nothing to keep; in long form and fault logs any column
beyond theirs.  Skipped rows and values are counted by reason.
``ImportReport.losses`` lists what was not stored unasked, and ``appliance
import`` exits 1 when it is not empty (``--allow-skipped`` accepts skipped rows;
rows already stored are not losses).

The writes of one file are one transaction: an import that fails or is
interrupted stores nothing.
"""
