"""README, "Bring your own data": a CSV history and a fault log to a serving model in
three commands, as a user types them, then the service run with that config.

The history is the simulator's, read once a minute (a rate the default 10 s grid does
not fit), written by ``simulator.to_files``: ``import --fit-pipeline`` writes the
``[pipeline]`` values that fit it into the config, ``train`` validates and recommends,
and the printed promote command activates the model the service then serves.
"""

from __future__ import annotations

import shlex
import tomllib

from appliance import cli
from appliance.devtools import simulator
from tests.support.service import Service, write_config


def test_three_commands_take_a_csv_history_to_a_serving_validated_model(
        tmp_path, broker, capsys):
    readings, faults = simulator.to_files(tmp_path / "files", days=10.0, assets=6,
                                          hz=1 / 60, seed=2)
    cfg = write_config(tmp_path, broker)
    # 1: import, writing the [pipeline] values that fit the data into the config
    assert cli.main(["import", str(readings), "--faults", str(faults), "--config", str(cfg),
                     "--fit-pipeline", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "typical interval between readings: 60 s" in out
    assert f"wrote into {cfg}: [pipeline] cadence_s = 60, hampel_window_s = 180" in out
    pipeline = tomllib.loads(cfg.read_text())["pipeline"]
    assert (pipeline["cadence_s"], pipeline["hampel_window_s"]) == (60, 180)
    # 2: train: validated on the last part of the history, a usable model recommended
    assert cli.main(["train", "--config", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" not in out
    line = next(ln for ln in out.splitlines() if ln.startswith("recommended: "))
    name = line.split()[1]
    row = next(ln for ln in out.splitlines() if ln.rstrip().endswith(name))
    assert " NO " not in row and " yes " in row  # the table's "usable" column
    # 3: promote, with the command train printed
    command = shlex.split(line.split("activate it with: ")[1])
    assert command[:4] == ["appliance", "models", "promote", name]
    assert cli.main(command[1:]) == 0
    assert f"active model: {name}" in capsys.readouterr().out
    # the service run with this config serves it (its spec matches the config's)
    service = Service(cfg).start()
    try:
        status = service.wait_for(lambda s: s.get("model") == name, timeout_s=30,
                                  what=f"model {name} serving")
        assert status["state"] != "degraded"
    finally:
        service.terminate()
