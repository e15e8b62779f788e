"""Opening a store from its URI (a directory or ``s3://BUCKET[/PREFIX]``), without Dagster: the CLI
opens stores this way, and the Dagster ``StoreResource`` delegates to it with dagster-aws's client."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import Any

from .base import MULTIPART_THRESHOLD, StorageError, Store
from .local import LocalStore

S3_MAX_ATTEMPTS = 3
_USERINFO = re.compile(r"(?<=://)[^/?#\s\"']*@")  # the user:password@ of a URL (up to its last @)


def redact_url(text: str, mark: str = "***@") -> str:
    """``text`` with the userinfo of every URL in it replaced by ``mark``: an S3 endpoint given as
    ``http://user:password@host:9000`` would otherwise carry its password into error messages, logs and
    asset metadata. (botocore never sends the userinfo: S3 requests are signed with the AWS keys.)"""
    return _USERINFO.sub(mark, text)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise StorageError(errno.EINVAL, f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise StorageError(errno.EINVAL, f"{uri!r} names no bucket (use s3://BUCKET[/PREFIX])")
    return bucket, prefix.strip("/")


def s3_client(endpoint_url: str | None = None, region_name: str | None = None, max_attempts: int = S3_MAX_ATTEMPTS):
    """A boto3 S3 client from the standard AWS chain (environment, profile, instance role), built as
    dagster-aws's ``S3Resource`` builds it (standard retries), so the CLI and the runs reach S3 alike."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().resource(
        "s3", region_name=region_name, endpoint_url=endpoint_url,
        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"})).meta.client


def open_store(uri: str, client: Callable[[], Any] | None = None, endpoint_url: str | None = None,
               region_name: str | None = None, multipart_threshold: int = MULTIPART_THRESHOLD) -> Store:
    """The store at ``uri``: a ``LocalStore`` for a directory, an ``S3Store`` for ``s3://``, whose client
    comes from ``client()`` when given (the Dagster resource passes dagster-aws's), else ``s3_client``."""
    if not uri.startswith("s3://"):
        return LocalStore(uri)
    from .s3 import S3Store

    bucket, prefix = parse_s3_uri(uri)
    made = client() if client is not None else s3_client(endpoint_url, region_name)
    return S3Store(made, bucket, prefix, multipart_threshold=multipart_threshold)
