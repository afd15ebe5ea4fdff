"""Fault 1: ``kill -9`` of the service ten times during a steady publish.

A publisher sends several thousand unique QoS 1 readings per second to the
private broker; the service is killed with SIGKILL at random moments while it
stores them, and started again each time.  Whatever the broker delivered but
the service had not acknowledged is delivered again (with the DUP flag) to the
next process; whatever was committed is not stored a second time.  The same
holds with every stage busy: predictions from the start (no warm-up), two
challengers beside the champion, and the drift stage.
"""

from __future__ import annotations

import shutil
import time

import numpy as np

from appliance.models.contract import STARTER_MODEL
from appliance.models.registry import Registry
from tests.support.faults import fault_config, stage, tally, wait_drained

KILLS = 10
RATE = 3000.0  # readings per second
MAX_SECONDS = 120.0  # the publish is stopped 2 s after the last restart


def test_ten_kill9_during_steady_publish_lose_nothing_and_store_nothing_twice(
        tmp_path, broker, fault_service, publishers):
    kill_repeatedly(tmp_path, broker, fault_service, publishers, KILLS,
                    fault_config(tmp_path, broker, db=tmp_path / "appliance.duckdb"))


def test_kill9_with_challengers_and_drift_watching_loses_nothing(
        tmp_path, broker, fault_service, publishers):
    models = tmp_path / "models"  # beside the database: the service's registry
    registry = Registry(models)
    for name in ("c1", "c2"):  # two challengers: copies of the starter under other names
        shutil.copyfile(STARTER_MODEL, tmp_path / f"{name}.onnx")
        registry.shadow(registry.add(tmp_path / f"{name}.onnx").name, max_challengers=2)
    cfg = fault_config(tmp_path, broker, db=tmp_path / "appliance.duckdb",
                       pipeline={"warmup_s": 0})
    db = kill_repeatedly(tmp_path, broker, fault_service, publishers, 4, cfg)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        roles = dict(con.execute("SELECT role, count(DISTINCT model) FROM predictions "
                                 "GROUP BY role").fetchall())
        twice = con.execute("SELECT count(*) FROM (SELECT model, asset, ts FROM predictions "
                            "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    finally:
        con.close()
    assert roles == {"champion": 1, "challenger": 2}
    assert twice == 0, f"{twice} ticks predicted twice by one model"


def kill_repeatedly(tmp_path, broker, fault_service, publishers, kills: int, cfg):
    """Publish steadily, ``kill -9`` the service ``kills`` times, and check that every
    reading acknowledged by the broker is stored exactly once; returns the database."""
    rng = np.random.default_rng(1)
    db = tmp_path / "appliance.duckdb"
    svc = fault_service(cfg, db).start()
    pub = publishers(broker, int(RATE * MAX_SECONDS), rate=RATE, assets=20).start()

    recoveries, dropped_dups, sent_at_kill = [], 0, []
    for k in range(kills):
        # let it store for a while, then cut it off in the middle of its work
        svc.wait_for(lambda s: stage(s, "store") > 0, timeout_s=30, what="storing")
        time.sleep(float(rng.uniform(0.2, 1.0)))
        dropped_dups += stage(svc.status(), "store", "duplicates_dropped")
        assert pub.running, f"the publish ended before kill {k + 1}"
        sent_at_kill.append(pub.sent)
        svc.kill()
        t0 = time.monotonic()
        svc = fault_service(cfg, db).start()
        svc.wait_for(lambda s: stage(s, "store") > 0, timeout_s=30,
                     what="storing again after kill -9")
        recoveries.append(time.monotonic() - t0)
    time.sleep(2.0)
    pub.stop_publishing()
    pub.wait_acked(60)
    final = wait_drained(svc.status, timeout_s=90, alive=svc.alive)
    dropped_dups += stage(final, "store", "duplicates_dropped")
    code, _ = svc.terminate()
    assert code == 0, svc.log_text()[-3000:]

    t = tally(db, pub.acked)
    rate = pub.sent / (pub.finished_at - pub.started_at)
    print(f"kill9: {kills} kills at publish counts {sent_at_kill}; publish rate {rate:.0f}/s; "
          f"restart-to-storing {np.round(recoveries, 2).tolist()} s; redelivered readings "
          f"dropped by the service (from each process's last status) >= {dropped_dups}; "
          f"rows {t.rows}, distinct {t.distinct}, lost {t.lost}, never published {t.unexpected}")
    t.line("kill9", max(recoveries))
    assert len(recoveries) == kills
    assert rate >= 2000, f"publish rate {rate:.0f}/s is not a steady load"
    assert t.published == pub.sent > sent_at_kill[-1]
    assert t.lost == 0, f"lost readings, first ids {t.lost_ids[:20].tolist()}"
    assert t.duplicated == 0
    assert t.unexpected == 0
    assert t.rows == t.distinct == t.published
    return db
