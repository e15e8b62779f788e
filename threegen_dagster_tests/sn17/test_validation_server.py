"""Pre-validation through SN17's validation-server API. The real server needs CLIP and DINOv2
weights and a GPU, so these tests run a stand-in on loopback that honours the documented
contract (routes, fields, base64 SPZ with compression 2, score and parts back) and decodes the
payload with the project's pyspz-compatible codec, as the real server does with pyspz."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.backends.validation_server import ValidationServerClient
from threegen_dagster.definitions import build_definitions
from threegen_dagster.keys import Prompt
from threegen_dagster.settings import Settings, models_from_env
from threegen_dagster.splats import spz

from ..splats.conftest import random_cloud


class ContractServer:
    """Scores by prompt from a table; records every request it got."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores, self.requests = scores, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None: ...

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                cloud = spz.decode(base64.b64decode(body["data"]))  # what pyspz would decode
                assert body["compression"] == 2
                key = body.get("prompt") or "image:" + str(len(base64.b64decode(body["prompt_image"])))
                answer = {"score": outer.scores.get(key, 0.0), "iqa": 0.8, "alignment_score": 0.7,
                          "ssim": 0.9, "lpips": 0.1, "gaussians": len(cloud)}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = ContractServer({"a wooden chair": 0.82, "a red mug": 0.41})
    yield s
    s.stop()


def run(settings: Settings, text: str):
    with dg.instance_for_test() as instance:
        entry, _ = cli.register(Prompt.from_text(text), 1, "test", settings, instance)
        return entry.key, build_definitions(settings).resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=cli.QUIET_RUN, raise_on_error=False)


def test_the_score_asset_asks_the_validation_server(server, tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "a"), inbox=tmp_path / "i", gaussians=8000, models=models_from_env(
        {"THREEGEN_SCORER": "validation_server", "THREEGEN_VALIDATION_URL": server.url}))
    key, result = run(settings, "a wooden chair")
    assert result.success
    path, body = server.requests[-1]
    assert path == "/validate_txt_to_3d_ply/" and body["prompt"] == "a wooden chair"
    score = result.output_for_node("validation_score")
    assert score["kind"] == "validation_server" and score["score"] == 0.82 and score["passed"]
    assert score["parts"] == {"alignment_score": 0.7, "iqa": 0.8, "ssim": 0.9, "lpips": 0.1}
    assert score["checks"]["ok"] and score["checks"]["count"] == 8000

    _, low = run(settings, "a red mug")
    assert not low.success  # 0.41 < 0.6: the blocking check stops the run
    assert not low.get_asset_check_evaluations()[0].passed


def test_image_prompts_go_to_the_image_route(server) -> None:
    server.scores["image:5"] = 0.66
    cloud_spz = spz.encode(random_cloud(7000))
    out = ValidationServerClient(server.url).validate(cloud_spz, image=b"12345")
    assert out["score"] == 0.66 and server.requests[-1][0] == "/validate_img_to_3d_ply/"


def test_a_validation_server_that_is_down_fails_the_step_clearly(tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "a"), inbox=tmp_path / "i", gaussians=8000, models=models_from_env(
        {"THREEGEN_SCORER": "validation_server", "THREEGEN_VALIDATION_URL": "http://127.0.0.1:9"}))
    _, result = run(settings, "a lamp")
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "validation_score"
    assert "validation server at http://127.0.0.1:9 is down" in str(failure.event_specific_data.error)
    with pytest.raises(BackendError, match="is down"):
        ValidationServerClient("http://127.0.0.1:9").validate(b"x", text="t")
