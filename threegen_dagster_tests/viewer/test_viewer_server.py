"""`threegen view`: the read-only loopback server, a real process over a real generation's store."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from threegen_dagster.artifacts import CONTENT_TYPES, EXTENSIONS
from threegen_dagster.catalog import STAGES
from threegen_dagster.viewer import viewer_html

from .conftest import threegen, threegen_env


def get(base: str, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    where = urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_health_list_and_stats(view_server, red_mug) -> None:
    for path in ("/health", "/api/health"):
        status, _, body = get(view_server, path)
        assert status == 200 and json.loads(body) == {"ok": True, "store": str(red_mug.root / "store")}
    status, headers, body = get(view_server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert f'<a href="/g/{red_mug.key}">{red_mug.key}</a></td><td>a red mug</td><td>3</td><td>complete</td>' \
        in body.decode()
    status, _, body = get(view_server, "/api/generations")
    rows = json.loads(body)["generations"]
    assert status == 200 and [(r["key"], r["status"], r["seed"]) for r in rows] == [(red_mug.key, "complete", 3)]
    status, _, body = get(view_server, "/api/stats")
    printed = json.loads(threegen(red_mug.root, "stats", "--json").stdout)
    assert status == 200 and json.loads(body) == printed and printed["generations"] == 1


def test_generation_info_and_downloads(view_server, red_mug) -> None:
    status, _, body = get(view_server, f"/api/generations/{red_mug.key}")
    info = json.loads(body)
    assert status == 200 and info["generation"]["prompt"] == "a red mug" and info["viewer"] == f"/g/{red_mug.key}"
    assert list(info["stages"]) == list(STAGES) and info["unreadable"] == {}
    for stage in STAGES:
        manifest, data = red_mug.artifacts.load(red_mug.key, stage)
        assert info["stages"][stage]["sha256"] == manifest.sha256
        status, headers, body = get(view_server, info["stages"][stage]["download"])
        assert status == 200 and body == data
        assert headers["content-type"].split(";")[0] == CONTENT_TYPES[EXTENSIONS[stage]]
        assert headers["content-disposition"] == f'attachment; filename="{red_mug.key}-{stage}.{EXTENSIONS[stage]}"'
    status, _, body = get(view_server, f"/api/generations/{red_mug.key}/refined_mesh?version=1")
    assert status == 200 and body == red_mug.artifacts.load(red_mug.key, "refined_mesh")[1]


def test_the_viewer_page_is_the_one_threegen_get_writes(view_server, red_mug, tmp_path) -> None:
    status, headers, body = get(view_server, f"/g/{red_mug.key}")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert body == viewer_html(red_mug.artifacts, red_mug.ledger, red_mug.key)
    done = threegen(red_mug.root, "get", red_mug.key, "-o", str(tmp_path / "out"))
    assert done.stdout.splitlines()[-1] == str(tmp_path / "out" / "viewer.html")
    assert (tmp_path / "out" / "viewer.html").read_bytes() == body
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{s}.{EXTENSIONS[s]}" for s in STAGES] + ["viewer.html"])


@pytest.mark.parametrize(("path", "status", "error"), [
    ("/api/generations/a-cup-0123456789-s1", 404, "no generation 'a-cup-0123456789-s1' in the ledger"),
    ("/g/a-cup-0123456789-s1", 404, "no generation 'a-cup-0123456789-s1' in the ledger"),
    ("/api/generations/..%2F..%2Fledger", 404, "no such page /api/generations/../../ledger"),
    ("/api/generations/a-cup-0123456789-s1.json", 404, "'a-cup-0123456789-s1.json' is not a generation key"),
    ("/g/A-Red-Mug-10a5c24afb-s3", 404, "'A-Red-Mug-10a5c24afb-s3' is not a generation key"),
    ("/api/generations/KEY/blobs", 404, "no asset 'blobs': one of generated_image, foreground_image"),
    ("/api/generations/KEY/refined_mesh?version=2", 404, "no version 2 of 'refined_mesh'"),
    ("/api/generations/KEY/refined_mesh?version=0", 400, "query.version: Input should be greater than or equal to 1"),
    ("/api/generations/KEY/refined_mesh?version=x", 400, "query.version: Input should be a valid integer"),
    ("/nothing-here", 404, "no such page /nothing-here"),
])
def test_unknown_things_are_404_naming_them(view_server, red_mug, path, status, error) -> None:
    got, _, body = get(view_server, path.replace("KEY", red_mug.key))
    assert got == status
    assert error in json.loads(body)["error"]


def test_read_only_and_loopback_names_only(view_server, red_mug) -> None:
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = get(view_server, f"/api/generations/{red_mug.key}", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert json.loads(body)["error"] == f"{method} is not served: this server is read-only (GET and HEAD)"
    status, _, body = get(view_server, "/health", headers={"Host": "evil.example:8770"})
    assert status == 403 and json.loads(body)["error"].startswith("Host 'evil.example:8770' is not this server's")
    status, _, _ = get(view_server, "/health", headers={"Host": "localhost:8770"})
    assert status == 200
    assert red_mug.ledger.get(red_mug.key).keep is False  # nothing was changed


def test_a_port_in_use_is_a_one_line_error(view_server, red_mug) -> None:
    port = urlsplit(view_server).port
    done = subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "view", "--port", str(port)],
                          cwd=red_mug.root, env=threegen_env(red_mug.root), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"threegen: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_head_answers_the_headers_without_the_body(view_server, red_mug) -> None:
    path = f"/api/generations/{red_mug.key}/refined_mesh"
    status, headers, body = get(view_server, path, method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == red_mug.artifacts.latest(red_mug.key, "refined_mesh").bytes
    assert headers["content-type"] == "model/gltf-binary"


def test_get_of_a_generation_with_nothing_stored_still_fails_but_writes_its_viewer(tmp_path) -> None:
    key = json.loads(threegen(tmp_path, "add", "a blue cup", "--seed", "1", "--json").stdout)["key"]
    done = threegen(tmp_path, "get", key, "-o", "out", check=False)
    assert done.returncode == 1 and done.stdout.split() == [str(Path("out") / "viewer.html")]
    page = (tmp_path / "out" / "viewer.html").read_text()
    assert "<h1>a blue cup</h1>" in page and "no score stored yet" in page and "nothing stored yet" in page
