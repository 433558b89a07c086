"""Keyrings: where the key-encryption keys (KEKs) of encrypted snapshots live, and how they die.

Every encrypted snapshot gets its own KEK and a fresh 256-bit data key (DEK) wrapped by it; the
wrapped DEK travels in the object's header (`secure_pipeline.storage.encryption`). Destroying a
snapshot's KEK (crypto-shredding) makes that one snapshot unreadable for good, even when its
bytes are locked in an immutable bucket.

* `LocalKeyring` (the embedded default): a KEK is 32 random bytes in
  ``<dev keys dir>/data-keys/<key_id>.key``, outside ``SECURE_PIPELINE_HOME`` so that whoever
  reads the store does not hold the keys. The DEK is wrapped with AES-256-GCM under the KEK,
  bound to the canonical JSON of the encryption context.
* `KmsKeyring` (production): a KEK is an AWS KMS symmetric key created per snapshot; the DEK
  comes from ``GenerateDataKey`` bound to the encryption context; shredding schedules the
  key's deletion.

``boto3`` and ``cryptography`` are imported by the methods that use them.
"""

import abc
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from secure_pipeline import environment as env
from secure_pipeline.canonical import canonical_json
from secure_pipeline.errors import (
    ConfigurationError,
    ErasedError,
    IntegrityError,
    KeyUnavailableError,
)
from secure_pipeline.storage.encryption import ASSET_CONTEXT, DATA_KEY_SIZE

KEYRING_VAR = "SECURE_PIPELINE_DATA_KEYRING"
KMS_ENDPOINT_VAR = "SECURE_PIPELINE_KMS_ENDPOINT"
PROVIDERS = ("local", "kms")
DATA_KEYS_DIR = "data-keys"
MIN_DELETION_WINDOW_DAYS = 7
MAX_DELETION_WINDOW_DAYS = 30
PURPOSE_TAG = "secure-pipeline:purpose"
PURPOSE = "snapshot-data-key"
ASSET_TAG = ASSET_CONTEXT
_NONCE_SIZE = 12
_LOCAL_KEY_ID = re.compile(r"lk-[0-9a-f]{32}")
# A key ARN (the id the KMS keyring records), e.g. arn:aws:kms:eu-west-1:111122223333:key/<id>.
_KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]{1,64}")
_TAG_VALUE_LIMIT = 256


def _utc(moment: datetime | None = None) -> str:
    """An ISO-8601 UTC timestamp (now, or ``moment``), as the store writes them."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: its plaintext (for this write only) and its wrapped form.

    Attributes:
        key_id: The id of the key-encryption key that wraps it.
        plaintext: The 32-byte data key. Never stored, logged or put in a manifest.
        wrapped: The data key encrypted under the KEK (stored in the object header).
    """

    key_id: str
    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True)
class ShredResult:
    """What a shred did.

    Attributes:
        provider: The keyring provider (``local``, ``kms``).
        key_id: The destroyed key's id.
        shredded_at: When the key was destroyed (local) or its deletion scheduled (KMS), UTC;
            None when a KMS key was already pending deletion and the time is not recorded.
        reason: The reason given (the first one, when it was shredded before).
        already_shredded: True when the key had been shredded before this call.
        deletion_date: KMS only: when KMS deletes the key material (reads fail from the
            moment of shredding, whatever this date).
    """

    provider: str
    key_id: str
    shredded_at: str | None
    reason: str | None
    already_shredded: bool
    deletion_date: str | None = None


class Keyring(abc.ABC):
    """Creates one key-encryption key per snapshot, unwraps data keys, and shreds keys."""

    provider: ClassVar[str]

    @abc.abstractmethod
    def new_data_key(self, context: Mapping[str, str]) -> DataKey:
        """Create a new KEK and a fresh data key wrapped by it, bound to ``context``."""

    @abc.abstractmethod
    def unwrap(self, key_id: str, wrapped_key: bytes, context: Mapping[str, str]) -> bytes:
        """Recover a data key.

        Raises:
            ErasedError: When the KEK was shredded.
            KeyUnavailableError: When this keyring does not hold the KEK.
            IntegrityError: When the wrapped key or context was altered.
        """

    @abc.abstractmethod
    def shred(self, key_id: str, *, reason: str) -> ShredResult:
        """Destroy a KEK; idempotent (a second call reports ``already_shredded``).

        Raises:
            KeyUnavailableError: When this keyring does not know the key.
        """

    @abc.abstractmethod
    def shredded(self, key_id: str) -> bool:
        """Whether the keyring knows the KEK to be shredded."""

    @abc.abstractmethod
    def discard(self, key_id: str) -> None:
        """Destroy a KEK that no stored object uses (a write that stored nothing)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this keyring's keys live, for messages."""


# -- local ---------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) with ``data``, durably; FileExistsError when it exists."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(path.parent)


class LocalKeyring(Keyring):
    """Key-encryption keys as files in a private directory (the embedded default).

    Shredding writes a tombstone ``<key_id>.shredded`` (time, reason) and then overwrites the
    key file with zeros, fsyncs and unlinks it. The tombstone goes first: a crash in between
    leaves a key that every read already treats as erased, and the next shred completes the
    destruction. (Overwriting cannot guarantee that a copy-on-write filesystem or an SSD keeps
    no old block; production keys live in KMS.)

    Args:
        directory: Where the keys live (created 0700 on first use). Keep it outside
            ``SECURE_PIPELINE_HOME``: whoever reads the store must not hold its keys.
    """

    provider: ClassVar[str] = "local"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalKeyring({str(self.directory)!r})"

    def describe(self) -> str:
        """Where this keyring's keys live, for messages."""
        return f"the local keyring at {self.directory}"

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        if not _LOCAL_KEY_ID.fullmatch(key_id):
            raise IntegrityError(
                f"{key_id[:80]!r} is not a local keyring key id (expected 'lk-' and 32 hex "
                "digits); the encryption header was altered. Nothing was read or changed."
            )
        return self.directory / f"{key_id}.key", self.directory / f"{key_id}.shredded"

    def _unavailable(self, key_id: str) -> KeyUnavailableError:
        return KeyUnavailableError(
            f"data key {key_id} (provider local) is not in {self.describe()}, and no shred "
            "tombstone for it is there either; nothing was changed. The snapshot was written "
            "with another keys directory: check SECURE_PIPELINE_DEV_KEYS (or the store "
            "resource's data_keys_dir) on this machine.",
            provider=self.provider,
            key_id=key_id,
        )

    def new_data_key(self, context: Mapping[str, str]) -> DataKey:
        """Create a KEK file and a fresh data key wrapped by it, bound to ``context``."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_id = "lk-" + secrets.token_hex(16)
        kek = os.urandom(DATA_KEY_SIZE)
        _write_new(self._paths(key_id)[0], kek)
        dek = os.urandom(DATA_KEY_SIZE)
        nonce = os.urandom(_NONCE_SIZE)
        wrapped = nonce + AESGCM(kek).encrypt(nonce, dek, canonical_json(dict(context)))
        return DataKey(key_id, dek, wrapped)

    def _tombstone(self, path: Path) -> dict[str, Any]:
        try:
            document = json.loads(path.read_bytes())
        except ValueError:
            document = {}
        return document if isinstance(document, dict) else {}

    def _erased(self, key_id: str, tombstone: Path) -> ErasedError:
        record = self._tombstone(tombstone)
        return ErasedError(
            f"data key {key_id} (provider local) was destroyed at "
            f"{record.get('shredded_at', 'an unrecorded time')} "
            f"({record.get('reason', 'no reason recorded')})",
            provider=self.provider,
            key_id=key_id,
            erased_at=record.get("shredded_at"),
            reason=record.get("reason"),
        )

    def unwrap(self, key_id: str, wrapped_key: bytes, context: Mapping[str, str]) -> bytes:
        """Recover a data key with the KEK file ``key_id``.

        Raises:
            ErasedError: When the key's tombstone exists.
            KeyUnavailableError: When the key file is not in this directory.
            IntegrityError: When the wrapped key or context was altered.
        """
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key_path, tombstone = self._paths(key_id)
        if tombstone.exists():
            raise self._erased(key_id, tombstone)
        try:
            kek = key_path.read_bytes()
        except FileNotFoundError:
            raise self._unavailable(key_id) from None
        if len(kek) != DATA_KEY_SIZE:
            raise IntegrityError(
                f"key file {key_path} holds {len(kek)} bytes, expected {DATA_KEY_SIZE}; it was "
                "altered. Nothing was read."
            )
        try:
            dek = AESGCM(kek).decrypt(
                wrapped_key[:_NONCE_SIZE], wrapped_key[_NONCE_SIZE:], canonical_json(dict(context))
            )
        except (InvalidTag, ValueError):
            raise IntegrityError(
                f"the wrapped data key does not authenticate under local key {key_id} with the "
                "recorded encryption context: the header's wrapped key or context was altered "
                "or copied from another snapshot. Nothing was read."
            ) from None
        return dek

    def _destroy(self, key_path: Path) -> None:
        """Overwrite a key file with zeros, flush it to disk, then unlink it."""
        try:
            descriptor = os.open(key_path, os.O_WRONLY)
        except FileNotFoundError:
            return
        with os.fdopen(descriptor, "wb") as out:
            out.write(b"\0" * max(DATA_KEY_SIZE, os.fstat(out.fileno()).st_size))
            out.flush()
            os.fsync(out.fileno())
        key_path.unlink(missing_ok=True)
        _fsync_dir(key_path.parent)

    def shred(self, key_id: str, *, reason: str) -> ShredResult:
        """Destroy the KEK ``key_id``, leaving a tombstone; idempotent.

        Raises:
            KeyUnavailableError: When neither the key nor its tombstone is here.
        """
        key_path, tombstone = self._paths(key_id)
        already = tombstone.exists()
        if not already:
            if not key_path.exists():
                raise self._unavailable(key_id)
            record = {"key_id": key_id, "provider": self.provider, "reason": reason,
                      "shredded_at": _utc()}  # fmt: skip
            try:
                _write_new(tombstone, canonical_json(record))
            except FileExistsError:  # a concurrent shred wrote it first; its record stands
                already = True
        self._destroy(key_path)
        record = self._tombstone(tombstone)
        return ShredResult(
            self.provider,
            key_id,
            record.get("shredded_at"),
            record.get("reason"),
            already_shredded=already,
        )

    def shredded(self, key_id: str) -> bool:
        """Whether the key's tombstone exists."""
        return self._paths(key_id)[1].exists()

    def discard(self, key_id: str) -> None:
        """Destroy a KEK no stored object uses (no tombstone: nothing was erased)."""
        self._destroy(self._paths(key_id)[0])


# -- AWS KMS -------------------------------------------------------------------------------


def check_kms_endpoint(endpoint_url: str | None, *, allow_loopback_http: bool) -> None:
    """Refuse a KMS endpoint that is not https (plain http only to loopback, when allowed).

    Raises:
        ConfigurationError: Naming the endpoint and what is accepted.
    """
    from secure_pipeline.storage.s3 import check_endpoint

    check_endpoint(endpoint_url, allow_loopback_http=allow_loopback_http, name=KMS_ENDPOINT_VAR)


def make_kms_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """Build a boto3 KMS client with standard retries and timeouts.

    Raises:
        ConfigurationError: When no region is configured.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    config = Config(
        retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60
    )
    try:
        return boto3.client("kms", endpoint_url=endpoint_url, region_name=region, config=config)
    except NoRegionError:
        raise ConfigurationError(
            "the KMS keyring needs a region: set AWS_REGION (or the store's region)"
        ) from None


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class KmsKeyring(Keyring):
    """One AWS KMS symmetric key per snapshot; shredding schedules its deletion.

    Unwrapping checks the key's state with ``DescribeKey`` before ``Decrypt``: a key pending
    deletion is erased from the moment it was shredded (real KMS refuses to decrypt with it;
    checking first gives every KMS implementation the same behaviour and a clear error).

    Args:
        client: A boto3 KMS client; built on first use from ``endpoint_url`` and ``region``.
        endpoint_url: A custom endpoint (https, or http to loopback if allowed).
        region: The region of the keys.
        allow_loopback_http: Accept a plain-http loopback endpoint (local tests only).
        deletion_window_days: Days KMS waits before deleting a shredded key's material
            (7..30). Reads fail from the moment of shredding either way.

    Raises:
        ConfigurationError: When the endpoint or window is not acceptable.
    """

    provider: ClassVar[str] = "kms"

    def __init__(
        self,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        allow_loopback_http: bool = False,
        deletion_window_days: int = MIN_DELETION_WINDOW_DAYS,
    ) -> None:
        check_kms_endpoint(endpoint_url, allow_loopback_http=allow_loopback_http)
        if (
            type(deletion_window_days) is not int
            or not MIN_DELETION_WINDOW_DAYS <= deletion_window_days <= MAX_DELETION_WINDOW_DAYS
        ):
            raise ConfigurationError(
                f"the key deletion window must be {MIN_DELETION_WINDOW_DAYS}..."
                f"{MAX_DELETION_WINDOW_DAYS} days (what KMS accepts), found "
                f"{deletion_window_days!r}"
            )
        self.endpoint_url = endpoint_url
        self.region = region
        self.deletion_window_days = deletion_window_days
        self._client = client

    def __repr__(self) -> str:
        return f"KmsKeyring(endpoint_url={self.endpoint_url!r}, region={self.region!r})"

    def describe(self) -> str:
        """Where this keyring's keys live, for messages."""
        return f"AWS KMS ({self.endpoint_url or 'AWS'}, region {self.region or 'default'})"

    @property
    def client(self) -> Any:
        """The KMS client, built on first use."""
        if self._client is None:
            self._client = make_kms_client(self.endpoint_url, self.region)
        return self._client

    def _check_id(self, key_id: str) -> None:
        if not _KMS_KEY_ARN.fullmatch(key_id):
            raise IntegrityError(
                f"{key_id[:120]!r} is not a KMS key ARN; the encryption header was altered. "
                "Nothing was read or changed."
            )

    def _unavailable(self, key_id: str, why: str) -> KeyUnavailableError:
        return KeyUnavailableError(
            f"data key {key_id} (provider kms) cannot be used: {why}; nothing was changed. "
            f"This store uses {self.describe()}: check AWS_REGION, {KMS_ENDPOINT_VAR}, the "
            "credentials' kms:DescribeKey/kms:Decrypt permissions, and that the key's account "
            "is this one.",
            provider=self.provider,
            key_id=key_id,
        )

    def _metadata(self, key_id: str) -> dict[str, Any] | None:
        """DescribeKey's KeyMetadata; None when KMS does not know the key."""
        from botocore.exceptions import ClientError

        self._check_id(key_id)
        try:
            return self.client.describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as exc:
            if _error_code(exc) == "NotFoundException":
                return None
            if _error_code(exc) in ("AccessDeniedException", "KMSInvalidStateException"):
                why = f"DescribeKey answered {_error_code(exc)}"
                raise self._unavailable(key_id, why) from None
            raise

    def new_data_key(self, context: Mapping[str, str]) -> DataKey:
        """Create a KMS key for one snapshot and a data key under it, bound to ``context``."""
        asset = context.get(ASSET_CONTEXT, "")
        created = self.client.create_key(
            Description=f"secure-pipeline snapshot data key ({asset})"[:8192],
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=[
                {"TagKey": PURPOSE_TAG, "TagValue": PURPOSE},
                {"TagKey": ASSET_TAG, "TagValue": asset[:_TAG_VALUE_LIMIT]},
            ],
        )["KeyMetadata"]
        try:
            generated = self.client.generate_data_key(
                KeyId=created["Arn"], KeySpec="AES_256", EncryptionContext=dict(context)
            )
        except BaseException:
            # A key that wraps nothing protects nothing; do not leave it behind.
            self.client.schedule_key_deletion(
                KeyId=created["KeyId"], PendingWindowInDays=self.deletion_window_days
            )
            raise
        return DataKey(created["Arn"], generated["Plaintext"], generated["CiphertextBlob"])

    def unwrap(self, key_id: str, wrapped_key: bytes, context: Mapping[str, str]) -> bytes:
        """Recover a data key: DescribeKey (must be Enabled), then Decrypt.

        Raises:
            ErasedError: When the key is pending deletion (it was shredded).
            KeyUnavailableError: When KMS does not know the key here, or it is disabled.
            IntegrityError: When the wrapped key or context was altered.
        """
        from botocore.exceptions import ClientError

        metadata = self._metadata(key_id)
        if metadata is None:
            raise self._unavailable(key_id, "KMS does not know this key in this account/region")
        state = metadata.get("KeyState")
        if state == "PendingDeletion":
            deletion = metadata.get("DeletionDate")
            raise ErasedError(
                f"KMS key {key_id} is pending deletion (material deleted "
                f"{_utc(deletion) if deletion else 'at the end of its window'})",
                provider=self.provider,
                key_id=key_id,
            )
        if state != "Enabled":
            raise self._unavailable(key_id, f"its state is {state}, not Enabled")
        try:
            plaintext = self.client.decrypt(
                CiphertextBlob=wrapped_key, KeyId=key_id, EncryptionContext=dict(context)
            )["Plaintext"]
        except ClientError as exc:
            if _error_code(exc) in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise IntegrityError(
                    f"KMS refused to unwrap the data key under {key_id} with the recorded "
                    f"encryption context ({_error_code(exc)}): the header's wrapped key or "
                    "context was altered or copied from another snapshot. Nothing was read."
                ) from None
            if _error_code(exc) in ("AccessDeniedException", "DisabledException"):
                raise self._unavailable(key_id, f"Decrypt answered {_error_code(exc)}") from None
            raise
        if len(plaintext) != DATA_KEY_SIZE:
            raise IntegrityError(f"KMS returned a {len(plaintext)}-byte data key under {key_id}")
        return plaintext

    def shred(self, key_id: str, *, reason: str) -> ShredResult:
        """Schedule deletion of the KMS key ``key_id``; idempotent.

        Raises:
            KeyUnavailableError: When KMS does not know the key (already deleted, or another
                account/region).
        """
        metadata = self._metadata(key_id)
        if metadata is None:
            raise self._unavailable(key_id, "KMS does not know this key in this account/region")
        if metadata.get("KeyState") == "PendingDeletion":
            deletion = metadata.get("DeletionDate")
            return ShredResult(
                self.provider, key_id, None, None, already_shredded=True,
                deletion_date=_utc(deletion) if deletion else None,
            )  # fmt: skip
        shredded_at = _utc()
        # KeyId from DescribeKey: every KMS implementation accepts the bare id here.
        response = self.client.schedule_key_deletion(
            KeyId=metadata["KeyId"], PendingWindowInDays=self.deletion_window_days
        )
        deletion = response.get("DeletionDate")
        return ShredResult(
            self.provider, key_id, shredded_at, reason, already_shredded=False,
            deletion_date=_utc(deletion) if deletion else None,
        )  # fmt: skip

    def shredded(self, key_id: str) -> bool:
        """Whether the key is pending deletion (False when KMS does not know it)."""
        metadata = self._metadata(key_id)
        return metadata is not None and metadata.get("KeyState") == "PendingDeletion"

    def discard(self, key_id: str) -> None:
        """Schedule deletion of a key no stored object uses."""
        metadata = self._metadata(key_id)
        if metadata is not None and metadata.get("KeyState") != "PendingDeletion":
            self.client.schedule_key_deletion(
                KeyId=metadata["KeyId"], PendingWindowInDays=self.deletion_window_days
            )


# -- from the environment ------------------------------------------------------------------


def keyring_from_environment(
    environment: env.Environment | None = None,
    *,
    resolve: Callable[[str], str | None] | None = None,
    data_keys_dir: Path | str | None = None,
    region: str | None = None,
    deletion_window_days: int = MIN_DELETION_WINDOW_DAYS,
) -> Keyring:
    """The keyring the environment configures.

    ``SECURE_PIPELINE_DATA_KEYRING`` is ``local`` or ``kms`` (default ``local`` in the local
    environment, ``kms`` in production, which refuses ``local``); the KMS keyring uses
    ``SECURE_PIPELINE_KMS_ENDPOINT`` (optional; https, or http to loopback locally) and
    ``AWS_REGION``.

    Args:
        environment: The environment; the current one when None.
        resolve: How to read a variable by name (default: `secure_pipeline.environment.read`);
            a resource passes one that prefers its own fields.
        data_keys_dir: The local keyring's directory (default ``<dev keys dir>/data-keys``).
        region: The KMS region when ``AWS_REGION`` is unset.
        deletion_window_days: The KMS key deletion window (7..30).

    Returns:
        A `LocalKeyring` or `KmsKeyring` (no network call is made yet).

    Raises:
        ConfigurationError: For an unknown provider, ``local`` in production, an endpoint that
            is not https, or a window outside 7..30.
    """
    environment = environment or env.current_environment()
    read = resolve or env.read
    production = environment is env.Environment.PRODUCTION
    value = read(KEYRING_VAR)
    provider = (value or ("kms" if production else "local")).strip().lower()
    if provider not in PROVIDERS:
        raise ConfigurationError(
            f"{KEYRING_VAR} must be one of {PROVIDERS}, found {value!r}. Unset it for the "
            "environment's default (local: local keyring; production: kms)."
        )
    if provider == "local":
        if production:
            raise ConfigurationError(
                f"{KEYRING_VAR}=local is refused in production: local key files are "
                "development keys on one machine. Use kms (the production default)."
            )
        if data_keys_dir is None:
            from secure_pipeline.trust.keys import dev_keys_dir

            data_keys_dir = dev_keys_dir() / DATA_KEYS_DIR
        return LocalKeyring(data_keys_dir)
    return KmsKeyring(
        endpoint_url=read(KMS_ENDPOINT_VAR),
        region=read("AWS_REGION") or region,
        allow_loopback_http=not production,
        deletion_window_days=deletion_window_days,
    )
