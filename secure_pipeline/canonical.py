"""Canonical bytes and their digests: what everything signed or content-addressed is computed over.

Kept apart from storage and signing so both can use the same forms without importing each other.
"""

import hashlib
import json
from typing import Any


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Serialize ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8).

    Canonical form makes equal documents byte-identical, so they hash and deduplicate equally.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
