"""Immutable, content-addressed snapshot storage, its IO manager and the audit trail.

Backends are imported lazily (``secure_pipeline.storage.local``, ``secure_pipeline.storage.s3``)
so that importing this package does not import boto3; the encryption and keyring modules
import ``cryptography`` and ``boto3`` only inside the functions that use them.
"""

from secure_pipeline.storage.audit import AuditLog, AuditRecord, ChainStatus
from secure_pipeline.storage.encryption import EncryptionInfo
from secure_pipeline.storage.keyrings import (
    Keyring,
    KmsKeyring,
    LocalKeyring,
    ShredResult,
    keyring_from_environment,
)
from secure_pipeline.storage.snapshots import SnapshotManifest, SnapshotRef, SnapshotStore

__all__ = [
    "AuditLog",
    "AuditRecord",
    "ChainStatus",
    "EncryptionInfo",
    "Keyring",
    "KmsKeyring",
    "LocalKeyring",
    "ShredResult",
    "SnapshotManifest",
    "SnapshotRef",
    "SnapshotStore",
    "keyring_from_environment",
]
