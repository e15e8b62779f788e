"""Search: the pure filters (search.py), ``threegen search`` on a real store in a subprocess, and image
similarity with tiny random OpenCLIP weights whose embeddings are cached in the store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from calendar import timegm
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.catalog import STAGES, build_catalog
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Ledger
from threegen_dagster.search import (
    EmbeddingCache, SearchError, SearchQuery, catalog_rows, cosine_ranking, parse_when, search, text_matches,
)
from threegen_dagster.storage import LocalStore

# prompt, seed, created (UTC), stages stored, score, colour of its prompt image
MADE = [("a red ceramic mug", 1, "2026-11-01 10:00:00", 7, 0.81, (220, 20, 20)),
        ("a blue cup", 2, "2026-11-15 12:00:00", 7, 0.42, (20, 20, 220)),
        ("a cupboard of oak", 3, "2026-11-20 08:30:00", 1, None, (20, 200, 20)),
        ("a wooden chair", 4, "2026-11-29 23:59:00", 0, None, None)]


def png(colour: tuple[int, int, int], size: int = 48) -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(colour, (8, 8, size - 8, size - 8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_store(root: Path) -> dict[str, str]:
    """The generations in MADE, written as the pipeline writes them; prompt -> key."""
    store = LocalStore(root)
    artifacts, ledger, keys = ArtifactStore(store), Ledger(store), {}
    for prompt, seed, created, stages, score, colour in MADE:
        when = timegm(__import__("time").strptime(created, "%Y-%m-%d %H:%M:%S"))
        entry, _ = ledger.add(Prompt.from_text(prompt), seed, "cli", now=when)
        keys[prompt] = entry.key
        for stage in STAGES[:stages]:
            data, meta = (png(colour), {}) if stage == "generated_image" else (f"{stage} {prompt}".encode(), {})
            if stage == "validation_score":
                meta = {"score": score, "passed": score >= 0.6}
                data = json.dumps(meta).encode()
            artifacts.record(entry.key, stage, data, "png" if stage == "generated_image" else "bin", "run-1", meta)
    return keys


@pytest.fixture
def made(tmp_path) -> tuple[Path, dict[str, str]]:
    return tmp_path / "store", make_store(tmp_path / "store")


def rows_of(root: Path) -> list[dict]:
    store = LocalStore(root)
    return catalog_rows(build_catalog(ArtifactStore(store), Ledger(store)))


def test_text_matches_words_in_any_order_and_case() -> None:
    assert text_matches("A Red Ceramic Mug", "mug RED")
    assert not text_matches("a red ceramic mug", "red cup")
    assert text_matches("a cupboard of oak", "cup") and not text_matches("a cupboard of oak", "cup", whole_words=True)
    assert text_matches("a blue cup.", "cup", whole_words=True)
    assert text_matches("anything", "")


def test_filters_by_text_status_score_and_date(made) -> None:
    root, keys = made
    rows = rows_of(root)
    found = lambda **kw: [r["key"] for r in search(rows, SearchQuery(**kw)).rows]  # noqa: E731
    assert found() == [keys[p] for p in ("a wooden chair", "a cupboard of oak", "a blue cup", "a red ceramic mug")]
    assert found(text="cup") == [keys["a cupboard of oak"], keys["a blue cup"]]
    assert found(text="cup", whole_words=True) == [keys["a blue cup"]]
    assert found(status="complete") == [keys["a red ceramic mug"]]
    assert found(status="below threshold") == [keys["a blue cup"]]
    assert found(status="partial") == [keys["a cupboard of oak"]]  # 'partial (1/7)'
    assert found(status="pending") == [keys["a wooden chair"]]
    assert found(min_score=0.5) == [keys["a red ceramic mug"]]
    assert found(max_score=0.5) == [keys["a blue cup"]]  # no score: never within a score range
    assert found(min_score=0.42, max_score=0.81) == [keys["a blue cup"], keys["a red ceramic mug"]]
    assert found(since="2026-11-15", until="2026-11-20") == [keys["a cupboard of oak"], keys["a blue cup"]]
    assert found(until="2026-11-29") == found()[0:4]  # a bare date includes its last minute
    assert found(since="2026-11-15T12:00:01") == [keys["a wooden chair"], keys["a cupboard of oak"]]
    assert found(since="2026-11-15T14:00:00.5+02:00") == found(since="2026-11-15T12:00:01")  # UTC, a part second
    assert found(since="2026-11-15T14:00:00+02:00")[-1] == keys["a blue cup"]  # at its very second: included
    assert found(until="2026-11-15T12:00:00.9")[0] == keys["a blue cup"]
    assert found(text="a", status="complete", min_score=0.8, since="2026-11-01") == [keys["a red ceramic mug"]]


def test_pages_are_bounded_and_say_what_follows(made) -> None:
    root, keys = made
    page = search(rows_of(root), SearchQuery(limit=3))
    assert page.total == 4 and len(page.rows) == 3 and page.to_dict()["next_offset"] == 3
    last = search(rows_of(root), SearchQuery(limit=3, offset=3)).to_dict()
    assert [r["key"] for r in last["generations"]] == [keys["a red ceramic mug"]] and last["next_offset"] is None


@pytest.mark.parametrize(("fields", "error"), [
    ({"status": "done"}, "status 'done': one of complete, below threshold, partial, pending, unreadable"),
    ({"min_score": 1.5}, "min_score 1.5: a number from 0 to 1"),
    ({"min_score": 0.9, "max_score": 0.1}, "min_score 0.9 is above max_score 0.1"),
    ({"since": "last week"}, "since 'last week': use a date or date-time like 2026-11-30"),
    ({"since": "2026-12-01", "until": "2026-11-01"}, "since 2026-12-01 is after until 2026-11-01"),
    ({"limit": 0}, "limit 0: 1 to 500"), ({"limit": 10_000}, "limit 10000: 1 to 500"),
    ({"offset": -1}, "offset -1: 0 to 1,000,000"),
    ({"text": "x" * 201}, "text is 201 characters; at most 200"),
])
def test_a_bad_query_is_one_line_naming_the_field(fields, error) -> None:
    with pytest.raises(SearchError, match=f"^{__import__('re').escape(error)}"):
        SearchQuery(**fields)


def test_dates_are_utc_and_a_bare_until_date_ends_the_day() -> None:
    assert parse_when("2026-11-30", "until", end=True).isoformat() == "2026-11-30T23:59:59.999999+00:00"
    assert parse_when("2026-11-30T14:00+02:00", "since").isoformat() == "2026-11-30T14:00:00+02:00"
    assert parse_when("2026-11-30 14:00Z", "since").isoformat() == "2026-11-30T14:00:00+00:00"


def test_cosine_ranking_puts_the_closest_first() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.6, 0.8]), "c": np.array([-1.0, 0.0])}
    assert [(k, round(s, 3)) for k, s in cosine_ranking(np.array([2.0, 0.1]), vectors)] == \
        [("a", 0.999), ("b", 0.639), ("c", -0.999)]


def test_a_damaged_embedding_cache_is_named_and_rebuilt(store) -> None:  # a local folder and an S3 prefix
    assert EmbeddingCache(store, "m-x").vectors == {}  # none yet
    store.write("search/embeddings/m-x.npz", b"not an npz")
    cache = EmbeddingCache(store, "m-x")
    assert cache.vectors == {} and "m-x.npz was unreadable" in cache.damaged
    cache.add("ab" * 32, np.ones(4))
    assert cache.save() and EmbeddingCache(store, "m-x").vectors.keys() == {"ab" * 32}
    with pytest.raises(SearchError, match="embedding cache tag '../x' is not a short lowercase name"):
        EmbeddingCache(store, "../x")


def cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")}
    return subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "search", *args], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**base, "THREEGEN_STORE": str(root / "store"), **(env or {})})


def test_threegen_search_prints_a_table_or_json(made) -> None:
    root, keys = made
    done = cli(root.parent, "cup", "--status", "below threshold")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| key | prompt | seed | status | score | created |"
    assert lines[2] == f"| {keys['a blue cup']} | a blue cup | 2 | below threshold | 0.42 | 2026-11-15 12:00:00 |"
    assert len(lines) == 3 and done.stderr == "1 of 1 match(es)\n"
    done = cli(root.parent, "--min-score", "0.3", "--json", "--limit", "1")
    answer = json.loads(done.stdout)
    assert (answer["total"], answer["limit"], [g["key"] for g in answer["generations"]]) == (2, 1, [keys["a blue cup"]])


@pytest.mark.parametrize(("args", "error"), [
    (["--since", "yesterday"], "threegen: search: since 'yesterday': use a date or date-time"),
    (["--min-score", "0.9", "--max-score", "0.2"], "threegen: search: min_score 0.9 is above max_score 0.2"),
    (["--image", "/nonexistent.png"], "threegen: --image /nonexistent.png: no such file"),
])
def test_threegen_search_refuses_bad_input_in_one_line(made, args, error) -> None:
    done = cli(made[0].parent, *args)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.startswith(error) and done.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory) -> dict[str, str]:
    if __import__("importlib").util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (pip install -e '.[gpu]', see the README's GPU section)")
    from .tiny_scorer import build_score_head, build_tiny_clip, build_tiny_dino

    root = tmp_path_factory.mktemp("tiny-scorer")
    return {"THREEGEN_SCORER": "models", "THREEGEN_CLIP_MODEL": str(build_tiny_clip(root / "clip")),
            "THREEGEN_DINO_MODEL": str(build_tiny_dino(root / "dino")),
            "THREEGEN_QUALITY_HEAD": str(build_score_head(root / "head.safetensors")), "THREEGEN_DEVICE": "cpu"}


def test_image_search_ranks_by_similarity_and_caches_embeddings(made, tiny_scorer, tmp_path) -> None:
    root, keys = made
    query = tmp_path / "query.png"
    query.write_bytes(png((20, 20, 220)))  # the blue cup's prompt image, byte for byte
    refused = cli(root.parent, "--image", str(query))
    assert refused.returncode == 2 and "image search needs an embedding model: set THREEGEN_SCORER=models" in refused.stderr
    done = cli(root.parent, "--image", str(query), "--json", env=tiny_scorer)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    ranked = [(g["key"], g["similarity"]) for g in hits["generations"]]
    assert hits["total"] == 3 and ranked[0][0] == keys["a blue cup"] and ranked[0][1] == pytest.approx(1.0, abs=1e-5)
    assert {k for k, _ in ranked} == {keys[p] for p in ("a blue cup", "a red ceramic mug", "a cupboard of oak")}
    cached = list((root / "search" / "embeddings").glob("m-*.npz"))
    assert len(cached) == 1 and len(np.load(cached[0])["sha256"]) == 3
    # the next search embeds only the query: the blobs of the prompt images may be gone (pruned)
    for blob in (root / "blobs").rglob("*"):
        if blob.is_file() and blob.read_bytes()[:4] == b"\x89PNG":
            blob.unlink()
    again = cli(root.parent, "mug", "--image", str(query), "--json", env=tiny_scorer)
    assert again.returncode == 0 and again.stderr == ""
    assert [(g["key"], g["similarity"]) for g in json.loads(again.stdout)["generations"]] == \
        [(keys["a red ceramic mug"], dict(ranked)[keys["a red ceramic mug"]])]


def _search_run(root: Path, env: dict | None = None, **config):
    import dagster as dg

    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.settings import Settings

    settings = Settings.from_env({**(env or {}), "THREEGEN_STORE": str(root), "THREEGEN_INBOX": str(root.parent / "inbox")})
    job = build_definitions(settings).resolve_job_def("search_generations")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        run_config={"ops": {"find_generations": {"config": config}}})
    outputs = [e.event_specific_data.metadata for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    failures = [e.event_specific_data.error_display_string for e in result.all_events if e.is_step_failure]
    return result.success, outputs, failures


def test_the_ui_search_job_shows_the_matches_as_metadata(made) -> None:
    root, keys = made
    ok, outputs, _ = _search_run(root, text="cup", min_score=0.1)
    meta = outputs[0]
    assert ok and meta["matches"].value == 1 and meta["keys"].value == [keys["a blue cup"]]
    table = meta["generations"].value.splitlines()
    assert table[0] == "| key | prompt | seed | status | score | created | viewer |"
    assert table[2] == (f"| {keys['a blue cup']} | a blue cup | 2 | below threshold | 0.42 | 2026-11-15 12:00:00 | "
                        f"[open](http://127.0.0.1:8770/g/{keys['a blue cup']}) |")
    ok, outputs, _ = _search_run(root, status="pending", limit=1)
    assert outputs[0]["generations"].value.count("\n") == 2 and outputs[0]["matches"].value == 1
    ok, outputs, failures = _search_run(root, since="soon")
    assert not ok and not outputs and "search: since 'soon': use a date or date-time" in failures[0]


def test_the_ui_search_job_refuses_out_of_range_config(made) -> None:
    ok, outputs, failures = _search_run(made[0], max_score=2.0)
    assert not ok and not outputs and "max_score" in failures[0] and "less than or equal to 1" in failures[0]


def test_the_ui_search_job_ranks_by_an_image_given_by_path(made, tiny_scorer, tmp_path) -> None:
    root, keys = made
    query = tmp_path / "query.png"
    query.write_bytes(png((220, 20, 20)))  # the red mug's prompt image
    ok, outputs, failures = _search_run(root, image=str(query))
    assert not ok and "search: image search needs an embedding model: set THREEGEN_SCORER=models" in failures[0]
    ok, outputs, failures = _search_run(root, tiny_scorer, image=str(query), text="a")
    assert ok, failures
    meta = outputs[0]
    assert meta["matches"].value == 3 and meta["keys"].value[0] == keys["a red ceramic mug"]
    table = meta["generations"].value.splitlines()
    assert table[0] == "| key | prompt | seed | status | score | created | similarity | viewer |"
    assert f"| {keys['a red ceramic mug']} | a red ceramic mug |" in table[2] and "| 1.0 |" in table[2]
    ok, outputs, failures = _search_run(root, tiny_scorer, image=str(tmp_path / "missing.png"))
    assert not ok and "search: " in failures[0] and "missing.png" in failures[0]


ROWS = [{"key": "a-new-s1", "created": "2026-11-01 10:00:00"}, {"key": "an-old-s2", "created": "0999-06-01 00:00:00"}]


@pytest.mark.parametrize(("fields", "error"), [
    ({"since": "9999-12-31T23:59:59-23:59"}, "since '9999-12-31T23:59:59-23:59': out of range (years 1 to 9999 in UTC)"),
    ({"since": "0001-01-01T00:00+01:00"}, "since '0001-01-01T00:00+01:00': out of range"),
    ({"until": "0001-01-01T00:00+01:00"}, "until '0001-01-01T00:00+01:00': out of range"),
    ({"since": "9999-12-31T23:59:59.5"}, "since '9999-12-31T23:59:59.5': out of range"),  # rounded up: year 10000
])
def test_a_date_out_of_range_is_one_line_naming_the_field(fields, error) -> None:
    with pytest.raises(SearchError, match=f"^{__import__('re').escape(error)}"):
        search(ROWS, SearchQuery(**fields))


def test_dates_at_the_ends_of_the_calendar_still_search() -> None:
    found = lambda **kw: [r["key"] for r in search(ROWS, SearchQuery(**kw)).rows]  # noqa: E731
    assert found(until="9999-12-31") == found(since="0001-01-01") == ["a-new-s1", "an-old-s2"]
    assert found(since="9999-12-31T23:59:59+01:00") == [] and found(until="0001-01-01T00:00-01:00") == []
    assert found(since="0999-01-01", until="0999-12-31") == ["an-old-s2"]  # the catalog writes year 999 as 0999


def test_threegen_search_refuses_a_date_out_of_range_in_one_line(made) -> None:
    done = cli(made[0].parent, "--since", "0001-01-01T00:00+01:00")
    assert done.returncode == 2 and done.stdout == "" and done.stderr == \
        "threegen: search: since '0001-01-01T00:00+01:00': out of range (years 1 to 9999 in UTC)\n"


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


SAVED = _npz(sha256=np.array(["cd" * 32]), vectors=np.ones((1, 4), np.float32))


@pytest.mark.parametrize("data", [
    SAVED[:len(SAVED) // 2],  # cut short: not a zip any more
    SAVED[:-30],  # the zip's end record cut
    SAVED.replace(b"vectors.npy", b"vectorz.npy"),  # another archive's names
    _npy(np.ones((1, 4))),  # a .npy, not an .npz
    _npz(sha256=np.array("cd" * 32), vectors=np.ones((1, 4))),  # a 0-d hash array
], ids=["half", "no-end-record", "other-names", "npy", "0-d"])
def test_any_damaged_embedding_cache_is_named_and_rebuilt(tmp_path, data: bytes) -> None:
    store = LocalStore(tmp_path / "store")
    store.write("search/embeddings/m-x.npz", data)
    cache = EmbeddingCache(store, "m-x")
    assert cache.vectors == {} and "m-x.npz was unreadable" in cache.damaged
    cache.add("ab" * 32, np.ones(4))
    assert cache.save() and EmbeddingCache(store, "m-x").vectors.keys() == {"ab" * 32}
