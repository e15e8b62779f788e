import base64
import io
import json

import pytest
from PIL import Image

from threegen_dagster.tasks import TaskError, parse_task


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, format="PNG")
    return out.getvalue()


PNG = _png()


def test_text_and_image_tasks_parse() -> None:
    task = parse_task(json.dumps({"id": "t-1", "prompt": "a red mug", "seed": 9}).encode())
    assert (task.id, task.prompt.text, task.seed) == ("t-1", "a red mug", 9)
    image = parse_task(json.dumps({"id": "t-2", "image_b64": base64.b64encode(PNG).decode()}).encode())
    assert image.prompt.kind == "image" and image.prompt.image == PNG and image.seed == 0


@pytest.mark.parametrize(
    "data,message",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"prompt": "x"}).encode(), "'id'"),
        (json.dumps({"id": "../evil", "prompt": "x"}).encode(), "'id'"),
        (json.dumps({"id": "a"}).encode(), "exactly one"),
        (json.dumps({"id": "a", "prompt": "x", "image_b64": "AAAA"}).encode(), "exactly one"),
        (json.dumps({"id": "a", "prompt": "   "}).encode(), "empty"),
        (json.dumps({"id": "a", "prompt": "x", "seed": -4}).encode(), "seed"),
        (json.dumps({"id": "a", "image_b64": "%%%"}).encode(), "base64"),
        (json.dumps({"id": "a", "image_b64": base64.b64encode(b"GIF89a").decode()}).encode(), "not a PNG"),
        (json.dumps({"id": "a", "prompt": "x", "colour": "red"}).encode(), "unknown fields: colour"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # RecursionError inside the parser
        (b'{"id": "a", "prompt": ' + b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_tasks_say_why(data: bytes, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        parse_task(data)
