"""S3 backend of the snapshot store: production storage on a versioned, Object Lock bucket.

Create-only writes use S3 conditional writes (``If-None-Match: *`` on PutObject and on
CompleteMultipartUpload): S3 itself refuses the second writer, so there is no check-then-write
race. Every upload carries its SHA-256 so S3 rejects bytes corrupted in transit; large objects
go up as multipart uploads with a SHA-256 per part. botocore's standard retry mode retries
throttling and transient errors with exponential backoff and jitter.

boto3 is imported when a store is built, not when this module is imported: the code location
must load without it.
"""

import base64
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from secure_pipeline.environment import is_loopback_url
from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.redaction import redact_text
from secure_pipeline.storage.snapshots import (
    CHUNK_SIZE,
    MANIFEST_SUFFIX,
    SnapshotStore,
    sha256_b64,
    sha256_hex,
)

if TYPE_CHECKING:
    from secure_pipeline.storage.keyrings import Keyring

DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
_CONFLICT_RETRIES = 6
MANIFEST_METADATA = "secure-pipeline-manifest"
# S3 allows 2 KB of user metadata per object, names included.
_METADATA_LIMIT = 2048 - len(MANIFEST_METADATA) - 64
# Manifest writes run beside data writes; one small pool serves every store in the process.
_MANIFEST_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3-manifest")


def make_s3_client(
    endpoint_url: str | None = None, region: str | None = None, max_pool_connections: int = 16
) -> Any:
    """Build a boto3 S3 client with retries, timeouts and checksum settings for the store.

    Args:
        endpoint_url: A non-AWS endpoint (MinIO, a test server), or None for AWS.
        region: The bucket's region; None lets boto3 resolve it.
        max_pool_connections: HTTP connection pool size (parallel multipart parts).

    Returns:
        A ``botocore`` S3 client.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max_pool_connections,
        # The store sends and checks its own SHA-256; a second, default CRC pass over every
        # payload would only cost time.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={
            # Every body the store sends carries its SHA-256 in a signed checksum header that
            # S3 verifies, so hashing the body a second time for the signature adds nothing.
            # (botocore already skips it over https when a checksum is present.)
            "payload_signing_enabled": False,
            **({"addressing_style": "path"} if endpoint_url else {}),
        },
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def pack_manifest(manifest: bytes) -> str:
    """A manifest as an S3 metadata value: zlib-compressed, base64 (metadata must be ASCII)."""
    return base64.b64encode(zlib.compress(manifest, 9)).decode("ascii")


def check_endpoint(
    endpoint_url: str | None, *, allow_loopback_http: bool, name: str = "S3 endpoint"
) -> None:
    """Refuse an AWS endpoint that is not https (plain http only to loopback, when allowed).

    Args:
        endpoint_url: The endpoint, or None for the service's own.
        allow_loopback_http: Accept ``http://`` to a loopback address (local tests).
        name: What the endpoint is, for the error (``S3 endpoint``, a variable's name).

    Raises:
        ConfigurationError: Naming the endpoint and what is accepted.
    """
    if endpoint_url is None:
        return
    scheme = urlsplit(endpoint_url).scheme
    if scheme != "https" and not (
        scheme == "http" and allow_loopback_http and is_loopback_url(endpoint_url)
    ):
        raise ConfigurationError(
            f"{name} must use https, found {redact_text(endpoint_url)!r}. Plain http is "
            "accepted only for a loopback test server in the local environment."
        )


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3SnapshotStore(SnapshotStore):
    """Snapshot store in an S3 bucket.

    Args:
        bucket: Bucket name.
        client: A boto3 S3 client; built from ``endpoint_url`` and ``region`` when None.
        endpoint_url: Custom endpoint. Must be https unless ``allow_loopback_http`` is set and
            the endpoint is on this machine.
        region: Bucket region.
        kms_key_id: When set, every object is written with SSE-KMS under this key.
        allow_loopback_http: Accept a plain-http endpoint on 127.0.0.1/localhost (local tests
            against an S3 test server). Never set in production.
        multipart_threshold: Objects of at least this size are uploaded in parts.
        part_size: Size of each part.
        max_concurrency: Parts uploaded in parallel.
        spool_dir: Where streamed payloads are spooled before upload (system temp when None).
        keyring: Holds the keys of encrypted snapshots (None: plaintext snapshots only).

    Raises:
        ConfigurationError: When the endpoint is not https and not an allowed loopback.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        kms_key_id: str | None = None,
        allow_loopback_http: bool = False,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        spool_dir: Path | None = None,
        keyring: "Keyring | None" = None,
    ) -> None:
        if not bucket:
            raise ConfigurationError("S3 snapshot store needs a bucket name")
        check_endpoint(endpoint_url, allow_loopback_http=allow_loopback_http)
        if part_size < _MIN_PART_SIZE:
            raise ConfigurationError(f"part_size must be at least {_MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.client = client or make_s3_client(endpoint_url, region, max(4, 2 * max_concurrency))
        self._sse: dict[str, str] = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
        )
        self._threshold = max(multipart_threshold, part_size)
        self._part_size = part_size
        self._concurrency = max_concurrency
        self._spool = spool_dir
        self._bucket_checked = False
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"S3SnapshotStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    def _spool_dir(self) -> Path | None:
        return self._spool

    # -- writes ------------------------------------------------------------------------------

    def _create_from_bytes(
        self,
        key: str,
        data: bytes | bytearray,
        sha256: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, str | None]:
        if len(data) >= self._threshold:
            view = memoryview(data)
            return self._create_multipart(
                key,
                len(data),
                lambda offset, length: bytes(view[offset : offset + length]),
                metadata,
            )
        checksum = sha256_b64(sha256 or sha256_hex(data))
        return self._conditional(
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                Metadata=dict(metadata or {}),
                **self._sse,
            )
        )

    def _create_from_file(
        self,
        key: str,
        path: Path,
        sha256: str | None,
        size: int,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, str | None]:
        if size < self._threshold:
            return self._create_from_bytes(key, path.read_bytes(), sha256, metadata)

        def read_part(offset: int, length: int) -> bytes:
            with path.open("rb") as spooled:
                spooled.seek(offset)
                return spooled.read(length)

        return self._create_multipart(key, size, read_part, metadata)

    def _write_with_manifest(
        self, key: str, write: Callable[[Mapping[str, str] | None], tuple[bool, str | None]],
        manifest: bytes,
    ) -> tuple[bool, str | None]:  # fmt: skip
        """Store the manifest in the snapshot object's own metadata when it fits.

        Metadata is written by the same create-only PUT and is immutable with the object
        version: no second request (a full round trip, and for the small objects most
        snapshots are, a third of the write time), and no window in which one exists without
        the other. A manifest too large for S3's 2 KB metadata limit (a very wide table's
        schema) goes beside the object instead, written concurrently; if the data write then
        fails, that manifest may remain alone: it describes exactly the bytes the next
        successful write of the same content stores, and that write keeps it.
        """
        packed = pack_manifest(manifest)
        if len(packed) <= _METADATA_LIMIT:
            return write({MANIFEST_METADATA: packed})
        pending = _MANIFEST_WRITERS.submit(self.try_create_object, key + MANIFEST_SUFFIX, manifest)
        try:
            result = write(None)
        except BaseException:
            wait([pending])  # the data write's error is the one to report
            raise
        pending.result()
        return result

    def _manifest_document(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound") or _http_status(exc) == 404:
                raise FileNotFoundError(self.uri(key)) from None
            raise
        packed = head.get("Metadata", {}).get(MANIFEST_METADATA)
        if packed is None:
            return self.read_object(key + MANIFEST_SUFFIX)
        try:
            return zlib.decompress(base64.b64decode(packed, validate=True))
        except (ValueError, zlib.error) as exc:
            raise IntegrityError(
                f"manifest metadata of {self.uri(key)} is corrupt ({exc}); it was altered"
            ) from None

    def _conditional(self, call: Any) -> tuple[bool, str | None]:
        """Run a conditional write; False when the key exists, retrying S3's 409 conflicts."""
        from botocore.exceptions import ClientError

        for attempt in range(_CONFLICT_RETRIES):
            try:
                response = call()
            except ClientError as exc:
                code, status = _error_code(exc), _http_status(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False, None
                # S3 answers 409 when another conditional write to the key is in flight; the
                # documented remedy is to retry, after which one of the two gets a 412.
                if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise
            return True, response.get("VersionId")
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_multipart(
        self, key: str, size: int, read_part: Any, metadata: Mapping[str, str] | None
    ) -> tuple[bool, str | None]:
        if self.exists(key):  # skip uploading gigabytes that the final condition would refuse
            return False, None
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            Metadata=dict(metadata or {}),
            **self._sse,
        )
        upload_id = upload["UploadId"]
        offsets = list(range(0, size, self._part_size))

        def send(number_offset: tuple[int, int]) -> dict[str, Any]:
            number, offset = number_offset
            body = read_part(offset, min(self._part_size, size - offset))
            checksum = sha256_b64(sha256_hex(body))
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

        try:
            with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
                parts = list(pool.map(send, enumerate(offsets, start=1)))
            created, version = self._conditional(
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            )
        except BaseException:
            self._abort(key, upload_id)
            raise
        if not created:
            self._abort(key, upload_id)
        return created, version

    def _abort(self, key: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            # The upload is already gone (completed by a retry or aborted); a lifecycle rule
            # for incomplete uploads cleans up anything else. The original error matters more.
            if _error_code(exc) != "NoSuchUpload":
                raise

    # -- reads -------------------------------------------------------------------------------

    def _get(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise self._no_bucket() from None
            if _error_code(exc) in ("NoSuchKey", "404") or _http_status(exc) == 404:
                raise FileNotFoundError(self.uri(key)) from None
            raise

    def _iter_object(self, key: str) -> Iterator[bytes]:
        body = self._get(key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        finally:
            body.close()

    def _read_all(self, key: str) -> bytes:
        body = self._get(key)["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _read_prefix(self, key: str, length: int) -> bytes:
        """A ranged GET of the first ``length`` bytes (the encryption header)."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes=0-{max(length, 1) - 1}"
            )
        except ClientError as exc:
            if _error_code(exc) == "InvalidRange" or _http_status(exc) == 416:
                return b""  # an empty object has no first byte to range over
            if _error_code(exc) == "NoSuchBucket":
                raise self._no_bucket() from None
            if _error_code(exc) in ("NoSuchKey", "404") or _http_status(exc) == 404:
                raise FileNotFoundError(self.uri(key)) from None
            raise
        body = response["Body"]
        try:
            return body.read()[:length]
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound") or _http_status(exc) == 404:
                # A HEAD answer has no body, so a missing bucket also looks like a missing
                # key; check the bucket once so a typo is not read as "no such object".
                if not self._bucket_checked:
                    self._check_bucket()
                return False
            raise
        return True

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchBucket", "NotFound") or _http_status(exc) == 404:
                raise self._no_bucket() from None
            raise
        self._bucket_checked = True

    def _no_bucket(self) -> ConfigurationError:
        return ConfigurationError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS S3'}; check "
            "SECURE_PIPELINE_S3_BUCKET"
        )

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Yield the keys under ``prefix`` in lexicographic order, after ``start_after``."""
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        from botocore.exceptions import ClientError

        try:
            for page in paginator.paginate(**kwargs):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise self._no_bucket() from None
            raise

    def uri(self, key: str) -> str:
        """The ``s3://`` URI of the object behind ``key``."""
        return f"s3://{self.bucket}/{key}"
