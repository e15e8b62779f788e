"""Shared fixtures: the real S3 server (started once per session, stopped at the end) and a
``store`` fixture that runs a test on a local folder and on an S3 prefix alike."""

import uuid

import pytest

from threegen_dagster.storage import LocalStore, S3Store

from .s3_server import BUCKET, S3Server
from .pg_server import pg_server  # noqa: F401  (the session's PostgreSQL server, a fixture)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start the test S3 server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_prefix(s3_server) -> str:
    """A fresh prefix in the test bucket, so tests never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return S3Store(server.client(), BUCKET, request.getfixturevalue("s3_prefix"), multipart_threshold=5 * 2**20)
