"""The whole pipeline with its artifacts in S3, on the real server: versions, get, stats,
download links, retention and GC, wrong credentials, the server dying mid-run, corruption."""

import json
import urllib.request

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.defs.generation import PIPELINE, foreground_image, initial_mesh
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.generation import generate_job
from threegen_dagster.keys import Prompt
from threegen_dagster.defs.resources import StageResource, StoreResource
from threegen_dagster.settings import Settings

from .s3_server import BUCKET, SECRET_KEY

QUIET = cli.QUIET_RUN


@pytest.fixture
def s3_env(s3_server, s3_prefix, monkeypatch, tmp_path):
    """The standard AWS environment pointing at the test server; no stray ~/.aws files."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("THREEGEN_STORE", f"s3://{BUCKET}/{s3_prefix}")
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "20000")
    monkeypatch.chdir(tmp_path)
    return Settings.from_env()


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _register(settings: Settings, instance, text: str, seed: int) -> str:
    entry, _ = cli.register(Prompt.from_text(text), seed, "test", settings, instance)
    return entry.key


def _event_log_text(instance, run_id: str) -> str:
    return "\n".join(str(record) for record in instance.all_logs(run_id))


def test_pipeline_on_s3_versions_links_get_stats_and_gc(s3_env, s3_server, s3_prefix, instance, tmp_path,
                                                         capsys) -> None:
    settings = s3_env
    key = _register(settings, instance, "a wooden chair", 42)
    job = build_definitions(settings).resolve_job_def("generate")
    first = job.execute_in_process(instance=instance, partition_key=key, run_config=QUIET)
    second = job.execute_in_process(instance=instance, partition_key=key, run_config=QUIET)
    assert first.success and second.success
    assert not (tmp_path / "artifacts").exists()  # nothing went to local disk

    objects = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_prefix}/")["Contents"]
    names = {o["Key"][len(s3_prefix) + 1:] for o in objects}
    assert f"ledger/{key}.json" in names and f"generations/{key}/compressed_splat/v000002.json" in names

    spz_event = next(e for e in second.get_asset_materialization_events()
                     if e.asset_key.path[-1] == "compressed_splat").materialization.metadata
    assert spz_event["version"].value == 2 and spz_event["deduplicated"].value is True
    assert spz_event["uri"].value == f"s3://{BUCKET}/{s3_prefix}/blobs/sha256/" + \
        f"{spz_event['sha256'].value[:2]}/{spz_event['sha256'].value[2:4]}/{spz_event['sha256'].value}"
    link = spz_event["download"].value  # a person clicks this in the UI
    assert "X-Amz-Expires=86400" in link and SECRET_KEY not in link
    with urllib.request.urlopen(link, timeout=5) as response:
        spz_bytes = response.read()
    assert len(spz_bytes) == spz_event["bytes"].value and spz_bytes[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame
    for run in (first, second):
        assert SECRET_KEY not in _event_log_text(instance, run.run_id)

    assert cli.main(["versions", key, "compressed_splat"]) == 0
    assert "deduplicated" in capsys.readouterr().out
    assert cli.main(["get", key, "compressed_splat", "--version", "1", "-o", "chair.spz"]) == 0
    assert (tmp_path / "chair.spz").read_bytes() == spz_bytes
    capsys.readouterr()
    assert cli.main(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["store"] == f"s3://{BUCKET}/{s3_prefix}" and stats["versions"] == 14
    assert stats["dedup_ratio"] > 1.9 and stats["missing_blobs"] == 0

    artifacts = StoreResource.from_settings(settings).artifacts()
    by_version = {v: {sha for m in artifacts.all_manifests() if m.key == key and m.version == v for sha in m.blobs()}
                  for v in (1, 2)}
    only_first = by_version[1] - by_version[2]  # the first score JSON, unless both runs timed it alike
    cleanup = build_definitions(settings).resolve_job_def("cleanup")
    config = {"ops": {"apply_retention": {"config": {"keep_versions": 1, "gc_grace_hours": 0}}}, **QUIET}
    report = cleanup.execute_in_process(instance=instance, run_config=config).output_for_node("apply_retention")
    assert report["versions_dropped"] == 7 and report["generations_removed"] == 0
    assert report["blobs_deleted"] == len(only_first) <= 1  # the other stages' bytes are shared by both runs
    assert not any(artifacts.store.exists(f"blobs/sha256/{sha[:2]}/{sha[2:4]}/{sha}") for sha in only_first)
    assert [m.version for m in artifacts.versions(key, "compressed_splat")] == [2]
    assert artifacts.load(key, "compressed_splat")[1] == spz_bytes


def test_wrong_credentials_fail_the_step_clearly_and_never_reach_the_log(s3_env, instance, monkeypatch) -> None:
    key = _register(s3_env, instance, "a red mug", 1)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    result = build_definitions(s3_env).resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "refused the credentials (SignatureDoesNotMatch)" in str(failure.event_specific_data.error)
    log = _event_log_text(instance, result.run_id)
    assert "definitely-wrong-secret" not in log and SECRET_KEY not in log


class _ServerDiesDuringThisStage(StageResource):
    """Generates the image, but the S3 server goes down before the I/O manager can store it."""

    def run(self, prompt: str, seed: int):
        image = super().run(prompt, seed)
        _ServerDiesDuringThisStage.server.stop()
        return image


def test_server_stopped_mid_run_fails_clearly_and_a_retry_succeeds(s3_env, s3_server, instance) -> None:
    settings = s3_env
    key = _register(settings, instance, "a green vase", 3)
    healthy = build_definitions(settings)
    _ServerDiesDuringThisStage.server = s3_server
    dying_stage = _ServerDiesDuringThisStage(stage="text_to_image", backend="procedural")
    dying = dg.Definitions(assets=PIPELINE, jobs=[generate_job],
                           resources={**healthy.resources, "text_to_image": dying_stage})
    try:
        broken = dying.resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET, raise_on_error=False)
    finally:
        s3_server.start()
    assert not broken.success
    failure = next(e for e in broken.all_events if e.is_step_failure)
    assert failure.step_key == "generated_image"
    assert f"S3 endpoint {s3_server.endpoint} is unreachable" in str(failure.event_specific_data.error)

    artifacts = StoreResource.from_settings(settings).artifacts()
    assert artifacts.latest(key, "generated_image") is None  # nothing half written
    retry = healthy.resolve_job_def("generate").execute_in_process(instance=instance, partition_key=key,
                                                                   run_config=QUIET)
    assert retry.success
    for manifest in artifacts.all_manifests():  # every version points at whole, verified bytes
        assert manifest.version == 1
        artifacts.load(manifest.key, manifest.asset)
    assert artifacts.stats()["missing_blobs"] == 0


def test_a_corrupted_object_heals_in_one_run_and_is_detected_on_read(s3_env, s3_server, s3_prefix, instance) -> None:
    settings = s3_env
    key = _register(settings, instance, "a tall lamp", 4)
    definitions = build_definitions(settings)
    assert definitions.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET).success
    artifacts = StoreResource.from_settings(settings).artifacts()
    blob = artifacts.latest(key, "foreground_image").blob
    s3_server.client().put_object(Bucket=BUCKET, Key=f"{s3_prefix}/{blob}", Body=b"\x89PNG not really")

    # re-materializing writes the same bytes: the bad copy under their hash is replaced, not re-used
    rerun = dg.materialize([*PIPELINE], selection=[foreground_image, initial_mesh], partition_key=key,
                           instance=instance, resources=definitions.resources, run_config=QUIET)
    assert rerun.success and not artifacts.latest(key, "foreground_image").deduplicated
    for manifest in artifacts.all_manifests():
        artifacts.load(manifest.key, manifest.asset, manifest.version)  # every version verifies

    s3_server.client().put_object(Bucket=BUCKET, Key=f"{s3_prefix}/{blob}", Body=b"\x89PNG not really")
    only_mesh = dg.materialize([*PIPELINE], selection=[initial_mesh], partition_key=key, instance=instance,
                               resources=definitions.resources, run_config=QUIET, raise_on_error=False)
    assert not only_mesh.success
    error = str(next(e for e in only_mesh.all_events if e.is_step_failure).event_specific_data.error)
    assert f"foreground_image v2 of {key}: blob s3://{BUCKET}/{s3_prefix}/{blob} is corrupt" in error
    healed = dg.materialize([*PIPELINE], selection=[foreground_image, initial_mesh], partition_key=key,
                            instance=instance, resources=definitions.resources, run_config=QUIET)
    assert healed.success and artifacts.load(key, "foreground_image")[1][:4] == b"\x89PNG"
