"""Which model serves, and watching the registry for a new one.

The model that serves is the registry's active model when there is one, else
the fallback: ``[model] path``, or the starter model shipped in the package
when that is empty.  ``serving_model`` answers that for the service at start
and for ``appliance run --check-config`` alike, so the check checks the model
that will serve.

``ModelWatcher.poll`` (called by the predict stage every ``[model] poll_s``)
returns a newly promoted model once it has loaded and passed every check (the
old one serves meanwhile), refuses a promoted model that fails them, and
announces a file dropped into the folder as a candidate or refuses it.  Each
of these is a ``ModelEvent`` for the ``models`` table.

It follows the registry's challengers the same way: ``challengers`` holds the
loaded ones (at most ``[model] max_challengers``, never the champion).  One that
fails to load, or that the predict stage drops (``drop_challenger``), stays out
until it is unshadowed: retrying a broken model every poll would only fill the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.features.spec import PipelineSpec
from appliance.messages import ModelEvent
from appliance.models.contract import STARTER_MODEL, LoadedModel, ModelError, load_model
from appliance.models.registry import Registry

log = logging.getLogger(__name__)


def fallback_path(cfg: Config) -> Path:
    """``[model] path``, or the packaged starter model when it is empty."""
    return cfg.resolve(cfg.model.path) if cfg.model.path else STARTER_MODEL


@dataclass(frozen=True, slots=True)
class Serving:
    """The model chosen to serve, and why an active registry model was passed over."""

    model: LoadedModel
    refused_active: str = ""


def serving_model(cfg: Config, registry: Registry | None = None) -> Serving:
    """The model the service will serve; ``ModelError`` when none can be loaded.

    An active registry model that fails its checks is passed over for the
    fallback (the reason is in ``refused_active``); when the fallback fails
    too, the error names both.
    """
    registry = registry or Registry(cfg.models_dir())
    spec_hash = PipelineSpec.from_config(cfg.pipeline).hash
    refused = ""
    try:
        active = registry.active_name()  # raises on an unreadable registry.json
        if active:
            return Serving(load_model(registry.path_of(active), spec_hash))
    except ModelError as exc:
        refused = f"active model refused: {exc}"
    try:
        return Serving(load_model(fallback_path(cfg), spec_hash), refused)
    except ModelError as exc:
        raise ModelError(f"{refused}; fallback: {exc}" if refused else str(exc)) from None


class ModelWatcher:
    """Polls the registry folder; collects what it saw as ``events``."""

    def __init__(self, registry: Registry, spec_hash: str, max_challengers: int = 0,
                 watch_files: bool = True) -> None:
        """``watch_files`` False: follow promotions only (the drift stage's watcher), so
        a file dropped into the folder is announced once, by the predict stage's."""
        self.registry = registry
        self.spec_hash = spec_hash
        self.max_challengers = max_challengers
        self.watch_files = watch_files
        self.events: list[ModelEvent] = []
        self.challengers: dict[str, LoadedModel] = {}
        self._version = registry.version()
        self._challengers_version: int | None = None  # the first poll reads them
        self._failed: set[str] = set()
        self._files = self._model_files() if watch_files else {}

    def _model_files(self) -> dict[Path, int]:
        """Model files in the folder → their mtime_ns."""
        if not self.registry.directory.is_dir():
            return {}
        return {p: p.stat().st_mtime_ns for p in self.registry.directory.glob("*.onnx")}

    def record(self, name: str, path: Path, sha256: str, spec_hash: str, status: str,
               detail: str = "") -> None:
        self.events.append(ModelEvent(time.time(), name, str(path), sha256, spec_hash,
                                      status, detail))

    def activated(self, model: LoadedModel) -> None:
        self.record(model.name, model.path, model.sha256, model.spec_hash, "active")

    def poll(self, serving: LoadedModel | None) -> LoadedModel | None:
        """A newly promoted model that passed its checks, else None; files dropped into
        the folder are checked and announced."""
        promoted = None
        refused_path: Path | None = None  # a promoted file refused just now
        version = self.registry.version()
        if version != self._version:
            self._version = version
            try:
                active = self.registry.active_name()
            except ModelError as exc:  # a registry.json being hand-edited, say
                log.error("%s; still serving %s", exc, serving.name if serving else "none")
                active = None
            if active and (serving is None or active != serving.name):
                try:
                    promoted = load_model(self.registry.path_of(active), self.spec_hash)
                except ModelError as exc:
                    # one line per refusal: the predict stage's watcher says it, the
                    # drift stage's (which follows the same promotions) keeps quiet
                    log.log(logging.ERROR if self.watch_files else logging.DEBUG,
                            "promoted model %s refused, still serving %s: %s", active,
                            serving.name if serving else "none", exc)
                    self.record(active, self.registry.directory / f"{active}.onnx", "", "",
                                "refused", str(exc))
                    refused_path = self.registry.directory / f"{active}.onnx"
        if not self.watch_files:
            return promoted
        files = self._model_files()
        for path, mtime in files.items():
            if self._files.get(path) == mtime or path == refused_path:
                continue  # unchanged, or its refusal was just said (as the promoted model)
            try:
                model = load_model(path, self.spec_hash)
                log.info("model file %s is a candidate: appliance models promote %s",
                         path.name, path.stem)
                self.record(path.stem, path, model.sha256, model.spec_hash, "candidate")
            except ModelError as exc:
                log.error("model file refused: %s", exc)
                self.record(path.stem, path, "", "", "refused", str(exc))
        self._files = files
        if version != self._challengers_version:
            self._challengers_version = version
            champion = promoted or serving
            self._follow_challengers(champion.name if champion else None)
        return promoted

    def drop_challenger(self, name: str, reason: str) -> None:
        """Stop serving challenger ``name`` (it failed); recorded as refused."""
        model = self.challengers.pop(name)
        self._failed.add(name)
        self.record(name, model.path, model.sha256, model.spec_hash, "refused", reason)

    def _follow_challengers(self, champion: str | None) -> None:
        try:
            names = [n for n in self.registry.challenger_names() if n != champion]
        except ModelError as exc:
            log.error("%s; challengers unchanged", exc)
            return
        self._failed &= set(names)  # an unshadowed model may be shadowed afresh
        if len(names) > self.max_challengers:
            log.error("registry names %d challengers, [model] max_challengers = %d: serving "
                      "%s only", len(names), self.max_challengers,
                      ", ".join(names[:self.max_challengers]) or "none")
            names = names[:self.max_challengers]
        for gone in set(self.challengers) - set(names):
            del self.challengers[gone]
            log.info("challenger %s no longer served", gone)
        for name in names:
            if name in self.challengers or name in self._failed:
                continue
            path = self.registry.directory / f"{name}.onnx"
            try:
                model = load_model(self.registry.path_of(name), self.spec_hash)
            except ModelError as exc:
                log.error("challenger %s refused: %s", name, exc)
                self._failed.add(name)
                self.record(name, path, "", "", "refused", str(exc))
                continue
            self.challengers[name] = model
            log.info("serving challenger %s (stored and scored, never published)", name)
            self.record(name, model.path, model.sha256, model.spec_hash, "challenger")
