"""Prompts at the edge, driven as they arrive: image files that are bombs, truncated or 16-bit,
text with terminal escapes or bytes that are not UTF-8 (argv of a real process, JSON task files),
and prompt text from older records shown in the catalog's markdown and the terminal."""

import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from threegen_dagster import cli, images
from threegen_dagster.catalog import markdown_table
from threegen_dagster.keys import Prompt, PromptError
from threegen_dagster.ledger import Ledger
from threegen_dagster.settings import Settings, SettingsError
from threegen_dagster.sn17.queue import entry_prompt
from threegen_dagster.storage import LocalStore
from threegen_dagster.tasks import TaskError, parse_task


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def bomb() -> bytes:
    """9000 x 9000 white pixels: about 100 KB of PNG, 81 million pixels once decoded."""
    return encode(Image.new("L", (9000, 9000), 255), optimize=True)


def grey16_object() -> bytes:
    """A 16-bit greyscale PNG: a dark disc on a light background (the values a 16-bit scan holds)."""
    yy, xx = np.mgrid[:256, :256]
    values = np.full((256, 256), 58_000, np.uint16)
    values[(yy - 128) ** 2 + (xx - 128) ** 2 < 70 ** 2] = 9_000
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return encode(image)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("THREEGEN_STORE", raising=False)
    return tmp_path


def registered(root) -> list:
    return Ledger(LocalStore(root / "artifacts")).all()


def test_a_decompression_bomb_is_refused_before_registering(project, capsys) -> None:
    data = bomb()
    assert len(data) < 300_000
    (project / "bomb.png").write_bytes(data)
    assert cli.main(["add", "--image", "bomb.png", "a white square"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "9000 x 9000 = 81,000,000 pixels; the limit is 16,777,216" in err
    assert registered(project) == []
    task = json.dumps({"id": "t-bomb", "image_b64": base64.b64encode(data).decode()}).encode()
    with pytest.raises(TaskError, match="81,000,000 pixels"):  # the inbox sensor's edge
        parse_task(task)
    with pytest.raises(TaskError, match="task sn17-1: image prompt refused: .*81,000,000 pixels"):  # SN17's
        entry_prompt({"task_id": "sn17-1", "type": "image", "prompt": base64.b64encode(data).decode()})


def test_the_pixel_limit_is_configurable(monkeypatch) -> None:
    square = encode(Image.new("RGB", (200, 200), "red"))
    assert Prompt.from_image(square).kind == "image"
    monkeypatch.setenv("THREEGEN_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(PromptError, match=r"200 x 200 = 40,000 pixels; the limit is 10,000"):
        Prompt.from_image(square)
    assert Settings.from_env().max_image_pixels == 10_000
    assert Prompt.from_image(square, max_pixels=40_000).kind == "image"
    for bad in ("0", "-5", "lots"):
        monkeypatch.setenv("THREEGEN_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(SettingsError, match="THREEGEN_MAX_IMAGE_PIXELS"):
            Settings.from_env()


@pytest.mark.parametrize("damage", ["truncated PNG", "truncated JPEG", "corrupt PNG data"])
def test_images_that_do_not_decode_are_refused(project, capsys, damage) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    if damage == "truncated PNG":
        data = encode(photo)[:3000]
    elif damage == "truncated JPEG":
        data = encode(photo, "JPEG")[:2000]
    else:
        whole = bytearray(encode(photo))
        whole[200:260] = b"\0" * 60  # inside the compressed pixels: the header still reads
        data = bytes(whole)
    (project / "bad.img").write_bytes(data)
    assert cli.main(["add", "--image", "bad.img"]) == 2
    err = capsys.readouterr().err
    assert "image prompt refused: the " in err and "(160 x 120) cannot be decoded" in err and err.count("\n") == 1
    assert registered(project) == []


def test_a_16_bit_greyscale_image_runs_end_to_end(project, monkeypatch, capsys) -> None:
    """It used to be converted all white and refused as "a plain background"."""
    (project / "scan.png").write_bytes(grey16_object())
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "8000")
    monkeypatch.setenv("THREEGEN_SCORE_THRESHOLD", "0")
    assert cli.main(["generate", "--image", "scan.png", "--seed", "1", "--json", "--out", "out"]) == 0, \
        capsys.readouterr()
    report = json.loads(capsys.readouterr().out)
    assert report["success"] and report["key"].startswith("img-")
    given = np.asarray(Image.open(project / "out" / "generated_image.png"))
    assert given.shape == (256, 256, 3) and given[128, 128].tolist() == [35, 35, 35]  # 9000/65535 of 255
    assert given[5, 5].tolist() == [226, 226, 226]
    cut = np.asarray(Image.open(project / "out" / "foreground_image.png"))
    assert cut[128, 128, 3] == 255 and cut[5, 5, 3] == 0


def _modes() -> dict[str, tuple[bytes, str, tuple]]:
    """name -> (file bytes, the mode to_rgb gives, the pixel at (0, 0))."""
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: the stored pixels are rotated
    landscape = Image.new("RGB", (40, 20), "green")
    grey16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    return {
        "palette": (encode(palette), "RGB", (0, 0, 255)),
        "palette with transparency": (encode(palette, transparency=1), "RGBA", (0, 0, 255, 0)),
        "grey + alpha": (encode(Image.new("LA", (8, 8), (90, 128))), "RGBA", (90, 90, 90, 128)),
        "grey with a tRNS key": (encode(Image.new("L", (8, 8), 7), transparency=7), "RGBA", (7, 7, 7, 0)),
        "16-bit white": (encode(grey16), "RGB", (255, 255, 255)),
        "16-bit with a tRNS key": (encode(grey16, transparency=65535), "RGBA", (255, 255, 255, 0)),
        "CMYK JPEG": (encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", quality=95), "RGB", (255, 255, 255)),
        "rotated JPEG": (encode(landscape, "JPEG", exif=exif), "RGB", None),
    }


@pytest.mark.parametrize("name", list(_modes()))
def test_every_mode_converts_to_8_bit_rgb_or_rgba(name) -> None:
    data, mode, pixel = _modes()[name]
    image = images.open_rgb(data)
    assert image.mode == mode
    if pixel is not None:
        assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((0, 0)), pixel))
    else:
        assert image.size == (20, 40)  # EXIF orientation applied
    assert Prompt.from_image(data).image == data  # the key hashes the bytes as given


@pytest.mark.parametrize("text,where", [
    ("a \x1b[31mred\x1b[0m chair", "U+001B at character 3"), ("nul\x00byte", "U+0000 at character 4"),
    ("del\x7f", "U+007F at character 4"), ("csi \x9b2J", "U+009B at character 5"),
])
def test_control_characters_are_refused_with_where_they_are(text, where) -> None:
    with pytest.raises(PromptError, match=re.escape(f"the prompt contains the control character {where}")):
        Prompt.from_text(text)
    with pytest.raises(PromptError, match=re.escape(f"the caption contains the control character {where}")):
        Prompt.from_image(encode(Image.new("RGB", (4, 4))), caption=text)
    assert Prompt.from_text('a "quoted" | piped, chair\nwith\ta tab 🤖 (zwj 👩‍🚀)').text == \
        'a "quoted" | piped, chair with a tab 🤖 (zwj 👩‍🚀)'


def test_undecodable_bytes_get_one_line_not_a_traceback(tmp_path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / ".dagster"), "THREEGEN_STORE": str(tmp_path / "artifacts")}
    for prompt, message in ((b"caf\xe9 chair", "the prompt is not valid UTF-8 text (an undecodable byte at "
                                                "character 4: 0xe9)"),
                            (b"a \x1b[2J chair", "the prompt contains the control character U+001B at character 3")):
        done = subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "add", prompt, "--seed", "1"],
                              cwd=tmp_path, env=env, capture_output=True)
        assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr
        assert done.stderr.decode().splitlines() == [f"threegen: {message}: remove it (terminal escapes and NULs are "
                                                     "not text)" if "control" in message else f"threegen: {message}"]
    assert not (tmp_path / "artifacts" / "ledger").exists()
    task = b'{"id": "t-1", "prompt": "caf\\udce9"}'  # JSON can carry a lone surrogate too
    with pytest.raises(TaskError, match="not valid UTF-8"):
        parse_task(task)


def test_prompt_text_is_escaped_in_the_catalog_markdown_and_terminal(project, capsys) -> None:
    """An entry written before these checks (or by another writer) still shows safely."""
    nasty = "a \x1b[2J\x1b[31mred\x1b[0m chair ![t](http://evil.example/t.png) <img src=x> **bold** \u202eexe"
    Ledger(LocalStore(project / "artifacts")).add(Prompt("text", text=nasty), 3, source="legacy")
    assert cli.main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "a \\x1b\\[2J\\x1b\\[31mred\\x1b\\[0m chair !\\[t\\](http://evil.example/t.png) \\<im" in out
    table = markdown_table(pd.DataFrame([{"key": "k", "prompt": "<b>x</b> **y** `z` \u202eq | ~~s~~ &amp;"}]),
                           columns=("key", "prompt"))
    assert table.splitlines()[-1] == "| k | \\<b\\>x\\</b\\> \\*\\*y\\*\\* \\`z\\` \\u202eq \\| \\~\\~s\\~\\~ \\&amp; |"
