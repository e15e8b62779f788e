"""The worker bounds every request before it costs anything, and answers every error with a status:
a real `threegen worker` process, driven over real HTTP and raw sockets (lying Content-Length,
half-sent heads, deep JSON, wrong types, browsers, foreign Host names, too many connections)."""

import base64
import http.client
import io
import json
import select
import socket

import numpy as np
import pytest
from PIL import Image

from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.worker_client import WorkerClient

from .test_worker import Worker

LIMITS = {"THREEGEN_WORKER_MAX_BODY_MB": "1", "THREEGEN_WORKER_READ_TIMEOUT": "8",
          "THREEGEN_WORKER_MAX_CONNECTIONS": "6", "THREEGEN_MAX_IMAGE_PIXELS": "1000000"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    worker = Worker(LIMITS, tmp_path_factory.mktemp("limited-worker"))
    yield worker
    worker.stop()


def request(worker: Worker, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data, kind = response.read(), response.getheader("content-type", "")
        answer = json.loads(data) if kind == "application/json" else {"text": data.decode()}
        return response.status, answer, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def raw(worker: Worker, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=120)  # a safety net, not a measurement
    sock.sendall(data)
    return sock


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


HEAD = b"POST /v1/text_to_image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("body,message", [
    ({"prompt": "a chair"}, "text_to_image needs the field 'seed'"),
    ({"prompt": "a chair", "seed": -1}, "'seed': Input should be greater than or equal to 0"),
    ({"prompt": "a chair", "seed": 2**70}, "'seed': Input should be less than or equal to 4294967295"),
    ({"prompt": "a chair", "seed": True}, "'seed': Input should be a valid integer"),
    ({"prompt": "a chair", "seed": 1.5}, "'seed': Input should be a valid integer"),
    ({"prompt": "a chair", "seed": "3"}, "'seed': Input should be a valid integer"),
    ({"prompt": ["a", "chair"], "seed": 1}, "'prompt': Input should be a valid string"),
    ({"prompt": "", "seed": 1}, "'prompt': the prompt is empty"),
    ({"prompt": "a \x1b[31mred\x1b[0m chair", "seed": 1}, "control character U+001B at character 3"),
    ({"prompt": "caf\udce9", "seed": 1}, "not valid UTF-8"),
    ({"prompt": "x" * 10_001, "seed": 1}, "10,001 characters; the limit is 10,000"),
    ({"prompt": "a chair", "seed": 1, "steps": 500}, "'steps': Extra inputs are not permitted"),
    ([], "'body': Input should be a valid dictionary"),
])
def test_wrong_types_and_values_are_400_naming_the_field(worker, body, message) -> None:
    status, answer, _ = request(worker, "POST", "/v1/text_to_image", json.dumps(body).encode())
    assert status == 400 and message in answer["error"], answer


def test_unparseable_and_deeply_nested_json_get_an_answer(worker) -> None:
    status, answer, _ = request(worker, "POST", "/v1/text_to_image", b'{"prompt": "a chair", "seed": ')
    assert status == 400 and "the body is not JSON" in answer["error"]
    deep = b"[" * 200_000 + b"]" * 200_000  # 400 KB: under the body limit, over any recursion limit
    status, answer, _ = request(worker, "POST", "/v1/text_to_image", deep)
    assert status == 400 and "cannot be parsed as JSON" in answer["error"]
    assert WorkerClient(worker.url).health()


def test_images_sent_to_the_worker_are_decoded_within_the_pixel_limit(worker) -> None:
    client = WorkerClient(worker.url)
    status, answer, _ = request(worker, "POST", "/v1/background",
                                json.dumps({"png_b64": png(Image.new("RGB", (2000, 1000), "white"))}).encode())
    assert status == 400 and "2000 x 1000 = 2,000,000 pixels; the limit is 1,000,000" in answer["error"]
    whole = base64.b64decode(png(Image.new("RGB", (300, 200), "white")))
    status, answer, _ = request(worker, "POST", "/v1/background",
                                json.dumps({"png_b64": base64.b64encode(whole[:len(whole) // 2]).decode()}).encode())
    assert status == 400 and "cannot be decoded" in answer["error"]
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, format="JPEG")
    status, answer, _ = request(worker, "POST", "/v1/image_to_mesh", json.dumps(
        {"png_b64": base64.b64encode(jpeg.getvalue()).decode(), "seed": 1}).encode())
    assert status == 400 and "not a PNG file" in answer["error"]

    grey = np.full((80, 96), 60_000, np.uint16)  # 16-bit greyscale: a dark square on a light background
    grey[20:60, 30:66] = 6_000
    cut, _ = client.call("background", Image.fromarray(grey))
    alpha = np.asarray(cut)[..., 3]
    assert cut.mode == "RGBA" and alpha[40, 48] == 255 and alpha[2, 2] == 0  # found, not "a plain background"
    assert abs(int(np.asarray(cut)[40, 48, 0]) - 23) <= 1  # 6000/65535 of 255, not clipped to white


def test_a_body_over_the_limit_is_refused_before_it_is_read(worker) -> None:
    declared = raw(worker, HEAD + b"Content-Length: 2000000\r\n\r\n")  # no body sent at all
    answer = read_all(declared)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over the 1,048,576-byte limit" in answer

    streamed = raw(worker, HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    try:
        for _ in range(40):  # 2.5 MB in chunks, no length declared: counted as it arrives
            streamed.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker answered and stopped reading
    assert read_all(streamed).startswith(b"HTTP/1.1 413 ")


def test_slow_and_lying_clients_get_408_and_block_nobody(worker) -> None:
    lying = raw(worker, HEAD + b"Content-Length: 1000\r\n\r\n{\"prompt\": \"a chair\"")  # 20 of 1000 bytes
    half_head = raw(worker, b"POST /v1/text_to_image HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its head
    client = WorkerClient(worker.url)
    assert client.health() and client.status()["served"] is not None
    cut, _ = client.call("background", Image.fromarray(np.pad(np.zeros((20, 20, 3), np.uint8), ((10, 10), (10, 10), (0, 0)),
                                                      constant_values=255)))
    assert cut.mode == "RGBA"
    assert not answered(lying) and not answered(half_head)  # both still open while others were served
    for sock in (lying, half_head):
        answer = read_all(sock)  # the worker answers, then closes (recv returns b"")
        assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 8 s" in answer
    assert "its request did not arrive within 8 s" in worker.output()
    assert client.health()


def test_browsers_and_foreign_host_names_are_refused(worker) -> None:
    body = json.dumps({"prompt": "a chair", "seed": 1}).encode()
    status, answer, _ = request(worker, "POST", "/v1/text_to_image", body, {"Origin": "https://evil.example"})
    assert status == 403 and "requests from web pages are refused" in answer["error"]
    status, answer, _ = request(worker, "POST", "/v1/text_to_image", body, {"Origin": "null"})
    assert status == 403
    status, answer, _ = request(worker, "GET", "/status", None, {"Host": f"rebound.example:{worker.port}"})
    assert status == 403 and "'rebound.example:" in answer["error"] and "not this worker's" in answer["error"]
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer, _ = request(worker, "POST", "/v1/text_to_image", body, {"Content-Type": kind})
        assert status == 415 and "application/json" in answer["error"]
    status, _, headers = request(worker, "OPTIONS", "/v1/text_to_image", None,
                                 {"Access-Control-Request-Method": "POST"})
    assert status == 405 and "access-control-allow-origin" not in headers  # no CORS preflight passes
    for host in ("localhost", "127.0.0.1"):
        assert request(worker, "GET", "/health", None, {"Host": f"{host}:{worker.port}"})[0] == 200


def test_unknown_paths_and_methods_answer_json(worker) -> None:
    status, answer, _ = request(worker, "POST", "/v1/paint", b"{}")
    assert status == 404 and "no such endpoint /v1/paint" in answer["error"]
    status, answer, _ = request(worker, "GET", "/v1/text_to_image")
    assert status == 405 and answer["error"] == "Method Not Allowed"


def test_connections_beyond_the_limit_get_503(worker) -> None:
    idle = [raw(worker, b"GET /health HTTP/1.1\r\n") for _ in range(6)]  # six open connections, heads unfinished
    try:
        statuses = set()
        for _ in range(50):  # until the worker has accepted all six
            status, answer, _ = request(worker, "GET", "/health")
            statuses.add(status)
            if status == 503:
                break
        assert 503 in statuses and answer == {"text": "Service Unavailable"}  # uvicorn's own answer
        with pytest.raises(BackendError, match=r"HTTP 503\): Service Unavailable \(more connections than "
                                               r"THREEGEN_WORKER_MAX_CONNECTIONS"):
            WorkerClient(worker.url).health()
    finally:
        for sock in idle:
            sock.close()
    for _ in range(50):  # slots come back as the connections close
        if request(worker, "GET", "/health")[0] == 200:
            break
    else:
        pytest.fail("the worker did not serve again after the idle connections closed")


def test_the_worker_listens_on_loopback_unless_told_otherwise(worker, tmp_path) -> None:
    assert f"serving on http://127.0.0.1:{worker.port} " in worker.output()
    assert "not loopback" not in worker.output()
    everywhere = Worker({"THREEGEN_WORKER_HOST": "0.0.0.0"}, tmp_path)
    try:
        log = everywhere.output()
        assert "WARNING: listening on 0.0.0.0, not loopback" in log and f"http://0.0.0.0:{everywhere.port}" in log
        # names are unknown when listening everywhere: any Host passes, browsers still do not
        assert request(everywhere, "GET", "/health", None, {"Host": "gpu-box.lan"})[0] == 200
        assert request(everywhere, "GET", "/health", None, {"Origin": "http://gpu-box.lan"})[0] == 403
    finally:
        everywhere.stop()
