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


@pytest.mark.parametrize("key, text, seed", [("a-blue-vase-s3", "a blue vase", 3), ("robot-s3-s4", "robot s3", 4),
                                             ("chair-2024-s0", "chair 2024", 0), ("a-bed-cafe-s9", "a bed cafe", 9),
                                             (f"x-s{2**32 - 1}", "x", 2**32 - 1)])
def test_a_readable_key_is_the_prompt_it_spells(key: str, text: str, seed: int) -> None:
    from threegen_dagster.keys import is_hashed_key, is_readable_key, parse_readable_key, readable_key

    assert is_readable_key(key) and is_generation_key(key) and not is_hashed_key(key)
    prompt, parsed_seed = parse_readable_key(key)
    assert (prompt.text, parsed_seed) == (text, seed) and readable_key(text, seed) == key and seed_of(key) == seed
    assert key_fits(key, prompt.digest, seed) and not key_fits(key, prompt.digest, seed + 1)
    assert not key_fits(key, Prompt.from_text(text + " x").digest, seed)


@pytest.mark.parametrize("key, line", [
    ("a-blue-vase", r"type lower-case words and a seed like a-blue-vase-s0"),
    ("A Blue Vase", r"'A Blue Vase' is not a generation key: type lower-case words and a seed like a-blue-vase-s0"),
    ("a-vase-s03", r"like a-vase-s3,"),  # one spelling per seed: a key never has a twin
    (f"a-vase-s{2**32}", r"the seed must be between 0 and 4294967295"),
    ("a-chair-012345678-s1", r"its last word looks like a cut hash"),  # a hashed key missing a digit
    ("a-chair-abc1234-s1", r"its last word looks like a cut hash"),
    ("a-" * 61 + "s1", r"a readable key has at most 120 characters"),
])
def test_near_readable_keys_are_refused_saying_what_to_type(key: str, line: str) -> None:
    from threegen_dagster.keys import parse_readable_key

    assert not is_generation_key(key)
    with pytest.raises(PromptError, match=line):
        parse_readable_key(key)


@pytest.mark.parametrize("text", NASTY + ["a blue vase", "deadbeef cafe", "chair 0123456789"])
def test_the_two_key_forms_never_meet(text: str) -> None:
    """No prompt's hashed key is a readable key, and no readable key is a hashed one: two routes never give
    two different prompts one key."""
    from threegen_dagster.keys import is_hashed_key, is_readable_key, readable_key

    prompt = Prompt.from_text(text)
    for key in candidate_keys(prompt, 7):
        assert is_hashed_key(key) and not is_readable_key(key)
    readable = readable_key(text, 7)  # "chair 0123456789" spells a hashed key's shape: no readable key then
    assert is_readable_key(readable) != is_hashed_key(readable) or not is_generation_key(readable)
