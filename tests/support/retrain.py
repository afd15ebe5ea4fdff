"""A history ready for the retraining loop: imported, a champion trained and promoted.

5 assets × 7 days of 1-minute simulated readings with faults, imported and trained
with the CLI as a user would; ``END`` is where readings that continue it start.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from appliance import cli
from appliance.devtools import simulator
from appliance.models.registry import Registry

DAY = 86400.0
ASSETS, DAYS = 5, 7.0
PARAMS = simulator.SimParams(loads=(0.25, 1.0, 1.75), severity=(0.5, 0.9))
END = simulator.DEFAULT_START_TS + DAYS * DAY
#: The pipeline and training of this history, as config sections.
SECTIONS: dict[str, dict[str, object]] = {
    "pipeline": {"cadence_s": 60.0, "hampel_window_s": 600.0},
    "training": {"max_iter": 30},
}


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue() + err.getvalue()


def prepare(root: Path, *, days: float = DAYS, assets: int = ASSETS, seed: int = 2,
            params: simulator.SimParams = PARAMS) -> Path:
    """Import and train in ``root`` (``appliance.duckdb``, ``models/`` with the model
    promoted, ``appliance.toml``); returns root."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "appliance.toml"
    cfg.write_text(f'[storage]\npath = "{root / "appliance.duckdb"}"\n'
                   "[pipeline]\ncadence_s = 60\nhampel_window_s = 600\n"
                   "[training]\nmax_iter = 30\n")
    readings, faults = simulator.to_files(root / "files", days=days, assets=assets,
                                          hz=1 / 60, seed=seed, params=params)
    for argv in (["import", str(readings), "--faults", str(faults), "--quiet"],
                 ["train", "--family", "gbt", "--quiet"]):
        code, text = run_cli([*argv, "--config", str(cfg)])
        assert code == 0, text
    registry = Registry(root / "models")
    (entry,) = registry.entries()
    registry.promote(entry.name)
    return root


def copy_into(history: Path, target: Path) -> Path:
    """The prepared database and registry copied into ``target``; the database path."""
    db = target / "appliance.duckdb"
    shutil.copy(history / "appliance.duckdb", db)
    shutil.copytree(history / "models", target / "models")
    return db
