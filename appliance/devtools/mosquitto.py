"""A private mosquitto on a free loopback port: for the demo and the tests.

The broker keeps QoS 1 messages for a disconnected persistent session without
the default cap of 1000 queued messages (a service restart must lose nothing).
It can listen with TLS only (``tls``: a CA and the broker's certificate, and
whether a client certificate is required), take users and passwords only
(``passwords``, hashed with ``mosquitto_passwd``) and restrict topics with an
ACL (``acl``: the text of mosquitto's ``acl_file``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def find_mosquitto() -> str | None:
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """PEM files of a TLS listener; ``require_certificate``: clients must present a
    certificate signed by ``ca``."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


class PrivateBroker:
    """``with PrivateBroker() as b: b.port`` — stopped and cleaned up on exit."""

    def __init__(self, port: int | None = None, persistence: bool = True, *,
                 tls: BrokerTls | None = None, passwords: dict[str, str] | None = None,
                 acl: str | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto not found: install the Debian package "
                                    "'mosquitto' (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="appliance-broker-"))
        self.config = self._dir / "mosquitto.conf"
        self.log = self._dir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if passwords else 'true'}",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            f"log_dest file {self.log}",
            "user root",  # run as root, mosquitto drops to user mosquitto: no log, no persistence
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self._dir}/"]
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
                      f"require_certificate {str(tls.require_certificate).lower()}"]
        if passwords:
            lines.append(f"password_file {self._password_file(passwords)}")
        if acl is not None:
            (self._dir / "acl").write_text(acl)
            # mosquitto logs what the ACL refuses at debug level only: a test reads it there
            lines += [f"acl_file {self._dir / 'acl'}", "log_type all"]
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen | None = None

    def _password_file(self, passwords: dict[str, str]) -> Path:
        path = self._dir / "passwords"
        path.touch(mode=0o600)
        for user, password in passwords.items():
            subprocess.run(["mosquitto_passwd", "-b", str(path), user, password],
                           check=True, capture_output=True, timeout=30)
        return path

    def start(self, timeout_s: float = 10.0) -> PrivateBroker:
        self._proc = subprocess.Popen([self.binary, "-c", str(self.config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}; "
                                   f"see {self.log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: mosquitto saves its persistence file)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
