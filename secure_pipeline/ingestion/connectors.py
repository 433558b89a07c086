"""Connectors: fetch one source file as a bounded stream, with facts for its provenance.

Each connector refuses what it cannot vouch for before a byte is stored: a scheme it does not
serve, a file outside its allowed root, a payload over the size limit. `connector_for` picks the
connector from the URI's scheme.
"""

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from secure_pipeline import environment as env
from secure_pipeline.environment import Environment
from secure_pipeline.errors import SourceUnavailableError, UntrustedSourceError
from secure_pipeline.redaction import redact_text, redact_uri

CHUNK_SIZE = 1024 * 1024
# What a bucket name may hold (S3's rules, with the legacy upper case and '_'): an '@' or ':'
# means user info in the URI, which boto3 would quote back in its validation error.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", re.ASCII)
# An S3 error code is a short identifier; anything else from the server is not repeated.
_ERROR_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)


@dataclass
class Fetched:
    """An open source file.

    Attributes:
        chunks: The payload; iterate once.
        facts: Connector facts for the provenance record (filled while streaming for some
            connectors, so read them after the stream is consumed).
    """

    chunks: Iterator[bytes]
    facts: dict[str, Any] = field(default_factory=dict)


class Connector(Protocol):
    """Fetches source files of one URI scheme."""

    name: str

    def open(self, uri: str, *, max_bytes: int) -> Any:
        """Context manager yielding a `Fetched` for ``uri``.

        Raises:
            UntrustedSourceError: When the source is refused.
        """
        ...


def join_location(location: str, path: str) -> str:
    """Resolve a file's relative path against a directory-like location URI."""
    base = location if location.endswith("/") else location + "/"
    # Plain concatenation: urljoin does not treat s3:// as hierarchical. The spec already
    # refuses absolute paths and "..", so the result stays under the location.
    return base + path


class FileConnector:
    """Reads local files under an allowed root.

    Args:
        allowed_root: Directory the resolved file must lie in; symlinks that lead outside it
            are refused.
    """

    name = "file"

    def __init__(self, allowed_root: Path) -> None:
        self.allowed_root = allowed_root.resolve()

    @contextmanager
    def open(self, uri: str, *, max_bytes: int) -> Iterator[Fetched]:
        """Open a ``file://`` URI for reading.

        Raises:
            UntrustedSourceError: For a remote host, a path outside the allowed root (also via
                symlinks), a non-regular file, or a file larger than ``max_bytes``.
        """
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise UntrustedSourceError(f"expected a local file:// URI, found {redact_uri(uri)!r}")
        requested = Path(unquote(parts.path))
        try:
            resolved = requested.resolve(strict=True)
        except FileNotFoundError:
            raise UntrustedSourceError(
                f"source file {requested} does not exist; check the source location"
            ) from None
        if not resolved.is_relative_to(self.allowed_root):
            raise UntrustedSourceError(
                f"source file {requested} resolves to {resolved}, outside the allowed root "
                f"{self.allowed_root}; symlinks out of the source directory are refused"
            )
        # O_NONBLOCK: opening a FIFO must not hang the step (it is refused below).
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UntrustedSourceError(f"source {resolved} is not a regular file")
            # What was actually opened, after any swap of a directory symlink since resolve().
            opened = Path(os.path.realpath(f"/proc/self/fd/{handle.fileno()}"))
            if opened.exists() and not opened.is_relative_to(self.allowed_root):
                raise UntrustedSourceError(
                    f"source file {requested} was replaced while being opened and now lies "
                    f"outside the allowed root {self.allowed_root}"
                )
            if info.st_size > max_bytes:
                raise UntrustedSourceError(
                    f"source file {resolved} is {info.st_size} bytes, over the limit of "
                    f"{max_bytes}; nothing was stored. Raise the source's max_bytes if expected."
                )
            facts = {"path": str(resolved), "file_size": info.st_size}
            yield Fetched(_bounded(handle, max_bytes, resolved), facts)


def _bounded(handle: Any, max_bytes: int, name: object) -> Iterator[bytes]:
    total = 0
    while chunk := handle.read(CHUNK_SIZE):
        total += len(chunk)
        if total > max_bytes:  # the file grew while being read
            raise UntrustedSourceError(
                f"source {name} grew past the limit of {max_bytes} bytes while being read; "
                "nothing was stored"
            )
        yield chunk


class S3Connector:
    """Reads objects from an S3 landing zone.

    Args:
        client: A boto3 S3 client (built by `connector_for` with the project's endpoint rules).
    """

    name = "s3"

    def __init__(self, client: Any) -> None:
        self.client = client

    @contextmanager
    def open(
        self, uri: str, *, max_bytes: int, version_id: str | None = None, etag: str | None = None
    ) -> Iterator[Fetched]:
        """Open an ``s3://bucket/key`` object for reading.

        Args:
            uri: The object.
            max_bytes: Largest accepted object.
            version_id: Read exactly this version (the one a landing-zone sensor saw).
            etag: Refuse the object unless its ETag is this one (S3 answers 412 otherwise).

        Raises:
            UntrustedSourceError: When the object is missing, unreadable or over the limit.
            SourceUnavailableError: When S3 is busy or failing (the step is retried).
        """
        from botocore.exceptions import ClientError

        from secure_pipeline.retries import is_transient

        parts = urlsplit(uri)
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        where = redact_uri(uri)
        if not _BUCKET.fullmatch(bucket) or not key:
            raise UntrustedSourceError(
                f"expected s3://bucket/key with a valid bucket name and no credentials, found "
                f"{where!r}; the landing zone is read with the environment's AWS credentials, "
                "never with credentials in the URI"
            )
        try:
            pins = {"VersionId": version_id, "IfMatch": f'"{etag}"' if etag else None}
            response = self.client.get_object(
                Bucket=bucket, Key=key, **{k: v for k, v in pins.items() if v}
            )
        except ClientError as exc:
            # Named by code and status, not by the exception's text (which repeats the server's
            # message); the retry decision is the same as before: is_transient on the original.
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            found = [code] if _ERROR_CODE.fullmatch(code) else []
            found += [f"HTTP {status}"] if isinstance(status, int) else []
            refusal = SourceUnavailableError if is_transient(exc) else UntrustedSourceError
            version = f" version {version_id}" if version_id else ""
            raise refusal(
                f"cannot read {where}{version}: {', '.join(found) or type(exc).__name__}; check "
                "that the object exists and the role may read it"
            ) from None
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise UntrustedSourceError(
                    f"s3://{bucket}/{key} is {size} bytes, over the limit of {max_bytes}; "
                    "nothing was stored"
                )
            modified = response.get("LastModified")
            facts = {
                "bucket": bucket,
                "key": key,
                "etag": str(response.get("ETag", "")).strip('"'),
                "version_id": response.get("VersionId"),
                "last_modified": modified.isoformat() if modified else None,
                "content_length": size,
            }
            yield Fetched(_bounded(body, max_bytes, f"s3://{bucket}/{key}"), facts)
        finally:
            body.close()


def connector_for(
    uri: str,
    *,
    location: str,
    environment: Environment = Environment.LOCAL,
    pins: tuple[str, ...] = (),
    read_timeout: float = 60.0,
) -> Connector:
    """Pick the connector for a source URI.

    Args:
        uri: The file's URI.
        location: The source location it was resolved from (the allowed root for files).
        environment: Decides whether a plain-http S3 endpoint on loopback is acceptable.
        pins: Accepted https certificate fingerprints (besides the environment's).
        read_timeout: Seconds one network read may wait.

    Raises:
        UntrustedSourceError: For a scheme no connector serves; plain http is always refused.
    """
    scheme = urlsplit(uri).scheme
    if scheme == "https":
        from secure_pipeline.ingestion.https import HttpsConnector

        bundle = env.read("SECURE_PIPELINE_CA_BUNDLE")
        extra = tuple(
            p.strip() for p in (env.read("SECURE_PIPELINE_SOURCE_TLS_PINS") or "").split(",")
        )
        return HttpsConnector(
            ca_bundle=Path(bundle) if bundle else None,
            pins=tuple(p for p in (*pins, *extra) if p),
            read_timeout=read_timeout,
        )
    if scheme == "file":
        return FileConnector(Path(unquote(urlsplit(location).path)))
    if scheme == "s3":
        from secure_pipeline.errors import ConfigurationError
        from secure_pipeline.storage.s3 import check_endpoint, make_s3_client

        endpoint = env.read("SECURE_PIPELINE_S3_ENDPOINT")
        try:
            check_endpoint(endpoint, allow_loopback_http=environment is Environment.LOCAL)
        except ConfigurationError as exc:
            # The message quotes the endpoint as configured, which may hold credentials.
            raise UntrustedSourceError(
                f"refusing the S3 landing zone: {redact_text(str(exc))}"
            ) from None
        return S3Connector(make_s3_client(endpoint, env.read("AWS_REGION")))
    if scheme == "http":
        raise UntrustedSourceError(
            f"refusing plain http source {redact_uri(uri)!r}: sources must be encrypted "
            "(https:// with TLS 1.3) or local (file://)"
        )
    raise UntrustedSourceError(
        f"no connector serves {scheme or '(no scheme)'}:// sources ({redact_uri(uri)!r}); "
        "use file://, https:// or s3://"
    )
