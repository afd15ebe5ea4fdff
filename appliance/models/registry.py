"""The model registry: a folder of ONNX files and which one is active.

    <models dir>/<name>.onnx     every model added (name = file stem + short sha256)
    <models dir>/registry.json   {"active": name, "history": [earlier active names],
                                  "challengers": [names served in the shadow of the active],
                                  "lifecycle": the retraining loop's memory}

A folder and a small JSON file rather than the database, because the running
service holds the DuckDB file: ``appliance models promote`` must work while it
runs.  The service polls ``registry.json`` and switches to a newly promoted
model only after it has loaded and passed every check; until then the old one
serves.  Every write is atomic (temporary file + rename).

Challengers sit beside ``active`` in the same file (not in a file of their own)
so that one atomic write moves a model from challenger to champion: the
service never sees a model in both roles.  The retraining loop's memory
(``models.lifecycle.LoopState``: which challengers it is judging, a promotion on
probation) is in the same file for the same reason: a role and the loop's note
about it change in one write, so a ``kill -9`` never separates them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from appliance.models.contract import LoadedModel, ModelError, load_model

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _exclusive(method: _Method) -> _Method:
    """Run a read-modify-write of the registry file under its lock: the service's loop
    and a person's ``appliance models ...`` write the same file, and without the lock
    one's change could be lost under the other's."""
    @functools.wraps(method)
    def locked(self: Registry, *args: Any, **kwargs: Any) -> Any:
        with self._locked():
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Entry:
    """One file in the models folder, as ``models list`` shows it."""

    name: str
    path: Path
    active: bool
    model: LoadedModel | None
    error: str = ""
    challenger: bool = False


class Registry:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def _file(self) -> Path:
        return self.directory / REGISTRY_FILE

    def _read(self) -> dict:
        try:
            state = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {"active": None, "history": [], "challengers": [], "lifecycle": None}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{self._file}: unreadable registry ({exc})") from None
        return {"active": state.get("active"), "history": list(state.get("history", [])),
                "challengers": list(state.get("challengers", [])),
                "lifecycle": state.get("lifecycle")}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._file)

    def version(self) -> int:
        """Changes whenever the registry file does (what the service polls)."""
        try:
            return self._file.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def active_name(self) -> str | None:
        return self._read()["active"]

    def challenger_names(self) -> list[str]:
        return self._read()["challengers"]

    def lifecycle(self) -> dict | None:
        """The retraining loop's memory (``LoopState.to_json``), None before it first ran."""
        return self._read()["lifecycle"]

    @_exclusive
    def save_lifecycle(self, doc: dict) -> None:
        state = self._read()
        state["lifecycle"] = doc
        self._write(state)

    def path_of(self, name: str) -> Path:
        path = self.directory / f"{name}.onnx"
        if not path.exists():
            known = ", ".join(e.name for e in self.entries()) or "none"
            raise ModelError(f"no model {name!r} in {self.directory} (known: {known})")
        return path

    def add(self, source: Path, spec_hash: str | None = None) -> LoadedModel:
        """Check ``source`` against the contract and copy it in; returns the loaded model."""
        model = load_model(source, spec_hash)
        target = self.directory / f"{model.name}.onnx"
        if Path(source).resolve() != target.resolve():
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return load_model(target, spec_hash)

    def entries(self, spec_hash: str | None = None) -> list[Entry]:
        state = self._read()
        active, challengers = state["active"], set(state["challengers"])
        out = []
        for path in sorted(self.directory.glob("*.onnx")):
            name = path.stem
            try:
                model = load_model(path, spec_hash)
                out.append(Entry(name, path, name == active, model,
                                 challenger=name in challengers))
            except ModelError as exc:
                out.append(Entry(name, path, name == active, None, str(exc),
                                 challenger=name in challengers))
        return out

    @_exclusive
    def promote(self, name: str, spec_hash: str | None = None, *,
                keep_previous: bool = False, lifecycle: dict | None = None) -> LoadedModel:
        """Make ``name`` the active model, after it passes every check.

        ``keep_previous``: the model it replaces stays on as a challenger (the loop's
        probation); ``lifecycle``: the loop's memory, written in the same write."""
        model = load_model(self.path_of(name), spec_hash)
        state = self._read()
        previous = state["active"]
        if previous and previous != name:
            state["history"].append(previous)
        state["active"] = name
        # a champion is no longer its own challenger
        state["challengers"] = [c for c in state["challengers"] if c != name]
        if keep_previous and previous and previous != name \
                and previous not in state["challengers"]:
            state["challengers"].append(previous)
        if lifecycle is not None:
            state["lifecycle"] = lifecycle
        self._write(state)
        return model

    @_exclusive
    def shadow(self, name: str, max_challengers: int, spec_hash: str | None = None, *,
               lifecycle: dict | None = None) -> LoadedModel:
        """Serve ``name`` as a challenger, after it passes every check (the contract and
        the spec hash, as for ``promote``); refused for the active model and beyond
        ``max_challengers`` (``[model] max_challengers``: each costs a model call per tick)."""
        model = load_model(self.path_of(name), spec_hash)
        state = self._read()
        if name == state["active"]:
            raise ModelError(f"{name} is the active model; it cannot be its own challenger")
        if name in state["challengers"]:
            return model
        if len(state["challengers"]) >= max_challengers:
            raise ModelError(f"already {len(state['challengers'])} challengers "
                             f"({', '.join(state['challengers']) or 'none allowed'}); "
                             f"[model] max_challengers = {max_challengers}: unshadow one first")
        state["challengers"].append(name)
        if lifecycle is not None:
            state["lifecycle"] = lifecycle
        self._write(state)
        return model

    @_exclusive
    def unshadow(self, name: str, *, lifecycle: dict | None = None) -> None:
        """Stop serving ``name`` as a challenger."""
        state = self._read()
        if name not in state["challengers"]:
            raise ModelError(f"{name} is not a challenger (challengers: "
                             f"{', '.join(state['challengers']) or 'none'})")
        state["challengers"].remove(name)
        if lifecycle is not None:
            state["lifecycle"] = lifecycle
        self._write(state)

    @_exclusive
    def rollback_to(self, name: str, spec_hash: str | None = None, *,
                    lifecycle: dict | None = None) -> LoadedModel:
        """Roll back to ``name`` (the loop's probation): off the history when it is the
        previous model (as ``rollback``), and the one left is not remembered."""
        state = self._read()
        if state["history"] and state["history"][-1] == name:
            state["history"].pop()
        return self._reactivate(state, name, spec_hash, lifecycle)

    @_exclusive
    def rollback(self, spec_hash: str | None = None, *, lifecycle: dict | None = None
                 ) -> LoadedModel:
        """Make the previously active model active again (the one rolled back from is
        no longer served in any role)."""
        state = self._read()
        if not state["history"]:
            raise ModelError(f"{self._file}: no earlier model to roll back to")
        return self._reactivate(state, state["history"].pop(), spec_hash, lifecycle)

    def _reactivate(self, state: dict, name: str, spec_hash: str | None,
                    lifecycle: dict | None) -> LoadedModel:
        """Write ``state`` with ``name`` active again, after it passes every check."""
        model = load_model(self.path_of(name), spec_hash)
        state["active"] = name
        state["challengers"] = [c for c in state["challengers"] if c != name]
        if lifecycle is not None:
            state["lifecycle"] = lifecycle
        self._write(state)
        return model
