"""Fault 3: the disk holding the DuckDB file fills up, then space comes back.

The database lives on a 16 MiB tmpfs that a ballast file fills.  While the disk
is full every commit fails: the store stage keeps the batches, backs off and
retries, and acknowledges nothing, so the broker keeps the readings.  When the
ballast is deleted the next retry commits and the service catches up.  The
status file lives beside the database, so status is read over MQTT here.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from tests.support.faults import (
    StatusWatcher,
    fault_config,
    settled,
    stage,
    summary,
    tally,
    wait_drained,
)

BEFORE, DURING = 3000, 5000  # readings published before and while the disk is full
FULL_S = 4.0  # at least this long with failing commits


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no byte left; its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    size += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return size


def test_disk_full_store_backs_off_without_acking_then_catches_up(
        tmp_path, broker, fault_service, publishers, small_disk):
    db = small_disk / "appliance.duckdb"
    cfg = fault_config(tmp_path, broker, db=db, storage={"retry_max_s": 1.0})
    watch = StatusWatcher(broker)
    try:
        svc = fault_service(cfg, db).start()
        first = publishers(broker, BEFORE, line="l1", client_id="pub-before").start()
        first.wait_acked(30)
        before = wait_drained(svc.status, timeout_s=30, alive=svc.alive)
        assert stage(before, "store") == BEFORE
        acked_before = stage(before, "ingest", "acked")
        errors_before = stage(before, "store", "errors")

        ballast = small_disk / "ballast"
        ballast_mb = fill(ballast) / 2**20
        t_full = time.monotonic()
        second = publishers(broker, DURING, rate=2500.0, line="l2", client_id="pub-during")
        second.start().wait_acked(30)
        full = watch.wait_for(
            lambda s: stage(s, "ingest") >= BEFORE + DURING
            and stage(s, "store", "errors") >= errors_before + 3
            and time.monotonic() - t_full >= FULL_S,
            timeout_s=30, what="commits failing while the disk is full", alive=svc.alive)
        # nothing committed, nothing acknowledged while the disk was full
        assert stage(full, "store") == BEFORE
        assert stage(full, "ingest", "acked") == acked_before
        assert stage(full, "ingest", "acked") < stage(full, "ingest")
        assert full["stages"]["store"]["state"] == "running"

        ballast.unlink()
        t_free = time.monotonic()
        watch.wait_for(lambda s: stage(s, "store") == BEFORE + DURING and settled(s),
                       timeout_s=30, what="caught up after space returned", alive=svc.alive)
        recovery_s = time.monotonic() - t_free
        final = wait_drained(watch, timeout_s=30, alive=svc.alive)
        code, _ = svc.terminate()
        assert code == 0, svc.log_text()[-3000:]
    finally:
        watch.close()

    t1, t2 = tally(db, BEFORE, line="l1"), tally(db, DURING, line="l2")
    errors = stage(final, "store", "errors") - errors_before
    print(f"disk_full: ballast {ballast_mb:.1f} MiB; full for {t_free - t_full:.1f} s with "
          f"{errors} failed commits, acked held at {acked_before} while "
          f"{stage(full, 'ingest')} received; caught up {recovery_s:.2f} s after space "
          f"returned; before: {t1.distinct}/{BEFORE} stored, during: {t2.distinct}/{DURING}")
    summary("disk_full", BEFORE + DURING, t1.distinct + t2.distinct,
            t1.duplicated + t2.duplicated, t1.lost + t2.lost, recovery_s)
    assert errors >= 3
    for t in (t1, t2):
        assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0), t
        assert t.rows == t.distinct == t.published
