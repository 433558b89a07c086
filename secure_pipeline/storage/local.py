"""Filesystem backend of the snapshot store: the embedded default under SECURE_PIPELINE_HOME.

Create-only without races: bytes are written and fsynced to a private spool file, made read-only,
then hard-linked to the final key. ``link`` fails atomically when the key exists, so two writers
can never both succeed and a reader never sees a half-written object at a final key.
"""

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from secure_pipeline.storage import encryption as enc
from secure_pipeline.storage.snapshots import CHUNK_SIZE, SnapshotStore

if TYPE_CHECKING:
    from secure_pipeline.storage.keyrings import Keyring

_READ_ONLY = 0o444
_SPOOL = ".spool"


class LocalSnapshotStore(SnapshotStore):
    """Snapshot store in a local directory.

    Args:
        root: Directory holding the store; created when missing.
        fsync: Flush each object to disk before it becomes visible. A crash must not leave a
            truncated object under a final key, which every later write would then refuse.
        keyring: Holds the keys of encrypted snapshots (None: plaintext snapshots only).
    """

    def __init__(
        self, root: Path | str, *, fsync: bool = True, keyring: "Keyring | None" = None
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"LocalSnapshotStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == _SPOOL:
            raise ValueError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    def _spool_dir(self) -> Path:
        return self.root / _SPOOL

    def _spool_sync_every(self) -> int | None:
        # The spool file becomes the snapshot; flushing as it grows spreads the fsync cost
        # over the download instead of paying it all before the file can be published.
        return 32 * 1024 * 1024 if self._fsync else None

    def _publish(self, spool: Path, key: str) -> bool:
        """Make a finished spool file visible under ``key``; False when the key exists."""
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(spool, _READ_ONLY)
        try:
            os.link(spool, final)
        except FileExistsError:
            return False
        if self._fsync:
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return True

    def _create_from_bytes(
        self,
        key: str,
        data: bytes | bytearray,
        sha256: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, None]:
        return self._create_spooled(key, lambda out: out.write(data))

    def _create_encrypted(
        self,
        key: str,
        data: bytes,
        dek: bytes,
        header: enc.EncryptionInfo,
        metadata: Mapping[str, str] | None,
    ) -> tuple[bool, None]:
        """Encrypt straight into the spool file, one chunk at a time (no ciphertext copy)."""

        def write(out: BinaryIO) -> None:
            encryptor = enc.StreamEncryptor(dek, header, out.write)
            encryptor.write(data)
            encryptor.close()

        return self._create_spooled(key, write)

    def _create_spooled(self, key: str, write: Callable[[BinaryIO], object]) -> tuple[bool, None]:
        """Write an object to a private spool file, flush it to disk, then publish it."""
        if self.exists(key):
            return False, None
        spool_dir = self._spool_dir()
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool = spool_dir / f"w-{os.getpid()}-{os.urandom(12).hex()}"
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
            return self._publish(spool, key), None
        finally:
            spool.unlink(missing_ok=True)

    def _create_from_file(
        self,
        key: str,
        path: Path,
        sha256: str | None,
        size: int,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bool, None]:
        if self.exists(key):
            return False, None
        spool_dir = self._spool_dir()
        if path.parent != spool_dir:
            # A file from elsewhere may be on another filesystem: copy it in first.
            spool_dir.mkdir(parents=True, exist_ok=True)
            copy = spool_dir / f"c-{os.getpid()}-{os.urandom(12).hex()}"
            shutil.copyfile(path, copy)
            try:
                return self._create_from_file(key, copy, sha256, size)
            finally:
                copy.unlink(missing_ok=True)
        if self._fsync:
            with path.open("rb") as spooled:
                os.fsync(spooled.fileno())
        return self._publish(path, key), None

    def _iter_object(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as stored:
            while chunk := stored.read(CHUNK_SIZE):
                yield chunk

    def _read_all(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _read_prefix(self, key: str, length: int) -> bytes:
        with self._path(key).open("rb") as stored:
            return stored.read(length)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._path(key).is_file()

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Yield the keys under ``prefix`` in lexicographic order, after ``start_after``.

        Lazy, one directory at a time: a subtree wholly before ``start_after`` is never
        entered, and only the names after it are sorted, so listing the tail of a directory
        of a million audit records does not sort a million names.
        """
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        yield from self._list_dir(base.relative_to(self.root).as_posix(), start_after)

    def _list_dir(self, rel: str, start_after: str | None) -> Iterator[str]:
        entries: list[tuple[str, bool]] = []
        with os.scandir(self.root / rel) as scan:
            for entry in scan:
                key = f"{rel}/{entry.name}"
                is_dir = entry.is_dir(follow_symlinks=False)
                # "a/" sorts after "a.json": order directories by their keys' common prefix.
                order = key + "/" if is_dir else key
                before = start_after is not None and order <= start_after
                if before and not (is_dir and start_after.startswith(order)):
                    continue
                entries.append((order, is_dir))
        for order, is_dir in sorted(entries):
            if is_dir:
                yield from self._list_dir(order[:-1], start_after)
            else:
                yield order

    def uri(self, key: str) -> str:
        """The ``file://`` URI of the object behind ``key``."""
        return self._path(key).as_uri()
