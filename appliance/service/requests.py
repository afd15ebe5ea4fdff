"""Asking the running service for something, through files in the registry folder.

    <models dir>/requests/<id>.json         written by a command (atomically)
    <models dir>/requests/<id>.taken        written by the service as it starts on it
    <models dir>/requests/<id>.answer.json  written by the service when done

A command waits a few seconds for ``taken`` (the service looks every 0.2 s), so a
database held by something that is not a service serving requests is reported at
once instead of after the whole answer timeout.

Files, as ``registry.json`` is, because the command and the service already
share that folder (and its permissions) and a request survives a service restart.
Kinds: ``retrain`` (``appliance retrain``: train now, by hand), ``snapshot``
(``appliance train`` while the service runs: copy the history out for it),
and ``record`` (that command's rows for ``models`` and ``training_runs``, which only
the service may write).  The retrain stage serves them.  (Reads while the service
runs go over its control socket: ``service/control.py``.)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from appliance.clock import Clock

FOLDER = "requests"
KINDS = ("retrain", "snapshot", "record")


def submit(models_dir: Path, kind: str, body: dict[str, Any] | None = None) -> Path:
    """Write a request; returns its file (``wait`` takes it)."""
    if kind not in KINDS:
        raise ValueError(f"unknown request {kind!r}")
    folder = models_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{kind}-{uuid.uuid4().hex[:8]}.json"
    _write(path, {"kind": kind, "submitted_at": time.time(), **(body or {})})
    return path


def pending(models_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Requests not answered yet, oldest first; an unreadable one is answered as such."""
    folder = models_dir / FOLDER
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".answer.json") or answer_path(path).exists():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            answer(path, {"ok": False, "error": f"unreadable request: {exc}"})
            continue
        out.append((path, doc))
    return out


def answer_path(request: Path) -> Path:
    return request.with_name(request.name.removesuffix(".json") + ".answer.json")


def taken_path(request: Path) -> Path:
    return request.with_name(request.name.removesuffix(".json") + ".taken")


def take(request: Path) -> None:
    """Mark a request as being served (before work that may take a while)."""
    taken_path(request).touch()


def answer(request: Path, doc: dict[str, Any]) -> None:
    _write(answer_path(request), doc)


def wait(request: Path, timeout_s: float, clock: Clock, poll_s: float = 0.2,
         taken_within_s: float = 10.0) -> dict[str, Any] | None:
    """The service's answer; None when it did not take the request within
    ``taken_within_s`` or answer within ``timeout_s``."""
    start = clock.monotonic()
    while True:
        try:
            return json.loads(answer_path(request).read_text())
        except (FileNotFoundError, ValueError):
            waited = clock.monotonic() - start
            if waited >= timeout_s or (waited >= taken_within_s
                                       and not taken_path(request).exists()):
                return None
            clock.sleep(poll_s)


def forget(request: Path) -> None:
    for p in (request, taken_path(request), answer_path(request)):
        p.unlink(missing_ok=True)


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
