"""Shared by the audit tests: one judge-style renderer for the session (its page takes long to open in
software WebGL) and the comp 2 modules the tests publish by hand."""

from __future__ import annotations

import pytest

from threegen_dagster.rounds.render import JudgeRenderer, find_chromium

BOX = (b"export default function generate(THREE) {\n  return new THREE.Mesh(new THREE.BoxGeometry(0.6, 0.4, 0.5), "
       b"new THREE.MeshStandardMaterial({ color: 0x3366cc }));\n}\n")
SPHERE = (b"export default function generate(THREE) {\n  return new THREE.Mesh(new THREE.SphereGeometry(0.35, 16, 12), "
          b"new THREE.MeshStandardMaterial({ color: 0xcc3333 }));\n}\n")


# closed when the audit tests end: a live sync Playwright keeps an asyncio loop running in the main
# thread, which breaks asyncio.run and other browsers in the tests after these
@pytest.fixture(scope="package")
def judge_renderer():
    if find_chromium() is None:
        pytest.skip("no Chromium (scripts/install_browser.sh)")
    with JudgeRenderer() as renderer:
        yield renderer
