"""The training child as the service sees it: start it, watch its memory, kill it.

One child at a time (the retrain stage holds at most one ``TrainingChild``).  It
runs ``python -m appliance.training.child JOB_DIR`` — the service never imports
training — at a lower CPU priority (the child calls ``os.nice`` on itself), and
dies with the service (``PR_SET_PDEATHSIG``, set by the child).

Memory: ``poll`` reads the child's resident set from ``/proc/<pid>/status`` and
kills it (SIGKILL) above the cap, so a training that would push the gateway into
swap or the kernel's OOM killer (which might pick the service) is stopped first.
A spike between two polls (``POLL_S`` apart) can overshoot; the cap is a policy,
not a hard limit.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.clock import Clock


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    status: str  # 'ok' | 'failed'
    reason: str
    result: dict[str, Any]
    peak_rss_mb: float
    seconds: float


def rss_mb(pid: int) -> float | None:
    """Resident set of a live process, in MB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0.0


class TrainingChild:
    def __init__(self, job_dir: Path, max_memory_mb: float, timeout_s: float,
                 clock: Clock) -> None:
        self.job_dir = job_dir
        self.max_memory_mb = max_memory_mb
        self.timeout_s = timeout_s
        self.clock = clock
        self.peak_rss_mb = 0.0
        self._killed: str | None = None
        log = (job_dir / "child.stderr").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.training.child", str(job_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # a Ctrl-C at the service's terminal is not its
        log.close()
        self.started = clock.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> ChildOutcome | None:
        """None while it runs; its outcome once it exited (or was killed here)."""
        code = self.proc.poll()
        if code is None:
            rss = rss_mb(self.proc.pid)
            if rss is not None:
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
                if rss > self.max_memory_mb:
                    self.kill(f"exceeded the memory cap: {rss:.0f} MB > [retrain] "
                              f"max_memory_mb = {self.max_memory_mb:g}")
            if self.clock.monotonic() - self.started > self.timeout_s:
                self.kill(f"ran longer than [retrain] timeout_s = {self.timeout_s:g} s")
            return None
        seconds = self.clock.monotonic() - self.started
        try:
            result = json.loads((self.job_dir / "result.json").read_text())
        except (FileNotFoundError, ValueError):
            result = {}
        peak = max(self.peak_rss_mb, float(result.get("peak_rss_mb", 0.0)))
        if self._killed:
            return ChildOutcome("failed", self._killed, result, peak, seconds)
        if result.get("status") == "ok":
            return ChildOutcome("ok", "trained", result, peak, seconds)
        if result:
            return ChildOutcome("failed", result.get("error", "failed"), result, peak, seconds)
        return ChildOutcome("failed", f"the training child exited with code {code} and no "
                                      f"result (see {self.job_dir / 'child.stderr'})",
                            result, peak, seconds)

    def kill(self, why: str) -> None:
        if self._killed is None:
            self._killed = why
        if self.proc.poll() is None:  # never signal a pid that was reaped (reused)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
