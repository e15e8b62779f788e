"""A loopback stand-in for the judges' VLM speaking OpenAI's ``/v1/chat/completions``: it reads the images
of each question (the prompt, then four views of A, then four of B) and answers penalties from what it sees:
``colour`` mode penalises views that are not mostly blue (the same answer whichever order the sides come in),
``biased`` mode always prefers the first object (the two orders then disagree), ``prose`` answers a sentence
instead of penalties. Each question is recorded."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def _blue(url: str) -> bool:
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), np.float32)
    coloured = image[(image.max(axis=2) - image.min(axis=2)) > 40]  # the object, not the white background
    return bool(len(coloured)) and coloured[:, 2].mean() > coloured[:, 0].mean()


class VlmServer:
    def __init__(self, mode: str = "colour") -> None:
        self.mode, self.questions = mode, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                images = [p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url"]
                outer.questions.append({"auth": self.headers.get("Authorization"), "images": len(images),
                                        "seed": body.get("seed"), "temperature": body.get("temperature")})
                if outer.mode == "prose":  # what small VLMs often do instead of the JSON asked for
                    answer = "Object A looks closer to the reference."
                elif outer.mode == "biased":
                    answer = {"A": [2, 2, 2, 2], "B": [7, 7, 7, 7]}
                else:
                    answer = {side: [2 if _blue(u) else 6 for u in images[1 + 4 * i:5 + 4 * i]]
                              for i, side in enumerate("AB")}
                content = answer if isinstance(answer, str) else json.dumps(answer)
                data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> VlmServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
