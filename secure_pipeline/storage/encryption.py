"""The encrypted object format of the snapshot store: streaming, chunked AES-256-GCM.

An encrypted object is::

    MAGIC (8 bytes) | header length (4 bytes, big-endian) | header (canonical JSON) | chunks

The header names the keyring provider and key id that wrap the data key (DEK), the wrapped DEK
itself, the encryption context, the chunk size, the plaintext size when it was known up front
and an 8-byte random nonce prefix. It travels with the object, so an object under S3 Object
Lock carries everything needed to read it except the key-encryption key, and destroying that
key (crypto-shredding) leaves the locked bytes unreadable.

Each chunk is ``AES-GCM(DEK, nonce = prefix || counter (4 BE), plaintext chunk,
aad = sha256(object header) || counter (8 BE) || final flag (1))``, where "object header" is
every byte before the first chunk (magic, length and JSON). Binding the header digest into
every tag means no header field (wrapped key, context, chunk size) can be changed or swapped
with another object's; the counter stops chunks being reordered; the final flag, set on the
last chunk only, stops truncation at a chunk boundary (streamed writes do not know their size
up front). Every chunk but the last holds exactly ``chunk_size`` plaintext bytes and the last
holds fewer (possibly none), so a reader can tell where the chunks end without knowing the
size: an empty plaintext is one empty final chunk.

``cryptography`` is imported by the functions that use it, never at module import: this
module's constants are needed wherever the store is, including at code-location load.
"""

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from secure_pipeline.canonical import canonical_json
from secure_pipeline.errors import IntegrityError

MAGIC = b"SPAEAD1\n"
SCHEME = "spaead1-aes-256-gcm"
ALGORITHM = "AES-256-GCM"
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_HEADER_SIZE = 64 * 1024
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
DATA_KEY_SIZE = 32
ASSET_CONTEXT = "secure-pipeline:asset"
_LENGTH_SIZE = 4
PREFIX_SIZE = len(MAGIC) + _LENGTH_SIZE
_MAX_CHUNKS = 2**32  # the nonce counter has 4 bytes
_FIELDS = frozenset(
    ("alg", "chunk_size", "size", "provider", "key_id", "wrapped_key", "nonce_prefix", "context")
)

Buffer = bytes | bytearray | memoryview


def encryption_context(asset: str) -> dict[str, str]:
    """The encryption context (AAD for wrapping, KMS EncryptionContext) of an asset's data."""
    return {ASSET_CONTEXT: asset}


def is_encrypted(data: Buffer) -> bool:
    """Whether ``data`` (an object, or its first bytes) starts with the encrypted-object magic."""
    return bytes(data[: len(MAGIC)]) == MAGIC


@dataclass(frozen=True)
class EncryptionInfo:
    """What an encrypted object's header says, and the exact header bytes it was read from.

    Attributes:
        provider: The keyring provider holding the key-encryption key (``local``, ``kms``).
        key_id: That key's id in the provider.
        wrapped_key: The data key, encrypted by the key-encryption key.
        context: The encryption context the data key is bound to.
        nonce_prefix: The 8 random bytes every chunk nonce starts with.
        chunk_size: Plaintext bytes per chunk (the last chunk holds fewer).
        size: The plaintext size, when the writer knew it up front; None for streams.
        header: Every byte before the first chunk (magic, length, JSON), as stored.
    """

    provider: str
    key_id: str
    wrapped_key: bytes = field(repr=False)
    context: Mapping[str, str]
    nonce_prefix: bytes = field(repr=False)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    size: int | None = None
    header: bytes = field(default=b"", repr=False, compare=False)

    @property
    def scheme(self) -> str:
        """The name of this object format."""
        return SCHEME

    @property
    def header_digest(self) -> bytes:
        """SHA-256 of the object header: the first part of every chunk's associated data."""
        return hashlib.sha256(self.header).digest()

    def manifest_entry(self) -> dict[str, str]:
        """The manifest's ``encryption`` field: scheme, provider and key id, never a key."""
        return {"scheme": SCHEME, "provider": self.provider, "key_id": self.key_id}


def new_encryption_info(
    *,
    provider: str,
    key_id: str,
    wrapped_key: bytes,
    context: Mapping[str, str],
    size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EncryptionInfo:
    """Describe a new encrypted object, with a fresh random nonce prefix and its header bytes.

    Args:
        provider: The keyring provider that wrapped the data key.
        key_id: The key-encryption key's id.
        wrapped_key: The wrapped data key.
        context: The encryption context.
        size: The plaintext size, if known before writing.
        chunk_size: Plaintext bytes per chunk.

    Returns:
        The info, ``header`` filled in.

    Raises:
        ValueError: When the chunk size is out of range.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE} bytes, found {chunk_size}")
    nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
    document = canonical_json(
        {
            "alg": ALGORITHM,
            "chunk_size": chunk_size,
            "size": size,
            "provider": provider,
            "key_id": key_id,
            "wrapped_key": base64.b64encode(wrapped_key).decode("ascii"),
            "nonce_prefix": base64.b64encode(nonce_prefix).decode("ascii"),
            "context": dict(context),
        }
    )
    header = MAGIC + len(document).to_bytes(_LENGTH_SIZE, "big") + document
    return EncryptionInfo(
        provider, key_id, wrapped_key, dict(context), nonce_prefix, chunk_size, size, header
    )


def header_length(prefix: Buffer, *, name: str = "encrypted object") -> int:
    """The total length of an object's header, from its first `PREFIX_SIZE` bytes.

    Raises:
        IntegrityError: When the prefix is not an encrypted object's or is cut short.
    """
    if not is_encrypted(prefix):
        raise IntegrityError(f"{name} does not start with the encrypted-object marker")
    if len(prefix) < PREFIX_SIZE:
        raise IntegrityError(
            f"{name} is truncated inside its header ({len(prefix)} bytes); it was cut short or "
            "altered. Nothing was read."
        )
    length = int.from_bytes(prefix[len(MAGIC) : PREFIX_SIZE], "big")
    if not 2 <= length <= MAX_HEADER_SIZE:
        raise IntegrityError(
            f"{name} declares a header of {length} bytes, outside 2..{MAX_HEADER_SIZE}; it was "
            "altered. Nothing was read."
        )
    return PREFIX_SIZE + length


def _b64(value: Any, what: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise IntegrityError(f"{name}: header field {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{name}: header field {what} is not valid base64") from None


def parse_header(data: Buffer, *, name: str = "encrypted object") -> EncryptionInfo:
    """Parse an encrypted object's header.

    Args:
        data: The object, or at least its whole header.
        name: How to name the object in errors (its URI).

    Returns:
        The header's content, with ``header`` set to the exact bytes read.

    Raises:
        IntegrityError: When the header is malformed, cut short or has unknown fields.
    """
    total = header_length(data, name=name)
    if len(data) < total:
        raise IntegrityError(
            f"{name} is truncated inside its header ({len(data)} of {total} bytes); it was "
            "cut short or altered. Nothing was read."
        )
    header = bytes(data[:total])
    try:
        document = json.loads(header[PREFIX_SIZE:])
    except ValueError as exc:
        raise IntegrityError(f"{name}: the encryption header is not JSON ({exc})") from None
    if not isinstance(document, dict) or set(document) != _FIELDS:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise IntegrityError(
            f"{name}: the encryption header must have exactly the fields {sorted(_FIELDS)}, "
            f"found {found}; it was altered or written by another format version."
        )
    if document["alg"] != ALGORITHM:
        raise IntegrityError(f"{name}: expected algorithm {ALGORITHM}, found {document['alg']!r}")
    chunk_size, size = document["chunk_size"], document["size"]
    if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"{name}: chunk size {chunk_size!r} is out of range")
    if size is not None and (type(size) is not int or size < 0):
        raise IntegrityError(f"{name}: plaintext size {size!r} is not a size")
    provider, key_id, context = document["provider"], document["key_id"], document["context"]
    if not isinstance(provider, str) or not isinstance(key_id, str) or not key_id:
        raise IntegrityError(f"{name}: the header's provider and key id must be text")
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise IntegrityError(f"{name}: the encryption context must map text to text")
    nonce_prefix = _b64(document["nonce_prefix"], "nonce_prefix", name)
    if len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise IntegrityError(f"{name}: the nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
    wrapped = _b64(document["wrapped_key"], "wrapped_key", name)
    return EncryptionInfo(
        provider, key_id, wrapped, context, nonce_prefix, chunk_size, size, header
    )


def encrypted_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of ciphertext chunks (header excluded) for a plaintext of ``plaintext_size``."""
    return plaintext_size + (plaintext_size // chunk_size + 1) * TAG_SIZE


class _Sealer:
    """The per-chunk AEAD of one object: nonce and associated data from the chunk counter."""

    def __init__(self, dek: Buffer, header: EncryptionInfo) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(dek) != DATA_KEY_SIZE:
            raise IntegrityError(f"a data key must be {DATA_KEY_SIZE} bytes, found {len(dek)}")
        if not header.header:
            raise ValueError("the EncryptionInfo carries no header bytes; build it with "
                             "new_encryption_info or parse_header")  # fmt: skip
        self.aead = AESGCM(bytes(dek))
        self.chunk_size = header.chunk_size
        self._prefix = header.nonce_prefix
        self._digest = header.header_digest
        self.counter = 0

    def next(self, final: bool) -> tuple[bytes, bytes]:
        """Nonce and associated data of the next chunk; advances the counter."""
        if self.counter >= _MAX_CHUNKS:
            raise ValueError("an encrypted object holds at most 2**32 chunks")
        counter = self.counter
        self.counter += 1
        nonce = self._prefix + counter.to_bytes(4, "big")
        aad = self._digest + counter.to_bytes(8, "big") + (b"\x01" if final else b"\x00")
        return nonce, aad


class StreamEncryptor:
    """Encrypt a stream of any chunking into a sink, one cipher chunk at a time.

    The sink (e.g. a file's ``write``) receives the header, then each sealed chunk as a view of
    one reused buffer, which it must consume before returning. Input already a whole chunk long
    is sealed straight from the caller's buffer, without copying it first.

    Args:
        dek: The data key.
        header: The object's header (from `new_encryption_info`).
        sink: Called with each piece of the object, in order.
    """

    def __init__(
        self, dek: Buffer, header: EncryptionInfo, sink: Callable[[memoryview | bytes], Any]
    ) -> None:
        self._sealer = _Sealer(dek, header)
        self._sink = sink
        self._pending = bytearray()
        self._out = bytearray(header.chunk_size + TAG_SIZE)
        self._closed = False
        self.size = len(header.header)
        sink(header.header)

    def _seal(self, data: Buffer, final: bool) -> None:
        nonce, aad = self._sealer.next(final)
        length = len(data) + TAG_SIZE
        with memoryview(self._out) as view:
            target = view[:length]
            self._sealer.aead.encrypt_into(nonce, data, aad, target)
            self._sink(target)
            target.release()
        self.size += length

    def write(self, data: Buffer) -> None:
        """Add plaintext; every full chunk is sealed and passed to the sink."""
        if self._closed:
            raise ValueError("write after close")
        size = self._sealer.chunk_size
        with memoryview(data) as view:
            view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            offset = 0
            if self._pending:
                take = min(size - len(self._pending), len(view))
                self._pending += view[:take]
                offset = take
                if len(self._pending) < size:
                    return
                self._seal(self._pending, final=False)
                self._pending.clear()
            # Whole chunks straight from the caller's buffer: no copy before sealing.
            while len(view) - offset >= size:
                self._seal(view[offset : offset + size], final=False)
                offset += size
            self._pending += view[offset:]

    def close(self) -> None:
        """Seal the final chunk (shorter than a whole one, possibly empty)."""
        if not self._closed:
            self._seal(self._pending, final=True)
            self._pending.clear()
            self._closed = True


def encrypt_chunks(
    chunks: Iterable[Buffer], dek: Buffer, header: EncryptionInfo
) -> Iterator[bytes]:
    """Encrypt a stream: yield the object header, then each sealed chunk as its own bytes.

    Args:
        chunks: The plaintext, in chunks of any size.
        dek: The data key.
        header: The object's header (from `new_encryption_info`).

    Yields:
        The whole encrypted object, in pieces each safe to keep (none is reused).
    """
    sealer = _Sealer(dek, header)
    size = sealer.chunk_size
    yield header.header
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) < size:
            continue
        with memoryview(pending) as view:
            offset = 0
            while len(view) - offset >= size:
                nonce, aad = sealer.next(final=False)
                yield sealer.aead.encrypt(nonce, view[offset : offset + size], aad)
                offset += size
        del pending[:offset]
    nonce, aad = sealer.next(final=True)
    yield sealer.aead.encrypt(nonce, bytes(pending), aad)


def encrypt_bytes(data: Buffer, dek: Buffer, header: EncryptionInfo) -> bytearray:
    """Encrypt a whole payload into one buffer holding the complete object (no other copy).

    Args:
        data: The plaintext.
        dek: The data key.
        header: The object's header (from `new_encryption_info`).

    Returns:
        The encrypted object: header then sealed chunks.
    """
    sealer = _Sealer(dek, header)
    size = sealer.chunk_size
    out = bytearray(len(header.header) + encrypted_size(len(data), size))
    out[: len(header.header)] = header.header
    with memoryview(data) as source, memoryview(out) as target:
        position = len(header.header)
        full = len(source) // size
        for index in range(full + 1):
            final = index == full
            piece = source[index * size : len(source) if final else (index + 1) * size]
            nonce, aad = sealer.next(final)
            end = position + len(piece) + TAG_SIZE
            sealer.aead.encrypt_into(nonce, piece, aad, target[position:end])
            position = end
    return out


def _refuse(name: str, index: int, what: str) -> IntegrityError:
    return IntegrityError(
        f"{name} failed decryption at chunk {index}: {what}. The stored bytes were altered, "
        "truncated, or combined with another object's header; nothing was returned. Treat this "
        "as tampering or corruption: check the audit trail, then re-materialize the asset."
    )


def decrypt_bytes(
    body: Buffer, dek: Buffer, header: EncryptionInfo, *, name: str = "encrypted object"
) -> bytearray:
    """Decrypt and authenticate every chunk of an object body into one new buffer.

    Args:
        body: The bytes after the header.
        dek: The data key.
        header: The parsed header (`parse_header`).
        name: How to name the object in errors.

    Returns:
        The plaintext; returned only when every tag verified and the last chunk is final.

    Raises:
        IntegrityError: When a tag fails, the object is truncated, or the size is wrong.
    """
    from cryptography.exceptions import InvalidTag

    sealer = _Sealer(dek, header)
    unit = sealer.chunk_size + TAG_SIZE
    full = len(body) // unit
    last = len(body) - full * unit
    if last < TAG_SIZE:
        # A complete chunk is never final, so a body ending on a chunk boundary lost its end.
        raise _refuse(name, full, "the final chunk is missing (the object was truncated)")
    out = bytearray(len(body) - (full + 1) * TAG_SIZE)
    with memoryview(body) as source, memoryview(out) as target:
        for index in range(full + 1):
            final = index == full
            start = index * unit
            piece = source[start : len(source) if final else start + unit]
            nonce, aad = sealer.next(final)
            plain = index * sealer.chunk_size
            try:
                sealer.aead.decrypt_into(
                    nonce, piece, aad, target[plain : plain + len(piece) - TAG_SIZE]
                )
            except InvalidTag:
                raise _refuse(name, index, "its authentication tag does not verify") from None
    if header.size is not None and header.size != len(out):
        raise _refuse(name, full, f"the header records {header.size} bytes, found {len(out)}")
    return out


def decrypt_chunks(
    chunks: Iterable[Buffer], dek: Buffer, header: EncryptionInfo, *, name: str = "encrypted object"
) -> Iterator[bytes]:
    """Decrypt an object body streamed in chunks of any size, authenticating each chunk.

    Each yielded piece has been authenticated; a caller that must act only on a complete,
    untruncated object waits for the iterator to finish (it raises instead of finishing
    when the end is missing).

    Args:
        chunks: The bytes after the header, in pieces of any size.
        dek: The data key.
        header: The parsed header (`parse_header`).
        name: How to name the object in errors.

    Yields:
        Plaintext chunks.

    Raises:
        IntegrityError: When a tag fails, the object is truncated, or the size is wrong.
    """
    from cryptography.exceptions import InvalidTag

    sealer = _Sealer(dek, header)
    unit = sealer.chunk_size + TAG_SIZE
    pending = bytearray()
    total = 0

    def open_(piece: Buffer, final: bool) -> bytes:
        index = sealer.counter
        nonce, aad = sealer.next(final)
        try:
            return sealer.aead.decrypt(nonce, piece, aad)
        except InvalidTag:
            raise _refuse(name, index, "its authentication tag does not verify") from None

    for chunk in chunks:
        if not pending and len(chunk) >= unit:
            source: Buffer = chunk
        else:
            pending += chunk
            if len(pending) < unit:
                continue
            source = pending
        with memoryview(source) as view:
            offset = 0
            # A complete unit is never the final chunk (the final one is always shorter).
            while len(view) - offset >= unit:
                plain = open_(view[offset : offset + unit], final=False)
                total += len(plain)
                yield plain
                offset += unit
            rest = bytes(view[offset:]) if source is not pending else None
        if rest is None:
            del pending[:offset]
        else:
            pending += rest
    if len(pending) < TAG_SIZE:
        raise _refuse(name, sealer.counter, "the final chunk is missing (the object was truncated)")
    plain = open_(pending, final=True)
    total += len(plain)
    if header.size is not None and header.size != total:
        raise _refuse(name, sealer.counter - 1, f"the header records {header.size} bytes, "
                      f"found {total}")  # fmt: skip
    yield plain
