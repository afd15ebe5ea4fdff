"""Fault 8: a damaged write-ahead log after a power cut.

The service is killed with SIGKILL while it writes; then garbage is written over
the tail of ``<db>.wal``, as a torn write would leave it, so that DuckDB refuses
to open the file.  The service must start anyway: set the damaged log aside with
a loud log line and a ``damaged_wal`` status flag, store new readings, and start
again after that without any of it (no crash loop under ``Restart=always``).
What the damaged log held is gone unless the broker still had it: every reading
published after the cut must be stored, and none twice.

The loss is bounded by the checkpoints of the maintenance stage and DuckDB: here
only by the log's size (``[storage] checkpoint_wal_mb``; the timed checkpoint is set
to an hour, so the bound does not depend on how fast this machine ingests).  A
reading takes at least 20 bytes of log (its timestamp, series id and value,
uncompressed), so at most (limit + one commit) / 20 acknowledged readings are lost:
before the bound, every reading since the start of this test was (7,447 in one run).
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.support.faults import fault_config, stage, tally, wait_drained

RATE = 3000.0
WAL_LIMIT = 256 * 1024
BATCH = 1000
#: The least log a stored reading takes (8-byte timestamp, 4-byte series, 8-byte value).
WAL_BYTES_PER_READING = 20
#: One commit goes past the limit before DuckDB checkpoints (MAX_MERGE batches of
#: BATCH readings, with room for headers).
ONE_COMMIT = 16 * BATCH * (WAL_BYTES_PER_READING + 2) + 64 * 1024
OPEN = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def test_a_torn_wal_is_set_aside_loudly_and_the_service_runs_on(
        tmp_path, broker, fault_service, publishers):
    db = tmp_path / "appliance.duckdb"
    wal = db.with_name(db.name + ".wal")
    cfg = fault_config(tmp_path, broker, db=db,
                       storage={"checkpoint_wal_mb": WAL_LIMIT / 2**20,
                                "checkpoint_every_s": 3600.0, "batch_messages": BATCH})
    svc = fault_service(cfg, db).start()
    pub = publishers(broker, int(RATE * 120), rate=RATE, assets=20).start()
    # past a few checkpoints, with something in the log to damage
    before = svc.wait_for(lambda s: stage(s, "store") > 3 * WAL_LIMIT // WAL_BYTES_PER_READING
                          and wal.exists() and wal.stat().st_size > 16 * 1024,
                          timeout_s=60, what="storing")
    svc.kill()  # the power cut, in the middle of writing
    sent_at_cut = pub.sent

    data = wal.read_bytes()
    keep = len(data) * 2 // 3
    damaged = data[:keep] + b"\xde\xad\xbe\xef" * ((len(data) - keep) // 4 + 16)
    wal.write_bytes(damaged)
    plain = subprocess.run([sys.executable, "-c", OPEN, str(db)], capture_output=True,
                           text=True, timeout=60)
    wal.write_bytes(damaged)  # as it was, whatever the attempt did

    t0 = time.monotonic()
    svc = fault_service(cfg, db).start()
    first = svc.wait_for(lambda s: stage(s, "store") > 0, timeout_s=30,
                         what="storing after the damaged log")
    recovery_s = time.monotonic() - t0
    time.sleep(1.0)
    pub.stop_publishing()
    pub.wait_acked(60)
    wait_drained(svc.status, timeout_s=60, alive=svc.alive)
    code, _ = svc.terminate()
    log = svc.log_text()

    again = fault_service(cfg, db).start()  # what systemd's next start would do
    second = again.status()
    code2, _ = again.terminate()
    t = tally(db, pub.acked)
    aside = sorted(tmp_path.glob("appliance.duckdb.wal.damaged-*"))
    loud = [ln for ln in log.splitlines() if "could not replay its write-ahead log" in ln
            or "DAMAGED DATABASE LOG" in ln]
    print(f"damaged_wal: killed at {stage(before, 'store')}+ stored, {sent_at_cut} published; "
          f"WAL {len(data)} bytes, garbage over the last {len(data) - keep}; plain duckdb "
          f"open: exit {plain.returncode} {plain.stderr.strip().splitlines()[-1][:150]!r}; "
          f"restart storing after {recovery_s:.2f} s with damaged_wal={first['damaged_wal']!r}; "
          f"log: {[ln[:160] for ln in loud]}; next start damaged_wal={second['damaged_wal']!r}; "
          f"rows {t.rows}, distinct {t.distinct}, lost {t.lost} (ids "
          f"{t.lost_ids.min() if t.lost else '-'}..{t.lost_ids.max() if t.lost else '-'})")
    bound = (WAL_LIMIT + ONE_COMMIT) // WAL_BYTES_PER_READING
    print(f"damaged_wal: log limit {WAL_LIMIT} bytes: at most {bound} readings at risk; "
          f"the log held {len(data)} bytes, lost {t.lost}")
    t.line("damaged_wal", recovery_s)
    assert plain.returncode != 0 and "WAL" in plain.stderr, plain.stderr[-2000:]
    assert first["damaged_wal"].startswith(str(wal) + ".damaged-")
    assert [str(p) for p in aside] == [first["damaged_wal"]]
    assert aside[0].read_bytes() == damaged
    assert len(loud) >= 2  # the database module's error and the service's start-up line
    assert code == 0 and code2 == 0, log[-3000:]
    assert second["damaged_wal"] == "" and second["mqtt_connected"]
    assert t.duplicated == 0 and t.unexpected == 0
    # only what the damaged log held can be missing: nothing published after the cut
    assert t.lost == 0 or t.lost_ids.max() < sent_at_cut
    assert t.distinct == t.published - t.lost
    # the bound: the log never grew past its limit and one commit, and the loss is at
    # most what a log of that size holds
    assert len(data) <= WAL_LIMIT + ONE_COMMIT
    assert t.lost <= len(data) // WAL_BYTES_PER_READING <= bound
