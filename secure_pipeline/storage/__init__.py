"""Immutable, content-addressed snapshot storage, its IO manager and the audit trail.

Backends are imported lazily (``secure_pipeline.storage.local``, ``secure_pipeline.storage.s3``)
so that importing this package does not import boto3.
"""

from secure_pipeline.storage.audit import AuditLog, AuditRecord, ChainStatus
from secure_pipeline.storage.snapshots import SnapshotManifest, SnapshotRef, SnapshotStore

__all__ = [
    "AuditLog",
    "AuditRecord",
    "ChainStatus",
    "SnapshotManifest",
    "SnapshotRef",
    "SnapshotStore",
]
