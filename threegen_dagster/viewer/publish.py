"""A generation's viewer page kept next to its files (``generations/<key>/viewer.html`` in the store,
removed with the generation), and the links to it for asset metadata: on S3 a presigned URL of that
object (it opens in the browser: the page is self-contained), on a local store its ``file://`` URL;
both with the ``threegen view`` URL of the same page (``http://127.0.0.1:8770/g/<key>``, which always
shows the latest versions). The page is written only when its bytes changed. No Dagster imports."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..artifacts import ArtifactStore
from ..ledger import Ledger
from . import DEFAULT_PORT
from .page import CONTENT_TYPE, FILENAME, viewer_html

VIEWER_ASSET = "validation_score"
"""The stage whose materialization publishes the page: the last, so the page shows every stage."""


def viewer_path(key: str) -> str:
    return f"generations/{key}/{FILENAME}"


def server_url(key: str, port: int = DEFAULT_PORT) -> str:
    """The page on ``threegen view`` (default port) on this machine."""
    return f"http://127.0.0.1:{port}/g/{key}"


def publish_viewer(artifacts: ArtifactStore, ledger: Ledger, key: str) -> bool:
    """Write the page of ``key``'s latest versions to the store; False when the same bytes were there."""
    data = viewer_html(artifacts, ledger, key)
    path, store = viewer_path(key), artifacts.store
    if store.holds(path, data, hashlib.sha256(data).hexdigest()):
        return False
    store.write(path, data, content_type=CONTENT_TYPE)
    return True


def viewer_links(artifacts: ArtifactStore, key: str, expires_s: int, port: int = DEFAULT_PORT) -> dict[str, str]:
    """``viewer``: the stored page (presigned for ``expires_s`` on S3; ``file://`` locally) and
    ``viewer_server``: the same page on ``threegen view``."""
    store, path = artifacts.store, viewer_path(key)
    link = store.url(path, expires_s)  # no attachment name: the browser shows the page
    if link is None:
        link = Path(store.uri(path)).as_uri()
    return {"viewer": link, "viewer_server": server_url(key, port)}
