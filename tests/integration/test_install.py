"""``systemd/install.sh`` run for real, as root, with /etc, /var and /opt under overlays
in a private mount namespace (nothing of the machine changes) and ``systemctl`` and
``apt-get`` replaced by stubs that log their calls: install, then uninstall --purge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[2] / "systemd" / "install.sh"

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="needs root and unshare")]

#: Read inside the namespace after the install: what the operator would look at.
FACTS = r"""
import json, os, pwd, grp, stat, subprocess
def owner(path):
    st = os.stat(path)
    return [pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
            oct(stat.S_IMODE(st.st_mode))]
venv = "/opt/appliance/venv"
dists = subprocess.run([venv + "/bin/python", "-c",
                        "import importlib.metadata as m, appliance; "
                        "print(appliance.__file__); "
                        "print(' '.join(sorted(d.metadata['Name'].lower() "
                        "for d in m.distributions())))"],
                       capture_output=True, text=True, check=True,
                       cwd="/").stdout.splitlines()  # not the checkout's folder
print(json.dumps({
    "config": owner("/etc/appliance/appliance.toml"),
    "credential": owner("/etc/appliance/credentials/mqtt_password"),
    "credential_size": os.path.getsize("/etc/appliance/credentials/mqtt_password"),
    "data": owner("/var/lib/appliance"),
    "venv": os.path.realpath(venv),
    "package": dists[0],
    "dists": dists[1].split(),
    "unit": open("/etc/systemd/system/appliance.service").read(),
    "config_text": open("/etc/appliance/appliance.toml").read(),
}))
"""


def test_install_then_purge_in_overlays(tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for tool in ("systemctl", "apt-get"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (stubs / tool).chmod(0o755)
    mounts = []
    for folder in ("etc", "var", "opt"):
        (tmp_path / f"{folder}-up").mkdir()
        (tmp_path / f"{folder}-work").mkdir()
        mounts.append(f"mount -t overlay overlay -o lowerdir=/{folder},"
                      f"upperdir={tmp_path}/{folder}-up,workdir={tmp_path}/{folder}-work "
                      f"/{folder}")
    facts = tmp_path / "facts.py"
    facts.write_text(FACTS)
    script = " && ".join([
        *mounts, f"export PATH={stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
        f"bash {INSTALL}", "echo ---", f"python3 {facts}", "echo ---",
        f"bash {INSTALL} --uninstall --purge",
        "! ls -d /opt/appliance /etc/appliance /var/lib/appliance "
        "/etc/systemd/system/appliance.service 2>/dev/null", "! id appliance 2>/dev/null",
    ])
    done = subprocess.run(["unshare", "--mount", "--", "sh", "-c", script], capture_output=True,
                          text=True, timeout=1800, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    before, found, after = done.stdout.split("---\n")
    assert "/etc/appliance/appliance.toml: OK (broker" in before  # checked as the user
    got = json.loads(found)
    assert got["config"] == ["root", "appliance", "0o640"]
    assert (got["credential"], got["credential_size"]) == (["root", "root", "0o600"], 0)
    assert got["data"] == ["appliance", "appliance", "0o750"]
    # a copy in the venv, not an editable link to the checkout; no dev or training extra
    assert got["venv"].startswith("/opt/appliance/venv-")
    assert got["package"].startswith("/opt/appliance/venv/lib/"), got["package"]
    assert "appliance" in got["dists"]
    assert not {"pytest", "scikit-learn", "skl2onnx", "ruff"} & set(got["dists"])
    assert got["unit"] == INSTALL.with_name("appliance.service").read_text()
    assert got["config_text"].rstrip().endswith("enabled = false")  # no training: no retrain
    assert "systemctl enable appliance.service" in calls.read_text()
    assert "systemctl restart appliance.service" in calls.read_text()
    assert "removed appliance, its config, its data and its user" in after
