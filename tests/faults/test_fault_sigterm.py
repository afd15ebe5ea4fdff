"""Fault 7: SIGTERM under full load.

A publisher floods the service with QoS 1 readings as fast as the broker takes
them; SIGTERM must stop it cleanly within 5 s.  Everything it acknowledged must
be in DuckDB (its last status, written at stop, says how many it acknowledged);
what it had not acknowledged is delivered again to the next process, so after a
restart every reading published is stored exactly once.
"""

from __future__ import annotations

import time

from tests.support.faults import fault_config, query, stage, tally, wait_drained

TOTAL = 60_000


def test_sigterm_under_full_load_stops_within_5s_and_keeps_every_acknowledged_reading(
        tmp_path, broker, fault_service, publishers):
    db = tmp_path / "appliance.duckdb"
    cfg = fault_config(tmp_path, broker, db=db)
    svc = fault_service(cfg, db).start()
    pub = publishers(broker, TOTAL, rate=0.0, assets=50).start()  # as fast as it goes
    loaded = svc.wait_for(lambda s: stage(s, "store") > 15_000, timeout_s=60,
                          what="full load flowing")
    sent_at_term = pub.sent
    code, stop_s = svc.terminate()
    last = svc.status()  # written at stop, after the drain
    log = svc.log_text()
    rows_at_stop = query(db, "SELECT count(*) FROM readings")[0][0]
    acked_at_stop = stage(last, "ingest", "acked")

    pub.wait_acked(60)
    t0 = time.monotonic()
    svc2 = fault_service(cfg, db).start()
    svc2.wait_for(lambda s: stage(s, "store") > 0, timeout_s=30, what="storing after restart")
    recovery_s = time.monotonic() - t0
    final = wait_drained(svc2.status, timeout_s=60, alive=svc2.alive)
    code2, _ = svc2.terminate()
    t = tally(db, pub.acked)
    print(f"sigterm: SIGTERM at {stage(loaded, 'store')}+ stored with {sent_at_term} published "
          f"(rate {stage(loaded, 'store', 'rate_per_s')}/s stored); exit {code} after "
          f"{stop_s:.2f} s; at stop: {stage(last, 'ingest')} received, {acked_at_stop} "
          f"acknowledged, {stage(last, 'store')} stored, {rows_at_stop} rows in DuckDB; "
          f"restart stored the remaining {stage(final, 'store')} "
          f"({stage(final, 'store', 'duplicates_dropped')} redelivered readings dropped), "
          f"first commit {recovery_s:.2f} s after the restart; "
          f"rows {t.rows}, distinct {t.distinct}, lost {t.lost}")
    t.line("sigterm", recovery_s)
    assert code == 0 and code2 == 0, log[-3000:]
    assert stop_s < 5.0
    assert last["state"] == "offline" and "stopped cleanly" in log
    assert acked_at_stop > 0
    # the broker held a backlog at the stop (full load): the next process stored more.
    # (Not "published so far > received": the publisher goes on between the two reads.)
    assert stage(final, "store") > 0
    assert rows_at_stop >= acked_at_stop  # every acknowledged reading is stored
    assert rows_at_stop == stage(last, "store")
    assert t.published == pub.sent == TOTAL
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0)
    assert t.rows == t.distinct == TOTAL
