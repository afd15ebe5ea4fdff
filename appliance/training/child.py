"""The training child: ``python -m appliance.training.child JOB_DIR``.

The service's retrain stage starts it (``service/child.py``) with a job folder:

    job.json        {"config": "config.pickle", "snapshot": DIR, "champion": PATH | null,
                     "out": PATH, "parent": PID}
    config.pickle   the service's ``Config`` (the same typed object, not re-read)
    result.json     written last, atomically: {"status": "ok", "report": ...} or
                    {"status": "failed", "error": ...}, with "peak_rss_mb" and "seconds"
    child.log       its progress lines

It lowers its own CPU priority, asks the kernel to kill it when the service dies
(so a ``kill -9`` of the service leaves no orphan training on the gateway), reads
the snapshot, and runs ``candidate.train_candidate``.  The service watches its
memory and kills it above ``[retrain] max_memory_mb``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent exits; exit now if it already has (the race before)."""
    # not Linux (no libc.so.6): the service's own kill on stop still applies
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(3)


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def run(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    _die_with_parent(int(job["parent"]))
    os.nice(int(job.get("nice", 0)))
    started = time.perf_counter()
    log = (job_dir / "child.log").open("a", buffering=1)

    def say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    try:
        # imported here: a child that cannot even import records why
        from appliance.models.contract import load_model
        from appliance.storage.history import load_histories
        from appliance.storage.snapshot import is_ready, open_snapshot
        from appliance.training.candidate import train_candidate

        cfg = pickle.loads((job_dir / job["config"]).read_bytes())
        snapshot = Path(job["snapshot"])
        ready = is_ready(snapshot)
        con = open_snapshot(snapshot)
        try:
            history = load_histories(con, say)
        finally:
            con.close()
        champion = load_model(job["champion"]) if job.get("champion") else None
        report = train_candidate(cfg, history, float(ready["ts"]), champion,
                                 Path(job["out"]), say)
        result: dict[str, Any] = {"status": "ok", "report": report.as_dict()}
    except Exception as exc:  # every failure is the run's result, recorded
        say(traceback.format_exc())
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    _write(job_dir / "result.json", result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
