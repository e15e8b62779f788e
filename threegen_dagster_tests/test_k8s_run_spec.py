"""The Kubernetes deployment on paper, checked by dagster-k8s's own code (no cluster runs here): the
Job that K8sRunLauncher would create for a generation, built from deploy/helm-values.yaml (as the
chart turns it into the launcher's config) and the run's tags from deploy/run-tags.gpu.yaml, then
serialized as the Kubernetes client sends it and parsed back by dagster-k8s's strict model parser;
and the Job of a run the inbox sensor launched, which carries those tags when THREEGEN_GPU_RUN_TAGS
names the file.
(The kubernetes client is imported here only, never by the code location.)"""

import json
import uuid
from pathlib import Path

import pytest
import yaml

from dagster import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes.client import ApiClient, V1Job

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RELEASE = "dagster"  # `helm upgrade --install dagster ...`
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: paper, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: paper, user: {token: not-a-token}}]
contexts: [{name: paper, context: {cluster: paper, user: paper}}]
current-context: paper
"""  # read, never connected to: nothing here creates a Job


def chart_launcher_config(values: dict) -> dict:
    """K8sRunLauncher's config as the chart's _run-launcher.tpl writes it into the instance's dagster.yaml,
    for the keys deploy/helm-values.yaml sets (the DAGSTER_* env entries resolved as the chart sets them)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    run_k8s = k8s.get("runK8sConfig", {})
    return {
        "service_account_name": RELEASE, "instance_config_map": f"{RELEASE}-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "image_pull_policy": k8s["imagePullPolicy"], "job_namespace": "threegen",
        "env_config_maps": [f"{RELEASE}-pipeline-env", *(c["name"] for c in k8s.get("envConfigMaps", []))],
        "env_secrets": [s["name"] for s in k8s.get("envSecrets", [])],
        "run_k8s_config": {"container_config": run_k8s.get("containerConfig", {}),
                           "pod_spec_config": run_k8s.get("podSpecConfig", {}),
                           "job_spec_config": run_k8s.get("jobSpecConfig", {})},
    }


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())


@pytest.fixture(scope="module")
def launcher(values, tmp_path_factory) -> K8sRunLauncher:
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    return K8sRunLauncher(**chart_launcher_config(values), load_incluster_config=False,
                          kubeconfig_file=str(kubeconfig))


def gpu_tags() -> dict[str, str]:
    return {key: json.dumps(value) for key, value in yaml.safe_load((DEPLOY / "run-tags.gpu.yaml").read_text()).items()}


def run_job(launcher: K8sRunLauncher, image: str, tags: dict[str, str]) -> V1Job:
    """What K8sRunLauncher._launch_k8s_job_with_args builds for a run, short of sending it."""
    run = DagsterRun(job_name="generate", run_id=str(uuid.uuid4()), tags=tags)
    context = launcher.get_container_context_for_run(run)
    job_name = get_job_name_from_run_id(run.run_id)
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"], job_name=job_name, pod_name=job_name, component="run_worker",
        user_defined_k8s_config=context.run_k8s_config, labels={"dagster/job": "generate", "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": "generate"}])


def as_sent(job: V1Job) -> dict:
    """The JSON body the Kubernetes client would POST, and proof that it parses back into the same V1Job
    under dagster-k8s's strict parser (unknown keys and wrong types raise)."""
    body = ApiClient().sanitize_for_serialization(job)
    json.dumps(body)  # JSON all the way down
    assert k8s_model_from_dict(V1Job, k8s_snake_case_dict(V1Job, body)) == job
    return body


def test_a_generation_job_asks_for_a_gpu_on_a_gpu_node_with_the_deployments_settings(values, launcher) -> None:
    code = values["dagster-user-deployments"]["deployments"][0]
    image = f"{code['image']['repository']}:{code['image']['tag']}"
    body = as_sent(run_job(launcher, image, gpu_tags()))

    assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["cpu"] == "4"  # the run's tag overrides the chart's default
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == RELEASE

    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret", "key": "postgresql-password"}  # never a literal value
    assert "value" not in env["DAGSTER_PG_PASSWORD"]
    assert env["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
    sources = {(next(iter(s)), (s.get("configMapRef") or s.get("secretRef"))["name"]) for s in container["envFrom"]}
    assert sources == {("configMapRef", f"{RELEASE}-pipeline-env"),  # the chart's run environment
                       ("configMapRef", "threegen-env"),  # THREEGEN_STORE=s3://..., the model settings
                       ("secretRef", "threegen-store")}  # the store's credentials
    # the instance (Postgres, password from DAGSTER_PG_PASSWORD above) travels in execute_run's arguments


def test_a_run_without_the_gpu_tag_gets_the_charts_cpu_defaults_and_no_gpu(values, launcher) -> None:
    body = as_sent(run_job(launcher, "registry.example.com/threegen-dagster:0.1.0", {}))
    pod = body["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "2Gi"} and "limits" not in resources
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_a_misspelt_tag_is_refused_by_dagster_k8s_before_any_job_is_made(launcher) -> None:
    tags = {"dagster-k8s/config": json.dumps({"container_config": {"resorces": {"limits": {"nvidia.com/gpu": "1"}}}})}
    with pytest.raises(Exception, match="Unexpected keys in model class V1Container: {'resorces'}"):
        run_job(launcher, "registry.example.com/threegen-dagster:0.1.0", tags)
    with pytest.raises(json.JSONDecodeError, match="Expecting property name"):  # a tag that is not JSON
        run_job(launcher, "registry.example.com/threegen-dagster:0.1.0", {"dagster-k8s/config": "{not json"})


def test_the_code_location_never_imports_the_kubernetes_client() -> None:
    import subprocess
    import sys

    probe = ("import sys, threegen_dagster.definitions; "
             "print(sorted(m for m in ('kubernetes', 'dagster_k8s') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=DEPLOY.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # the heavy client loads in the run launcher's processes only


def test_the_charts_queue_is_the_tested_one(values) -> None:
    """The Helm values' queue and run monitoring say what deploy/dagster.postgres.yaml says (which the
    daemon test runs), so the two deployments cannot drift apart."""
    tested = yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert queue["maxConcurrentRuns"] == tested["concurrency"]["runs"]["max_concurrent_runs"]
    assert queue["tagConcurrencyLimits"] == tested["concurrency"]["runs"]["tag_concurrency_limits"]
    assert queue["dequeueIntervalSeconds"] == tested["run_coordinator"]["config"]["dequeue_interval_seconds"]
    assert queue["blockOpConcurrencyLimitedRuns"] == {
        "enabled": True, "opConcurrencySlotBuffer": tested["concurrency"]["pools"]["op_granularity_run_buffer"]}
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is tested["run_monitoring"]["enabled"] is True
    assert monitoring["freeSlotsAfterRunEndSeconds"] == tested["run_monitoring"]["free_slots_after_run_end_seconds"]


def tick_inbox(tmp_path, monkeypatch, gpu_tags_file: str | None) -> "dg.RunRequest":
    """The inbox sensor, ticked on a real task file with THREEGEN_GPU_RUN_TAGS set (or not): its run request."""
    import dagster as dg

    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.defs.inbox import InboxResource, inbox_sensor
    from threegen_dagster.settings import Settings

    if gpu_tags_file:
        monkeypatch.setenv("THREEGEN_GPU_RUN_TAGS", gpu_tags_file)
    else:
        monkeypatch.delenv("THREEGEN_GPU_RUN_TAGS", raising=False)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "t1.json").write_text(json.dumps({"id": "t1", "prompt": "a wooden chair", "seed": 1}))
    with dg.instance_for_test() as instance, dg.build_sensor_context(instance=instance, resources={
            "store": build_definitions(Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox")).resources["store"],
            "inbox": InboxResource(path=str(tmp_path / "inbox"))}) as context:
        (request,) = inbox_sensor(context).run_requests
    return request


def test_a_sensor_launched_generation_asks_for_a_gpu_when_the_setting_says_so(launcher, tmp_path, monkeypatch) -> None:
    request = tick_inbox(tmp_path, monkeypatch, str(DEPLOY / "run-tags.gpu.yaml"))
    assert request.tags["threegen/source"] == "inbox" and request.tags["threegen/task_id"] == "t1"
    body = as_sent(run_job(launcher, "registry.example.com/threegen-dagster:0.1.0", dict(request.tags)))
    pod = body["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_without_the_setting_a_sensor_launched_generation_asks_for_no_gpu(launcher, tmp_path, monkeypatch) -> None:
    request = tick_inbox(tmp_path, monkeypatch, None)
    assert "dagster-k8s/config" not in request.tags
    pod = as_sent(run_job(launcher, "registry.example.com/threegen-dagster:0.1.0", dict(request.tags)))["spec"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"] and "nodeSelector" not in pod


def test_a_bad_gpu_tags_file_is_refused_when_the_settings_are_read(tmp_path) -> None:
    from threegen_dagster.settings import Settings, SettingsError

    (tmp_path / "tags.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SettingsError, match=r"THREEGEN_GPU_RUN_TAGS=tags.yaml: a mapping of tag names"):
        Settings.from_env({"THREEGEN_GPU_RUN_TAGS": "tags.yaml"}, cwd=tmp_path)
    with pytest.raises(SettingsError, match=r"THREEGEN_GPU_RUN_TAGS=nope.yaml: cannot read it"):
        Settings.from_env({"THREEGEN_GPU_RUN_TAGS": "nope.yaml"}, cwd=tmp_path)
    tags = Settings.from_env({"THREEGEN_GPU_RUN_TAGS": str(DEPLOY / "run-tags.gpu.yaml")}, cwd=tmp_path).gpu_run_tags
    assert json.loads(tags["dagster-k8s/config"]) == yaml.safe_load((DEPLOY / "run-tags.gpu.yaml").read_text())["dagster-k8s/config"]
