"""The raw ingestion asset: source files stored as received, as immutable snapshots.

``raw_<source>`` fetches every file of the source through its connector, streams each into the
snapshot store (hashing in the same pass), stores a fileset index naming every file by digest —
the index digest is the asset's data version — and a provenance record of this ingestion, and
appends one audit event. Nothing is parsed here but for erasure: when the schema has
``identifier`` columns, each file streams through `secure_pipeline.privacy.subjects.EntryFilter`,
which drops the records of subjects on the (verified) erasure list and indexes the others; the
stored bytes are then what was received minus those records, and the provenance records both.
Files of a pipeline holding personal data are stored encrypted, so erasure can crypto-shred them.
Validation downstream works from these exact bytes.
"""

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from secure_pipeline import environment as env
from secure_pipeline.ingestion.connectors import connector_for, join_location
from secure_pipeline.ingestion.provenance import ProvenanceRecord, provenance_document
from secure_pipeline.metadata import (
    COLUMN_SCHEMA,
    daily_partitions,
    declared_table_schema,
    ingest_freshness_policy,
    partition_of,
    table,
)
from secure_pipeline.redaction import redact_text, redact_uri
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.spec.data import PARTITION_PLACEHOLDER
from secure_pipeline.storage.io_manager import snapshot_metadata
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import FILESET_FORMAT, SnapshotRef, SnapshotStore, utc_now
from secure_pipeline.trust.identities import INGEST


def source_location(pipeline: PipelineSpec) -> str:
    """The source location for this run: the override variable if set, else the default."""
    variable = pipeline.source.location_env_var
    if variable:
        value = dg.EnvVar(variable).get_value()
        if value:
            return value.strip()
    return pipeline.source.location


def landing_location(pipeline: PipelineSpec) -> str | None:
    """The landing zone (``s3://bucket/prefix/``) named by the spec's variable, if set."""
    variable = pipeline.orchestration.landing_env_var
    value = dg.EnvVar(variable).get_value() if variable else None
    return value.strip() if value and value.strip() else None


class SourceBatch(dg.Config):
    """Which delivery a run ingests; the landing-zone sensor sets it, and it is empty otherwise.

    Attributes:
        location: A batch folder inside the pipeline's landing zone (``s3://…/batch/``).
        objects: Per source file member, the ``version_id`` and ``etag`` the sensor pinned.
    """

    location: str = ""
    objects: dict[str, dict[str, str]] = {}


def batch_location(
    pipeline: PipelineSpec, batch: SourceBatch, partition: str | None = None
) -> tuple[str, dict[str, dict[str, str]]]:
    """The location and object pins a run ingests, refusing anything outside the landing zone.

    Run configuration can be typed by anyone who may launch a run; it may choose a batch of
    the landing zone, never another place to ingest from, and for a partitioned pipeline only
    the batch of the run's own day.

    Args:
        pipeline: The spec.
        batch: The run's configuration.
        partition: The day the run ingests, for a partitioned pipeline.

    Raises:
        UntrustedSourceError: When the location is outside the landing zone, is not the
            batch of the run's day, or pins name files the source does not have.
    """
    from secure_pipeline.errors import ConfigurationError, UntrustedSourceError
    from secure_pipeline.ingestion.landing import batch_day, parse_landing_uri

    if not batch.location:
        if batch.objects:
            raise UntrustedSourceError("run config pins objects but names no batch location")
        return source_location(pipeline), {}
    zone = landing_location(pipeline)
    if zone is None:
        raise UntrustedSourceError(
            f"run config asks to ingest {redact_uri(batch.location)!r}, but no landing zone is "
            f"configured ({pipeline.orchestration.landing_env_var or 'the spec names none'}); "
            "only a batch of the landing zone may be chosen per run"
        )
    try:
        zone_bucket, zone_prefix = parse_landing_uri(zone)
        bucket, prefix = parse_landing_uri(batch.location)
    except ConfigurationError as exc:
        # parse_landing_uri quotes the location as typed, which may hold a signed query.
        raise UntrustedSourceError(redact_text(str(exc))) from None
    if bucket != zone_bucket or not prefix.startswith(zone_prefix) or prefix == zone_prefix:
        raise UntrustedSourceError(
            f"run config location {redact_uri(batch.location)!r} is not a batch folder of the "
            f"landing zone {redact_uri(zone)!r}; nothing was ingested"
        )
    if partition is not None and batch_day(prefix[len(zone_prefix) :]) != partition:
        raise UntrustedSourceError(
            f"run config batch {redact_uri(batch.location)!r} is not a batch of {partition}, "
            "the day this run ingests: a day is ingested from a folder named after it "
            f"({partition}/ or {partition}T...); nothing was ingested"
        )
    members = {f.member for f in pipeline.source.files}
    unknown = sorted(set(batch.objects) - members)
    if unknown:
        raise UntrustedSourceError(
            f"run config pins {unknown}, which are not files of source {pipeline.source.name!r} "
            f"(its files: {sorted(members)})"
        )
    for member, pin in batch.objects.items():
        if not set(pin) <= {"version_id", "etag"} or not all(pin.values()):
            raise UntrustedSourceError(
                f"run config pin of {member!r} must hold a non-empty version_id and/or etag, "
                f"found {sorted(pin)}"
            )
    return f"s3://{bucket}/{prefix}", {m: dict(p) for m, p in batch.objects.items()}


def _entry_filters(pipeline: PipelineSpec, store: SnapshotStore) -> Callable[[str], Any] | None:
    """A maker of each source file's entry filter, or None when the schema has no identifier.

    The erasure list is read (every entry verified) once per ingestion, before any file is
    fetched: a list that does not verify refuses the ingestion.

    Raises:
        SignatureError: When an erasure list entry is not the privacy identity's.
    """
    if not pipeline.schema.identifier_columns:
        return None
    from secure_pipeline.privacy.subjects import EntryFilter, erased_subjects, subject_key
    from secure_pipeline.trust.policy import trust_policy

    key = subject_key(pipeline.name)
    erased = erased_subjects(store, pipeline.name, trust_policy())
    return lambda member: EntryFilter(pipeline.schema, key, erased, name=f"file {member!r}")


def _write_index(
    pipeline: PipelineSpec,
    store: SnapshotStore,
    index: SnapshotRef,
    members: Mapping[str, SnapshotRef],
    filters: Mapping[str, Any],
    context: dg.AssetExecutionContext,
) -> dict[str, Any]:
    """Store the ingestion's subject index; return what its audit record says of it."""
    from secure_pipeline.privacy.subjects import write_subject_index

    snapshots = {}
    for member, ref in members.items():
        info = store.encryption_info(ref)
        snapshots[member] = {
            "key": ref.key,
            "sha256": ref.sha256,
            "size": ref.size,
            "provider": info.provider if info else None,
            "key_id": info.key_id if info else None,
        }
    excluded = sum(f.excluded_rows for f in filters.values())
    written = write_subject_index(
        store,
        pipeline.name,
        index.sha256,
        b"".join(f.sorted_digests() for f in filters.values()),
        {
            "raw_index": {"key": index.key, "sha256": index.sha256},
            "members": snapshots,
            "created_at": utc_now(),
            "run_id": context.run.run_id,
            "rows": sum(f.rows for f in filters.values()),
            "excluded_rows": excluded,
        },
    )
    context.log.info(
        f"indexed {written['subjects']} data subjects; {excluded} records of erased subjects "
        "were excluded at entry"
    )
    # Digests and counts only: the audit trail never holds an identifier.
    return {
        "catalogue_sha256": written["catalogue_sha256"],
        "shards": written["shards"],
        "subjects": written["subjects"],
        "excluded_rows": excluded,
    }


def build_raw_asset(pipeline: PipelineSpec) -> dg.AssetsDefinition:
    """Build the ``raw_<source>`` asset of a pipeline.

    Args:
        pipeline: The pipeline spec.

    Returns:
        The asset definition.
    """
    source = pipeline.source
    key = pipeline.names.raw
    name = key.to_user_string()
    files = ", ".join(f"{f.member} ({f.path})" for f in source.files)
    description = (
        f"Raw `{source.name}` files exactly as received: {files}. Each file is stored "
        "byte-for-byte as an immutable, content-addressed snapshot, with a provenance record "
        "(source, size, SHA-256, time, run) and an audit event. The data version is the digest "
        f"of the fileset index, so unchanged input keeps the asset up to date. {source.description}"
    ).strip()

    @dg.asset(
        key=key,
        group_name="ingestion",
        kinds={source.format},
        owners=list(pipeline.owners) or None,
        code_version=pipeline.code_version,
        description=description,
        metadata={
            # The UI's column view; ``declared_schema`` is the same, kept for readers of it.
            COLUMN_SCHEMA: declared_table_schema(pipeline),
            "declared_schema": declared_table_schema(pipeline),
            "schema_version": pipeline.schema.version,
            "default_location": redact_uri(source.location),
            "location_variable": source.location_env_var or "(none)",
            "max_bytes_per_file": source.max_bytes,
        },
        tags=pipeline.names.asset_tags("ingestion"),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        freshness_policy=ingest_freshness_policy(pipeline),
        partitions_def=daily_partitions(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def raw_asset(
        context: dg.AssetExecutionContext,
        config: SourceBatch,
        snapshot_store: SnapshotStoreResource,
    ) -> dg.MaterializeResult:
        store = snapshot_store.get_store()
        environment = env.current_environment()
        partition = partition_of(context)
        location, pins = batch_location(pipeline, config, partition)
        # A partitioned source reads the day's files: {date} in the location (also one set by
        # location_env_var) or in the file paths is the partition key.
        files = source.files_of(partition)
        if partition is not None:
            location = location.replace(PARTITION_PLACEHOLDER, partition)
        members: dict[str, SnapshotRef] = {}
        records: list[ProvenanceRecord] = []
        entry = _entry_filters(pipeline, store)
        filters: dict[str, Any] = {}
        for source_file in files:
            uri = join_location(location, source_file.path)
            connector = connector_for(
                uri,
                location=location,
                environment=environment,
                pins=source.tls_pins,
                read_timeout=source.read_timeout_seconds,
            )
            retrieved_at = utc_now()
            pin = pins.get(source_file.member, {})
            with connector.open(uri, max_bytes=source.max_bytes, **pin) as fetched:
                chunks = fetched.chunks
                if entry is not None:
                    # Erased subjects' records never reach the store; the others are indexed.
                    filters[source_file.member] = entry(source_file.member)
                    chunks = filters[source_file.member].filter(chunks)
                ref = store.put_stream(
                    key.path,
                    chunks,
                    ext=source.format,
                    format=source.format,
                    partition=partition,
                    max_bytes=source.max_bytes,
                    encrypt=pipeline.holds_personal_data,
                    run_id=context.run.run_id,
                    code_version=pipeline.code_version,
                    extra={"member": source_file.member, "source": redact_uri(uri)},
                )
            members[source_file.member] = ref
            facts = dict(fetched.facts)
            if source_file.member in filters:
                received = filters[source_file.member]
                # What arrived, beside what was stored (sha256/size: the filtered bytes).
                facts.update(
                    received_sha256=received.received_sha256,
                    received_bytes=received.received_bytes,
                    excluded_rows=received.excluded_rows,
                )
            records.append(
                ProvenanceRecord(
                    member=source_file.member,
                    uri=redact_uri(uri),
                    connector=connector.name,
                    retrieved_at=retrieved_at,
                    size=ref.size,
                    sha256=ref.sha256,
                    run_id=context.run.run_id,
                    schema_version=pipeline.schema.version,
                    facts=facts,
                )
            )
            context.log.info(f"stored {source_file.member} ({ref.size} bytes) as {ref.uri}")
        index = store.put_fileset(
            key.path,
            members,
            partition=partition,
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
        )
        subject_index = None
        if filters:
            subject_index = _write_index(pipeline, store, index, members, filters, context)
        provenance = store.put_bytes(
            [*key.path, "_provenance"],
            provenance_document(name, location, index.sha256, records),
            ext="json",
            format="provenance",
            partition=partition,
            upstream={},
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
        )
        from secure_pipeline.trust.signers import signer_for

        record = snapshot_store.get_audit_log().append(
            "ingestion.stored",
            signer=signer_for(INGEST),
            actor=f"asset:{name}",
            run_id=context.run.run_id,
            subject=index.sha256,
            details={
                "pipeline": pipeline.name,
                **({"partition": partition} if partition is not None else {}),
                "source": redact_uri(location),
                "files": {m: {"sha256": r.sha256, "bytes": r.size} for m, r in members.items()},
                "provenance_sha256": provenance.sha256,
                "new": index.created,
                **({"subject_index": subject_index} if subject_index is not None else {}),
            },
        )
        metadata: dict[str, Any] = snapshot_metadata(
            index, FILESET_FORMAT, (record.seq, record.hash)
        )
        metadata["bytes"] = sum(r.size for r in members.values())
        metadata["files"] = table(
            ({"member": m, "sha256": r.sha256, "bytes": r.size, "uri": r.uri}
             for m, r in members.items()),
            {"member": "string", "sha256": "string", "bytes": "int", "uri": "string"},
        )  # fmt: skip
        metadata["source"] = redact_uri(location)
        metadata["provenance_uri"] = provenance.uri
        metadata["provenance_key"] = provenance.key
        metadata["provenance_sha256"] = provenance.sha256
        metadata["provenance"] = dg.MetadataValue.json([r.to_dict() for r in records])
        if subject_index is not None:
            metadata["excluded_rows"] = subject_index["excluded_rows"]
            metadata["subjects_indexed"] = subject_index["subjects"]
            metadata["subject_index_sha256"] = subject_index["catalogue_sha256"]
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(index.sha256))

    return raw_asset
