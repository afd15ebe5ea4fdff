"""A model that does not fit the pipeline, promoted while the service runs: refused in
one log line, no traceback, and the predict stage keeps serving what it served."""

from __future__ import annotations

import time

import onnx

from appliance.models.contract import KEY_SPEC_HASH, STARTER_MODEL
from appliance.models.registry import Registry
from tests.support.faults import wait_until
from tests.support.service import write_config


def test_a_promoted_model_with_another_spec_is_refused_in_one_line(tmp_path, broker,
                                                                     service_factory):
    svc = service_factory(write_config(tmp_path, broker, '[model]\npoll_s = 0.2\n')).start()
    serving = svc.status()["model"]
    assert serving and serving.startswith("starter-")
    registry = Registry(tmp_path / "models")
    model = onnx.load(str(STARTER_MODEL))
    for prop in model.metadata_props:
        if prop.key == KEY_SPEC_HASH:
            prop.value = "0" * 16  # trained under another [pipeline]
    registry.directory.mkdir(exist_ok=True)
    onnx.save(model, str(registry.directory / "mismatched.onnx"))
    registry.promote("mismatched")  # no spec given: as a registry copied from elsewhere

    def refusals() -> list[str]:
        return [line for line in svc.log.read_text().splitlines()
                if "mismatched" in line and "refused" in line]

    wait_until(lambda: len(refusals()) >= 1, 30, "the refusal in the log")
    # a status written a second later: five polls (poll_s 0.2) have passed since, each
    # of which could have said it again
    later = time.time() + 1.0
    svc.wait_for(lambda s: s["ts"] > later, what="a later status")
    log = svc.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    # Said once, not at every poll.  A poll between the file's save and its promotion
    # sees a new file first and says so ("model file refused"); the promotion is then
    # an operator's act of its own and is answered once more.
    promoted = [line for line in refusals() if "promoted model mismatched refused" in line]
    as_file = [line for line in refusals() if "model file refused" in line]
    assert len(promoted) == 1 and len(as_file) <= 1, refusals()
    assert len(refusals()) == len(promoted) + len(as_file), refusals()
    assert "pipeline spec" in promoted[0], promoted[0]
    snap = svc.status()
    assert snap["stages"]["predict"]["state"] == "running", snap["stages"]["predict"]
    assert snap["model"] == serving
