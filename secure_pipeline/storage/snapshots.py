"""Immutable, content-addressed snapshot storage: the interface and what both backends share.

A snapshot is a byte string stored under a key that contains its SHA-256::

    snapshots/<asset>/[<partition>/]<sha256>.<ext>
    snapshots/<asset>/[<partition>/]<sha256>.<ext>.manifest.json

Writes are create-only. Writing identical bytes again is a no-op; finding *different* bytes under
a key (a tampered or half-written object) raises `IntegrityError` and leaves the stored object
as it is. Every read re-hashes the bytes in one streaming pass and refuses a mismatch. A backend
implements five primitives (create-if-absent, read, exists, list, uri); everything else —
key layout, manifests, verification — lives here once.
"""

import abc
import base64
import hashlib
import json
import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import IntegrityError

SNAPSHOT_PREFIX = "snapshots"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_SCHEMA_VERSION = 1
CHUNK_SIZE = 1024 * 1024
FILESET_FORMAT = "fileset"

_ASSET_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_EXT = re.compile(r"[a-z0-9]{1,16}(\.[a-z0-9]{1,16}){0,2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PARTITION_CHARS = 200


def sha256_b64(hex_digest: str) -> str:
    """Convert a hex SHA-256 to the base64 form S3 uses in ``x-amz-checksum-sha256``."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def utc_now() -> str:
    """Current time as an ISO-8601 UTC timestamp with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_Write = Callable[[Mapping[str, str] | None], tuple[bool, str | None]]


def _asset_name(asset: Sequence[str] | str) -> str:
    return asset if isinstance(asset, str) else "/".join(asset)


def check_sha256(digest: str) -> str:
    """Return ``digest`` if it is a lowercase hex SHA-256, else raise ValueError."""
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"expected a 64-character lowercase hex SHA-256, found {digest!r}")
    return digest


def snapshot_key(
    asset: Sequence[str] | str, sha256: str, ext: str, partition: str | None = None
) -> str:
    """Build the store key of a snapshot.

    Args:
        asset: The asset key's path components (or one name).
        sha256: The snapshot's digest.
        ext: File extension without the dot (``parquet``, ``csv``, ``json``...).
        partition: The partition key, if the asset is partitioned.

    Returns:
        ``snapshots/<asset>/[<partition>/]<sha256>.<ext>``.

    Raises:
        ValueError: When a component could escape its directory or is not a safe name.
    """
    parts = [asset] if isinstance(asset, str) else list(asset)
    if not parts:
        raise ValueError("an asset key needs at least one component")
    for part in parts:
        if not _ASSET_PART.fullmatch(part) or part in (".", ".."):
            raise ValueError(
                f"asset key component {part!r} is not a safe storage name: use letters, digits, "
                "'_', '-' and '.' (not leading), at most 128 characters"
            )
    if not _EXT.fullmatch(ext) or ext.endswith("manifest.json"):
        raise ValueError(f"extension {ext!r} must be short lowercase alphanumerics, e.g. 'parquet'")
    check_sha256(sha256)
    path = [SNAPSHOT_PREFIX, *parts]
    if partition is not None:
        if partition == "":
            raise ValueError("a partition key must not be empty")
        encoded = quote(partition, safe="-_=")
        if len(encoded) > _MAX_PARTITION_CHARS:
            raise ValueError(
                f"partition key {partition[:40]!r}... is {len(encoded)} characters once encoded; "
                f"the limit is {_MAX_PARTITION_CHARS}"
            )
        # quote() leaves '.' alone; a bare '.' or '..' segment would be a path traversal.
        path.append(encoded.replace(".", "%2E") if set(encoded) == {"."} else encoded)
    path.append(f"{sha256}.{ext}")
    return "/".join(path)


@dataclass(frozen=True)
class SnapshotRef:
    """Where a snapshot lives and what it must hash to.

    Attributes:
        key: The store key (see `snapshot_key`).
        sha256: The digest every read is checked against.
        size: The size in bytes.
        uri: A URI a person can use to find the object (``file://`` or ``s3://``).
        version_id: The object version (S3 buckets with versioning), if known.
        created: True when this call stored the bytes, False when they were already there.
    """

    key: str
    sha256: str
    size: int
    uri: str
    version_id: str | None = None
    created: bool = True

    @property
    def manifest_key(self) -> str:
        """Key of the manifest stored beside the snapshot."""
        return self.key + MANIFEST_SUFFIX


@dataclass(frozen=True)
class SnapshotManifest:
    """The JSON document stored beside each snapshot.

    The first write of a snapshot stores its manifest; re-writing identical bytes later keeps the
    first manifest, since the snapshot (and so what it describes) did not change.

    Attributes:
        key: The snapshot's key.
        sha256: Its digest.
        size: Its size in bytes.
        format: What the bytes are (``parquet``, ``bytes``, ``json``, ``fileset``...).
        asset: The asset key path, joined by ``/``.
        partition: The partition key, if any.
        schema: Column names and types for tables, else None.
        upstream: Digests of the snapshots this one was computed from, by asset.
        run_id: The Dagster run that first produced it.
        code_version: The code version that produced it.
        created_at: UTC time of the first write.
        extra: Stage-specific facts (row counts, provenance record digest...).
        schema_version: Version of this manifest format.
    """

    key: str
    sha256: str
    size: int
    format: str
    asset: str
    partition: str | None = None
    schema: Mapping[str, Any] | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    code_version: str | None = None
    created_at: str = field(default_factory=utc_now)
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_json(self) -> bytes:
        """Serialize as canonical JSON."""
        return canonical_json(asdict(self))

    @classmethod
    def from_json(cls, data: bytes, *, key: str) -> "SnapshotManifest":
        """Parse a manifest, refusing one that is malformed or describes another snapshot.

        Args:
            data: The manifest's bytes.
            key: The snapshot key the manifest was read for.

        Raises:
            IntegrityError: When the document is not a manifest of ``key``.
        """
        try:
            raw = json.loads(data)
            manifest = cls(**raw)
        except (ValueError, TypeError) as exc:
            raise IntegrityError(
                f"manifest of {key} is not a valid manifest document ({exc}); it may have been "
                "edited. Compare it with the audit trail before trusting the snapshot."
            ) from exc
        if manifest.key != key or not key.rsplit("/", 1)[-1].startswith(manifest.sha256):
            raise IntegrityError(
                f"manifest stored for {key} describes {manifest.key} with digest "
                f"{manifest.sha256}; it was edited or copied from another snapshot."
            )
        return manifest


class _HashingWriter:
    """Copies chunks to a file while hashing and counting them, enforcing a size limit.

    Args:
        fileobj: The spool file.
        max_bytes: Refuse streams longer than this.
        sync_every: Flush written data to disk every this many bytes, so that the final
            fsync before publishing finds little left to write.
    """

    def __init__(
        self, fileobj: IO[bytes], max_bytes: int | None, sync_every: int | None = None
    ) -> None:
        self._file = fileobj
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self._sync_every = sync_every
        self._unsynced = 0
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self._max is not None and self.size > self._max:
            raise SizeLimitError(self._max)
        self._hash.update(chunk)
        self._file.write(chunk)
        self._unsynced += len(chunk)
        if self._sync_every is not None and self._unsynced >= self._sync_every:
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._unsynced = 0

    def consume(self, chunks: Iterable[bytes | memoryview]) -> None:
        """Write every chunk, hashing and writing on a second thread.

        Receiving (TLS decryption, for a download) and hashing plus writing each keep a core
        busy; on their own threads they overlap instead of adding up. hashlib, file writes and
        socket reads all release the GIL. Each chunk must be its own buffer: it is handed over,
        not copied.
        """
        pending: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=8)
        failures: list[BaseException] = []

        def drain() -> None:
            while (chunk := pending.get()) is not None:
                if not failures:
                    try:
                        self.write(chunk)
                    except BaseException as exc:  # handed to the caller below
                        failures.append(exc)

        worker = threading.Thread(target=drain, name="snapshot-writer", daemon=True)
        worker.start()
        try:
            for chunk in chunks:
                if failures:
                    break
                pending.put(chunk)
        finally:
            pending.put(None)
            worker.join()
        if failures:
            raise failures[0]

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class SizeLimitError(IntegrityError):
    """A stream was longer than the limit it was written under; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"payload exceeds the limit of {limit} bytes; nothing was stored. Raise the limit in "
            "the pipeline spec if this size is expected."
        )
        self.limit = limit


class SnapshotStore(abc.ABC):
    """Create-only, content-addressed storage with verified reads.

    Subclasses implement the object primitives; this class implements keys, manifests and
    verification so both backends behave identically.
    """

    # -- primitives each backend implements -------------------------------------------------

    @abc.abstractmethod
    def _create_from_bytes(
        self, key: str, data: bytes, sha256: str, metadata: Mapping[str, str] | None = None
    ) -> tuple[bool, str | None]:
        """Store ``data`` under ``key`` unless the key exists.

        Args:
            key: The object key.
            data: The bytes.
            sha256: Their digest (backends that can send it for verification do).
            metadata: Small text attributes stored with the object, if the backend keeps any.

        Returns:
            ``(created, version_id)``; created is False when the key already existed, in which
            case nothing was written.
        """

    @abc.abstractmethod
    def _create_from_file(
        self,
        key: str,
        path: Path,
        sha256: str,
        size: int,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, str | None]:
        """Like `_create_from_bytes`, from a spooled file the store may consume."""

    @abc.abstractmethod
    def _iter_object(self, key: str) -> Iterator[bytes]:
        """Yield an object's bytes in chunks; raise FileNotFoundError when absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Yield the keys under ``prefix`` in lexicographic order, after ``start_after``."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """A URI naming the object behind ``key``."""

    @abc.abstractmethod
    def _spool_dir(self) -> Path | None:
        """Where streamed writes are spooled (None: the system temp dir)."""

    def _spool_sync_every(self) -> int | None:
        """Bytes between flushes of a spool file to disk (None: the spool is not kept)."""
        return None

    # -- create-only objects -----------------------------------------------------------------

    def create_object(self, key: str, data: bytes) -> bool:
        """Store ``data`` under a caller-chosen key, create-only.

        Used for records whose key is not their digest (audit records, manifests). Identical
        bytes already stored count as success.

        Args:
            key: The object key.
            data: The bytes.

        Returns:
            True when this call created the object, False when identical bytes were there.

        Raises:
            IntegrityError: When different bytes are stored under ``key``; they are left as is.
        """
        created = self.try_create_object(key, data)
        if not created:
            self._check_existing(key, sha256_hex(data))
        return created

    def try_create_object(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if the key is free.

        Returns:
            True when this call created the object; False when the key was taken, whatever it
            holds (the caller decides what a lost race means, e.g. the audit trail moves on to
            the next sequence number).
        """
        return self._create_from_bytes(key, data, sha256_hex(data), None)[0]

    def read_object(self, key: str) -> bytes:
        """Read an object whose integrity the caller checks itself (manifests, audit records).

        Raises:
            FileNotFoundError: When nothing is stored under ``key``.
        """
        return b"".join(self._iter_object(key))

    def _read_all(self, key: str) -> bytes:
        """Read a whole object; backends override this when they can do it in one call."""
        return self.read_object(key)

    def _check_existing(self, key: str, expected_sha256: str) -> None:
        found = hashlib.sha256()
        for chunk in self._iter_object(key):
            found.update(chunk)
        if found.hexdigest() != expected_sha256:
            raise IntegrityError(
                f"refusing to overwrite {self.uri(key)}: it already holds different bytes "
                f"(stored sha256 {found.hexdigest()}, new sha256 {expected_sha256}). Stored "
                "objects are immutable; if the stored one is corrupt, investigate it and the "
                "audit trail before moving it aside."
            )

    # -- snapshots ---------------------------------------------------------------------------

    def put_bytes(
        self,
        asset: Sequence[str] | str,
        data: bytes,
        *,
        ext: str,
        format: str,
        partition: str | None = None,
        **manifest: Any,
    ) -> SnapshotRef:
        """Store bytes as a snapshot and record its manifest.

        Args:
            asset: The asset key path.
            data: The bytes.
            ext: File extension for the key.
            format: The manifest's ``format`` field.
            partition: The partition key, if any.
            **manifest: Further `SnapshotManifest` fields (schema, upstream, run_id,
                code_version, extra).

        Returns:
            A reference to the stored snapshot.

        Raises:
            IntegrityError: When the key holds different bytes already.
        """
        digest = sha256_hex(data)
        key = snapshot_key(asset, digest, ext, partition)
        return self._put(
            key,
            digest,
            len(data),
            lambda metadata: self._create_from_bytes(key, data, digest, metadata),
            SnapshotManifest(
                key=key,
                sha256=digest,
                size=len(data),
                format=format,
                asset=_asset_name(asset),
                partition=partition,
                **manifest,
            ),
        )

    def put_stream(
        self,
        asset: Sequence[str] | str,
        chunks: Iterable[bytes],
        *,
        ext: str,
        format: str,
        partition: str | None = None,
        max_bytes: int | None = None,
        **manifest: Any,
    ) -> SnapshotRef:
        """Store a stream of unknown length as a snapshot, hashing it in the same pass.

        The stream is spooled to a private temporary file beside the store (its digest, and so
        its key, is only known at the end), then stored create-only. If the stream fails or
        exceeds ``max_bytes``, nothing is stored.

        Args:
            asset: The asset key path.
            chunks: The payload, in chunks.
            ext: File extension for the key.
            format: The manifest's ``format`` field.
            partition: The partition key, if any.
            max_bytes: Refuse payloads longer than this.
            **manifest: Further `SnapshotManifest` fields.

        Returns:
            A reference to the stored snapshot.

        Raises:
            SizeLimitError: When the stream is longer than ``max_bytes``.
            IntegrityError: When the key holds different bytes already.
        """
        spool_dir = self._spool_dir()
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="spool-") as spool:
            writer = _HashingWriter(spool, max_bytes, self._spool_sync_every())
            writer.consume(chunks)
            spool.flush()
            digest = writer.sha256
            key = snapshot_key(asset, digest, ext, partition)
            return self._put(
                key,
                digest,
                writer.size,
                lambda metadata: self._create_from_file(
                    key, Path(spool.name), digest, writer.size, metadata
                ),
                SnapshotManifest(
                    key=key,
                    sha256=digest,
                    size=writer.size,
                    format=format,
                    asset=_asset_name(asset),
                    partition=partition,
                    **manifest,
                ),
            )

    def _put(
        self,
        key: str,
        digest: str,
        size: int,
        write: "_Write",
        manifest: SnapshotManifest,
    ) -> SnapshotRef:
        created, version = self._write_with_manifest(key, write, manifest.to_json())
        if not created:
            self._check_existing(key, digest)
        return SnapshotRef(key, digest, size, self.uri(key), version, created)

    def _write_with_manifest(
        self, key: str, write: "_Write", manifest: bytes
    ) -> tuple[bool, str | None]:
        """Write a snapshot and its manifest, both create-only.

        Here the manifest is an object beside the snapshot. The first manifest of a snapshot
        stands: a later writer of the same bytes leaves it, and one missing after a crash
        between the two writes is completed by the next writer. Backends that can store the
        manifest with the object itself (S3 metadata) override this and `_manifest_document`.
        """
        result = write(None)
        self.try_create_object(key + MANIFEST_SUFFIX, manifest)
        return result

    def _manifest_document(self, key: str) -> bytes:
        """The manifest document of the snapshot at ``key``; FileNotFoundError when none."""
        return self.read_object(key + MANIFEST_SUFFIX)

    def read_bytes(self, ref: SnapshotRef | tuple[str, str]) -> bytes:
        """Read a snapshot and return its bytes only if they hash to the recorded digest.

        Args:
            ref: The snapshot reference, or ``(key, sha256)``.

        Returns:
            The verified bytes.

        Raises:
            IntegrityError: When the bytes are missing or do not match the digest.
        """
        key, expected = (ref.key, ref.sha256) if isinstance(ref, SnapshotRef) else ref
        check_sha256(expected)
        try:
            data = self._read_all(key)
        except FileNotFoundError:
            raise IntegrityError(
                f"snapshot {self.uri(key)} is missing (expected sha256 {expected}); it was "
                "deleted or never written. Re-materialize the asset that produced it."
            ) from None
        # The bytes are hashed once, in memory, and only these exact bytes are returned: a
        # concurrent change to the stored object cannot slip in between check and use.
        self._compare(key, expected, sha256_hex(data))
        return data

    def download_to(self, ref: SnapshotRef | tuple[str, str], path: Path) -> Path:
        """Stream a snapshot into ``path``, verifying it; the file is removed on a mismatch.

        Args:
            ref: The snapshot reference, or ``(key, sha256)``.
            path: Destination file, created or truncated.

        Returns:
            ``path``.

        Raises:
            IntegrityError: When the bytes are missing or do not match the digest.
        """
        key, expected = (ref.key, ref.sha256) if isinstance(ref, SnapshotRef) else ref
        hasher = hashlib.sha256()
        out = path.open("wb")  # outside the try: a bad destination is not a missing snapshot
        try:
            with out:
                for chunk in self._iter_object(key):
                    hasher.update(chunk)
                    out.write(chunk)
            self._compare(key, expected, hasher.hexdigest())
        except FileNotFoundError:
            path.unlink(missing_ok=True)
            raise IntegrityError(
                f"snapshot {self.uri(key)} is missing (expected sha256 {expected})."
            ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def read_manifest(self, ref: SnapshotRef | tuple[str, str]) -> SnapshotManifest:
        """Read and check the manifest stored beside a snapshot.

        Raises:
            IntegrityError: When the manifest is missing, malformed or names another digest.
        """
        key, expected = (ref.key, ref.sha256) if isinstance(ref, SnapshotRef) else ref
        try:
            data = self._manifest_document(key)
        except FileNotFoundError:
            raise IntegrityError(f"manifest of {self.uri(key)} is missing") from None
        manifest = SnapshotManifest.from_json(data, key=key)
        if manifest.sha256 != expected:
            raise IntegrityError(
                f"manifest of {self.uri(key)} records sha256 {manifest.sha256}, expected {expected}"
            )
        return manifest

    def put_fileset(
        self,
        asset: Sequence[str] | str,
        members: Mapping[str, SnapshotRef],
        *,
        partition: str | None = None,
        **manifest: Any,
    ) -> SnapshotRef:
        """Store the index of several snapshots that together form one asset value.

        The index lists each member's key and digest and nothing that changes between runs,
        so the same files always give the same index digest (the asset's data version).

        Args:
            asset: The asset key path.
            members: Member name to its stored snapshot.
            partition: The partition key, if any.
            **manifest: Further `SnapshotManifest` fields.

        Returns:
            A reference to the stored index.
        """
        index = {
            "format": FILESET_FORMAT,
            "files": {
                name: {"key": ref.key, "sha256": ref.sha256, "size": ref.size}
                for name, ref in sorted(members.items())
            },
        }
        return self.put_bytes(
            asset,
            canonical_json(index),
            ext="json",
            format=FILESET_FORMAT,
            partition=partition,
            **manifest,
        )

    def read_fileset(self, ref: SnapshotRef | tuple[str, str]) -> dict[str, bytes]:
        """Read a fileset index and every member, each verified against its digest.

        Returns:
            Member name to verified bytes.

        Raises:
            IntegrityError: When the index or any member fails verification.
        """
        index = json.loads(self.read_bytes(ref))
        if index.get("format") != FILESET_FORMAT:
            raise IntegrityError(f"{ref} is not a fileset index")
        return {
            name: self.read_bytes((member["key"], member["sha256"]))
            for name, member in index["files"].items()
        }

    def _compare(self, key: str, expected: str, found: str) -> None:
        if found != expected:
            raise IntegrityError(
                f"snapshot {self.uri(key)} failed verification: expected sha256 {expected}, "
                f"found {found}. The stored bytes changed after they were written; nothing was "
                "loaded. Treat this as tampering or corruption: check the audit trail and the "
                "bucket's version history, then re-materialize the asset."
            )
