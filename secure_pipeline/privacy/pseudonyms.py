"""Keyed pseudonyms for personal columns, and the per-pipeline key they are made with.

A ``personal`` column declared ``pseudonymise=True`` reaches ``validated_*`` only as
HMAC-SHA256 (hex) of its cleaned value: equal values give equal pseudonyms, so the column can
still join or group rows, while the value cannot be read back without the key. A plain hash
would not do: names and dates of birth are few enough to hash them all and look the answer up.

The key is per pipeline, so pseudonyms of two pipelines cannot be linked:

* **production**: derived from ``SECURE_PIPELINE_PSEUDONYM_KEY`` (hex or base64, at least 32
  bytes) and the pipeline name; a missing or short secret is refused, never replaced by a
  generated one (pseudonyms made with a key nobody keeps could never be matched again).
* **local**: when that variable is unset, a random key generated on first use in
  ``<development keys>/pseudonym-keys/<pipeline>.key`` (0600, in a 0700 directory of its
  own): outside ``SECURE_PIPELINE_HOME``, so whoever can read the snapshots does not hold the
  key that would undo their pseudonyms.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.spec import DatasetSchema

KEY_VARIABLE = "SECURE_PIPELINE_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32
KEY_DIRECTORY = "pseudonym-keys"
# Binds a derived key to its purpose: the same secret used for anything else gives other keys.
_DERIVATION = b"secure-pipeline pseudonymisation key v1\x00"
_PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def pseudonymise(values: Iterable[str | None], key: bytes) -> list[str | None]:
    """The keyed pseudonym of each value: HMAC-SHA256 hex; a missing value stays missing.

    Args:
        values: Cleaned values as text (None for missing).
        key: The pipeline's key, from `pseudonym_key`.

    Returns:
        64-character lowercase hex digests, in the order of ``values``.
    """
    base = hmac.new(key, digestmod=hashlib.sha256)
    seen: dict[str, str] = {}  # repeated values (the usual case for joins) are hashed once
    out: list[str | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        digest = seen.get(value)
        if digest is None:
            mac = base.copy()
            mac.update(value.encode("utf-8"))
            digest = seen[value] = mac.hexdigest()
        out.append(digest)
    return out


def pseudonymised_columns(schema: DatasetSchema, key: bytes | None) -> list[str]:
    """The columns ``validated_*`` keeps as pseudonyms, in schema order.

    Raises:
        ConfigurationError: When there are some and no key was given.
    """
    names = [c.name for c in schema.columns if c.kept and c.role == "personal"]
    if names and key is None:
        raise ConfigurationError(
            f"columns {names} are pseudonymised, but no pseudonymisation key was given"
        )
    return names


def pseudonym_key(pipeline_name: str, environment: env.Environment | None = None) -> bytes:
    """The pipeline's pseudonymisation key (32 bytes).

    Args:
        pipeline_name: The pipeline's name (snake_case).
        environment: Where the code runs; the current environment when None.

    Returns:
        The key.

    Raises:
        ConfigurationError: In production when ``SECURE_PIPELINE_PSEUDONYM_KEY`` is unset;
            anywhere when it is set but not hex or base64 of at least 32 bytes, or when the
            local key file is unreadable, malformed or readable by others.
    """
    if not _PIPELINE_NAME.match(pipeline_name):
        raise ConfigurationError(
            f"pipeline name {pipeline_name!r} is not snake_case: it names the pipeline's "
            "pseudonymisation key"
        )
    environment = environment or env.current_environment()
    secret = env.read(KEY_VARIABLE)
    if secret is not None:
        master = _decode_secret(secret)
        return hmac.new(master, _DERIVATION + pipeline_name.encode(), hashlib.sha256).digest()
    if environment is env.Environment.PRODUCTION:
        raise ConfigurationError(
            f"{KEY_VARIABLE} is not set: pipeline {pipeline_name!r} keeps personal columns as "
            "keyed pseudonyms and production never generates the key itself. Set it to a "
            f"secret of at least {MIN_KEY_BYTES} random bytes, hex or base64 (e.g. `openssl "
            "rand -hex 32`), from the deployment's secret store, and keep it: pseudonyms made "
            "with another key never match these."
        )
    return _local_key(pipeline_name)


def _decode_secret(secret: str) -> bytes:
    """Hex or base64 bytes of the configured secret (never quoted back: it is a key)."""
    decoded: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]+", secret) and len(secret) % 2 == 0:
        decoded = bytes.fromhex(secret)
    else:
        for altchars in (b"+/", b"-_"):  # standard, then URL-safe base64
            try:
                decoded = base64.b64decode(secret.encode("ascii"), altchars, validate=True)
                break
            except (binascii.Error, ValueError, UnicodeEncodeError):
                continue
    if decoded is None:
        raise ConfigurationError(
            f"{KEY_VARIABLE} is neither hex nor base64 ({len(secret)} characters); set it to "
            f"at least {MIN_KEY_BYTES} random bytes in either form (e.g. `openssl rand -hex 32`)"
        )
    if len(decoded) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{KEY_VARIABLE} holds {len(decoded)} bytes; a pseudonymisation key needs at least "
            f"{MIN_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
        )
    return decoded


def local_key_path(pipeline_name: str) -> Path:
    """Where the embedded setup keeps a pipeline's generated key."""
    from secure_pipeline.trust.keys import dev_keys_dir

    return dev_keys_dir() / KEY_DIRECTORY / f"{pipeline_name}.key"


def _local_key(pipeline_name: str) -> bytes:
    from secure_pipeline.trust.keys import dev_keys_lock

    path = local_key_path(pipeline_name)
    # Under the lock: two first runs at once must not each generate (and use) their own key.
    with dev_keys_lock():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"pseudonymisation key {path} is open to other users (mode "
            f"{stat.filemode(mode)}); it must be readable by its owner only: chmod 600 {path}"
        )
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]+", text) or len(text) < 2 * MIN_KEY_BYTES or len(text) % 2:
        raise ConfigurationError(
            f"pseudonymisation key {path} is not {MIN_KEY_BYTES} or more bytes of hex; it was "
            "changed outside secure_pipeline. Restore it from a backup (pseudonyms made with "
            "another key never match the stored ones), or delete it to start a new key"
        )
    return bytes.fromhex(text)
