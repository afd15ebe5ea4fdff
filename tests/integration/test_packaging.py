"""The package as a wheel installs it: every module, the kernels and the starter model.

An editable install maps the whole source folder, so it cannot show a package
missing from ``setup.py`` or a data file left out; a built wheel can.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, pathlib, pkgutil, sys
import appliance
root = pathlib.Path(appliance.__file__).parent
assert str(root).startswith(sys.argv[1]), root  # the wheel's copy, not the checkout
for mod in pkgutil.walk_packages([str(root)], "appliance."):
    if not mod.name.endswith("__main__"):  # that one runs the command line
        importlib.import_module(mod.name)
from appliance.config import Config
from appliance.models.watcher import serving_model
print(serving_model(Config()).model.path)
"""


@pytest.mark.slow
def test_a_built_wheel_holds_every_module_and_serves_its_starter_model(tmp_path):
    # from a clean copy: setuptools would reuse a stale build/ folder of the checkout
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", "*.egg-info", "__pycache__", "*.so", "*.c"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, timeout=900)
    (wheel,) = (tmp_path / "dist").glob("appliance-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    packages = {p.parent.relative_to(REPO) for p in (REPO / "appliance").rglob("__init__.py")}
    assert all((site / p / "__init__.py").exists() for p in packages), packages
    done = subprocess.run([sys.executable, "-c", PROBE, str(site)], cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == site / "appliance" / "models" / "starter.onnx"
