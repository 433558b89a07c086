"""Connectors: fetch one source file as a bounded stream, with facts for its provenance.

Each connector refuses what it cannot vouch for before a byte is stored: a scheme it does not
serve, a file outside its allowed root, a payload over the size limit. `connector_for` picks the
connector from the URI's scheme.
"""

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

from secure_pipeline.errors import UntrustedSourceError
from secure_pipeline.redaction import redact_uri

CHUNK_SIZE = 1024 * 1024


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
    return urljoin(base, path)


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
        # O_NOFOLLOW on the resolved path: a symlink swapped in after the check is refused.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UntrustedSourceError(f"source {resolved} is not a regular file")
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


def connector_for(uri: str, *, location: str) -> Connector:
    """Pick the connector for a source URI.

    Args:
        uri: The file's URI.
        location: The source location it was resolved from (the allowed root for files).

    Raises:
        UntrustedSourceError: For a scheme no connector serves; plain http is always refused.
    """
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        return FileConnector(Path(unquote(urlsplit(location).path)))
    if scheme == "http":
        raise UntrustedSourceError(
            f"refusing plain http source {redact_uri(uri)!r}: sources must be encrypted "
            "(https:// with TLS 1.3) or local (file://)"
        )
    raise UntrustedSourceError(
        f"no connector serves {scheme or '(no scheme)'}:// sources in this version "
        f"({redact_uri(uri)!r}); use a file:// location"
    )
