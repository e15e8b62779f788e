"""What the worker client makes of a worker that misbehaves (a peer on loopback sending what a broken or
hostile worker could), and what a worker streams when its call fails in a way its runner does not
catch: every case one BackendError line, within the call's time and the answer bound, never a hang."""

import socket
import threading
import time

import pytest
import uvicorn

from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.worker import NDJSON, StageRunner, WorkerLost
from threegen_dagster.worker_client import WorkerClient
from threegen_dagster.worker_http import Limits, make_app

from .raw_host import RawHost

BODY = {"prompt": "a red mug", "seed": 3}


class Peer(RawHost):
    """A "worker" answering every POST with a 200 head of ``content_type`` and then whatever ``send`` writes."""

    def __init__(self, send, content_type: str = NDJSON) -> None:
        def answer(conn: socket.socket) -> None:
            conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n".encode())
            send(conn)

        super().__init__(answer)


def call(url: str, **client) -> dict:
    return WorkerClient(url, **client)._call("POST", "/v1/text_to_image", BODY, progress=lambda *report: None)


@pytest.mark.parametrize("lines", [
    b"this is not json\n",
    b'"progress"\n',
    b'{"progress": [1]}\n',
    b'{"progress": [1, 10, 3]}\n',
    b'{"progress": [1, 10, "steps"]}\n{"neither": "progress nor answer"}\n',
    b'{"answer": "not an object"}\n',
])
def test_a_garbled_stream_is_a_lost_worker(lines) -> None:
    peer = Peer(lambda conn: conn.sendall(lines))
    with pytest.raises(WorkerLost, match=r"is down: its answer to /v1/text_to_image is not the worker's JSON"):
        call(peer.url)
    peer.close()


@pytest.mark.parametrize("lines", [b'{"progress": [1, 10, "steps"]}\n', b'{"progress": [1, 10, "steps"]}\n{"answ'])
def test_a_stream_that_stops_early_is_a_lost_worker(lines) -> None:
    peer = Peer(lambda conn: conn.sendall(lines))
    with pytest.raises(WorkerLost, match=r"the connection broke during /v1/text_to_image \(the answer stopped"):
        call(peer.url)
    peer.close()


def test_a_worker_s_error_is_one_line() -> None:
    peer = Peer(lambda conn: conn.sendall(b'{"error": "CUDA out of memory.\\n  Tried to allocate", "status": 500}\n'))
    with pytest.raises(BackendError, match=r"\(HTTP 500\): CUDA out of memory\. Tried to allocate$"):
        call(peer.url)
    peer.close()


def endless_line(conn: socket.socket) -> None:
    while True:
        conn.sendall(b"x" * 2**16)


@pytest.mark.parametrize("content_type", [NDJSON, "application/json"])
def test_an_answer_past_the_bound_is_refused_unread(content_type) -> None:
    peer = Peer(endless_line, content_type)
    with pytest.raises(BackendError, match=r"answered /v1/text_to_image with more than 1,048,576 bytes"):
        call(peer.url, max_answer_bytes=2**20)
    peer.close()


def test_a_worker_that_reports_forever_still_times_out() -> None:
    def reports(conn: socket.socket) -> None:  # progress every 50 ms for a minute, then a plausible answer
        for i in range(1200):
            conn.sendall(b'{"progress": [%d, 1000000, "steps"]}\n' % i)
            time.sleep(0.05)
        conn.sendall(b'{"answer": {"meta": {}}}\n')

    peer = Peer(reports)
    with pytest.raises(BackendError, match=r"did not answer /v1/text_to_image within 1 s \(THREEGEN_WORKER_TIMEOUT\)"):
        call(peer.url, timeout_s=1)
    peer.close()


class Served:
    """A worker app around ``runner`` on a loopback port, served by uvicorn in a thread."""

    def __init__(self, runner: StageRunner) -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = make_app(runner, Limits(max_body_bytes=2**20, read_timeout_s=30, max_connections=8, hosts=None))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Escaping(StageRunner):
    """A runner whose call fails past its own handlers once it holds the GPU (as its closing log line can, when
    stdout is gone), or answers what JSON cannot write."""

    def __init__(self, answer: dict | None = None) -> None:
        super().__init__({})
        self.answer = answer

    def call(self, stage, body, if_idle=False, progress=None, on_start=None):
        if on_start:
            on_start()
        if progress:
            progress(1, 2, "steps")
        if self.answer is None:
            raise BrokenPipeError("stdout is closed")
        return 200, self.answer


@pytest.mark.parametrize("runner, error", [
    (Escaping(), r"refused /v1/text_to_image \(HTTP 500\): BrokenPipeError: stdout is closed"),
    (Escaping({"meta": {"odd": {1, 2}}}), r"\(HTTP 500\): the answer cannot be sent as JSON: Object of type set"),
])
def test_a_streamed_call_that_fails_past_the_runner_ends_with_a_500(runner, error) -> None:
    served = Served(runner)
    try:
        with pytest.raises(BackendError, match=error) as failure:
            call(served.url, timeout_s=60)
        assert not isinstance(failure.value, WorkerLost)  # the call's own failure: not retried on another card
        plain = WorkerClient(served.url)._call  # without a progress block: the same failure, as plain JSON
        with pytest.raises(BackendError, match=r"\(HTTP 500\): text_to_image: the server failed: \w+Error"):
            plain("POST", "/v1/text_to_image", BODY)
    finally:
        served.stop()
