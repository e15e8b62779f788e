"""Settings: every value the environment gives that cannot be used is one line naming the variable;
every default has one source (the settings, the resources and the pure modules agree)."""

import pytest

from threegen_dagster.retention import RetentionPolicy
from threegen_dagster.settings import Settings, SettingsError
from threegen_dagster.sn17.validators import ValidatorPolicy
from threegen_dagster.splats.mesh import DEFAULT_GAUSSIAN_COUNT


@pytest.mark.parametrize("env, message", [
    ({"THREEGEN_FRAME": "z_up"}, r"THREEGEN_FRAME='z_up': use 'y_up' or 'y_down'"),
    ({"THREEGEN_STORE": "s3://"}, r"THREEGEN_STORE: 's3://' names no bucket"),
    ({"THREEGEN_GAUSSIANS": "lots"}, r"THREEGEN_GAUSSIANS='lots' is not a int"),
    ({"THREEGEN_SCORE_THRESHOLD": "high"}, r"THREEGEN_SCORE_THRESHOLD='high' is not a float"),
    ({"THREEGEN_PRESIGN_SECONDS": "1.5"}, r"THREEGEN_PRESIGN_SECONDS='1.5' is not a int"),
    ({"THREEGEN_KEEP_VERSIONS": "0"}, r"keep_versions must be at least 1"),
    ({"THREEGEN_RETENTION_HOURS": "-1"}, r"retention hours must be >= 0"),
    ({"THREEGEN_WORKER_MAX_BODY_MB": "0"}, r"THREEGEN_WORKER_MAX_BODY_MB='0' must be greater than 0"),
    ({"THREEGEN_WORKER_READ_TIMEOUT": "soon"}, r"THREEGEN_WORKER_READ_TIMEOUT='soon' is not a float"),
    ({"THREEGEN_MAX_IMAGE_PIXELS": "-4"}, r"THREEGEN_MAX_IMAGE_PIXELS='-4' must be greater than 0"),
    ({"THREEGEN_SN17_BLACKLIST": "180;12"}, r"THREEGEN_SN17_BLACKLIST='180;12': comma-separated UIDs"),
    ({"THREEGEN_SN17_MIN_STAKE": "a lot"}, r"THREEGEN_SN17_MIN_STAKE='a lot' is not a float"),
    ({"THREEGEN_SN17_VARIANTS": "two"}, r"THREEGEN_SN17_VARIANTS='two' is not a int"),
    ({"THREEGEN_SN17_MAX_PENDING": "0"}, r"THREEGEN_SN17_MAX_PENDING='0' must be greater than 0"),
    ({"THREEGEN_SCORER": "oracle"}, r"THREEGEN_SCORER='oracle': one of proxy, models, validation_server"),
])
def test_an_unusable_value_is_one_line_naming_its_variable(tmp_path, env, message) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        Settings.from_env(env, cwd=tmp_path)
    assert "\n" not in str(info.value)


def test_the_defaults_have_one_source(tmp_path) -> None:
    from threegen_dagster.defs.resources import ScoreResource, SplatResource, StoreResource, ValidatorPolicyResource

    settings = Settings.from_env({}, cwd=tmp_path)
    assert settings.store == str(tmp_path / "artifacts") and settings.inbox == tmp_path / "inbox"
    assert settings.gaussians == DEFAULT_GAUSSIAN_COUNT == SplatResource().gaussians == 50_000
    assert settings.score_threshold == ScoreResource(backend="proxy").threshold == 0.6
    assert settings.presign_seconds == StoreResource.model_fields["presign_seconds"].default == 86_400
    assert settings.retention == RetentionPolicy()
    assert settings.validators == ValidatorPolicy() == ValidatorPolicyResource().policy()
    assert settings.validators.min_stake == 1000.0 and settings.validators.max_pending == 2


def test_values_the_environment_sets_arrive(tmp_path) -> None:
    from threegen_dagster.defs.resources import ValidatorPolicyResource

    settings = Settings.from_env({"THREEGEN_GAUSSIANS": "8000", "THREEGEN_SCORE_THRESHOLD": "0.4",
                                  "THREEGEN_PRESIGN_SECONDS": "600", "THREEGEN_SLIM_HOURS": "0",
                                  "THREEGEN_SN17_BLACKLIST": "", "THREEGEN_STORE": "s3://bucket/miner-1/",
                                  "THREEGEN_FRAME": "y_down", "THREEGEN_SN17_MAX_PENDING": "3"}, cwd=tmp_path)
    assert (settings.gaussians, settings.score_threshold, settings.presign_seconds) == (8000, 0.4, 600)
    assert settings.validators.max_pending == 3
    assert ValidatorPolicyResource.from_policy(settings.validators).policy() == settings.validators
    assert settings.retention.slim_after_hours == 0 and settings.validators.manual_blacklist == frozenset()
    assert settings.store == "s3://bucket/miner-1/" and settings.frame == "y_down"


def test_an_s3_endpoint_keeps_no_password(tmp_path) -> None:
    """botocore never uses an endpoint's user:password (requests are signed with the AWS keys); kept, it would
    show in the Dagster UI's resource config, so the settings drop it."""
    from threegen_dagster.definitions import build_definitions

    env = {"THREEGEN_S3_ENDPOINT": "http://miner:s3cr3t@127.0.0.1:9000/", "THREEGEN_STORE": "s3://bucket/p"}
    settings = Settings.from_env(env, cwd=tmp_path)
    assert settings.s3_endpoint == "http://127.0.0.1:9000/"
    assert build_definitions(settings).resources["store"].s3.endpoint_url == "http://127.0.0.1:9000/"
    assert Settings.from_env({}, cwd=tmp_path).s3_endpoint is None
