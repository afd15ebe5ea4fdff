"""Ingest while the service trains: the figures of issue 12, item 1.

    python -m appliance.devtools.bench.retrain [--days 45] [--assets 10] [--messages N] [--json]

1. a simulated history (``assets`` × ``days`` of 1-minute readings with faults, as
   ``bench/train.py`` makes it) imported into a DuckDB file, ending an hour ago;
2. durable ingest rate of the whole service draining a QoS 1 backlog of
   ``messages`` readings from a private mosquitto (as ``bench/ingest.py``), once
   with the loop idle and once with a training child started by ``appliance
   retrain`` at the start of the drain (its snapshot and the child's training on
   the 2 cores beside ingest);
3. the child's run to its end: snapshot rows and seconds, training wall time,
   peak RSS (the service's reading of ``/proc``, and the child's own maximum),
   and the gate's verdict.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.clock import WallClock
from appliance.config import from_dict
from appliance.devtools import simulator
from appliance.devtools.bench.ingest import _backlog
from appliance.devtools.mosquitto import PrivateBroker
from appliance.importer.command import import_into
from appliance.service import requests

DAY = 86400.0
PIPELINE = {"cadence_s": 60.0, "hampel_window_s": 600.0}


def _history(work: Path, days: float, assets: int) -> Path:
    start = time.time() - days * DAY - 3600.0
    readings, faults = simulator.to_files(work / "files", days=days, assets=assets,
                                          hz=1 / 60, seed=11, start_ts=start)
    import_into(work / "history.duckdb", readings, faults)
    shutil.rmtree(work / "files")
    return work / "history.duckdb"


def _drain(broker: PrivateBroker, history: Path, work: Path, messages: int, train: bool,
           client_id: str) -> dict[str, Any]:
    from appliance.service.runner import Service

    db = work / f"{client_id}.duckdb"
    shutil.copy(history, db)
    cfg = from_dict({"mqtt": {"host": broker.host, "port": broker.port,
                              "client_id": client_id},
                     "storage": {"path": str(db)}, "pipeline": PIPELINE,
                     "model": {"required": False, "dir": str(work / f"{client_id}-models")},
                     "retrain": {"every_days": 0.0, "min_new_faults": 0,
                                 "drift_persist_s": 0.0, "score_drop": 0.0,
                                 "check_every_s": 1.0}}, source="<bench>")
    _backlog(broker, client_id, messages)
    service = Service(cfg)
    store = service.pipeline.stages["store"]
    ingest = service.pipeline.stages["ingest"]
    retrain = service.pipeline.stages["retrain"]
    req = requests.submit(cfg.models_dir(), "retrain", {"reason": "bench"}) if train else None
    service.start()
    while ingest.counters.processed == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    training_during = False
    while store.counters.processed < messages:
        training_during = training_during or retrain.status().get("training") is not None
        time.sleep(0.02)
    rate = messages / (time.perf_counter() - t0)
    out: dict[str, Any] = {"msg_per_s": round(rate), "training_during_drain": training_during}
    if req is not None:
        answer = requests.wait(req, 600.0, WallClock())
        if not (answer or {}).get("ok"):
            raise RuntimeError(f"the service did not start a training: {answer}")
        while retrain.status().get("training") is not None:
            time.sleep(0.5)
        row = service.pipeline.db.cursor().execute(
            "SELECT status, detail FROM training_runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        detail = json.loads(row[1])
        out |= {"status": row[0], "training_s": detail.get("seconds"),
                "peak_rss_mb": detail.get("peak_rss_mb"),
                "snapshot_rows": detail.get("snapshot_rows"),
                "snapshot_s": detail.get("snapshot_s"), "gate": detail.get("gate"),
                "error": detail.get("error"), "timings_s": detail.get("timings_s")}
    service.stop()
    return out


def run(days: float = 45.0, assets: int = 10, messages: int = 300_000,
        json_output: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-retrain-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        history = _history(work, days, assets)
        import_s = time.perf_counter() - t0
        with PrivateBroker() as broker:
            idle = _drain(broker, history, work, messages, False, "bench-idle")
            busy = _drain(broker, history, work, messages, True, "bench-train")
    result = {"days": days, "assets": assets, "messages": messages,
              "import_s": round(import_s, 1), "idle": idle, "training": busy,
              "ratio": round(busy["msg_per_s"] / idle["msg_per_s"], 3)}
    if json_output:
        print(json.dumps(result))
    else:
        print(f"durable ingest, loop idle:        {idle['msg_per_s']:10,} msg/s")
        print(f"durable ingest, child training:   {busy['msg_per_s']:10,} msg/s  "
              f"ratio {result['ratio']:.2f} (training during the drain: "
              f"{busy['training_during_drain']})")
        print(f"training on {assets} x {days:g} days: {busy['status']} in "
              f"{busy['training_s']} s, peak RSS {busy['peak_rss_mb']} MB; snapshot "
              f"{busy['snapshot_rows']} rows in {busy['snapshot_s']} s; "
              f"{busy['gate'] or busy['error']}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.devtools.bench.retrain")
    p.add_argument("--days", type=float, default=45.0)
    p.add_argument("--assets", type=int, default=10)
    p.add_argument("--messages", type=int, default=300_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    run(a.days, a.assets, a.messages, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
