"""Maintenance: retention, checkpoints and the disk watch, beside the chain.

A stage of its own (no queues), on its own cursor, like ``scores``: DuckDB has one
writing process but many cursors, so the deletes here run in short transactions
beside the store's appends and the record stage's inserts, never holding them up.

* **Retention** (event time: the newest stored reading, as the retraining loop's):
  readings older than ``[storage] keep_readings_days``, predictions older than
  ``keep_predictions_days``, dead letters older than ``keep_dead_letters_days``
  (wall clock: when they were received) are deleted.  Predictions older than
  ``thin_predictions_after_days`` are thinned (``tables.thin_predictions``).  Work
  goes in slices of event time, one short transaction each, sized to delete about
  ``SLICE_ROWS`` rows; a backlog (the first start over an old history) is worked
  through slice by slice, a pause between passes.
* **Disk watch**: the file and its log against the budget (``max_disk_mb``, or half
  the file system).  What counts is what DuckDB holds in use (its used blocks and the
  log): deleted rows free blocks at the next checkpoint and new rows reuse them, so
  the file stops growing once retention deletes as much as ingest adds — it does not
  shrink (only trailing free blocks are given back).  At ``WARN_AT`` the status warns;
  at ``DELETE_EARLY_AT`` the oldest readings are deleted early, slice by slice, down
  to ``min_keep_readings_days``; when that floor stops it the status is degraded and
  the log says so, and ingest goes on (the store backs off only when the disk itself
  is full, acknowledging nothing it did not store).
* **Checkpoints** every ``checkpoint_every_s`` (and DuckDB's own at
  ``checkpoint_wal_mb`` of log): a log damaged past replay loses what was committed
  since the last checkpoint, so these bound that loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from appliance.config import Config
from appliance.stages.base import POLL_S, Stage, StopSignals
from appliance.storage import tables
from appliance.timefmt import from_us, to_us

log = logging.getLogger(__name__)

_DAY_S = 86400.0
_MB = 1024 * 1024
#: A retention pass every this many seconds when there is no backlog.
PASS_S = 10.0
#: Rows one delete aims at: ~20 ms of DuckDB's time and ~8 MB of log (a deleted row
#: costs ~8 bytes of log), so a transaction stays short beside ingest.
SLICE_ROWS = 1_000_000
#: Slice widths (event-time seconds) a delete may take.
MIN_SLICE_S, MAX_SLICE_S = 1.0, _DAY_S
#: Predictions thinned per transaction at most: the join with the events near them must
#: fit the service's 32 MB of DuckDB memory.  Measured at 1,000 assets every 10 s with
#: faults: 20 minutes (120,000 rows) in 0.1-0.2 s; 30 minutes fit; an hour ran out of
#: memory once in two.
THIN_ROWS = 120_000
#: A thinning slice spans at most this much event time (fewer rows where thinned already).
MAX_THIN_SLICE_S = 6 * 3600.0
#: Fractions of the disk budget in use: warn; delete the oldest readings early.
WARN_AT, DELETE_EARLY_AT = 0.80, 0.90


@dataclass(frozen=True)
class DiskUse:
    """The database's bytes on disk and in use, against its budget."""

    budget: int
    file: int
    wal: int
    used: int  # DuckDB's used blocks and the log: what new rows cannot reuse
    fs_free: int

    @property
    def fraction(self) -> float:
        return self.used / self.budget

    def row(self) -> dict[str, Any]:
        return {"budget_mb": round(self.budget / _MB, 1), "file_mb": round(self.file / _MB, 1),
                "wal_mb": round(self.wal / _MB, 2), "used_mb": round(self.used / _MB, 1),
                "used_percent": round(100 * self.fraction, 1),
                "fs_free_mb": round(self.fs_free / _MB, 1)}


def disk_budget(cfg: Config, path: Path) -> tuple[int, str]:
    """The budget in bytes and where it comes from (``max_disk_mb``, or half the file
    system holding ``path``)."""
    if cfg.storage.max_disk_mb:
        return cfg.storage.max_disk_mb * _MB, "[storage] max_disk_mb"
    st = os.statvfs(path.parent)
    size = st.f_blocks * st.f_frsize
    return size // 2, f"half of the {size / _MB:,.0f} MB file system"


class MaintenanceStage(Stage):
    name = "maintenance"
    essential = False  # a day without retention costs disk, not readings

    def __init__(self, cfg: Config, db: duckdb.DuckDBPyConnection, path: Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.db = db
        self.path = path
        self._con: duckdb.DuckDBPyConnection | None = None
        self._budget, self._budget_source = 0, ""
        self._next_checkpoint = 0.0
        self._next_pass = 0.0
        # event-time cursors (µs), found again at each start
        self._newest: int | None = None
        self._oldest: int | None = None
        self._thinned_to: int | None = None
        self._slice_s = 60.0  # grows towards SLICE_ROWS: a first slice must not be huge
        self._disk: DiskUse | None = None
        self._floor_hit = False
        self._failing = ""  # the error of the last pass while passes fail
        self._last_checkpoint: dict[str, Any] = {}

    def start(self) -> None:
        self._con = self.db.cursor()
        s = self.cfg.storage
        # global: DuckDB checkpoints by itself at a commit that takes the log past this
        self._con.execute(f"SET GLOBAL checkpoint_threshold = "
                          f"'{int(s.checkpoint_wal_mb * 1024)}KiB'")
        self._budget, self._budget_source = disk_budget(self.cfg, self.path)
        self._newest = self._oldest = self._thinned_to = None
        self._next_checkpoint = self.clock.monotonic() + s.checkpoint_every_s
        self._next_pass = 0.0

    def run(self, signals: StopSignals) -> None:
        while not (signals.drain.is_set() or signals.abort.is_set()):
            self.tick()
            self.progressed()
            self.clock.sleep(POLL_S, signals.drain)

    def tick(self) -> None:
        """What is due on the clock: a checkpoint, a pass."""
        now = self.clock.monotonic()
        if now >= self._next_checkpoint:
            self.checkpoint()
        if now >= self._next_pass:
            try:
                backlog = self.maintain()
                self._failing = ""
            except duckdb.Error as exc:  # a full disk, an I/O error: the next pass retries
                self.counters.errors += 1
                if not self._failing:
                    log.error("maintenance: retention failed (%s); trying again every %g s",
                              exc, PASS_S)
                self._failing = f"{type(exc).__name__}: {exc}"[:300]
                backlog = False
            self._next_pass = self.clock.monotonic() + (0.0 if backlog else PASS_S)
            self.counters.processed += 1  # passes made (rows deleted: their own counters)

    # -- one pass ----------------------------------------------------------------------

    def maintain(self) -> bool:
        """One pass: measure the disk, then at most one slice of each kind of deletion.
        True while work is left (a backlog, or the disk above ``DELETE_EARLY_AT``)."""
        con = self._con
        assert con is not None
        disk = self._disk = self.measure()
        s = self.cfg.storage
        # first: a gateway receiving nothing but garbage must not fill its disk with it
        received = to_us(self.clock.time() - s.keep_dead_letters_days * _DAY_S)
        self._transaction(tables.delete_dead_letters_before, received,
                          counter="dead_letters_deleted")
        newest = self._newest_reading()
        self.progressed()  # the first look at a long history reads every row group once
        if newest is None:
            return False
        more = False
        cutoff = newest - to_us(s.keep_readings_days * _DAY_S) if s.keep_readings_days \
            else None
        pressed = disk.fraction >= DELETE_EARLY_AT
        if pressed:
            # the floor is newer than the age limit (validated at load)
            floor = newest - to_us(s.min_keep_readings_days * _DAY_S)
            if self._delete_readings(floor, "readings_deleted_early") is None:
                self._report_floor(disk)
            else:
                more = True
        else:
            self._floor_hit = False
            if cutoff is not None:
                more |= self._delete_readings(cutoff, "readings_deleted") is not None
        more |= self._predictions(newest)
        if pressed:
            self.checkpoint()  # deleted rows free their blocks only at a checkpoint
        return more

    def measure(self) -> DiskUse:
        con = self._con
        assert con is not None
        block_size, used_blocks = con.execute(
            "SELECT block_size, used_blocks FROM pragma_database_size()").fetchone()
        wal = _size(self.path.with_name(self.path.name + ".wal"))
        st = os.statvfs(self.path.parent)
        return DiskUse(self._budget, _size(self.path), wal, used_blocks * block_size + wal,
                       st.f_bavail * st.f_frsize)

    def checkpoint(self) -> bool:
        """Write the log into the file now; False when DuckDB refused (tried again at
        the next pass)."""
        con = self._con
        assert con is not None
        self._next_checkpoint = self.clock.monotonic() + self.cfg.storage.checkpoint_every_s
        wal = _size(self.path.with_name(self.path.name + ".wal"))
        started = time.perf_counter()
        try:
            con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            self.counters.bump("checkpoint_errors")
            self._next_checkpoint = min(self._next_checkpoint, self.clock.monotonic() + PASS_S)
            log.warning("maintenance: checkpoint refused (%s); trying again", exc)
            return False
        took = time.perf_counter() - started
        self.counters.bump("checkpoints")
        slowest = max(took, self._last_checkpoint.get("checkpoint_s_max", 0.0))
        self._last_checkpoint = {"last_checkpoint_at": self.clock.time(),
                                 "last_checkpoint_s": round(took, 4),
                                 "last_checkpoint_wal_mb": round(wal / _MB, 2),
                                 "checkpoint_s_max": round(slowest, 4)}
        return True

    # -- the deletions ---------------------------------------------------------------

    def _newest_reading(self) -> int | None:
        """The newest reading's event time (µs): only row groups past the last one
        found are read (their zone maps skip the rest)."""
        con = self._con
        assert con is not None
        after = -(2**62) if self._newest is None else self._newest
        row = con.execute("SELECT epoch_us(max(ts)) FROM readings_raw WHERE ts > "
                          "make_timestamp(?)", [after]).fetchone()
        if row and row[0] is not None:
            self._newest = int(row[0])
        return self._newest

    def _delete_readings(self, cutoff: int, counter: str) -> int | None:
        """One slice of readings older than ``cutoff``: the rows deleted, or None when
        none is older."""
        if self._oldest is None:
            row = self._con.execute("SELECT epoch_us(min(ts)) FROM readings_raw").fetchone()
            if row is None or row[0] is None:
                return None
            self._oldest = int(row[0])
        if self._oldest >= cutoff:
            return None
        bound = min(cutoff, self._oldest + to_us(self._slice_s))
        n = self._transaction(tables.delete_readings_before, bound, counter=counter)
        # the next slice's width aims at SLICE_ROWS; an empty one doubles (a gap)
        scale = SLICE_ROWS / n if n else 2.0
        self._slice_s = min(MAX_SLICE_S, max(MIN_SLICE_S, self._slice_s * min(scale, 2.0)))
        self._oldest = bound
        return n

    def _predictions(self, newest: int) -> bool:
        s = self.cfg.storage
        more = False
        if s.keep_predictions_days:
            self._transaction(tables.delete_predictions_before,
                              newest - to_us(s.keep_predictions_days * _DAY_S),
                              counter="predictions_deleted")
        every = s.thin_predictions_every_s
        thin_to = _floor_to(newest - to_us(s.thin_predictions_after_days * _DAY_S), every)
        if self._thinned_to is None:
            row = self._con.execute("SELECT epoch_us(min(ts)) FROM predictions").fetchone()
            if row is None or row[0] is None:
                return False
            self._thinned_to = _floor_to(int(row[0]), every)
        if self._thinned_to < thin_to:
            lo, hi = self._thinned_to, self._thin_slice(self._thinned_to, thin_to, every)
            self._transaction(tables.thin_predictions, lo, hi, every,
                              self.cfg.pipeline.horizon_s, self.cfg.alerts.clear_ratio,
                              counter="predictions_thinned")
            self._thinned_to = hi
            more = hi < thin_to
        return more

    def _thin_slice(self, lo: int, end: int, every: float) -> int:
        """The end of the next thinning slice from ``lo``: whole buckets of ``every``,
        at most ``THIN_ROWS`` predictions (an already-thinned stretch, after a restart,
        is crossed in long steps) and one bucket at least."""
        step = to_us(every)
        width = max(step, _floor_to(to_us(MAX_THIN_SLICE_S), every))
        while True:
            hi = min(end, lo + width)
            rows = self._con.execute(
                "SELECT count(*) FROM predictions WHERE ts >= make_timestamp(?) "
                "AND ts < make_timestamp(?)", [lo, hi]).fetchone()[0]
            if rows <= THIN_ROWS or width <= step:
                return hi
            width = max(step, _floor_to(width // 2, every))

    def _transaction(self, delete: Any, *args: Any, counter: str) -> int:
        con = self._con
        assert con is not None
        con.execute("BEGIN")
        try:
            n = delete(con, *args)
            con.execute("COMMIT")
        except BaseException:
            # a failed COMMIT has already ended the transaction
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        if n:
            self.counters.bump(counter, n)
        return n

    def _report_floor(self, disk: DiskUse) -> None:
        if not self._floor_hit:
            log.error("disk: the database uses %.0f MB of its %.0f MB budget (%s) and only "
                      "readings of the last %g days (min_keep_readings_days) are left to "
                      "delete early: it will grow past the budget; raise [storage] "
                      "max_disk_mb or free the disk", disk.used / _MB, disk.budget / _MB,
                      self._budget_source, self.cfg.storage.min_keep_readings_days)
        self._floor_hit = True

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {**super().status(), **self._last_checkpoint}
        if self._failing:
            entry["problem"] = f"retention failing ({self._failing})"
        disk = self._disk
        if disk is None:
            return entry
        entry["disk"] = {**disk.row(), "budget_source": self._budget_source,
                         "state": disk_state(disk.fraction)}
        if self._oldest is not None and self._newest is not None:
            entry["readings_kept_days"] = round(from_us(self._newest - self._oldest) / _DAY_S,
                                                2)
        pct = f"{100 * disk.fraction:.0f} %"
        figures = (f"the database uses {disk.used / _MB:,.0f} MB of its "
                   f"{disk.budget / _MB:,.0f} MB budget ({pct}; file {disk.file / _MB:,.0f} MB)")
        if self._floor_hit or disk.fraction >= 1.0:  # after a failing pass's problem
            entry.setdefault("problem", f"disk: {figures}; readings newer than "
                             f"{self.cfg.storage.min_keep_readings_days:g} days are kept, "
                             f"so it grows past the budget")
        elif disk.fraction >= DELETE_EARLY_AT:
            entry["note"] = (f"disk: {figures}; deleting the oldest readings early "
                             f"(kept {entry.get('readings_kept_days', '?')} days)")
            r = self.cfg.retrain
            wanted = r.history_days + r.holdout_days
            if r.enabled and entry.get("readings_kept_days", wanted) < wanted:
                entry["note"] += (f", fewer than the {wanted:g} days the retraining loop "
                                  f"trains on: raise [storage] max_disk_mb or lower "
                                  f"[retrain] history_days")
        elif disk.fraction >= WARN_AT:
            entry["note"] = (f"disk: {figures}; at {100 * DELETE_EARLY_AT:.0f} % the oldest "
                             f"readings are deleted early")
        return entry

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()


def disk_state(fraction: float) -> str:
    """``ok``, ``warning`` (from ``WARN_AT``), ``deleting_early`` (from
    ``DELETE_EARLY_AT``) or ``full`` (at the budget)."""
    if fraction >= 1.0:
        return "full"
    if fraction >= DELETE_EARLY_AT:
        return "deleting_early"
    return "warning" if fraction >= WARN_AT else "ok"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _floor_to(ts_us: int, every_s: float) -> int:
    step = int(every_s * 1e6)
    return ts_us // step * step if step else ts_us

