"""Which model serves when the registry file cannot be read: the fallback, and the
current model keeps serving (DESIGN: a bad model file never stops the service)."""

from __future__ import annotations

from appliance import config
from appliance.features.spec import PipelineSpec
from appliance.models.contract import STARTER_MODEL
from appliance.models.registry import REGISTRY_FILE, Registry
from appliance.models.watcher import ModelWatcher, serving_model


def test_an_unreadable_registry_falls_back_to_the_starter(tmp_path):
    cfg = config.from_dict({"model": {"dir": str(tmp_path / "models")}})
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / REGISTRY_FILE).write_text("{not json")
    serving = serving_model(cfg)
    assert serving.model.path == STARTER_MODEL
    assert "active model refused" in serving.refused_active
    assert REGISTRY_FILE in serving.refused_active


def test_a_registry_made_unreadable_while_serving_keeps_the_current_model(tmp_path, caplog):
    spec_hash = PipelineSpec.from_config(config.PipelineConfig()).hash
    registry = Registry(tmp_path / "models")
    current = registry.add(STARTER_MODEL, spec_hash)
    watcher = ModelWatcher(registry, spec_hash)
    (tmp_path / "models" / REGISTRY_FILE).write_text("{half written")
    assert watcher.poll(current) is None  # no exception: predict keeps serving
    assert "unreadable registry" in caplog.text
