"""``threegen serve`` as a real process on loopback (a free port), its output collected in a thread, and a
client that drives its batch API with httpx as the validators' orchestrator does."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx

THREEGEN = str(Path(sys.executable).with_name("threegen"))


class ServeProcess:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen([THREEGEN, "serve", "--host", "127.0.0.1", "--port", "0", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        first = self.process.stdout.readline()
        self.lines.append(first)
        if "serving on " not in first:
            self.process.kill()
            raise AssertionError(f"threegen serve did not start: {first}{self.process.stdout.read()}")
        self.url = first.split("serving on ")[1].split()[0]
        threading.Thread(target=self._collect, daemon=True).start()
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def status(self, **params) -> dict:
        answer = self.client.get("/status", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_for(self, *states: str, timeout_s: float = 900) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            found = self.status()
            if found["status"] in states:
                return found
            time.sleep(0.2)
        raise AssertionError(f"never {states}: {self.status()}\n{self.output()}")

    def results(self) -> zipfile.ZipFile:
        answer = self.client.get("/results")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/zip"
        assert answer.headers.get("transfer-encoding") == "chunked"  # streamed
        return zipfile.ZipFile(io.BytesIO(answer.content))

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.client.close()
