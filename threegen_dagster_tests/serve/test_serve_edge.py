"""``threegen serve``'s HTTP edge as an attacker or a sloppy orchestrator meets it, the app served by uvicorn
on loopback with the production settings (``serve.http.server``): no client's idle connections shut the
others out, a poll is never refused for its count, a body of many bad items is refused in one short line,
and the 413 names the server's own limit."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from threegen_dagster.serve.batch import BatchBook
from threegen_dagster.serve.http import MAX_PER_CLIENT, make_app, server


@pytest.fixture
def url():
    book = BatchBook([].append)
    book.set_warm()
    sock = socket.create_server(("127.0.0.1", 0))
    uvicorn_server = server(make_app(book, lambda stem, key, version: b"", "js", None), read_timeout_s=30)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uvicorn_server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uvicorn_server.should_exit = True
    thread.join(10)


def test_one_client_s_half_sent_requests_do_not_shut_the_others_out(url) -> None:
    port = int(url.rsplit(":", 1)[1])
    held = []
    for _ in range(4 * MAX_PER_CLIENT):  # heads that never end, each allowed 30 s to arrive
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        held.append(conn)
    refused = []
    for conn in held[MAX_PER_CLIENT:]:
        conn.settimeout(10)
        refused.append(conn.recv(4096))
    assert all(b" 503 " in answer and b"open connections from 127.0.0.1" in answer for answer in refused)
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
    answer = other.get(f"{url}/status")  # from 127.0.0.2: another client
    assert answer.status_code == 200 and answer.json()["status"] == "ready"
    for conn in held:
        conn.close()
    other.close()


@pytest.mark.parametrize(("value", "echoed"), [("5", 5), ("-1", None), ("abc", None), ("", None),
                                               ("99999999999999999999", None), ("1e3", None)])
def test_a_poll_is_answered_whatever_its_count(url, value, echoed) -> None:
    answer = httpx.get(f"{url}/status", params={"replacements_remaining": value})
    assert answer.status_code == 200
    assert answer.json()["payload"].get("replacements_remaining") == echoed


def test_a_body_of_many_bad_items_is_refused_in_one_short_line(url) -> None:
    count = (2**20 - 40) // 3  # as many empty items as the 1 MiB body limit holds
    body = b'{"prompts":[' + b",".join([b"{}"] * count) + b'],"seed":1}'
    answer = httpx.post(f"{url}/generate", content=body, timeout=60)
    assert answer.status_code == 400 and len(answer.content) < 500, answer.content[:500]
    assert f"at most 99 items after validation, not {count}" in answer.json()["error"]
    many = [{"stem": f"s{i}", "image_url": "ftp://h/x.png"} for i in range(40)]  # 40 errors: 10 told
    error = httpx.post(f"{url}/generate", json={"prompts": many, "seed": 1}).json()["error"]
    assert error.count("not an http(s) URL") == 10 and error.endswith("(and 30 more)")
    assert httpx.get(f"{url}/status").json()["status"] == "ready"


def test_a_declared_body_over_the_limit_names_the_server_s_own_limit(url) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n")
        conn.settimeout(10)
        answer = conn.recv(4096)
    assert b" 413 " in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the body is over the 1,048,576-byte limit (threegen serve)"}
