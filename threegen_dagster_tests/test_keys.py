"""Generation keys on nasty prompts: deterministic, short, path/CLI/S3/UI safe, or a clear refusal."""

import io
import re

import pytest
from PIL import Image

from threegen_dagster.keys import (
    MAX_PROMPT_CHARS,
    Prompt,
    PromptError,
    candidate_keys,
    generation_key,
    is_generation_key,
    key_fits,
    seed_of,
    slug,
)

SAFE = re.compile(r"^[a-z0-9-]{1,64}$")


def png(rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real 4x4 PNG (image prompts must decode)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), rgb).save(buf, format="PNG")
    return buf.getvalue()


PNG = png()

NASTY = [
    "a wooden chair",
    "a | pipe, with commas, and \"quotes\" and 'single'",
    "line one\nline two\r\n\tindented",
    "robot 🤖 with emoji 🎉 and accents: café naïve",
    "x" * MAX_PROMPT_CHARS,
    "../../etc/passwd; rm -rf / $(whoami) `id`",
    "日本語のプロンプト",
    "--select '*' --partition",
]


@pytest.mark.parametrize("text", NASTY)
def test_nasty_prompts_give_safe_deterministic_keys(text: str) -> None:
    prompt = Prompt.from_text(text)
    key = generation_key(prompt, 42)
    assert SAFE.match(key), key
    assert is_generation_key(key)
    assert key == generation_key(Prompt.from_text(text), 42)
    assert seed_of(key) == 42
    assert not key.startswith("-") and "--" not in key


def test_keys_differ_by_prompt_and_seed_and_not_by_whitespace() -> None:
    chair = Prompt.from_text("a wooden chair")
    assert generation_key(chair, 1) != generation_key(chair, 2)
    assert generation_key(chair, 1) != generation_key(Prompt.from_text("a wooden chairs"), 1)
    assert generation_key(chair, 1) == generation_key(Prompt.from_text("  a  wooden\nchair "), 1)
    long_a, long_b = "x" * 9000 + "a", "x" * 9000 + "b"  # same slug, different hash
    assert generation_key(Prompt.from_text(long_a), 0) != generation_key(Prompt.from_text(long_b), 0)


def test_key_reads_well() -> None:
    assert generation_key(Prompt.from_text("A Wooden Chair!"), 42).startswith("a-wooden-chair-")
    assert generation_key(Prompt.from_text("🤖🎉"), 7).endswith("-s7")  # no words: hash and seed only


@pytest.mark.parametrize("text,message", [("", "empty"), ("   \n\t ", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "limit")])
def test_empty_and_huge_prompts_are_refused(text: str, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        Prompt.from_text(text)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "3", True])
def test_bad_seeds_are_refused(seed) -> None:
    with pytest.raises(PromptError, match="seed"):
        generation_key(Prompt.from_text("a chair"), seed)


def test_image_prompts_hash_the_bytes() -> None:
    a, b = Prompt.from_image(png((1, 2, 3))), Prompt.from_image(png((1, 2, 4)))
    assert generation_key(a, 0) != generation_key(b, 0)
    assert generation_key(a, 0).startswith("img-")
    assert generation_key(Prompt.from_image(PNG, caption="red mug"), 0).startswith("img-red-mug-")
    with pytest.raises(PromptError, match="not a PNG"):
        Prompt.from_image(b"GIF89a....")
    with pytest.raises(PromptError, match="empty"):
        Prompt.from_image(b"")


def test_slug_is_bounded() -> None:
    assert len(slug("word " * 100)) <= 40
    assert slug("Crème Brûlée") == "creme-brulee"


def test_seed_of_rejects_non_keys() -> None:
    with pytest.raises(PromptError, match=r"'not a key' is not a generation key"):
        seed_of("not a key")


def test_longer_keys_for_colliding_prompts_are_keys_too() -> None:
    chair = Prompt.from_text("a wooden chair")
    keys = candidate_keys(chair, 3)
    assert keys[0] == generation_key(chair, 3) and len(set(keys)) == len(keys) == 5
    assert keys[-1] == f"a-wooden-chair-{chair.digest}-s3"  # the whole sha256 last
    for key in keys:
        assert is_generation_key(key) and re.fullmatch(r"[a-z0-9-]{1,130}", key) and seed_of(key) == 3
        assert key_fits(key, chair.digest, 3)
        assert not key_fits(key, Prompt.from_text("a steel chair").digest, 3) and not key_fits(key, chair.digest, 4)


@pytest.mark.parametrize("key", ["a-chair-0123456789-s1\n", "a-chair-012345678-s1", "a-chair-" + "0" * 65 + "-s1",
                                 "a-chair-0123456789-s1/../x", "A-chair-0123456789-s1",
                                 "a-chair-0123456789-s\u0663"])  # ARABIC-INDIC DIGIT THREE: \d would take it
def test_near_keys_are_not_keys(key: str) -> None:
    assert not is_generation_key(key)
