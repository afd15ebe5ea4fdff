"""Fault 2: the broker is stopped and started again five times during the publish.

mosquitto (persistence on) keeps the service's persistent session, its
subscriptions and every queued QoS 1 message across a graceful restart.  The
service reconnects with back-off and resubscribes; the publisher's paho client
reconnects and sends again whatever the broker had not acknowledged, so a
reading may reach the broker twice: the service must store it once.
"""

from __future__ import annotations

import time

import numpy as np

from tests.support.faults import fault_config, stage, tally, wait_drained

RESTARTS = 5
RATE = 3000.0


def test_five_broker_restarts_lose_nothing_and_store_nothing_twice(
        tmp_path, broker, fault_service, publishers):
    rng = np.random.default_rng(2)
    db = tmp_path / "appliance.duckdb"
    cfg = fault_config(tmp_path, broker, db=db)
    svc = fault_service(cfg, db).start()
    pid = svc.pid
    pub = publishers(broker, int(RATE * 120), rate=RATE, assets=20).start()

    recoveries, down_s = [], []
    for k in range(RESTARTS):
        svc.wait_for(lambda s: stage(s, "store") > 0, timeout_s=30, what="storing")
        time.sleep(float(rng.uniform(0.5, 1.5)))
        received = stage(svc.status(), "ingest")
        t_stop = time.monotonic()
        broker.restart()
        t_up = time.monotonic()
        down_s.append(t_up - t_stop)
        svc.wait_for(lambda s, k=k, r=received: s["ts"] > time.time() - 0.3
                     and s["mqtt_connected"] and stage(s, "ingest", "disconnects") == k + 1
                     and stage(s, "ingest") > r, timeout_s=30,
                     what=f"reconnected and receiving after broker restart {k + 1}")
        recoveries.append(time.monotonic() - t_up)
    time.sleep(2.0)
    pub.stop_publishing()
    pub.wait_acked(60)
    final = wait_drained(svc.status, timeout_s=60, alive=svc.alive)
    code, _ = svc.terminate()
    assert code == 0, svc.log_text()[-3000:]

    t = tally(db, pub.acked)
    ing = final["stages"]["ingest"]
    print(f"broker_restart: {RESTARTS} restarts, broker down {np.round(down_s, 2).tolist()} s, "
          f"service receiving again after {np.round(recoveries, 2).tolist()} s; "
          f"ingest disconnects {ing.get('disconnects')}, stale acks dropped "
          f"{ing.get('stale_acks_dropped', 0)}, redelivered readings dropped "
          f"{stage(final, 'store', 'duplicates_dropped')}; rows {t.rows}, distinct "
          f"{t.distinct}, lost {t.lost}, never published {t.unexpected}")
    t.line("broker_restart", max(recoveries))
    assert svc.pid == pid  # one process throughout: reconnected, never restarted
    assert ing.get("disconnects") == RESTARTS
    assert all(s["restarts"] == 0 for s in final["stages"].values()), final["stages"]
    assert t.published == pub.sent > 0
    assert t.lost == 0, f"lost readings, first ids {t.lost_ids[:20].tolist()}"
    assert t.duplicated == 0
    assert t.unexpected == 0
    assert t.rows == t.distinct == t.published
