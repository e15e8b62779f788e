"""The warm worker, started for real on loopback (a `threegen worker` subprocess), and the
pipeline running its model stages through it; errors when it is down, slow or refuses."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.definitions import build_definitions
from threegen_dagster.keys import Prompt
from threegen_dagster.settings import Settings, models_from_env
from threegen_dagster.worker_client import WorkerClient


def expected_device() -> str:
    """What the worker reports as its device on this machine: "cpu", or the CUDA card's name."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """`threegen worker` in a subprocess with the given environment."""

    def __init__(self, env: dict[str, str], tmp_path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"worker-{self.port}.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "threegen_dagster.cli", "worker", "--port", str(self.port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, stdout=self.log, stderr=subprocess.STDOUT)
        client = WorkerClient(self.url)
        deadline = time.monotonic() + 300  # loading models on a busy machine; not a measurement
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited: {self.output()}")
            try:
                if client.health(timeout_s=1):
                    return
            except BackendError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the worker did not come up: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def embedded_worker(tmp_path_factory):
    worker = Worker({}, tmp_path_factory.mktemp("worker"))
    yield worker
    worker.stop()


def test_the_pipeline_runs_its_model_stages_through_the_worker(embedded_worker, tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path / "inbox", worker_url=embedded_worker.url)
    with dg.instance_for_test() as instance:
        entry, _ = cli.register(Prompt.from_text("a wooden chair"), 42, "test", settings, instance)
        result = build_definitions(settings).resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=cli.QUIET_RUN)
        progress = [e.user_message for e in instance.all_logs(result.run_id)
                    if e.step_key == "generated_image" and e.user_message.startswith("text_to_image: ")]
    assert result.success
    # the renderer's progress streamed from the worker into the run's log, as when it runs in the run's process
    assert progress[-1] == "text_to_image: 262144/262144 rays traced (100%)" and 2 <= len(progress) <= 11, progress
    events = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    for asset, backend in (("generated_image", "procedural"), ("foreground_image", "flood_fill"),
                           ("initial_mesh", "inflate"), ("refined_mesh", "decimate")):
        assert events[asset]["where"].value == "worker" and events[asset]["backend"].value == backend
        assert events[asset]["gpu_peak_mb"].value == 0.0  # no GPU here; the figure is still reported
    status = WorkerClient(embedded_worker.url).status()
    assert status["served"]["text_to_image"] >= 1 and status["queue"] == 0 and not status["busy"]
    assert status["device"] == expected_device() and status["models"]["image_to_mesh"]["loaded"]
    assert re.search(r"^\d\d:\d\d:\d\d text_to_image \d+\.\d\d s$", embedded_worker.output(), re.M)  # a line per call


def test_worker_answers_match_in_process_results(embedded_worker) -> None:
    from threegen_dagster.backends.registry import engine

    client = WorkerClient(embedded_worker.url)
    remote, meta = client.call("text_to_image", "a red mug", 3)
    local = engine("text_to_image", "procedural", {"size": 512})("a red mug", 3)
    assert remote.tobytes() == local.tobytes() and meta["backend"] == "procedural" and meta["seconds"] > 0
    cut, _ = client.call("background", remote)
    assert cut.mode == "RGBA" and cut.size == remote.size


def test_worker_refusals_are_clear(embedded_worker) -> None:
    client = WorkerClient(embedded_worker.url)
    blank = Image.new("RGB", (64, 64), "white")
    with pytest.raises(BackendError, match=r"refused /v1/background \(HTTP 422\): no object found"):
        client.call("background", blank)
    with pytest.raises(BackendError, match=r"HTTP 400\): background: cannot decode"):
        client._call("POST", "/v1/background", {"png_b64": "not base64!"})
    with pytest.raises(BackendError, match=r"HTTP 400\): text_to_image needs the field 'seed'"):
        client._call("POST", "/v1/text_to_image", {"prompt": "x"})
    with pytest.raises(BackendError, match=r"HTTP 404"):
        client._call("POST", "/v1/paint", {})
    with pytest.raises(BackendError, match=r"did not answer /v1/text_to_image within 0.001 s"):
        WorkerClient(embedded_worker.url, timeout_s=0.001).call("text_to_image", "a slow chair", 1)


def test_inside_a_progress_block_the_worker_streams_progress_and_refuses_the_same_way(embedded_worker) -> None:
    from threegen_dagster.backends.stages import progress_to

    client, seen = WorkerClient(embedded_worker.url), []
    with progress_to(lambda done, total, unit: seen.append((done, total, unit))):
        image, meta = client.call("text_to_image", "a red mug", 3)
        assert image.size == (512, 512) and meta["where"] == "worker"
        assert seen[-1] == (262144, 262144, "rays traced") and len(seen) >= 2
        assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))  # in order, as the backend reported them
        with pytest.raises(BackendError, match=r"refused /v1/background \(HTTP 422\): no object found"):
            client.call("background", Image.new("RGB", (64, 64), "white"))  # failed after it took the GPU
        with pytest.raises(BackendError, match=r"HTTP 400\): background: cannot decode"):
            client._call("POST", "/v1/background", {"png_b64": "not base64!"}, progress=seen.append)  # before
    assert WorkerClient(embedded_worker.url).load()["busy"] is False


def test_a_worker_that_is_down_fails_the_step_clearly(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path / "inbox", worker_url=url)
    with dg.instance_for_test() as instance:
        entry, _ = cli.register(Prompt.from_text("a lamp"), 1, "test", settings, instance)
        result = build_definitions(settings).resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=cli.QUIET_RUN, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "generated_image"
    assert f"GPU worker at {url} is down" in str(failure.event_specific_data.error)


def test_worker_status_from_the_cli(embedded_worker, capsys) -> None:
    assert cli.main(["worker", "--status", embedded_worker.url]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == expected_device()
    assert cli.main(["worker", "--status", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "is down" in capsys.readouterr().err


def test_a_worker_configured_with_a_missing_model_refuses_to_start(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="the worker exited") as info:
        Worker({"THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_MODEL": str(tmp_path / "no-such-flux")}, tmp_path)
    assert "threegen worker: " in str(info.value) and "no-such-flux" in str(info.value)


def test_bpt_is_reported_absent_not_faked(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="BPT refinement is not available"):
        Worker({"THREEGEN_REFINER": "bpt"}, tmp_path)


@pytest.fixture(scope="module")
def model_worker(tmp_path_factory):
    """A worker serving the real model backends on tiny random models the test builds."""
    from .tiny_flux import build_tiny_flux
    from .tiny_hunyuan import build_tiny_hunyuan
    from .tiny_scorer import build_score_head, build_tiny_clip, build_tiny_dino
    from .tiny_segmenter import build_tiny_segmenter

    root = tmp_path_factory.mktemp("models")
    flux = build_tiny_flux(root / "flux")
    build_tiny_segmenter(root / "u2net" / "u2netp.onnx")
    hunyuan = build_tiny_hunyuan(root / "hunyuan")
    scorer = {"THREEGEN_SCORER": "models", "THREEGEN_CLIP_MODEL": str(build_tiny_clip(root / "clip")),
              "THREEGEN_DINO_MODEL": str(build_tiny_dino(root / "dino")),
              "THREEGEN_QUALITY_HEAD": str(build_score_head(root / "head.safetensors")),
              "THREEGEN_SCORER_RENDER_SIZE": "96"}
    worker = Worker({"THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_MODEL": str(flux),
                     "THREEGEN_FLUX_DTYPE": "float32", "THREEGEN_FLUX_SIZE": "64", "THREEGEN_DEVICE": "cpu",
                     "THREEGEN_BACKGROUND": "rembg", "THREEGEN_REMBG_HOME": str(root / "u2net"),
                     "THREEGEN_IMAGE_TO_MESH": "hunyuan", "THREEGEN_HUNYUAN_MODEL": str(hunyuan),
                     "THREEGEN_HUNYUAN_STEPS": "2", "THREEGEN_HUNYUAN_OCTREE": "32",
                     "THREEGEN_HUNYUAN_DTYPE": "float32", "THREEGEN_FREE_GPU": "1", **scorer}, root)
    worker.scorer = scorer
    yield worker, flux
    worker.stop()


def test_a_warm_worker_serves_tiny_flux_and_rembg(model_worker) -> None:
    worker, flux = model_worker
    client = WorkerClient(worker.url)
    status = client.status()
    assert status["models"]["text_to_image"]["backend"] == "flux" and status["models"]["text_to_image"]["loaded"]
    assert status["models"]["text_to_image"]["model"] == str(flux)
    assert status["models"]["background"]["backend"] == "rembg" and status["models"]["background"]["loaded"]
    first, meta = client.call("text_to_image", "a wooden chair", 7)
    again, _ = client.call("text_to_image", "a wooden chair", 7)
    other, _ = client.call("text_to_image", "a wooden chair", 8)
    assert first.size == (64, 64) and first.mode == "RGB"
    assert first.tobytes() == again.tobytes() != other.tobytes()  # deterministic per seed
    assert meta["backend"] == "flux" and meta["revision"] == "local" and meta["where"] == "worker"
    assert "gpu_peak_mb" in meta and meta["seconds"] > 0
    photo = Image.new("RGB", (96, 80), (235, 235, 235))
    photo.paste((150, 30, 40), (30, 20, 66, 60))  # a dark red object on a light background
    cut, cut_meta = client.call("background", photo)
    alpha = cut.getchannel("A")
    assert cut.mode == "RGBA" and cut.size == (96, 80) and cut_meta["backend"] == "rembg"
    assert alpha.getpixel((48, 40)) > alpha.getpixel((2, 2))  # the object is more opaque than the corner
    mesh, mesh_meta = client.call("image_to_mesh", cut, 3)
    again_mesh, _ = client.call("image_to_mesh", cut, 3)
    assert len(mesh.faces) > 0 and mesh_meta["backend"] == "hunyuan3d-2" and mesh_meta["steps"] == 2
    assert (mesh.vertices == again_mesh.vertices).all()
    served = client.status()["served"]
    assert served["text_to_image"] == 3 and served["background"] == 1 and served["image_to_mesh"] == 2


def test_stage_resources_run_model_backends_in_process_too(model_worker) -> None:
    from threegen_dagster.defs.resources import StageResource

    _, flux = model_worker
    resource = StageResource(stage="text_to_image", backend="flux",
                             options={"model": str(flux), "dtype": "float32", "size": 70, "device": "cpu"})
    image = resource.run("a wooden chair", 7)
    remote, _ = WorkerClient(model_worker[0].url).call("text_to_image", "a wooden chair", 7)
    assert image.size == (64, 64) and image.tobytes() == remote.tobytes()  # same model, same seed, same pixels
    meta = resource.describe()
    assert meta["where"] == "in-process" and meta["backend"] == "flux" and meta["revision"] == "local"
    assert meta["model"] == str(flux) and "gpu_peak_mb" in meta


def test_the_pipeline_scores_with_the_validator_models_on_the_worker(model_worker, tmp_path) -> None:
    from threegen_dagster.defs.resources import ScoreResource

    worker, _ = model_worker
    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path / "inbox", worker_url=worker.url,
                        gaussians=8000, score_threshold=0.0, models=models_from_env(worker.scorer))
    with dg.instance_for_test() as instance:
        entry, _ = cli.register(Prompt.from_text("a wooden chair"), 3, "test", settings, instance)
        result = build_definitions(settings).resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=cli.QUIET_RUN)
    assert result.success
    score = result.output_for_node("validation_score")
    assert score["kind"] == "models" and set(score["parts"]) == {"alignment", "quality", "ssim"}
    assert len(score["view_cosine"]) == 16 and score["checks"]["count"] == 8000
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["validation_score"]["where"].value == "worker" and meta["validation_score"]["quality"].value > 0
    assert WorkerClient(worker.url).status()["models"]["score"]["loaded"]

    # the same models in this process give the same score for the same SPZ
    spz = result.output_for_node("compressed_splat")
    here = ScoreResource(backend="models", options={
        "clip_model": worker.scorer["THREEGEN_CLIP_MODEL"], "dino_model": worker.scorer["THREEGEN_DINO_MODEL"],
        "quality_head": worker.scorer["THREEGEN_QUALITY_HEAD"], "render_size": 96, "device": "cpu"})
    local, ring = here.score(spz, None, Prompt.from_text("a wooden chair"))
    assert local["score"] == score["score"] and local["parts"] == score["parts"] and ring
    assert here.describe()["where"] == "in-process"
