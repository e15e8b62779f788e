"""Where artifacts, manifests and the ledger live: a local directory or an S3 bucket, one interface.

Paths are relative, '/'-separated and free of '..'. Both stores write atomically: locally a
temporary file in the same directory is flushed, fsynced and renamed over the target; on S3 an
object appears whole or not at all, and every PUT carries a SHA-256 the server verifies. Both
offer conditional writes (create-only, or replace only the version read), which is what lets
several workers share one ledger without losing updates. No Dagster imports.

Split by layer: ``base`` (the interface, errors, paths), ``local``, ``s3``, ``uri`` (opening a store
from its URI); every public name is importable from here.
"""

from .base import HASH_CHUNK, MULTIPART_THRESHOLD, Conflict, ObjectInfo, StorageError, Store, TooLarge, check_path
from .local import LocalStore
from .s3 import S3Store
from .uri import S3_MAX_ATTEMPTS, open_store, parse_s3_uri, redact_url, s3_client

__all__ = ["HASH_CHUNK", "MULTIPART_THRESHOLD", "S3_MAX_ATTEMPTS", "Conflict", "LocalStore", "ObjectInfo", "S3Store", "StorageError",
           "Store", "TooLarge", "check_path", "open_store", "parse_s3_uri", "redact_url",
           "s3_client"]
