"""Fault 6: corrupt and mismatched models dropped into the models folder.

The running service checks every ``.onnx`` file that appears in its models
folder: a corrupt file, a truncated one, one whose feature list does not match
its input and one trained with another pipeline spec are each refused with an
error line naming the file and the problem, while the current model keeps
serving.  ``appliance models promote`` refuses a bad model; a good one promoted
while the service runs is served from then on, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from appliance import config as config_mod
from appliance.features.spec import PipelineSpec
from appliance.models.contract import STARTER_MODEL, load_model
from tests.support.faults import (
    fault_config,
    query,
    stage,
    summary,
    tally,
    wait_drained,
    wait_until,
)


def _edited(meta: dict[str, str]) -> bytes:
    """The starter model with some metadata replaced or added."""
    model = onnx.load(str(STARTER_MODEL))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def _drop(folder: Path, name: str, blob: bytes) -> Path:
    """Write a model file the way a copy would land: all at once (temp name, rename)."""
    target = folder / f"{name}.onnx"
    tmp = folder / f".{name}.partial"
    tmp.write_bytes(blob)
    os.replace(tmp, target)
    return target


def _models_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "models", *args, "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)


def test_bad_models_are_refused_the_current_one_serves_and_a_good_promote_switches_live(
        tmp_path, broker, fault_service, publishers):
    rng = np.random.default_rng(6)
    db = tmp_path / "appliance.duckdb"
    # predictions from the first tick: this test is about models, not the warm-up
    cfg = fault_config(tmp_path, broker, db=db, model={"poll_s": 0.3},
                       pipeline={"warmup_s": 0})
    models = tmp_path / "models"  # Config.models_dir(): "models" beside the database
    models.mkdir()
    starter = load_model(STARTER_MODEL, PipelineSpec.from_config(
        config_mod.load(cfg).pipeline).hash).name  # also: the starter fits this pipeline
    svc = fault_service(cfg, db).start()
    pid = svc.pid
    pub = publishers(broker, 200_000, rate=1000.0, assets=4, step_s=1.0).start()
    svc.wait_for(lambda s: stage(s, "predict") > 0 and s["model"] == starter, timeout_s=30,
                 what="predictions by the starter model")

    features = list(load_model(STARTER_MODEL).feature_names)
    good_blob = STARTER_MODEL.read_bytes()
    bad = {
        "corrupt": (rng.bytes(20_000), "not a loadable ONNX model"),
        "truncated": (good_blob[: len(good_blob) * 3 // 5], "not a loadable ONNX model"),
        "mismatched-features": (_edited({"appliance.features": json.dumps(features[:-1])}),
                                "feature count mismatch"),
        "mismatched-spec": (_edited({"appliance.spec_hash": "0123456789abcdef"}),
                            "pipeline spec 0123456789abcdef"),
    }
    paths = {name: _drop(models, name, blob) for name, (blob, _) in bad.items()}

    def refusal(name: str) -> str:
        lines = [ln for ln in svc.log_text().splitlines()
                 if "model file refused" in ln and str(paths[name]) in ln]
        return lines[0] if lines else ""

    refused_s = wait_until(lambda: all(refusal(n) for n in bad), 15, "every bad file refused")
    lines = {n: refusal(n) for n in bad}
    served = svc.status()
    p0 = stage(served, "predict")
    still = svc.wait_for(lambda s: stage(s, "predict") > p0 + 20, timeout_s=15,
                         what="predictions after the refusals")
    cli_bad = {n: _models_cli(cfg, "promote", n) for n in ("mismatched-spec", "corrupt")}
    after_cli = svc.wait_for(lambda s: s["ts"] > time.time() - 0.3, timeout_s=5, what="status")

    good = _edited({"appliance.note": "a good copy of the starter, promoted live"})
    good_name = f"good-{hashlib.sha256(good).hexdigest()[:8]}"
    _drop(models, good_name, good)
    cli_good = _models_cli(cfg, "promote", good_name)
    t_promote = time.monotonic()
    switched = svc.wait_for(lambda s: s["model"] == good_name, timeout_s=15,
                            what=f"serving {good_name}")
    switch_s = time.monotonic() - t_promote
    p1 = stage(switched, "predict")
    svc.wait_for(lambda s: stage(s, "predict") > p1 + 20, timeout_s=15,
                 what="predictions by the promoted model")
    pub.stop_publishing()
    pub.wait_acked(30)
    wait_drained(svc.status, timeout_s=30, alive=svc.alive)
    same_process = svc.pid == pid
    code, _ = svc.terminate()
    assert code == 0, svc.log_text()[-3000:]

    by_model = dict(query(db, "SELECT model, count(*) FROM predictions GROUP BY model"))
    events = query(db, "SELECT name, status FROM models ORDER BY created_at")
    t = tally(db, pub.acked)
    print(f"models: refusals logged {refused_s:.2f} s after the drop; "
          + "; ".join(f"{n}: {lines[n].split('model file refused: ', 1)[-1][:160]}"
                      for n in bad)
          + f"; promote bad -> "
          f"{[(n, r.returncode, r.stderr.strip()[:120]) for n, r in cli_bad.items()]}"
          f"; promote {good_name} -> {cli_good.returncode} {cli_good.stdout.strip()[:100]!r}, "
          f"served {switch_s:.2f} s later; predictions by model {by_model}; model events "
          f"{events}; readings rows {t.rows}, lost {t.lost}")
    summary("models", t.published, t.distinct, t.duplicated, t.lost, switch_s)
    for name, (_, problem) in bad.items():
        assert problem in lines[name], (name, lines[name])
    assert still["model"] == starter and after_cli["model"] == starter
    assert stage(still, "predict", "restarts") == 0
    for name, r in cli_bad.items():
        assert r.returncode == 1 and r.stderr.startswith("refused:") and name in r.stderr, r
    assert cli_good.returncode == 0, cli_good.stderr
    assert same_process  # switched without a restart
    assert by_model.get(starter, 0) > 0 and by_model.get(good_name, 0) > 0
    assert {(n, "refused") for n in bad} <= set(events)
    assert (good_name, "active") in events
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0)
