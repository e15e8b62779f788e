"""The audit's and the duel's settings: the server URL, the embedding model, the VLM (its key never shown);
the driver's rules refuse numbers that cannot run."""

from __future__ import annotations

import pytest

from threegen_dagster.audit.driver import AuditRules
from threegen_dagster.settings import Settings, SettingsError


def test_settings(tmp_path):
    settings = Settings.from_env({"THREEGEN_AUDIT_URL": "http://gpu-box:10006/", "THREEGEN_DUEL_EMBED_MODEL": "/m/dino",
                                  "THREEGEN_DUEL_VLM_URL": "http://127.0.0.1:8000/v1/", "THREEGEN_DUEL_VLM_MODEL": "glm",
                                  "THREEGEN_DUEL_VLM_KEY": "sk-secret"}, cwd=tmp_path)
    assert settings.audit_url == "http://gpu-box:10006" and settings.duel_embed_model == "/m/dino"
    assert settings.duel_vlm.base_url == "http://127.0.0.1:8000/v1" and settings.duel_vlm.api_key == "sk-secret"
    assert "sk-secret" not in repr(settings)
    assert Settings.from_env({}, cwd=tmp_path).duel_vlm is None
    with pytest.raises(SettingsError, match="THREEGEN_DUEL_VLM_.*name is empty"):
        Settings.from_env({"THREEGEN_DUEL_VLM_URL": "http://127.0.0.1:8000/v1"}, cwd=tmp_path)


def test_rules_that_cannot_run_are_refused():
    with pytest.raises(ValueError, match="repeats must be at least 1, not 0"):
        AuditRules(repeats=0)
    with pytest.raises(ValueError, match="poll_interval_s and repeat_timeout_s > 0"):
        AuditRules(poll_interval_s=0)


def test_the_vlm_key_reaches_the_duel_resource_as_an_env_var(tmp_path, monkeypatch):
    import dagster as dg

    from threegen_dagster.definitions import build_definitions

    env = {"THREEGEN_DUEL_VLM_URL": "http://127.0.0.1:9/v1", "THREEGEN_DUEL_VLM_MODEL": "glm",
           "THREEGEN_DUEL_VLM_KEY": "sk-secret"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    duel = build_definitions(Settings.from_env(env, cwd=tmp_path)).resources["duel"]
    assert isinstance(duel.vlm_key, dg.EnvVar)  # the UI shows the variable's name, never its value
    vlm = duel.process_config_and_initialize().vlm()
    assert vlm.api_key == "sk-secret" and "sk-secret" not in repr(vlm)
