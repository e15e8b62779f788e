"""A round state folder built to the documented schemas (SN17-NOW.md section 2), with real prompt images
named by their sha256, and a loopback HTTP server (http.server in a thread) that serves it as GitHub
serves the state repository's raw files; ``/slow/...`` answers late and ``/flaky/...`` fails once first."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROUND = 53
SEED = 579720909
SCHEDULE = {"earliest_reveal_block": 9229787, "latest_reveal_block": 9251386, "generation_deadline_block": 9252586}


def prompt_png(index: int, size: int = 96) -> bytes:
    """A small, distinct object on white: a coloured ellipse or box, different for every index."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(30, 220, 3))
    box = (size // 5 + index % 5, size // 4, size - size // 5, size - size // 6 - index % 7)
    (draw.ellipse if index % 2 else draw.rectangle)(box, fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class StateFolder:
    root: Path
    base_url: str = ""  # where the images are served; prompts.txt names them under it
    stems: list[str] = field(default_factory=list)

    def write(self, relative: str, data: bytes | str | dict | list) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, (dict, list)):
            data = json.dumps(data, indent=1)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def image(self, data: bytes, stem: str | None = None) -> str:
        """Store an image under procgen/ (named by its sha256 unless told); its URL."""
        stem = stem or hashlib.sha256(data).hexdigest()
        self.write(f"procgen/{stem}.png", data)
        return f"{self.base_url}/procgen/{stem}.png"

    def prompts(self, urls: list[str], number: int = ROUND) -> None:
        self.stems = [u.rsplit("/", 1)[-1].rsplit(".", 1)[0] for u in urls]
        self.write(f"rounds/{number}/prompts.txt", "\n".join(urls) + "\n")

    def stage(self, stage: str, number: int = ROUND) -> None:
        self.write("state.json", {"current_round": number, "stage": stage, "next_stage_eta": None})


def build_state(root: Path, base_url: str, images: int = 8, stage: str = "miner_generation") -> StateFolder:
    folder = StateFolder(root, base_url)
    folder.stage(stage)
    folder.write(f"rounds/{ROUND}/schedule.json", SCHEDULE)
    folder.write(f"rounds/{ROUND}/seed.json", {"seed": SEED})
    folder.prompts([folder.image(prompt_png(i)) for i in range(images)])
    folder.write(f"rounds/{ROUND}/submissions.json", {"5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo9ZbUne": {
        "repo": "miner-one/threejs-gen", "commit": "0123456789abcdef0123456789abcdef01234567",
        "cdn_url": "https://cdn.example.org/r53", "revealed_at_block": 9240000, "round": "threejs-52",
        "hardware": ["4xH200"]}})
    folder.write("leader.json", [{"hotkey": "5HLeader", "repo": "lead/gen", "commit": "f" * 40,
                                  "docker": "europe-west3-docker.pkg.dev/x/y:z", "hardware": ["4xH200"],
                                  "weight": 0.8, "effective_block": 9100000}])
    return folder


class _Handler(SimpleHTTPRequestHandler):
    hits: dict  # path -> count, shared per server
    delay_s: float

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.startswith("/slow/"):
            time.sleep(self.delay_s)
            self.path = self.path.removeprefix("/slow")
        elif self.path.startswith("/flaky/"):
            if self.hits[self.path] == 1:
                self.send_error(503, "try again")
                return
            self.path = self.path.removeprefix("/flaky")
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test)


class StateServer:
    """``folder`` on http://127.0.0.1:PORT (a free port), in a thread; a context manager."""

    def __init__(self, folder: Path, delay_s: float = 3.0) -> None:
        handler = type("Handler", (_Handler,), {"hits": {}, "delay_s": delay_s})
        self.hits = handler.hits
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StateServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
