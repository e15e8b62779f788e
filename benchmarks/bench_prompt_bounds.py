"""What an untrusted image prompt costs before it is refused, or accepted (figures printed, never asserted).

A 9000 x 9000 PNG is about 100 KB on disk and 81 MP decoded. ``Prompt.from_image`` reads its
header, sees the pixel count over THREEGEN_MAX_IMAGE_PIXELS and refuses it before decoding; the
figures beside it are what decoding it would cost (Pillow's decode alone, and the pipeline's
conversion to RGB that used to follow), each in a fresh process for its peak memory.

    .venv/bin/python benchmarks/bench_prompt_bounds.py
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, peak_rss_mb  # noqa: E402

from threegen_dagster.keys import Prompt, PromptError  # noqa: E402


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, optimize=True)
    return buf.getvalue()


def refuse(data: bytes) -> None:
    try:
        Prompt.from_image(data)
    except PromptError:
        return
    raise AssertionError("the bomb was accepted")


def main() -> None:
    print(f"machine: {machine()}")
    bomb = encode(Image.new("L", (9000, 9000), 255))
    photo = encode(Image.effect_noise((4000, 3000), 64).convert("RGB"), "JPEG")  # a 12 MP photo, accepted
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.png"
        path.write_bytes(bomb)
        setup = f"from pathlib import Path\ndata = Path({str(path)!r}).read_bytes()\n"
        refused_mb = peak_rss_mb(setup + "from threegen_dagster.keys import Prompt, PromptError\n"
                                 "try:\n    Prompt.from_image(data)\nexcept PromptError:\n    pass\n")
        baseline_mb = peak_rss_mb(setup + "from threegen_dagster.keys import Prompt, PromptError\n")
        decode_mb = peak_rss_mb(setup + "import io\nfrom PIL import Image\nImage.open(io.BytesIO(data)).convert('RGB')\n")
    print(f"9000 x 9000 PNG ({len(bomb):,} bytes):")
    print(f"  refused by Prompt.from_image   {median_ms(lambda: refuse(bomb), repeat=20):8.2f} ms   "
          f"peak {refused_mb:7.0f} MB (the process with its imports: {baseline_mb:.0f} MB)")
    print(f"  decoded to RGB (what it was)   {median_ms(lambda: Image.open(io.BytesIO(bomb)).convert('RGB'), 3, 0):8.2f} ms"
          f"   peak {decode_mb:7.0f} MB")
    print(f"4000 x 3000 JPEG ({len(photo):,} bytes), accepted after a full decode and conversion:")
    print(f"  Prompt.from_image              {median_ms(lambda: Prompt.from_image(photo), 5, 1):8.2f} ms")


if __name__ == "__main__":
    main()
