"""The S3 store: an ``s3://bucket/prefix`` through a boto3 client, every PUT checksummed. No Dagster."""

from __future__ import annotations

from collections.abc import Iterator

import base64
import errno
import hashlib
import io
from email.utils import parsedate_to_datetime
from typing import Any

from .base import HASH_CHUNK, MULTIPART_THRESHOLD, Conflict, ObjectInfo, StorageError, Store, check_path, too_large
from .uri import redact_url


class S3Store(Store):
    """An ``s3://bucket/prefix`` through a boto3 client (from dagster-aws ``S3Resource``).

    Objects up to ``multipart_threshold`` go up in one PUT carrying ChecksumSHA256; larger ones
    as a multipart upload with a SHA-256 per part. The server recomputes and refuses a mismatch
    (BadDigest), so bytes damaged in transit are never stored. Version tags are ETags, which
    the conditional headers (If-None-Match, If-Match) compare against.
    """

    cheap_stat = False

    def __init__(self, client: Any, bucket: str, prefix: str = "", multipart_threshold: int = MULTIPART_THRESHOLD) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.endpoint = redact_url(getattr(getattr(client, "meta", None), "endpoint_url", "") or "AWS S3")
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
        if (shown := redact_url(str(exc))) != str(exc):  # botocore names the request URL; chained to ours, it is logged
            exc.args = (shown,)
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

    def read_tagged(self, relative: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
            if max_bytes is not None and response["ContentLength"] > max_bytes:  # the body stays unread
                response["Body"].close()
                raise too_large(self.uri(relative), response["ContentLength"], max_bytes)
            return response["Body"].read(), response["ETag"]
        except StorageError:
            raise
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
        link = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        return redact_url(link, mark="")  # the signature is in the query: a link needs no userinfo, nor shows it


def _sigv4(signature_version=None, **_):
    from botocore import UNSIGNED

    return signature_version if signature_version is UNSIGNED else "s3v4"
