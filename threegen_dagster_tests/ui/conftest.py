"""The real Dagster UI for the browser tests: ``make ui`` (``dg dev``: webserver, code server and daemon)
on a free loopback port with a temporary DAGSTER_HOME, store and inbox (embedded CPU backends), started
once for the module's tests and stopped at the end, pass or fail: Ctrl-C to its process group as a
person stops it, then SIGKILL for whatever is left, including run workers of this DAGSTER_HOME. The
browser, the page and the screenshots kept under test-artifacts/ on failure are the viewer tests'."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ..dagster_processes import processes_of
from ..test_ci_sequence import BIN, ROOT, environment
from ..viewer.conftest import browser, page, pytest_runtest_makereport  # noqa: F401  (fixtures and the hook)

START_TIMEOUT_S = 600.0  # guards against a hang on a loaded machine; nothing is measured


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DagsterUI:
    """A running ``make ui``: its base URL, instance folder, store and log."""

    process: subprocess.Popen
    url: str
    home: Path
    store: Path
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, **variables) -> dict:
        """A query to the GraphQL API the UI itself uses."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            data = json.load(answer)
        assert "errors" not in data, data["errors"]
        return data["data"]

    def wait_for(self, check, timeout: float, what: str, every: float = 2.0):
        """``check()`` until it is truthy; fails naming ``what`` if the UI's processes exit or
        ``timeout`` seconds pass (a guard against hanging, not a measurement)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if not self.alive():
                raise AssertionError(f"make ui exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:.0f} s; make ui's log:\n{self.tail()}")
            time.sleep(every)


def _location_loaded(ui: DagsterUI) -> bool:
    try:
        with urllib.request.urlopen(f"{ui.url}/server_info", timeout=10):
            pass
        data = ui.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                          "locationOrLoadError { __typename } } } } }")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    entries = data["workspaceOrError"]["locationEntries"]
    failed = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
    assert not failed, f"the code location did not load: {failed}"
    return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)


def stop(ui: DagsterUI) -> list[int]:
    """Ctrl-C to ``make ui``'s process group, then SIGKILL to the group and to any process still running
    with this DAGSTER_HOME; the pids that had to be killed."""
    killed = []
    try:
        os.killpg(ui.process.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        ui.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while processes_of(ui.home) and time.monotonic() < deadline:  # dg dev stops its children after make
        time.sleep(1)
    try:
        os.killpg(ui.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in processes_of(ui.home):  # started by this UI (a run worker in a session of its own)
        try:
            psutil.Process(pid).kill()
            killed.append(pid)
        except psutil.NoSuchProcess:
            pass
    ui.process.wait()
    return killed


@pytest.fixture(scope="module")
def dagster_ui(browser, tmp_path_factory):  # noqa: F811 - the browser first: no Chromium skips before make ui
    """``make ui`` on a free port, with the code location loaded; stopped after the module's tests."""
    tmp = tmp_path_factory.mktemp("dagster-ui")
    home = tmp / "home"
    env = environment(tmp, DAGSTER_HOME=str(home))  # THREEGEN_STORE, _INBOX, _GAUSSIANS=8000, TMPDIR in tmp
    env.pop("VIRTUAL_ENV", None)  # make ui activates the venv itself
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    port, log = free_port(), tmp / "ui.log"
    with log.open("w") as out:  # -o: never re-run the set-up from a test
        process = subprocess.Popen(["make", "-o", ".venv/.installed", "ui", f"UI_PORT={port}"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ui = DagsterUI(process, f"http://127.0.0.1:{port}", home, tmp / "store", log)
    try:
        ui.wait_for(lambda: _location_loaded(ui), START_TIMEOUT_S, "webserver with the code location loaded")
        yield ui
    finally:
        stop(ui)
    assert processes_of(home) == [], "processes of the test's DAGSTER_HOME outlived make ui"
