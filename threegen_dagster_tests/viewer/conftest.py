"""A real generation ("a red mug", made by `threegen generate` on the embedded CPU backends in a
subprocess with its own store and instance), the system Chromium through Playwright, and the
screenshots kept under test-artifacts/ when a browser test fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.ledger import Ledger
from threegen_dagster.storage import LocalStore

from .browser import ARGS, chromium_path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PROMPT, SEED = "a red mug", 3


def threegen_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")}
    return {**env, "DAGSTER_HOME": str(root / "dagster"), "THREEGEN_STORE": str(root / "store"),
            "THREEGEN_INBOX": str(root / "inbox"), "THREEGEN_GAUSSIANS": "20000"}


def threegen(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "threegen_dagster.cli", *args], cwd=root, env=threegen_env(root),
                          capture_output=True, text=True, timeout=600, check=check)


class Generation:
    def __init__(self, root: Path, key: str) -> None:
        self.root, self.key = root, key
        self.store = LocalStore(root / "store")
        self.artifacts, self.ledger = ArtifactStore(self.store), Ledger(self.store)


@pytest.fixture(scope="session")
def red_mug(tmp_path_factory) -> Generation:
    root = tmp_path_factory.mktemp("viewer-generation")
    done = threegen(root, "generate", PROMPT, "--seed", str(SEED), "--json", check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return Generation(root, json.loads(done.stdout)["key"])


@pytest.fixture(scope="session")
def view_server(red_mug):
    """`threegen view --port 0` over the red mug's store, a real process; its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "threegen_dagster.cli", "view", "--port", "0"], cwd=red_mug.root,
                            env=threegen_env(red_mug.root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("threegen view serving "), line + proc.stderr.read() if not line else line
        yield line.split(" on ", 1)[1].split("/ ", 1)[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="package")  # per package (ui/ imports it too): a live sync Playwright keeps an
# asyncio loop running in the main thread, which breaks asyncio.run and other browsers in later tests
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (/usr/bin/chromium): run scripts/install_browser.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=ARGS)
        yield chromium
        chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed


@pytest.fixture
def page(browser, request, tmp_path):
    """A fresh page; its screenshots (``page.shots``, a folder) go to test-artifacts/ if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.shots = tmp_path / "screenshots"
    page.shots.mkdir()
    yield page
    if getattr(request.node, "failed_call", False):
        try:
            page.screenshot(path=str(page.shots / "at-failure.png"))
        except Exception:  # noqa: BLE001 - a page that died still leaves the screenshots taken before
            pass
        target = ARTIFACTS / request.node.name.replace("/", "_")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(page.shots, target)
    context.close()
