"""IO manager over the snapshot store: immutable outputs, verified inputs, no pickle.

Outputs are stored by type — tables as zstd Parquet, ``bytes`` as they are, JSON documents as
canonical JSON — and anything else is refused rather than pickled. Each output's digest becomes
its Dagster data version, so the UI tracks staleness by content.

An input is loaded from the snapshot that the upstream *materialization record* names (key and
digest in its metadata), never from "the newest file" in a folder: a file planted next to the
real snapshot is ignored, and a changed snapshot is refused.
"""

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.names import IDENTITY_TAG
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import (
    FILESET_FORMAT,
    SnapshotRef,
    SnapshotStore,
    canonical_json,
    snapshot_key,
)

SNAPSHOT_KEY = "snapshot_key"
SHA256 = "sha256"
FORMAT = "format"
URI = "uri"
SIZE = "bytes"
AUDIT_RECORD = "audit_record"
EXTENSION_METADATA = "secure_pipeline/extension"
# Definition metadata of an asset whose rows can be tied to a person: its snapshots are
# envelope-encrypted, so that erasure and retention can crypto-shred them.
ENCRYPTED_METADATA = "secure_pipeline/encrypted"


def snapshot_metadata(
    ref: SnapshotRef, fmt: str, audit_record: tuple[int, str] | None = None
) -> dict[str, Any]:
    """Materialization metadata that locates and pins a snapshot.

    Args:
        ref: The stored snapshot.
        fmt: Its format.
        audit_record: ``(seq, hash)`` of the audit record written for it; recorded in the
            Dagster event log, it anchors the audit trail (see ``audit verify --anchor``).

    Returns:
        Metadata for ``MaterializeResult`` or ``add_output_metadata``.
    """
    metadata: dict[str, Any] = {
        URI: dg.MetadataValue.path(ref.uri) if ref.uri.startswith("file:") else ref.uri,
        SNAPSHOT_KEY: ref.key,
        SHA256: ref.sha256,
        SIZE: ref.size,
        FORMAT: fmt,
        "stored": "new snapshot" if ref.created else "identical snapshot already stored",
    }
    if ref.version_id:
        metadata["s3_version_id"] = ref.version_id
    if audit_record is not None:
        metadata[AUDIT_RECORD] = f"{audit_record[0]}:{audit_record[1]}"
    return metadata


def store_snapshot(
    store: SnapshotStoreResource,
    asset_key: dg.AssetKey,
    data: bytes | Iterable[bytes],
    *,
    ext: str,
    fmt: str,
    partition: str | None = None,
    rows: int | None = None,
    schema: Mapping[str, str] | None = None,
    upstream: Mapping[str, str] | None = None,
    run_id: str | None = None,
    code_version: str | None = None,
    identity: str,
    encrypt: bool = False,
    describe: Callable[[], Mapping[str, Any]] | None = None,
) -> tuple[SnapshotRef, dict[str, Any]]:
    """Store an asset's serialized value, audit it, and build its materialization metadata.

    What the IO manager does with every output; an asset that must know its own digest before
    it returns (to bind a check verdict to it) calls this itself and returns the metadata with
    ``data_version=DataVersion(ref.sha256)``.

    Args:
        store: The snapshot store resource.
        asset_key: The asset stored.
        data: Its serialized bytes, or a stream of them (stored as it is made, never held
            whole; nothing is stored when the stream raises).
        ext: Key extension.
        fmt: Format recorded in the manifest.
        partition: The partition, if any.
        rows: Row count of a table.
        schema: Column types of a table.
        upstream: Digests of the inputs it was computed from.
        run_id: The run storing it.
        code_version: The code version that computed it.
        identity: The stage identity that signs the ``snapshot.stored`` record.
        encrypt: Envelope-encrypt the snapshot under a data key of its own (rows that can be
            tied to a person).
        describe: For a stream: called once it is consumed, for ``rows`` and ``schema``
            (known only then); they replace the arguments of those names.

    Returns:
        The stored snapshot and its metadata.
    """
    from secure_pipeline.trust.signers import signer_for

    found: dict[str, Any] = {"rows": rows, "schema": schema}

    def manifest_fields() -> dict[str, Any]:
        if describe is not None:
            found.update(describe())
        return {
            "schema": dict(found["schema"]) if found["schema"] is not None else None,
            "extra": {"rows": found["rows"]} if found["rows"] is not None else {},
        }

    common = {"ext": ext, "format": fmt, "partition": partition,
              "upstream": dict(upstream or {}), "run_id": run_id,
              "code_version": code_version, "encrypt": encrypt}  # fmt: skip
    snapshots = store.get_store()
    if isinstance(data, bytes | bytearray | memoryview):
        ref = snapshots.put_bytes(asset_key.path, bytes(data), **common, **manifest_fields())
    else:
        ref = snapshots.put_stream(asset_key.path, data, describe=manifest_fields, **common)
    rows, schema = found["rows"], found["schema"]
    record = store.get_audit_log().append(
        "snapshot.stored",
        signer=signer_for(identity),
        actor=f"asset:{asset_key.to_user_string()}",
        run_id=run_id,
        subject=ref.sha256,
        details={"key": ref.key, "format": fmt, "bytes": ref.size, "new": ref.created,
                 "encrypted": encrypt},
    )  # fmt: skip
    metadata = snapshot_metadata(ref, fmt, (record.seq, record.hash))
    metadata["encrypted"] = encrypt
    if rows is not None:
        metadata["dagster/row_count"] = rows
    if schema is not None:
        metadata["dagster/column_schema"] = dg.TableSchema(
            columns=[dg.TableColumn(name, dtype) for name, dtype in schema.items()]
        )
    return ref, metadata


def _value(metadata: Mapping[str, Any], name: str) -> Any:
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


def _upstream_digests(context: dg.OutputContext) -> dict[str, str]:
    """Data versions (our digests) of the inputs this output was computed from."""
    try:
        step = context.step_context
    except dg.DagsterInvariantViolationError:
        return {}  # built outside a run (unit tests of the IO manager)
    layer = step.job_def.asset_layer
    digests: dict[str, str] = {}
    for key in sorted(layer.get(context.asset_key).parent_keys):
        info = step.maybe_fetch_and_get_input_asset_version_info(key)
        if info is not None and info.data_version is not None:
            digests[key.to_user_string()] = info.data_version.value
    return digests


def recorded_snapshot(
    record: Any, asset_key: dg.AssetKey, partition: str | None = None
) -> tuple[str, str, str]:
    """The snapshot a materialization record names, after checking the record is sound.

    Args:
        record: An ``EventLogRecord`` of an asset materialization.
        asset_key: The asset it must belong to.
        partition: The partition it must belong to, if any.

    Returns:
        ``(key, sha256, format)``.

    Raises:
        IntegrityError: When the record names no snapshot, was reported without a run, has a
            data version other than the digest, or names a snapshot of another asset.
    """
    materialization = record.asset_materialization
    metadata = materialization.metadata
    asset = asset_key.to_user_string()
    key, digest, fmt = (_value(metadata, n) for n in (SNAPSHOT_KEY, SHA256, FORMAT))
    if not (key and digest and fmt):
        raise IntegrityError(
            f"the materialization of {asset} (run {record.run_id}) records no snapshot: it was "
            "not stored through the snapshot store. Re-materialize it."
        )
    if not record.run_id:
        raise IntegrityError(
            f"the latest materialization of {asset} was reported without a run; only "
            "materializations computed by a run are loaded. Re-materialize it."
        )
    version = (materialization.tags or {}).get("dagster/data_version")
    if version != digest:
        raise IntegrityError(
            f"the materialization record of {asset} (run {record.run_id}) is inconsistent: "
            f"data version {version} but snapshot digest {digest}"
        )
    # The record must name a snapshot *of this asset and partition*: a record pointing at
    # another asset's (valid, verified) bytes would otherwise be loaded as this input.
    expected_dir = snapshot_key(asset_key.path, digest, "bin", partition).rsplit("/", 1)[0]
    directory, _, filename = str(key).rpartition("/")
    if directory != expected_dir or not filename.startswith(f"{digest}."):
        raise IntegrityError(
            f"the materialization record of {asset} (run {record.run_id}) names snapshot "
            f"{key}, which is not a snapshot of {asset}"
            + (f" partition {partition!r}" if partition is not None else "")
            + f" with digest {digest}; refusing to load it"
        )
    return str(key), str(digest), str(fmt)


def latest_record(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> Any:
    """The latest materialization record of ``key`` (of one of its partitions, if given).

    Raises:
        Failure: When it (that partition) has not been materialized yet.
    """
    if partition is None:
        record = instance.get_latest_materialization_event(key)
    else:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        )
        record = result.records[0] if result.records else None
    if record is None:
        where = f" partition {partition}" if partition is not None else ""
        raise dg.Failure(f"{key.to_user_string()}{where} has not been materialized yet")
    return record


def load_recorded(
    store: SnapshotStore,
    record: Any,
    asset_key: dg.AssetKey,
    partition: str | None = None,
    *,
    arrow: bool = False,
) -> Any:
    """Load, verified, the snapshot a materialization record names.

    Args:
        store: The snapshot store.
        record: The materialization's ``EventLogRecord``.
        asset_key: The asset it must belong to.
        partition: The partition it must belong to, if any.
        arrow: Return tables as pyarrow Tables instead of pandas DataFrames.

    Returns:
        A table, bytes, a JSON document, or for a fileset a dict of member name to bytes.

    Raises:
        IntegrityError: When the record is unsound or the bytes fail verification.
    """
    key, digest, fmt = recorded_snapshot(record, asset_key, partition)
    if fmt == FILESET_FORMAT:
        return store.read_fileset((key, digest))
    data = store.read_bytes((key, digest))
    if fmt == "parquet":
        from secure_pipeline.storage.tables import parquet_to_table

        table = parquet_to_table(data)
        return table if arrow else table.to_pandas()
    if fmt == "json":
        return json.loads(data)
    return data


class SnapshotIOManager(dg.ConfigurableIOManager):
    """Stores outputs as immutable snapshots and loads inputs from recorded snapshots."""

    store: dg.ResourceDependency[SnapshotStoreResource]

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Serialize ``obj`` and store it create-only; record metadata and data version.

        Raises:
            TypeError: For a type that could only be stored by pickling it.
        """
        if not context.has_asset_key:
            raise TypeError(
                "SnapshotIOManager stores asset outputs only; give op outputs an asset key"
            )
        identity = (context.op_def.tags or {}).get(IDENTITY_TAG)
        if not identity:
            raise ConfigurationError(
                f"asset {context.asset_key.to_user_string()} has no {IDENTITY_TAG!r} op tag: "
                "every stored snapshot is recorded by a signing identity (ingest, train, "
                "release); give the asset op_tags={...: 'ingest'} or the like"
            )
        fmt, ext, data, rows, schema = self._serialize(context, obj)
        ref, metadata = store_snapshot(
            self.store,
            context.asset_key,
            data,
            ext=ext,
            fmt=fmt,
            partition=context.asset_partition_key if context.has_asset_partitions else None,
            rows=rows,
            schema=schema,
            upstream=_upstream_digests(context),
            run_id=context.run_id,
            code_version=context.version,
            identity=str(identity),
            encrypt=bool((context.definition_metadata or {}).get(ENCRYPTED_METADATA, False)),
        )
        if "dagster/column_schema" in (context.definition_metadata or {}):
            # The asset declares its columns (descriptions, roles, ranges): the bare names and
            # types of the stored table would replace that view in the UI. The snapshot's
            # manifest keeps the stored types either way.
            metadata.pop("dagster/column_schema", None)
        context.add_output_metadata(metadata)
        # Our digest *is* the data version: unchanged content shows as up to date in the UI.
        context.step_context.set_data_version(context.asset_key, dg.DataVersion(ref.sha256))

    def _serialize(
        self, context: dg.OutputContext, obj: Any
    ) -> tuple[str, str, bytes, int | None, dict[str, str] | None]:
        if isinstance(obj, bytes | bytearray | memoryview):
            ext = (context.definition_metadata or {}).get(EXTENSION_METADATA, "bin")
            return "bytes", str(ext), bytes(obj), None, None
        if isinstance(obj, Mapping | list):
            return "json", "json", canonical_json(obj), None, None
        module = type(obj).__module__.split(".")[0]
        if module in ("pandas", "pyarrow"):
            from secure_pipeline.storage.tables import schema_summary, table_to_parquet, to_arrow

            table = to_arrow(obj)
            return (
                "parquet",
                "parquet",
                table_to_parquet(table),
                table.num_rows,
                schema_summary(table),
            )
        raise TypeError(
            f"SnapshotIOManager cannot store a {type(obj).__module__}.{type(obj).__qualname__} "
            f"for {context.asset_key.to_user_string()}: it stores pandas DataFrames and pyarrow "
            "Tables (Parquet), bytes, and JSON mappings or lists. Arbitrary objects would need "
            "pickle, which this project never uses; convert the value or return a "
            "MaterializeResult and store it yourself."
        )

    def load_input(self, context: dg.InputContext) -> Any:
        """Load the snapshot recorded by the upstream materialization, verified.

        Returns:
            A DataFrame (or pyarrow Table when the input is annotated so), bytes, a JSON
            document, or for a fileset a dict of member name to bytes. For several upstream
            partitions, a dict of partition key to value.

        Raises:
            IntegrityError: When no snapshot is recorded or its bytes changed.
        """
        if context.has_asset_partitions and len(context.asset_partition_keys) != 1:
            return {key: self._load(context, key) for key in sorted(context.asset_partition_keys)}
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._load(context, partition)

    def _load(self, context: dg.InputContext, partition: str | None) -> Any:
        record = self._materialization(context, partition)
        wants_arrow = getattr(context.dagster_type.typing_type, "__module__", "").startswith(
            "pyarrow"
        )
        return load_recorded(
            self.store.get_store(), record, context.asset_key, partition, arrow=wants_arrow
        )

    def _materialization(self, context: dg.InputContext, partition: str | None) -> Any:
        """The materialization record whose snapshot this step must read.

        Unpartitioned inputs use the exact record Dagster pinned for this step's provenance, so
        the digest recorded as this step's input version is the one that was read.
        """
        storage_ids = None
        if partition is None:
            try:
                info = context.step_context.maybe_fetch_and_get_input_asset_version_info(
                    context.asset_key
                )
            except dg.DagsterInvariantViolationError:
                info = None  # loaded outside a run
            if info is not None:
                storage_ids = [info.storage_id]
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=context.asset_key,
                asset_partitions=[partition] if partition is not None else None,
                storage_ids=storage_ids,
            ),
            limit=1,
        )
        if not result.records:
            where = f" partition {partition!r}" if partition is not None else ""
            raise IntegrityError(
                f"no materialization of {context.asset_key.to_user_string()}{where} is "
                "recorded; materialize it before its downstream assets"
            )
        return result.records[0]
