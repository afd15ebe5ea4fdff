"""The service's control socket: ``appliance sql`` and ``appliance export`` answered
from inside the running service, which alone may open its database file.

    client ──► one JSON line: {"op": "sql", "query": …, "limit": N, "timeout_s": S}
                              {"op": "export", "since": …, "until": …, "tables": […]}
                              {"op": "history"}  (``appliance models history``)
                              {"op": "ping"}
           ◄── one JSON line: {"ok": true, …} or {"ok": false, "error": "…"}

A Unix socket at ``[control] socket`` (default ``appliance.sock`` beside the
database), mode 0660, so the service's user and group may ask and nobody else; it is
bound under a temporary name, given its mode, then renamed into place, so it is never
reachable with a looser mode.  Each request runs on its own cursor of the service's
connection, in a thread of this server: DuckDB releases the GIL while it executes, and
the store stage commits on its own cursor meanwhile.  One request runs at a time (the
service has two cores, and a second heavy query beside the first would take the
store's); another waits up to its timeout, and at least as long as the one before it
ran (so queries asked in a loop take at most half the time), and runs at a lower
priority (``_lower_priority``).  A query is checked and run by
``storage/query.py`` (the guard, the read-only transaction, the row limit, the
interrupt); an export by ``storage/export.py`` into ``<data dir>/exports/<id>``
(readable by the group, writable by the service alone), which the command copies
where it was asked (the service may not write there) and then asks the service to
drop (``{"op": "drop_export", "id": …}``; what a command left behind is dropped at
the next start).  ``stop`` interrupts what runs for at most ``STOP_WAIT_S`` and does
not wait for a client that does not read: SIGTERM to exit stays under 5 s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import socketserver
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb

from appliance.config import Config
from appliance.storage import export, query

log = logging.getLogger(__name__)

#: A request is one line of at most this many bytes.
MAX_REQUEST = 1 << 20
EXPORTS = "exports"
#: How long ``stop`` interrupts a running request before it closes the socket.
STOP_WAIT_S = 1.0
#: A client must send its request, and take its answer, within this long.
CLIENT_IO_S = 10.0


class ControlServer:
    """``start`` binds the socket and serves in threads; ``stop`` ends it."""

    def __init__(self, cfg: Config, db: duckdb.DuckDBPyConnection) -> None:
        self.path = cfg.socket_path()
        self.data_dir = cfg.resolve(cfg.storage.path).parent
        self.max_rows = cfg.control.max_rows
        self.timeout_s = cfg.control.timeout_s
        self._db = db
        self._one_at_a_time = threading.Lock()
        self._free_at = 0.0
        self._stopping = threading.Event()
        self._running: set[duckdb.DuckDBPyConnection] = set()
        self._guard = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if _answers(self.path):
            raise RuntimeError(f"another process answers on {self.path}: set [control] "
                               f"socket to a path of this service's own")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handler = _handler(self)
        server = socketserver.ThreadingUnixStreamServer(
            str(self.path.with_name(f".{self.path.name}.{os.getpid()}")), handler,
            bind_and_activate=False)
        # stop does not join request threads: one blocked on a silent client would
        # hold the service past systemd's stop timeout (CLIENT_IO_S bounds them).
        server.daemon_threads = True
        server.block_on_close = False
        self._drop_exports()
        tmp = Path(server.server_address)
        tmp.unlink(missing_ok=True)
        server.server_bind()
        os.chmod(tmp, 0o660)
        os.replace(tmp, self.path)  # a stale socket of a killed service is replaced
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="control",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("control socket %s (appliance sql, appliance export)", self.path)

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        # Interrupted again and again while a request holds its turn: one that took its
        # turn but had not started its query yet would otherwise run it whole.
        deadline = time.monotonic() + STOP_WAIT_S
        while self._one_at_a_time.locked() and time.monotonic() < deadline:
            with self._guard:
                for cursor in self._running:
                    cursor.interrupt()
            time.sleep(0.02)
        self._server.server_close()
        self._server = None
        try:
            if stat.S_ISSOCK(os.stat(self.path).st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (never raises)."""
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "database": str(self.data_dir)}
        if op == "drop_export":
            return self._drop_export(str(request.get("id", "")))
        if op not in ("sql", "export", "history"):
            return {"ok": False, "error": f"unknown request {op!r}"}
        timeout_s = min(float(request.get("timeout_s") or self.timeout_s), self.timeout_s)
        if not self._take_turn(timeout_s):
            return {"ok": False, "error": "the service is stopping" if self._stopping.is_set()
                    else f"another query ran for all of {timeout_s:g} s; try again"}
        try:
            _lower_priority()
            started = time.monotonic()
            cursor = self._db.cursor()
            with self._guard:
                self._running.add(cursor)
            try:
                return self._run(op, request, cursor, timeout_s)
            finally:
                with self._guard:
                    self._running.discard(cursor)
                cursor.close()
                # The next request waits as long as this query ran: queries asked in
                # a loop take at most half the time (bench sql, a query looping: ingest
                # at 0.42-0.51x of idle without this and the lower priority, 0.80-1.35x
                # with them, on a shared 2-core machine).  Not after an export, which
                # is asked once and may take minutes.
                if op == "sql":
                    self._free_at = time.monotonic() + min(time.monotonic() - started,
                                                           self.timeout_s)
        finally:
            self._one_at_a_time.release()

    def _take_turn(self, timeout_s: float) -> bool:
        """Wait for the one request slot and for the previous request's pause; False
        when that took ``timeout_s`` or the service is stopping (``stop`` must not wait
        for requests that have not started: SIGTERM to exit is under 5 s)."""
        deadline = time.monotonic() + timeout_s
        while not self._one_at_a_time.acquire(timeout=0.1):
            if self._stopping.is_set() or time.monotonic() >= deadline:
                return False
        if self._stopping.wait(max(0.0, min(self._free_at, deadline) - time.monotonic())):
            self._one_at_a_time.release()
            return False
        return True

    def _run(self, op: str, request: dict[str, Any], cursor: duckdb.DuckDBPyConnection,
             timeout_s: float) -> dict[str, Any]:
        try:
            if op == "history":
                return {"ok": True, "rows": query.model_history(cursor)}
            if op == "sql":
                limit = min(int(request.get("limit") or self.max_rows), self.max_rows)
                result = query.run(cursor, str(request.get("query", "")), self.data_dir,
                                   limit, timeout_s)
                return {"ok": True, **result.as_dict(),
                        "capped": int(request.get("limit") or 0) > self.max_rows}
            directory = self.data_dir / EXPORTS / uuid.uuid4().hex[:12]
            done = export.write_export(cursor, directory, float(request["since"]),
                                       None if request.get("until") is None
                                       else float(request["until"]),
                                       list(request.get("tables") or export.TABLES))
            _share(directory)
            return {"ok": True, "directory": str(directory), "id": directory.name, **done}
        except query.Refused as exc:
            return {"ok": False, "refused": True, "error": str(exc)}
        except duckdb.InterruptException:
            if self._stopping.is_set():
                return {"ok": False, "error": "interrupted: the service is stopping"}
            return {"ok": False, "error": f"interrupted after {timeout_s:g} s (the "
                                          f"timeout); narrow the query or raise --timeout"}
        except (duckdb.Error, ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": str(exc).strip().splitlines()[0][:500]}


    def _drop_export(self, name: str) -> dict[str, Any]:
        target = self.data_dir / EXPORTS / name
        if not name.isalnum() or not target.is_dir():
            return {"ok": False, "error": f"no export {name!r}"}
        shutil.rmtree(target)
        return {"ok": True}

    def _drop_exports(self) -> None:
        """Exports a command never took (it failed, or was killed) from an earlier run."""
        for left in (self.data_dir / EXPORTS).glob("*"):
            log.info("control: dropping the export %s no command took", left)
            shutil.rmtree(left, ignore_errors=True)


def _handler(server: ControlServer) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = CLIENT_IO_S  # the socket's: a silent or stuck client is dropped

        def handle(self) -> None:
            try:
                line = self.rfile.readline(MAX_REQUEST + 1)
            except OSError:
                log.info("control: a client sent no request within %g s", CLIENT_IO_S)
                return
            try:
                if len(line) > MAX_REQUEST:
                    raise ValueError(f"a request is one line of at most {MAX_REQUEST} bytes")
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as exc:
                reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                reply = server.answer(request)
            try:
                self.wfile.write(json.dumps(reply).encode() + b"\n")
            except OSError:  # the client went away (it gave up waiting)
                log.info("control: the client left before its answer")

    return Handler


def _lower_priority() -> None:
    """Run this request's thread (which executes the query with DuckDB's own worker) at
    nice +10: the pipeline's threads come first on the two cores.  Linux nices a
    thread, not the process; the thread ends with its request, so it is never raised
    back (which would need privilege).  DuckDB's worker threads are shared with the
    store and keep their priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       max(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), 10))
    except OSError as exc:  # not where threads have their own niceness
        log.debug("control: cannot lower the query thread's priority: %s", exc)


def _share(directory: Path) -> None:
    """Let the service's group read an export (0750 folders, 0640 files): the command
    that copies it out runs as a person of that group.  Never writable by the group: a
    member could otherwise swap a folder for a symlink under this walk."""
    os.chmod(directory.parent, 0o750)
    for root, _dirs, files in os.walk(directory):
        os.chmod(root, 0o750)
        for name in files:
            os.chmod(os.path.join(root, name), 0o640)


def _answers(path: Path) -> bool:
    return ask(path, {"op": "ping"}, timeout_s=2.0) is not None


def ask(path: Path, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Send ``request`` to the service on ``path``; its reply, or None when no service
    answers there (no socket, or a stale one: connection refused).  Raises OSError
    for anything else (no permission, no reply within ``timeout_s``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise OSError(f"the service closed {path} without an answer")
    return json.loads(line)
