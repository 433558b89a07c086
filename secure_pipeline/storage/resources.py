"""Dagster resources for the snapshot store, chosen by environment.

``local`` uses a filesystem store under ``SECURE_PIPELINE_HOME`` unless a bucket is configured;
``production`` always uses S3, configured through ``dg.EnvVar`` so values are read in the run
worker and never shown in the UI. Either store gets the keyring of encrypted snapshots from
`secure_pipeline.storage.keyrings.keyring_from_environment` when it is built (in the run
worker); a resource field overrides the environment.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from secure_pipeline import environment as env
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.snapshots import SnapshotStore

if TYPE_CHECKING:
    from secure_pipeline.storage.keyrings import Keyring

STORE_RESOURCE_KEY = "snapshot_store"


class SnapshotStoreResource(dg.ConfigurableResource):
    """Base of the snapshot store resources: gives assets the store and its audit trail."""

    data_keyring: str | None = Field(
        default=None,
        description="Keyring of encrypted snapshots, `local` or `kms`; default "
        "SECURE_PIPELINE_DATA_KEYRING, else `local` (local) / `kms` (production).",
    )
    data_keys_dir: str | None = Field(
        default=None,
        description="Directory of the local keyring; default <dev keys dir>/data-keys.",
    )
    kms_endpoint_url: str | None = Field(
        default=None,
        description="Custom KMS endpoint (https); default SECURE_PIPELINE_KMS_ENDPOINT.",
    )
    key_deletion_window_days: int = Field(
        default=7, description="Days KMS waits before deleting a shredded key (7..30)."
    )

    _store: SnapshotStore | None = PrivateAttr(default=None)
    _audit: AuditLog | None = PrivateAttr(default=None)

    def _build_store(self) -> SnapshotStore:
        raise NotImplementedError

    def _region(self) -> str | None:
        return None

    def build_keyring(self) -> "Keyring":
        """The keyring the store uses: the environment's, with this resource's overrides."""
        from secure_pipeline.storage.keyrings import (
            KEYRING_VAR,
            KMS_ENDPOINT_VAR,
            keyring_from_environment,
        )

        overrides = {KEYRING_VAR: self.data_keyring, KMS_ENDPOINT_VAR: self.kms_endpoint_url}

        def resolve(name: str) -> str | None:
            return overrides.get(name) or env.read(name)

        return keyring_from_environment(
            env.current_environment(),
            resolve=resolve,
            data_keys_dir=Path(self.data_keys_dir) if self.data_keys_dir else None,
            region=self._region(),
            deletion_window_days=self.key_deletion_window_days,
        )

    def get_store(self) -> SnapshotStore:
        """The store, built once per resource instance."""
        if self._store is None:
            self._store = self._build_store()
        return self._store

    def get_audit_log(self) -> AuditLog:
        """The audit trail kept in the same store.

        One log object per resource instance, so a step finds the head of the chain once and
        then appends without searching for it again.
        """
        if self._audit is None:
            self._audit = AuditLog(self.get_store())
        return self._audit


class LocalSnapshotStoreResource(SnapshotStoreResource):
    """Snapshot store in a local directory (the embedded default)."""

    root: str = Field(description="Directory holding snapshots and the audit trail.")

    def _build_store(self) -> SnapshotStore:
        from secure_pipeline.storage.local import LocalSnapshotStore

        return LocalSnapshotStore(self.root, keyring=self.build_keyring())


class S3SnapshotStoreResource(SnapshotStoreResource):
    """Snapshot store in an S3 bucket (versioning and Object Lock recommended)."""

    bucket: str = Field(description="Bucket name.")
    endpoint_url: str | None = Field(default=None, description="Custom S3 endpoint (https).")
    region: str | None = Field(default=None, description="Bucket region.")
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key for every write.")
    allow_loopback_http: bool = Field(
        default=False, description="Accept http to 127.0.0.1/localhost (local tests only)."
    )
    multipart_threshold_bytes: int = Field(
        default=64 * 1024 * 1024, description="Objects of at least this size go up in parts."
    )

    def _region(self) -> str | None:
        return self.region

    def _build_store(self) -> SnapshotStore:
        from secure_pipeline.storage.s3 import S3SnapshotStore

        return S3SnapshotStore(
            self.bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            kms_key_id=self.kms_key_id,
            allow_loopback_http=self.allow_loopback_http,
            multipart_threshold=self.multipart_threshold_bytes,
            keyring=self.build_keyring(),
        )


def store_resource(environment: env.Environment, *, resolve: bool = False) -> SnapshotStoreResource:
    """The store resource for ``environment``.

    Args:
        environment: The (validated) environment.
        resolve: Read values now (command-line use) instead of passing ``dg.EnvVar``
            references that Dagster resolves in the run worker.

    Returns:
        A local or S3 store resource.
    """
    if environment is env.Environment.LOCAL and not env.is_set("SECURE_PIPELINE_S3_BUCKET"):
        return LocalSnapshotStoreResource(root=str(env.secure_pipeline_home() / "store"))

    def value(name: str) -> Any:
        if not env.is_set(name):
            return None
        return env.read(name) if resolve else dg.EnvVar(name)

    return S3SnapshotStoreResource(
        bucket=value("SECURE_PIPELINE_S3_BUCKET"),
        endpoint_url=value("SECURE_PIPELINE_S3_ENDPOINT"),
        region=value("AWS_REGION"),
        kms_key_id=value("SECURE_PIPELINE_S3_KMS_KEY_ID"),
        allow_loopback_http=environment is env.Environment.LOCAL,
    )


_RESOURCES: dict[tuple[Any, ...], dict[str, Any]] = {}


def build_resources(environment: env.Environment) -> dict[str, Any]:
    """All resources of a code location's pipelines for ``environment``.

    The same objects for the same configuration: every pipeline of a code location shares its
    store and IO manager, and Dagster merges definitions only when their resources are
    identical objects.
    """
    from secure_pipeline.storage.io_manager import SnapshotIOManager

    store = store_resource(environment)
    key = (environment, repr(store))
    if key not in _RESOURCES:
        _RESOURCES[key] = {STORE_RESOURCE_KEY: store, "io_manager": SnapshotIOManager(store=store)}
    return _RESOURCES[key]
