"""The viewer server's read-only JSON API over a store of four generations (test_search.MADE): the
search filters as query parameters, bounded pages, and every bad parameter a 400 naming it. A real
`threegen view --port 0` process, fetched with urllib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

from ..test_search import make_store


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer-api")
    keys = make_store(root / "store")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")}, "THREEGEN_STORE": str(root / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "threegen_dagster.cli", "view", "--port", "0"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("threegen view serving "), line or proc.stderr.read()
        yield line.split(" on ", 1)[1].split("/ ", 1)[0], keys
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fetch(base: str, path: str, **params) -> tuple[int, dict]:
    url = f"{base}{path}" + (f"?{urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_generations_filtered_by_query_parameters(api) -> None:
    base, keys = api
    status, page = fetch(base, "/api/generations", text="cup")
    assert status == 200 and [g["key"] for g in page["generations"]] == [keys["a cupboard of oak"], keys["a blue cup"]]
    assert (page["total"], page["offset"], page["limit"], page["next_offset"]) == (2, 0, 50, None)
    _, page = fetch(base, "/api/generations", text="cup", words="true")
    assert [g["key"] for g in page["generations"]] == [keys["a blue cup"]]
    _, page = fetch(base, "/api/generations", status="complete", min_score=0.8)
    assert [(g["key"], g["score"]) for g in page["generations"]] == [(keys["a red ceramic mug"], 0.81)]
    _, page = fetch(base, "/api/generations", since="2026-11-15", until="2026-11-20")
    assert [g["key"] for g in page["generations"]] == [keys["a cupboard of oak"], keys["a blue cup"]]


def test_pages_are_bounded(api) -> None:
    base, keys = api
    _, first = fetch(base, "/api/generations", limit=3)
    assert first["total"] == 4 and len(first["generations"]) == 3 and first["next_offset"] == 3
    _, rest = fetch(base, "/api/generations", limit=3, offset=first["next_offset"])
    assert [g["key"] for g in rest["generations"]] == [keys["a red ceramic mug"]] and rest["next_offset"] is None


@pytest.mark.parametrize(("params", "error"), [
    ({"limit": 501}, "query.limit: Input should be less than or equal to 500"),
    ({"limit": 0}, "query.limit: Input should be greater than or equal to 1"),
    ({"offset": -1}, "query.offset: Input should be greater than or equal to 0"),
    ({"min_score": 2}, "query.min_score: Input should be less than or equal to 1"),
    ({"min_score": "high"}, "query.min_score: Input should be a valid number"),
    ({"text": "x" * 201}, "query.text: String should have at most 200 characters"),
    ({"status": "done"}, "status 'done': one of complete, below threshold, partial, pending, unreadable"),
    ({"since": "soon"}, "since 'soon': use a date or date-time like 2026-11-30"),
    ({"min_score": 0.9, "max_score": 0.1}, "min_score 0.9 is above max_score 0.1"),
])
def test_bad_parameters_are_400_naming_them(api, params, error) -> None:
    status, body = fetch(api[0], "/api/generations", **params)
    assert status == 400 and body["error"].startswith(error)


def test_info_download_stats_and_health(api) -> None:
    base, keys = api
    key = keys["a blue cup"]
    status, info = fetch(base, f"/api/generations/{key}")
    assert status == 200 and info["generation"]["prompt"] == "a blue cup" and len(info["stages"]) == 7
    with urllib.request.urlopen(base + info["stages"]["validation_score"]["download"], timeout=60) as answer:
        assert json.loads(answer.read()) == {"score": 0.42, "passed": False}
        assert answer.headers["content-disposition"] == f'attachment; filename="{key}-validation_score.json"'
    status, stats = fetch(base, "/api/stats")
    assert status == 200 and stats["generations"] == 3 and stats["by_status"]["below threshold"]["generations"] == 1
    assert fetch(base, "/api/health")[1]["ok"] is True
    status, body = fetch(base, f"/api/generations/{keys['a wooden chair']}/gaussian_splat")
    assert status == 404 and "gaussian_splat" in body["error"]


@pytest.mark.parametrize("path", ["/api/generations/{key}", "/api/generations/{key}/generated_image", "/g/{key}"])
def test_an_over_long_key_is_a_404_like_any_unknown_key(api, path) -> None:
    key = "a-" * 200 + "0123456789abcdef-s1"  # the hashed form, too long for a file name
    status, body = fetch(api[0], path.format(key=key))
    assert status == 404 and body["error"].endswith("... is not a generation key: at most 200 characters")


@pytest.mark.parametrize(("params", "error"), [
    ({"since": "9999-12-31T23:59:59-23:59"}, "since '9999-12-31T23:59:59-23:59': out of range (years 1 to 9999 in UTC)"),
    ({"until": "0001-01-01T00:00+01:00"}, "until '0001-01-01T00:00+01:00': out of range (years 1 to 9999 in UTC)"),
])
def test_a_date_out_of_range_is_a_400_naming_it(api, params, error) -> None:
    assert fetch(api[0], "/api/generations", **params) == (400, {"error": error})
