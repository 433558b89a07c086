"""Immutable, content-addressed snapshot storage: the interface and what both backends share.

A snapshot is a byte string stored under a key that contains its SHA-256::

    snapshots/<asset>/[<partition>/]<sha256>.<ext>
    snapshots/<asset>/[<partition>/]<sha256>.<ext>.manifest.json

Writes are create-only. Writing identical bytes again is a no-op; finding *different* bytes under
a key (a tampered or half-written object) raises `IntegrityError` and leaves the stored object
as it is. Every read re-hashes the bytes in one streaming pass and refuses a mismatch. A backend
implements five primitives (create-if-absent, read, exists, list, uri); everything else —
key layout, manifests, verification — lives here once.

Snapshots holding personal data are envelope-encrypted (``encrypt=True``): the stored object is
in the format of `secure_pipeline.storage.encryption`, its data key wrapped by a key of its own
in the store's `Keyring`. The content address stays the digest of the *plaintext*, reads
decrypt transparently and verify every chunk and then that digest, and `SnapshotStore.shred`
destroys the snapshot's key, after which its bytes can never be read again (ErasedError).
Writing identical plaintext again after a shred stores it under the next generation key
(``<sha256>.g2.<ext>``, ``g3``...), so an unchanged source can still be ingested.
"""

import abc
import base64
import hashlib
import itertools
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
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import (
    ConfigurationError,
    ErasedError,
    IntegrityError,
    KeyUnavailableError,
)
from secure_pipeline.storage import encryption as enc

if TYPE_CHECKING:
    from secure_pipeline.storage.keyrings import DataKey, Keyring, ShredResult

SNAPSHOT_PREFIX = "snapshots"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_SCHEMA_VERSION = 1
CHUNK_SIZE = 1024 * 1024
FILESET_FORMAT = "fileset"
SHRED_RECORD_PREFIX = "privacy/shredded-keys"
MAX_GENERATIONS = 1000
_HEADER_PROBE = 4096  # enough for every header written here; longer ones take a second read

_ASSET_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_EXT = re.compile(r"[a-z0-9]{1,16}(\.[a-z0-9]{1,16}){0,2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PROVIDER = re.compile(r"[a-z0-9-]{1,32}")
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
    asset: Sequence[str] | str,
    sha256: str,
    ext: str,
    partition: str | None = None,
    *,
    generation: int = 1,
) -> str:
    """Build the store key of a snapshot.

    Args:
        asset: The asset key's path components (or one name).
        sha256: The snapshot's digest.
        ext: File extension without the dot (``parquet``, ``csv``, ``json``...).
        partition: The partition key, if the asset is partitioned.
        generation: 1 for the first copy of these bytes; 2, 3... for copies written after the
            previous one was shredded.

    Returns:
        ``snapshots/<asset>/[<partition>/]<sha256>.<ext>`` (generation 1) or
        ``.../<sha256>.g<generation>.<ext>``.

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
    if type(generation) is not int or generation < 1:
        raise ValueError(f"a snapshot generation is a positive integer, found {generation!r}")
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
    path.append(f"{sha256}.{ext}" if generation == 1 else f"{sha256}.g{generation}.{ext}")
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
        encryption: For an encrypted snapshot, ``{"scheme", "provider", "key_id"}`` (never a
            key); None (and absent from the document) for plaintext ones.
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
    encryption: Mapping[str, str] | None = None

    def to_json(self) -> bytes:
        """Serialize as canonical JSON (a plaintext snapshot's manifest has no encryption)."""
        document = asdict(self)
        if document["encryption"] is None:
            del document["encryption"]  # manifests of plaintext snapshots stay as they were
        return canonical_json(document)

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


def _refuse_magic(what: str) -> IntegrityError:
    return IntegrityError(
        f"refusing to store {what} unencrypted: its bytes begin with {enc.MAGIC!r}, the marker "
        "of an encrypted snapshot, so every read would try to decrypt it. It is an encrypted "
        "object being copied in as plaintext, or a payload made to look like one; nothing was "
        "stored. Store the plaintext with encrypt=True instead."
    )


class _HashingWriter:
    """Copies chunks to a file while hashing and counting them, enforcing a size limit.

    Args:
        fileobj: The spool file.
        max_bytes: Refuse streams longer than this.
        sync_every: Flush written data to disk every this many bytes, so that the final
            fsync before publishing finds little left to write.
        refuse_magic: Refuse a stream that starts with the encrypted-object marker (a
            plaintext write).
    """

    def __init__(
        self,
        fileobj: IO[bytes],
        max_bytes: int | None,
        sync_every: int | None = None,
        *,
        refuse_magic: bool = False,
    ) -> None:
        self._file = fileobj
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self._sync_every = sync_every
        self._unsynced = 0
        self._head: bytes | None = b"" if refuse_magic else None
        self.size = 0

    def _take(self, chunk: bytes | memoryview) -> None:
        """Count and hash a plaintext chunk, enforcing the limit and the marker check."""
        self.size += len(chunk)
        if self._max is not None and self.size > self._max:
            raise SizeLimitError(self._max)
        if self._head is not None:
            self._head += bytes(chunk[: len(enc.MAGIC) - len(self._head)])
            if len(self._head) >= len(enc.MAGIC):
                if self._head == enc.MAGIC:
                    raise _refuse_magic("this stream")
                self._head = None
        self._hash.update(chunk)

    def _emit(self, data: bytes | memoryview) -> None:
        """Write bytes to the spool, flushing them to disk every ``sync_every`` bytes."""
        self._file.write(data)
        self._unsynced += len(data)
        if self._sync_every is not None and self._unsynced >= self._sync_every:
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._unsynced = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._take(chunk)
        self._emit(chunk)

    def finish(self) -> None:
        """Called once the stream ended."""

    @property
    def stored_size(self) -> int:
        """Bytes written to the spool."""
        return self.size

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


class _EncryptingWriter(_HashingWriter):
    """Hashes and counts the plaintext, and spools it encrypted (the plaintext never is).

    Args:
        fileobj: The spool file.
        max_bytes: Refuse plaintext longer than this.
        sync_every: As for `_HashingWriter`.
        dek: The data key.
        header: The object header (`encryption.new_encryption_info`).
    """

    def __init__(
        self,
        fileobj: IO[bytes],
        max_bytes: int | None,
        sync_every: int | None,
        dek: bytes,
        header: "enc.EncryptionInfo",
    ) -> None:
        super().__init__(fileobj, max_bytes, sync_every)
        self._encryptor = enc.StreamEncryptor(dek, header, self._emit)

    def write(self, chunk: bytes | memoryview) -> None:
        self._take(chunk)
        self._encryptor.write(chunk)

    def finish(self) -> None:
        self._encryptor.close()

    @property
    def stored_size(self) -> int:
        return self._encryptor.size


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

    Subclasses implement the object primitives; this class implements keys, manifests,
    encryption and verification so both backends behave identically.

    Attributes:
        keyring: Holds the keys of encrypted snapshots. None: the store writes and reads
            plaintext snapshots only (reading an encrypted one raises KeyUnavailableError).
    """

    keyring: "Keyring | None" = None

    # -- primitives each backend implements -------------------------------------------------

    @abc.abstractmethod
    def _create_from_bytes(
        self,
        key: str,
        data: bytes | bytearray,
        sha256: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, str | None]:
        """Store ``data`` under ``key`` unless the key exists.

        Args:
            key: The object key.
            data: The bytes.
            sha256: Their digest (backends that can send it for verification do), or None
                when not computed yet (the backend computes it if it needs it).
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
        sha256: str | None,
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

    def _read_prefix(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes of an object (all of it if shorter).

        Backends override this with a ranged read. Raises FileNotFoundError when absent.
        """
        found = bytearray()
        chunks = self._iter_object(key)
        try:
            for chunk in chunks:
                found += chunk
                if len(found) >= length:
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return bytes(found[:length])

    def _create_encrypted(
        self,
        key: str,
        data: bytes,
        dek: bytes,
        header: enc.EncryptionInfo,
        metadata: Mapping[str, str] | None,
    ) -> tuple[bool, str | None]:
        """Encrypt ``data`` and store the object create-only, like `_create_from_bytes`.

        Here the object is built in one buffer; backends that can encrypt straight into
        their spool file override this.
        """
        return self._create_from_bytes(key, enc.encrypt_bytes(data, dek, header), None, metadata)

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

        Raises:
            IntegrityError: When ``data`` starts with the encrypted-object marker.
        """
        if enc.is_encrypted(data):
            raise _refuse_magic(key)
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

    def _check_existing(self, key: str, expected_sha256: str) -> enc.EncryptionInfo | None:
        """Check that ``key`` holds (after decryption) the bytes of ``expected_sha256``.

        Returns:
            The stored object's encryption header, or None for a plaintext object.

        Raises:
            ErasedError: When the stored object is encrypted under a shredded key.
            KeyUnavailableError: When it is encrypted and this store cannot unwrap its key.
            IntegrityError: When it holds other bytes, or fails decryption.
        """
        info, chunks = self._open_plaintext(key)
        found = hashlib.sha256()
        try:
            for chunk in chunks:
                found.update(chunk)
        except IntegrityError as exc:
            raise IntegrityError(
                f"refusing to overwrite {self.uri(key)}: it already holds different bytes that "
                f"fail decryption ({exc}). Stored objects are immutable; investigate it and the "
                "audit trail before moving it aside."
            ) from None
        if found.hexdigest() != expected_sha256:
            raise IntegrityError(
                f"refusing to overwrite {self.uri(key)}: it already holds different bytes "
                f"(stored sha256 {found.hexdigest()}, new sha256 {expected_sha256}). Stored "
                "objects are immutable; if the stored one is corrupt, investigate it and the "
                "audit trail before moving it aside."
            )
        return info

    # -- snapshots ---------------------------------------------------------------------------

    def put_bytes(
        self,
        asset: Sequence[str] | str,
        data: bytes,
        *,
        ext: str,
        format: str,
        partition: str | None = None,
        encrypt: bool = False,
        **manifest: Any,
    ) -> SnapshotRef:
        """Store bytes as a snapshot and record its manifest.

        Args:
            asset: The asset key path.
            data: The bytes.
            ext: File extension for the key.
            format: The manifest's ``format`` field.
            partition: The partition key, if any.
            encrypt: Store the bytes encrypted under a new key of the store's keyring (the
                key and data version stay the digest of ``data``).
            **manifest: Further `SnapshotManifest` fields (schema, upstream, run_id,
                code_version, extra).

        Returns:
            A reference to the stored snapshot. ``created`` is False when the same bytes were
            stored and readable already (nothing was written, no key was made).

        Raises:
            IntegrityError: When the key holds different bytes already, or a plaintext
                payload starts with the encrypted-object marker.
            ConfigurationError: When ``encrypt`` is set and the store has no keyring.
        """
        digest = sha256_hex(data)
        name = _asset_name(asset)

        def describe(key: str, encryption: Mapping[str, str] | None) -> SnapshotManifest:
            return SnapshotManifest(
                key=key,
                sha256=digest,
                size=len(data),
                format=format,
                asset=name,
                partition=partition,
                encryption=encryption,
                **manifest,
            )

        if not encrypt:
            if enc.is_encrypted(data):
                raise _refuse_magic(f"this snapshot of {name}")
            ref, _ = self._put_generations(
                asset, digest, ext, partition, len(data),
                lambda key: (
                    lambda metadata: self._create_from_bytes(key, data, digest, metadata),
                    describe(key, None),
                ),
            )  # fmt: skip
            return ref
        keyring = self._require_keyring(name)
        context = enc.encryption_context(name)
        made: list[tuple[DataKey, enc.EncryptionInfo]] = []

        def plan(key: str) -> tuple[_Write, SnapshotManifest]:
            if not made:  # one data key, made only when something is about to be written
                data_key = keyring.new_data_key(context)
                made.append((data_key, enc.new_encryption_info(
                    provider=keyring.provider, key_id=data_key.key_id,
                    wrapped_key=data_key.wrapped, context=context, size=len(data),
                )))  # fmt: skip
            data_key, header = made[0]
            return (
                lambda metadata: self._create_encrypted(
                    key, data, data_key.plaintext, header, metadata
                ),
                describe(key, header.manifest_entry()),
            )

        # Look before writing: creating a key (a KMS key, for the KMS keyring) only to find
        # the snapshot stored already would cost a key per unchanged re-materialization.
        ref, existing = self._put_generations(
            asset, digest, ext, partition, len(data), plan, check_first=True, encrypted=True
        )
        if made:
            self._discard_unused(keyring, made[0][0], ref, existing)
        return ref

    def put_stream(
        self,
        asset: Sequence[str] | str,
        chunks: Iterable[bytes],
        *,
        ext: str,
        format: str,
        partition: str | None = None,
        max_bytes: int | None = None,
        encrypt: bool = False,
        describe: Callable[[], Mapping[str, Any]] | None = None,
        **manifest: Any,
    ) -> SnapshotRef:
        """Store a stream of unknown length as a snapshot, hashing it in the same pass.

        The stream is spooled to a private temporary file beside the store (its digest, and so
        its key, is only known at the end), then stored create-only. If the stream fails or
        exceeds ``max_bytes``, nothing is stored. With ``encrypt``, the spool holds only
        ciphertext: a data key is made before the stream starts and discarded again when the
        snapshot turns out to be stored already.

        Args:
            asset: The asset key path.
            chunks: The payload, in chunks.
            ext: File extension for the key.
            format: The manifest's ``format`` field.
            partition: The partition key, if any.
            max_bytes: Refuse payloads (plaintext) longer than this.
            encrypt: Store the stream encrypted under a new key of the store's keyring.
            describe: Called once the stream is consumed, for manifest fields only known then
                (a table's rows and schema); they override ``manifest``'s.
            **manifest: Further `SnapshotManifest` fields.

        Returns:
            A reference to the stored snapshot.

        Raises:
            SizeLimitError: When the stream is longer than ``max_bytes``.
            IntegrityError: When the key holds different bytes already, or a plaintext
                stream starts with the encrypted-object marker.
            ConfigurationError: When ``encrypt`` is set and the store has no keyring.
        """
        name = _asset_name(asset)
        keyring = self._require_keyring(name) if encrypt else None
        data_key: DataKey | None = None
        header: enc.EncryptionInfo | None = None
        if keyring is not None:
            context = enc.encryption_context(name)
            data_key = keyring.new_data_key(context)
            header = enc.new_encryption_info(
                provider=keyring.provider, key_id=data_key.key_id,
                wrapped_key=data_key.wrapped, context=context,
            )  # fmt: skip
        spool_dir = self._spool_dir()
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="spool-") as spool:
            try:
                sync_every = self._spool_sync_every()
                writer = (
                    _HashingWriter(spool, max_bytes, sync_every, refuse_magic=True)
                    if data_key is None or header is None
                    else _EncryptingWriter(spool, max_bytes, sync_every, data_key.plaintext, header)
                )
                writer.consume(chunks)
                writer.finish()
                spool.flush()
            except BaseException:
                if keyring is not None and data_key is not None:
                    keyring.discard(data_key.key_id)  # nothing was stored with it
                raise
            digest = writer.sha256
            if describe is not None:
                manifest = {**manifest, **describe()}
            # The spool holds ciphertext when encrypting: its digest is not the snapshot's.
            spool_digest = digest if header is None else None
            encryption = header.manifest_entry() if header is not None else None
            ref, existing = self._put_generations(
                asset, digest, ext, partition, writer.size,
                lambda key: (
                    lambda metadata: self._create_from_file(
                        key, Path(spool.name), spool_digest, writer.stored_size, metadata
                    ),
                    SnapshotManifest(
                        key=key, sha256=digest, size=writer.size, format=format, asset=name,
                        partition=partition, encryption=encryption, **manifest,
                    ),
                ),
                encrypted=header is not None,
            )  # fmt: skip
        if keyring is not None and data_key is not None:
            self._discard_unused(keyring, data_key, ref, existing)
        return ref

    def _put_generations(
        self,
        asset: Sequence[str] | str,
        digest: str,
        ext: str,
        partition: str | None,
        size: int,
        plan: Callable[[str], tuple["_Write", SnapshotManifest]],
        *,
        check_first: bool = False,
        encrypted: bool = False,
    ) -> tuple[SnapshotRef, enc.EncryptionInfo | None]:
        """Write a snapshot under the first generation key that is free or holds it readable.

        An encrypted write passes over a plaintext copy of the same bytes (stored before the
        pipeline declared that its rows identify people): that copy could never be shredded,
        so the encrypted one goes under the next generation.

        Args:
            asset: The asset key path.
            digest: The plaintext digest.
            ext: File extension.
            partition: The partition key, if any.
            size: The plaintext size.
            plan: For a key, the create-only write and the manifest to record.
            check_first: Look for an existing object before planning a write.
            encrypted: The write is encrypted; a plaintext copy does not count as stored.

        Returns:
            The reference, and when nothing was written the existing object's encryption
            header (None when it is plaintext or when this call wrote it).
        """
        for generation in range(1, MAX_GENERATIONS + 1):
            key = snapshot_key(asset, digest, ext, partition, generation=generation)
            created, version = False, None
            if not (check_first and self.exists(key)):
                write, manifest = plan(key)
                created, version = self._write_with_manifest(key, write, manifest.to_json())
            if created:
                return SnapshotRef(key, digest, size, self.uri(key), version, True), None
            try:
                existing = self._check_existing(key, digest)
            except ErasedError:
                continue  # its key was shredded: the same bytes go under the next generation
            if encrypted and existing is None:
                continue
            return SnapshotRef(key, digest, size, self.uri(key), version, False), existing
        raise IntegrityError(
            f"the snapshot {digest} of {_asset_name(asset)} was shredded {MAX_GENERATIONS} "
            "times; refusing to write another generation. Check why the same bytes keep being "
            "erased and stored again."
        )

    def _discard_unused(
        self,
        keyring: "Keyring",
        data_key: "DataKey",
        ref: SnapshotRef,
        existing: enc.EncryptionInfo | None,
    ) -> None:
        """Destroy a data key made for a write that stored nothing.

        Kept when the stored object is encrypted under it: a retried request can find the
        object its own first attempt stored.
        """
        if ref.created or (existing is not None and existing.key_id == data_key.key_id):
            return
        keyring.discard(data_key.key_id)

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

        An encrypted snapshot is decrypted, every chunk authenticated, before the digest of
        the plaintext is checked.

        Args:
            ref: The snapshot reference, or ``(key, sha256)``.

        Returns:
            The verified bytes (the plaintext, for an encrypted snapshot).

        Raises:
            ErasedError: When the snapshot was shredded.
            KeyUnavailableError: When it is encrypted and this store cannot unwrap its key.
            IntegrityError: When the bytes are missing, fail decryption or do not match.
        """
        key, expected = (ref.key, ref.sha256) if isinstance(ref, SnapshotRef) else ref
        check_sha256(expected)
        try:
            data = self._read_all(key)
        except FileNotFoundError:
            raise self._missing(key, expected) from None
        if enc.is_encrypted(data):
            with memoryview(data) as view:
                header = enc.parse_header(view, name=self.uri(key))
                dek = self._data_key(key, header)
                plain = enc.decrypt_bytes(
                    view[len(header.header) :], dek, header, name=self.uri(key)
                )
            self._compare(key, expected, sha256_hex(plain))
            return bytes(plain)
        # The bytes are hashed once, in memory, and only these exact bytes are returned: a
        # concurrent change to the stored object cannot slip in between check and use.
        self._compare(key, expected, sha256_hex(data))
        return data

    def iter_bytes(self, ref: SnapshotRef | tuple[str, str]) -> Iterator[bytes]:
        """Stream a snapshot's bytes (plaintext), verifying the digest when the stream ends.

        For readers that must not hold a whole snapshot: what they make from the chunks must
        not be used or stored before the iterator is exhausted, since only then is the digest
        known. A mismatch (or a missing object) raises from the last ``next``.

        Args:
            ref: The snapshot reference, or ``(key, sha256)``.

        Yields:
            The plaintext, in the chunks the store reads.

        Raises:
            ErasedError: When the snapshot was shredded.
            KeyUnavailableError: When it is encrypted and this store cannot unwrap its key.
            IntegrityError: When the bytes are missing, fail decryption or do not match.
        """
        key, expected = (ref.key, ref.sha256) if isinstance(ref, SnapshotRef) else ref
        check_sha256(expected)
        hasher = hashlib.sha256()
        try:
            _header, chunks = self._open_plaintext(key)
        except FileNotFoundError:
            raise self._missing(key, expected) from None
        for chunk in chunks:
            hasher.update(chunk)
            yield chunk
        self._compare(key, expected, hasher.hexdigest())

    def download_to(self, ref: SnapshotRef | tuple[str, str], path: Path) -> Path:
        """Stream a snapshot into ``path``, verifying it; the file is removed on a mismatch.

        Args:
            ref: The snapshot reference, or ``(key, sha256)``.
            path: Destination file, created or truncated.

        Returns:
            ``path``.

        Raises:
            ErasedError: When the snapshot was shredded.
            KeyUnavailableError: When it is encrypted and this store cannot unwrap its key.
            IntegrityError: When the bytes are missing, fail decryption or do not match.
        """
        out = path.open("wb")  # outside the try: a bad destination is not a missing snapshot
        try:
            with out:
                for chunk in self.iter_bytes(ref):
                    out.write(chunk)
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
        so the same files always give the same index digest (the asset's data version). It is
        never encrypted: it holds digests and keys only, and erasure needs to read it.

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
            ErasedError: When a member was shredded.
            IntegrityError: When the index or any member fails verification.
        """
        index = json.loads(self.read_bytes(ref))
        if index.get("format") != FILESET_FORMAT:
            raise IntegrityError(f"{ref} is not a fileset index")
        return {
            name: self.read_bytes((member["key"], member["sha256"]))
            for name, member in index["files"].items()
        }

    def _missing(self, key: str, expected: str) -> IntegrityError:
        return IntegrityError(
            f"snapshot {self.uri(key)} is missing (expected sha256 {expected}); it was "
            "deleted or never written. Re-materialize the asset that produced it."
        )

    def _compare(self, key: str, expected: str, found: str) -> None:
        if found != expected:
            raise IntegrityError(
                f"snapshot {self.uri(key)} failed verification: expected sha256 {expected}, "
                f"found {found}. The stored bytes changed after they were written; nothing was "
                "loaded. Treat this as tampering or corruption: check the audit trail and the "
                "bucket's version history, then re-materialize the asset."
            )

    # -- encryption --------------------------------------------------------------------------

    def encryption_info(self, ref: SnapshotRef | str) -> enc.EncryptionInfo | None:
        """The encryption header of a stored object, reading only the header.

        Args:
            ref: The snapshot (or its key).

        Returns:
            The header, or None when the object is stored in plaintext.

        Raises:
            IntegrityError: When the object is missing or its header is malformed.
        """
        key = ref.key if isinstance(ref, SnapshotRef) else ref
        try:
            prefix = self._read_prefix(key, _HEADER_PROBE)
            if not enc.is_encrypted(prefix):
                return None
            total = enc.header_length(prefix, name=self.uri(key))
            if total > len(prefix):
                prefix = self._read_prefix(key, total)
        except FileNotFoundError:
            raise IntegrityError(f"snapshot {self.uri(key)} is missing") from None
        return enc.parse_header(prefix, name=self.uri(key))

    def shred(self, ref: SnapshotRef | str, *, reason: str) -> "ShredResult":
        """Crypto-shred a snapshot: destroy its key, so its bytes can never be read again.

        The bytes stay where they are (an Object Lock bucket could not delete them anyway);
        every later read raises ErasedError. A record of the shred (key id, time, reason; no
        data) is kept in the store under ``privacy/shredded-keys/``, so reads still say "erased"
        after the keyring has forgotten the key (a KMS key once its deletion completed).
        Idempotent: shredding again reports ``already_shredded``.

        Args:
            ref: The snapshot (or its key).
            reason: Why, for the record (no personal data).

        Returns:
            What the keyring did.

        Raises:
            IntegrityError: When the snapshot is missing or not encrypted.
            KeyUnavailableError: When this store's keyring does not hold its key.
        """
        from dataclasses import replace

        key = ref.key if isinstance(ref, SnapshotRef) else ref
        if not reason or not reason.strip():
            raise ValueError("a shred needs a reason, for the record")
        header = self.encryption_info(key)
        if header is None:
            raise IntegrityError(
                f"snapshot {self.uri(key)} is stored in plaintext: it has no key to destroy, "
                "so it cannot be crypto-shredded. Nothing was changed. Snapshots that hold "
                "personal data must be written with encrypt=True."
            )
        record = self._shred_record(header)
        keyring = self.keyring
        if keyring is None or keyring.provider != header.provider:
            if record is not None:
                return self._recorded_result(header, record)
            raise self._no_keyring(key, header)
        try:
            result = keyring.shred(header.key_id, reason=reason)
        except KeyUnavailableError as exc:
            if record is not None:
                return self._recorded_result(header, record)
            raise KeyUnavailableError(
                f"cannot shred snapshot {self.uri(key)}: {exc}",
                provider=header.provider,
                key_id=header.key_id,
            ) from None
        if record is not None:
            return replace(
                result,
                shredded_at=record.get("shredded_at") or result.shredded_at,
                reason=record.get("reason") or result.reason,
                already_shredded=True,
            )
        document = {
            "provider": header.provider,
            "key_id": header.key_id,
            "snapshot": key,
            "shredded_at": result.shredded_at or utc_now(),
            "reason": result.reason or reason,
        }
        self.try_create_object(
            self._shred_record_key(header), canonical_json(document)
        )  # a concurrent shred's record, if it won, says the same
        return result

    def shredded(self, ref: SnapshotRef | str, header: enc.EncryptionInfo | None = None) -> bool:
        """Whether a snapshot's key was shredded (False for a plaintext snapshot).

        Args:
            ref: The snapshot (or its key).
            header: Its header, when the caller read it already (`encryption_info`).

        Raises:
            IntegrityError: When the snapshot is missing.
            KeyUnavailableError: When this store has no keyring of the snapshot's provider and
                no record of a shred.
        """
        key = ref.key if isinstance(ref, SnapshotRef) else ref
        header = header or self.encryption_info(key)
        if header is None:
            return False
        if self._shred_record(header) is not None:
            return True
        if self.keyring is None or self.keyring.provider != header.provider:
            raise self._no_keyring(key, header)
        return self.keyring.shredded(header.key_id)

    def _require_keyring(self, asset: str) -> "Keyring":
        if self.keyring is None:
            raise ConfigurationError(
                f"cannot store an encrypted snapshot of {asset}: this store has no keyring. "
                "The store resources build one from SECURE_PIPELINE_DATA_KEYRING; a store built "
                "by hand needs keyring=... . Nothing was stored."
            )
        return self.keyring

    def _open_plaintext(self, key: str) -> tuple[enc.EncryptionInfo | None, Iterator[bytes]]:
        """Start reading an object: its header (None if plaintext) and its plaintext chunks.

        The header is read and the data key unwrapped before returning, so a shredded or
        foreign key is reported before any data is read.

        Raises:
            FileNotFoundError: When the object is absent.
        """
        raw = iter(self._iter_object(key))
        try:
            first: list[bytes] = []
            for chunk in raw:
                first.append(chunk)
                if sum(map(len, first)) >= enc.PREFIX_SIZE:
                    break
            head = bytearray(b"".join(first)) if len(first) > 1 else None
            if not enc.is_encrypted(head if head is not None else (first or [b""])[0]):
                # Plaintext: hand the chunks read so far on as they are, without copying.
                return None, itertools.chain(first, raw)
            head = head if head is not None else bytearray(first[0])
            total = enc.header_length(head, name=self.uri(key))
            while len(head) < total:
                chunk = next(raw, None)
                if chunk is None:
                    break
                head += chunk
            header = enc.parse_header(head, name=self.uri(key))
            dek = self._data_key(key, header)
        except BaseException:
            close = getattr(raw, "close", None)
            if close is not None:
                close()
            raise
        body = itertools.chain([bytes(head[len(header.header) :])], raw)
        return header, enc.decrypt_chunks(body, dek, header, name=self.uri(key))

    def _data_key(self, key: str, header: enc.EncryptionInfo) -> bytes:
        """Unwrap the data key of the object at ``key``.

        Raises:
            ErasedError: When the key was shredded.
            KeyUnavailableError: When this store cannot unwrap it.
            IntegrityError: When the header is inconsistent with where the object is.
        """
        asset = header.context.get(enc.ASSET_CONTEXT)
        if key.startswith(SNAPSHOT_PREFIX + "/") and (
            asset is None or not key.startswith(f"{SNAPSHOT_PREFIX}/{asset}/")
        ):
            raise IntegrityError(
                f"snapshot {self.uri(key)} is encrypted for asset {asset!r}, not for the asset "
                "it is stored under: it was copied from another asset. Nothing was read."
            )
        keyring = self.keyring
        if keyring is None or keyring.provider != header.provider:
            record = self._shred_record(header)
            if record is not None:
                raise self._erased(key, header, record, None)
            raise self._no_keyring(key, header)
        try:
            return keyring.unwrap(header.key_id, header.wrapped_key, header.context)
        except ErasedError as exc:
            raise self._erased(key, header, self._shred_record(header), exc) from None
        except KeyUnavailableError as exc:
            record = self._shred_record(header)
            if record is not None:
                raise self._erased(key, header, record, None) from None
            raise KeyUnavailableError(
                f"snapshot {self.uri(key)} cannot be decrypted: {exc}",
                provider=header.provider,
                key_id=header.key_id,
            ) from None

    def _no_keyring(self, key: str, header: enc.EncryptionInfo) -> KeyUnavailableError:
        have = (
            "this store has no keyring"
            if self.keyring is None
            else f"this store's keyring is {self.keyring.describe()}"
        )
        return KeyUnavailableError(
            f"snapshot {self.uri(key)} is encrypted under {header.provider} key "
            f"{header.key_id}, but {have}; nothing was changed. Configure the keyring that "
            f"wrote it (SECURE_PIPELINE_DATA_KEYRING={header.provider}, and for local keys the "
            "same SECURE_PIPELINE_DEV_KEYS directory).",
            provider=header.provider,
            key_id=header.key_id,
        )

    def _shred_record_key(self, header: enc.EncryptionInfo) -> str:
        if not _PROVIDER.fullmatch(header.provider):
            raise IntegrityError(
                f"encryption header names provider {header.provider[:40]!r}, which is not a "
                "keyring provider name; it was altered. Nothing was read or changed."
            )
        return f"{SHRED_RECORD_PREFIX}/{header.provider}/{sha256_hex(header.key_id.encode())}.json"

    def _shred_record(self, header: enc.EncryptionInfo) -> dict[str, Any] | None:
        """The store's record that ``header``'s key was shredded, or None."""
        record_key = self._shred_record_key(header)
        try:
            data = self.read_object(record_key)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("key_id") != header.key_id:
            raise IntegrityError(
                f"shred record {self.uri(record_key)} is not a record of key {header.key_id}; "
                "it was altered. Compare it with the audit trail."
            )
        return record

    def _recorded_result(
        self, header: enc.EncryptionInfo, record: Mapping[str, Any]
    ) -> "ShredResult":
        from secure_pipeline.storage.keyrings import ShredResult

        return ShredResult(
            header.provider,
            header.key_id,
            record.get("shredded_at"),
            record.get("reason"),
            already_shredded=True,
        )

    def _erased(
        self,
        key: str,
        header: enc.EncryptionInfo,
        record: Mapping[str, Any] | None,
        cause: ErasedError | None,
    ) -> ErasedError:
        record = record or {}
        when = record.get("shredded_at") or (cause.erased_at if cause else None)
        reason = record.get("reason") or (cause.reason if cause else None)
        return ErasedError(
            f"snapshot {self.uri(key)} was erased: its data key ({header.provider} key "
            f"{header.key_id}) was destroyed at {when or 'an unrecorded time'} "
            f"({reason or 'no reason recorded'}); its bytes remain but can never be read. "
            "Re-materialize from the source (the erased subjects are excluded); nothing was "
            "changed.",
            provider=header.provider,
            key_id=header.key_id,
            erased_at=when,
            reason=reason,
        )
