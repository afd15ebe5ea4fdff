"""The service against a mosquitto that wants TLS, a client certificate, a password and
an ACL, as a plant broker would: it ingests, publishes alerts and status within the
ACL; and a certificate that does not verify is one clear error, not a retry storm.

The certificates are made here with the ``openssl`` command: a CA, the broker's
certificate for 127.0.0.1 and two client certificates (the service and the line's
publisher), and a second CA that signed nothing the broker shows.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from appliance.devtools.mosquitto import BrokerTls, PrivateBroker
from tests.support.faults import wait_until
from tests.support.service import TOPICS, publish_all

#: openssl makes the certificates; `make test` installs it with mosquitto.
pytestmark = pytest.mark.broker

T0 = time.time() - 3600.0
PASSWORDS = {"appliance": "service-secret", "line": "line-secret"}
#: The service reads the line's readings and writes under appliance/, nothing else;
#: the line's publisher writes readings and reads what the appliance says.
ACL = """\
user appliance
topic read plant/#
topic write appliance/#

user line
topic write plant/#
topic read appliance/#
"""


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def key_and_request(folder: Path, name: str, cn: str) -> None:
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr",
            "-subj", f"/CN={cn}")


def self_signed_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.crt",
            "-days", "2", "-subj", f"/CN={name}")


def sign(folder: Path, name: str, ca: str, extensions: str) -> None:
    ext = folder / f"{name}.ext"
    ext.write_text(extensions + "\n")
    openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / f"{ca}.crt",
            "-CAkey", folder / f"{ca}.key", "-CAcreateserial", "-out", folder / f"{name}.crt",
            "-days", "2", "-extfile", ext)


@dataclass(frozen=True)
class Pki:
    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    self_signed_ca(folder, "ca")
    self_signed_ca(folder, "rogue-ca")  # signed nothing the broker shows
    key_and_request(folder, "broker", "127.0.0.1")
    # paho checks the host name: the broker's certificate names its address
    sign(folder, "broker", "ca", "subjectAltName=IP:127.0.0.1")
    for client in PASSWORDS:
        key_and_request(folder, client, client)
        sign(folder, client, "ca", "extendedKeyUsage=clientAuth")
    return Pki(folder)


@pytest.fixture
def tls_broker(pki):
    tls = BrokerTls(pki["ca.crt"], pki["broker.crt"], pki["broker.key"],
                    require_certificate=True)
    with PrivateBroker(tls=tls, passwords=PASSWORDS, acl=ACL) as b:
        yield b


def service_config(tmp_path: Path, broker: PrivateBroker, pki: Pki, ca: str,
                   mqtt_extra: str = "", sections: str = "") -> Path:
    """TLS with ``ca``, the service's certificate, user "appliance" (the password comes
    from the credential); ``mqtt_extra`` goes in [mqtt], ``sections`` after it."""
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "appliance"\n'
        f'tls_ca = "{pki[ca]}"\ntls_cert = "{pki["appliance.crt"]}"\n'
        f'tls_key = "{pki["appliance.key"]}"\n{mqtt_extra}'
        f'[storage]\npath = "{tmp_path / "appliance.duckdb"}"\nbatch_ms = 20\n'
        f'[status]\ninterval_s = 0.5\n{sections}')
    return path


def credentials(tmp_path: Path, monkeypatch) -> None:
    """The password where systemd's ``LoadCredential=`` puts it, as the unit does."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "mqtt_password").write_text(PASSWORDS["appliance"] + "\n")
    (folder / "mqtt_password").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))


def line_client(broker: PrivateBroker, pki: Pki, received: dict[str, list]) -> mqtt.Client:
    """The line's side: publishes readings, keeps what arrives under appliance/."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="line-publisher")
    c.tls_set(ca_certs=str(pki["ca.crt"]), certfile=str(pki["line.crt"]),
              keyfile=str(pki["line.key"]))
    c.username_pw_set("line", PASSWORDS["line"])
    c.on_connect = lambda client, *_a: client.subscribe("appliance/#", qos=1)
    c.on_message = lambda _c, _u, m: received.setdefault(m.topic, []).append(m.payload)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def denied(broker: PrivateBroker) -> list[str]:
    """mosquitto's log lines about what the ACL refused."""
    return [line for line in broker.log.read_text().splitlines() if "Denied" in line]


def test_the_service_ingests_and_publishes_over_tls_within_the_acl(
        tmp_path, tls_broker, pki, service_factory, monkeypatch):
    credentials(tmp_path, monkeypatch)
    # every prediction raises an alert, and predictions start at the first tick
    cfg = service_config(tmp_path, tls_broker, pki, "ca.crt", sections=(
        "[alerts]\nthreshold = 0.000001\n[pipeline]\nwarmup_s = 0\n"))
    svc = service_factory(cfg).start()
    received: dict[str, list] = {}
    line = line_client(tls_broker, pki, received)
    try:
        sensors = ("lube_temp", "vibration", "motor_current", "oil_pressure", "ambient_temp")
        msgs = [(TOPICS.reading("l1", "a1", s),
                 json.dumps({"ts": T0 + 5 * i, "value": 1.0}).encode())
                for i in range(60) for s in sensors]
        publish_all(line, msgs)
        snap = svc.wait_for(lambda s: s["stages"]["store"]["processed"] == len(msgs)
                            and s["stages"]["predict"]["processed"] > 0,
                            what="readings stored and predicted over TLS")
        assert snap["state"] == "running" and snap["mqtt_connected"], snap
        alert_topic = TOPICS.alert("l1", "a1")
        wait_until(lambda: alert_topic in received and TOPICS.status in received, 30,
                   "an alert and the status, published by the service under the ACL")
        assert json.loads(received[alert_topic][0])["state"] == "raised"
        assert json.loads(received[TOPICS.status][-1])["state"] in ("running", "degraded")
        assert denied(tls_broker) == []  # nothing the service did was refused by the ACL
        # ... and the ACL does refuse: the service's user may not write a reading
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
        probe.tls_set(ca_certs=str(pki["ca.crt"]), certfile=str(pki["appliance.crt"]),
                      keyfile=str(pki["appliance.key"]))
        probe.username_pw_set("appliance", PASSWORDS["appliance"])
        probe.connect("127.0.0.1", tls_broker.port)
        probe.loop_start()
        probe.publish(TOPICS.reading("l1", "a1", "lube_temp"), b"1", qos=1).wait_for_publish(10)
        wait_until(lambda: denied(tls_broker), 10, "the broker refusing the probe")
        probe.disconnect()
        probe.loop_stop()
    finally:
        line.disconnect()
        line.loop_stop()


def test_a_certificate_that_does_not_verify_is_one_clear_error_and_slow_retries(
        tmp_path, tls_broker, pki, service_factory, monkeypatch):
    credentials(tmp_path, monkeypatch)
    cfg = service_config(tmp_path, tls_broker, pki, "rogue-ca.crt",
                         "reconnect_min_s = 1\nreconnect_max_s = 2\n",
                         "[service]\nmqtt_down_after_s = 0\n")
    svc = service_factory(cfg).start(wait_connected=False)

    def failures(snap: dict) -> int:
        found = re.search(r"\((\d+) failed attempts", snap["stages"]["ingest"].get("problem", ""))
        return int(found.group(1)) if found else 0

    # three attempts: the first and two retries, so the log had its chance to repeat
    snap = svc.wait_for(lambda s: failures(s) >= 3, timeout_s=60,
                        what="three failed TLS connects")
    problem = snap["stages"]["ingest"]["problem"]
    assert snap["state"] == "degraded" and any(p.startswith("ingest: MQTT not connected")
                                               for p in snap["problems"]), snap
    assert "TLS: the broker's certificate failed verification against [mqtt] tls_ca " \
           f"{pki['rogue-ca.crt']}" in problem, problem
    assert problem.endswith("retrying every 2 s)"), problem
    log = svc.log.read_text()
    for role in ("ingest", "alert", "status"):
        lines = [line for line in log.splitlines()
                 if f"MQTT {role} cannot connect" in line]
        # one line says what is wrong and where; the retries after it add nothing new
        assert len(lines) == 1, lines
        assert "[mqtt] tls_ca" in lines[0] and "retrying every 2 s" in lines[0], lines[0]
