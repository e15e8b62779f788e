"""Where artifacts, manifests and the ledger live: a local directory or an S3 bucket, one interface.

Paths are relative, '/'-separated and free of '..'. Both stores write atomically: locally a
temporary file in the same directory is flushed, fsynced and renamed over the target; on S3 an
object appears whole or not at all, and every PUT carries a SHA-256 the server verifies. Both
offer conditional writes (create-only, or replace only the version read), which is what lets
several workers share one ledger without losing updates. No Dagster imports.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any


HASH_CHUNK = 1 << 20


class StorageError(OSError):
    """A store operation that failed; the message names the object and what to do."""


class Conflict(StorageError):
    """A conditional write lost: the object exists (create-only) or changed since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    path: str
    size: int
    modified: float  # unix seconds


def check_path(relative: str) -> str:
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts or "\\" in relative or relative.endswith("/"):
        raise StorageError(errno.EINVAL, f"not a store path: {relative!r}")
    return relative


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """The interface both stores implement; ``update_json`` is built on it."""

    def write(self, relative: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
              sha256: str | None = None, content_type: str | None = None) -> str:
        """Write ``data``; return its version tag. ``if_absent``: fail with Conflict if the object
        exists. ``if_match``: fail with Conflict unless the object is still at that tag."""
        raise NotImplementedError

    def read_tagged(self, relative: str) -> tuple[bytes, str]:
        raise NotImplementedError

    def read(self, relative: str) -> bytes:
        return self.read_tagged(relative)[0]

    def read_hashed(self, relative: str) -> tuple[bytes, str]:
        """The bytes and their SHA-256 (hex)."""
        data = self.read(relative)
        return data, hashlib.sha256(data).hexdigest()

    def stat(self, relative: str) -> ObjectInfo | None:
        raise NotImplementedError

    def holds(self, relative: str, data: bytes, sha256: str) -> bool | None:
        """Whether the object holds exactly ``data`` (whose SHA-256 is ``sha256``): None when it
        is absent, False when it holds other bytes or cannot be verified cheaply."""
        info = self.stat(relative)
        if info is None:
            return None
        if info.size != len(data):
            return False
        try:
            return self.read_hashed(relative)[1] == sha256
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def clock(self) -> float:
        """Now on the store's own clock, the one its objects' ``modified`` times are on."""
        return time.time()

    def exists(self, relative: str) -> bool:
        return self.stat(relative) is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under the folder ``prefix``, sorted by path."""
        raise NotImplementedError

    def delete(self, relative: str) -> int:
        """Remove one object; the bytes freed (0 if it was not there)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        return sum(self.delete(info.path) for info in list(self.list(prefix)))

    location = ""  # the root as a person would write it: a directory, or s3://bucket/prefix
    cheap_stat = True  # False where asking "is it there?" costs a network round trip

    def uri(self, relative: str) -> str:
        raise NotImplementedError

    def url(self, relative: str, expires_s: int, filename: str | None = None) -> str | None:
        """A link a person can open (presigned on S3); None where there is none to give."""
        return None

    def update_json(self, relative: str, change: Callable[[dict | None], dict], attempts: int = 50) -> dict:
        """Read-modify-write one JSON object without losing a concurrent writer's update:
        ``change`` gets the current value (None if absent) and returns the new one; if another
        writer got in between, the read and ``change`` are repeated."""
        for attempt in range(attempts):
            try:
                data, tag = self.read_tagged(relative)
                current = json.loads(data)
            except StorageError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                current, tag = None, None
            new = change(current)
            body = json.dumps(new, indent=1, sort_keys=True).encode()
            try:
                self.write(relative, body, if_absent=tag is None, if_match=tag,
                           content_type="application/json")
                return new
            except Conflict:
                time.sleep(min(0.002 * 2 ** attempt, 0.1))
        raise Conflict(errno.EAGAIN, f"{self.uri(relative)}: still contended after {attempts} attempts")


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, relative: str) -> Path:
        return self.root.joinpath(*PurePosixPath(check_path(relative)).parts)

    def uri(self, relative: str) -> str:
        return str(self.path(relative))

    def write(self, relative: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
              sha256: str | None = None, content_type: str | None = None) -> str:
        target = self.path(relative)
        tag = _tag(data)
        if sha256 is not None and tag != sha256:
            raise StorageError(errno.EIO, f"refusing to write {target}: the bytes do not hash to {sha256}")
        for attempt in range(20):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
                break
            except (FileNotFoundError, FileExistsError) as exc:
                # a delete pruned the emptied folder (or one above it) while we made it: make it again
                if attempt == 19:
                    raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}") from exc
            except OSError as exc:
                raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                os.link(tmp, target)  # atomic create-only: fails if the target exists
                os.unlink(tmp)
            elif if_match is not None:
                with self._lock(target):
                    if not target.is_file() or _tag(target.read_bytes()) != if_match:
                        raise Conflict(errno.EAGAIN, f"{target} changed since it was read")
                    os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        except FileExistsError:
            Path(tmp).unlink(missing_ok=True)
            raise Conflict(errno.EEXIST, f"{target} exists already") from None
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, Conflict):
                raise
            hint = " (the disk is full: free space or point THREEGEN_STORE elsewhere)" if exc.errno == errno.ENOSPC else ""
            raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}{hint}") from exc
        return tag

    def _lock(self, target: Path):
        """An exclusive advisory lock beside ``target`` (compare-and-swap for local writers)."""
        lock_path = target.with_name(f".{target.name}.lock")

        class _Held:
            def __enter__(self_inner):
                self_inner.fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
                fcntl.flock(self_inner.fd, fcntl.LOCK_EX)

            def __exit__(self_inner, *exc):
                fcntl.flock(self_inner.fd, fcntl.LOCK_UN)
                os.close(self_inner.fd)

        return _Held()

    def read_tagged(self, relative: str) -> tuple[bytes, str]:
        data = self.read(relative)
        return data, _tag(data)

    def read(self, relative: str) -> bytes:
        target = self.path(relative)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise StorageError(errno.ENOENT, f"missing from the store: {target}") from None
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read {target}: {exc.strerror}") from exc

    def stat(self, relative: str) -> ObjectInfo | None:
        try:
            st = self.path(relative).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(relative, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path(prefix)
        if not base.is_dir():
            return iter(())
        infos = []
        for dirpath, _, names in os.walk(base):
            for name in names:
                if name.startswith("."):  # temp files and locks
                    continue
                full = Path(dirpath, name)
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                infos.append(ObjectInfo(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return iter(sorted(infos, key=lambda i: i.path))

    def delete(self, relative: str) -> int:
        target = self.path(relative)
        try:
            freed = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        target.with_name(f".{target.name}.lock").unlink(missing_ok=True)
        self._prune(target.parent)
        return freed

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix)
        if not base.is_dir():
            return 0
        freed = sum(info.size for info in self.list(prefix))
        shutil.rmtree(base)
        self._prune(base.parent)
        return freed

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and then its parents while they are empty, up to the root, so a released
        hold or a dropped version leaves no empty folder behind (a writer racing it retries, see write)."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone already): the folders above are not empty either
                return
            folder = folder.parent


class S3Store(Store):
    """An ``s3://bucket/prefix`` through a boto3 client (from dagster-aws ``S3Resource``).

    Objects up to ``multipart_threshold`` go up in one PUT carrying ChecksumSHA256; larger ones
    as a multipart upload with a SHA-256 per part. The server recomputes and refuses a mismatch
    (BadDigest), so bytes damaged in transit are never stored. Version tags are ETags, which
    the conditional headers (If-None-Match, If-Match) compare against.
    """

    cheap_stat = False

    def __init__(self, client: Any, bucket: str, prefix: str = "", multipart_threshold: int = 64 * 2**20) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "") or "AWS S3"
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if hasattr(client, "meta"):  # presign with SigV4, as AWS requires everywhere (botocore may pick SigV2)
            client.meta.events.register("choose-signer.s3.*", _sigv4, unique_id="threegen-sigv4")

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    def key(self, relative: str) -> str:
        check_path(relative)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _folder(self, prefix: str) -> str:
        check_path(prefix)
        return f"{self.prefix}/{prefix}/" if self.prefix else f"{prefix}/"

    def uri(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"

    def _error(self, exc: Exception, action: str, relative: str) -> StorageError:
        """A StorageError that says what failed and what to check; never the credentials."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = self.uri(relative)
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return Conflict(errno.EEXIST, f"cannot {action} {where}: it exists or changed since it was read")
            if code in ("NoSuchKey", "404", "NotFound"):
                return StorageError(errno.ENOENT, f"missing from the store: {where}")
            if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403",
                        "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"):
                return StorageError(errno.EACCES, f"cannot {action} {where}: S3 at {self.endpoint} refused the "
                                    f"credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                                    f"(or the profile) and that they may use bucket {self.bucket!r}")
            if code == "NoSuchBucket":
                return StorageError(errno.ENOENT, f"cannot {action} {where}: bucket {self.bucket!r} does not "
                                    f"exist at {self.endpoint}")
            if code == "BadDigest":
                return StorageError(errno.EIO, f"cannot {action} {where}: the server received bytes that do not "
                                    f"match their SHA-256 (damaged in transit); nothing was stored")
            return StorageError(errno.EIO, f"cannot {action} {where}: S3 said {code or status}: "
                                f"{exc.response.get('Error', {}).get('Message', '')}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(errno.EACCES, f"cannot {action} {where}: no AWS credentials found; set "
                                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(exc, EndpointConnectionError) or "Connect" in type(exc).__name__:
            return StorageError(errno.ECONNREFUSED, f"cannot {action} {where}: S3 endpoint {self.endpoint} "
                                f"is unreachable ({type(exc).__name__}); is the server up?")
        return StorageError(errno.EIO, f"cannot {action} {where}: {type(exc).__name__}: {exc}")

    def write(self, relative: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
              sha256: str | None = None, content_type: str | None = None) -> str:
        digest = bytes.fromhex(sha256) if sha256 else hashlib.sha256(data).digest()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(relative)}
        if content_type:
            args["ContentType"] = content_type
        if if_absent:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        try:
            if len(data) <= self.multipart_threshold:
                response = self.client.put_object(Body=data, ChecksumSHA256=base64.b64encode(digest).decode(), **args)
                return response["ETag"]
            return self._multipart(data, args)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear StorageError
            raise self._error(exc, "write", relative) from exc

    def _multipart(self, data: bytes, args: dict[str, Any]) -> str:
        from boto3.s3.transfer import TransferConfig

        extra = {k: v for k, v in args.items() if k in ("ContentType",)}
        if "IfMatch" in args:
            raise StorageError(errno.EINVAL, "compare-and-swap is for small objects (manifests, ledger)")
        if "IfNoneMatch" in args and self.stat(args["Key"][len(self.prefix) + 1 if self.prefix else 0:]):
            raise Conflict(errno.EEXIST, f"s3://{args['Bucket']}/{args['Key']} exists already")
        config = TransferConfig(multipart_threshold=self.multipart_threshold, multipart_chunksize=self._part_size)
        self.client.upload_fileobj(io.BytesIO(data), args["Bucket"], args["Key"], Config=config,
                                   ExtraArgs={"ChecksumAlgorithm": "SHA256", **extra})
        return self.client.head_object(Bucket=args["Bucket"], Key=args["Key"])["ETag"]

    @property
    def _part_size(self) -> int:
        return max(5 * 2**20, min(16 * 2**20, self.multipart_threshold))  # S3's smallest part is 5 MiB

    def holds(self, relative: str, data: bytes, sha256: str) -> bool | None:
        """One HEAD: the SHA-256 the server checked and recorded when the object was written
        (for a multipart upload, the SHA-256 of its parts' SHA-256s), compared with ``data``'s."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(relative), ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc, "check", relative)
            if error.errno == errno.ENOENT:
                return None
            raise error from exc
        if head["ContentLength"] != len(data):
            return False
        expected = base64.b64encode(bytes.fromhex(sha256)).decode()
        if len(data) > self.multipart_threshold:
            parts = b"".join(hashlib.sha256(data[at:at + self._part_size]).digest()
                             for at in range(0, len(data), self._part_size))
            expected = f"{base64.b64encode(hashlib.sha256(parts).digest()).decode()}-{-(-len(data) // self._part_size)}"
        return head.get("ChecksumSHA256") == expected

    def clock(self) -> float:
        """The server's Date header: LastModified times are on the server's clock, not ours."""
        try:
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._folder("blobs"), MaxKeys=1)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "list", "blobs") from exc
        return parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()

    def read_tagged(self, relative: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
            return response["Body"].read(), response["ETag"]
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "read", relative) from exc

    def read_hashed(self, relative: str) -> tuple[bytes, str]:
        """Download and hash chunk by chunk, as the bytes arrive."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
            digest, parts = hashlib.sha256(), []
            for chunk in response["Body"].iter_chunks(HASH_CHUNK):
                digest.update(chunk)
                parts.append(chunk)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "read", relative) from exc
        data = b"".join(parts)
        if len(data) != response["ContentLength"]:
            raise StorageError(errno.EIO, f"cannot read {self.uri(relative)}: got {len(data):,} of "
                               f"{response['ContentLength']:,} bytes")
        return data, digest.hexdigest()

    def stat(self, relative: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(relative))
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc, "stat", relative)
            if error.errno == errno.ENOENT:
                return None
            raise error from exc
        return ObjectInfo(relative, head["ContentLength"], head["LastModified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = self._folder(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            infos = [ObjectInfo(obj["Key"][strip:], obj["Size"], obj["LastModified"].timestamp())
                     for page in pages for obj in page.get("Contents", [])]
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "list", prefix) from exc
        return iter(sorted(infos, key=lambda i: i.path))

    def delete(self, relative: str) -> int:
        info = self.stat(relative)
        if info is None:
            return 0
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(relative))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "delete", relative) from exc
        return info.size

    def delete_prefix(self, prefix: str) -> int:
        infos = list(self.list(prefix))
        for start in range(0, len(infos), 1000):
            batch = infos[start:start + 1000]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.key(i.path)} for i in batch], "Quiet": True})
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc, "delete", prefix) from exc
        return sum(i.size for i in infos)

    def url(self, relative: str, expires_s: int, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self.key(relative)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)


def _sigv4(signature_version=None, **_):
    from botocore import UNSIGNED

    return signature_version if signature_version is UNSIGNED else "s3v4"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise StorageError(errno.EINVAL, f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise StorageError(errno.EINVAL, f"{uri!r} names no bucket (use s3://BUCKET[/PREFIX])")
    return bucket, prefix.strip("/")
