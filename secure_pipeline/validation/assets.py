"""The validation stage as Dagster definitions, built from a `PipelineSpec`.

On ``raw_<source>``:
  * ``provenance_complete`` (blocking): the stored provenance record is complete and matches
    the stored files;
  * ``schema_conforms`` (blocking): the files parse and conform to the pandera model; structural
    problems fail with ERROR, row-level failures are reported (WARN) and quarantined.

``validated_<source>``: the rows that pass, as a Parquet snapshot; rejected rows go to an
immutable quarantine snapshot with the reason for each. Its check ``reject_rate_within_limit``
(blocking) is decided in the same step. Both hold only the schema's kept columns: ``ignore``
and ``personal`` columns end at entry, a pseudonymised one continues as its keyed hash (the
pipeline's key: production refuses to run without ``SECURE_PIPELINE_PSEUDONYM_KEY``).

On ``validated_<source>``:
  * ``expectations_met`` (blocking): the Great Expectations suite; the full result document is
    stored as a snapshot.

Every verdict is also an audit record.
"""

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.errors import IntegrityError
from secure_pipeline.metadata import (
    COLUMN_SCHEMA,
    bullets,
    daily_partitions,
    declared_table_schema,
    ingest_freshness_policy,
    partition_check_options,
    partition_of,
    table,
)
from secure_pipeline.names import (
    EXPECTATIONS_MET,
    PROVENANCE_COMPLETE,
    REJECT_RATE,
    SCHEMA_CONFORMS,
)
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, PipelineSpec
from secure_pipeline.storage.io_manager import (
    latest_record,
    recorded_snapshot,
    store_snapshot,
)
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import FILESET_FORMAT, canonical_json
from secure_pipeline.trust.identities import INGEST
from secure_pipeline.verdicts import verdict

if TYPE_CHECKING:
    from secure_pipeline.spec import DatasetSchema
    from secure_pipeline.storage.snapshots import SnapshotStore
    from secure_pipeline.validation.expectations import ExpectationsReport

# What schema_conforms parsed and validated, for validated_* in the same process: pipeline name
# -> (fileset digest, schema version, chunks, report). At most one entry per pipeline, popped on
# use, and only for a fileset of at most the source's ``chunk_bytes`` in all (memory stays
# bounded by a chunk; a larger one is parsed again, a chunk at a time). It holds only what this
# process computed from a fileset whose every byte it verified (the stream was read to its
# end), and is served only for the same fileset digest and schema; a step in another process
# (multiprocess, a k8s step pod) finds nothing here and parses again.
_PARSED: dict[str, tuple[str, str, list[Any], Any]] = {}


def _raw_members(
    store: Any, record: Any, raw_key: dg.AssetKey, partition: str | None
) -> tuple[str, dict[str, Any], int]:
    """The raw fileset a record names: its digest, each member's stream opener, total bytes."""
    key, digest, _fmt = recorded_snapshot(record, raw_key, partition)
    index = json.loads(store.read_bytes((key, digest)))
    files = index.get("files") if isinstance(index, dict) else None
    if index.get("format") != FILESET_FORMAT or not isinstance(files, dict):
        raise IntegrityError(f"{key} is not a fileset index")

    def opener(member: Mapping[str, Any]) -> Any:
        return lambda: store.iter_bytes((member["key"], member["sha256"]))

    total = sum(int(m.get("size") or 0) for m in files.values())
    return digest, {name: opener(m) for name, m in files.items()}, total


def _parse_and_validate(
    pipeline: PipelineSpec, store: Any, record: Any, partition: str | None, *, remember: bool
) -> tuple[Iterable[Any], Any]:
    """Parse and pandera-validate a raw fileset chunk by chunk, or take what was just made.

    Args:
        pipeline: The spec (its name keys the memo, its schema version must match).
        store: The snapshot store.
        record: The raw asset's materialization to validate.
        partition: The partition it must belong to, if any.
        remember: Keep a small fileset's result for the next caller (schema_conforms),
            instead of taking a kept one (validated_*).

    Returns:
        ``(chunks, report)``: iterate ``chunks`` (``(batch, chunk report)`` pairs) to the end
        before reading ``report`` (a `StreamReport`), which is final only then.
    """
    from secure_pipeline.validation.streaming import FilesetStream

    raw_key, version = pipeline.names.raw, pipeline.schema.version
    chunk_bytes = pipeline.source.chunk_bytes
    digest, members, size = _raw_members(store, record, raw_key, partition)
    kept = None if remember else _PARSED.pop(pipeline.name, None)
    if kept is not None and kept[0] == digest and kept[1] == version:
        return kept[2], kept[3]
    stream = FilesetStream(members, pipeline.schema, chunk_bytes=chunk_bytes)
    if not remember:
        return stream, stream.report
    _PARSED.pop(pipeline.name, None)
    if size > chunk_bytes:
        return stream, stream.report
    chunks = list(stream)
    if not stream.report.structural:  # else blocking: validated_* will not run to take it
        _PARSED[pipeline.name] = (digest, version, chunks, stream.report)
    return chunks, stream.report


def _dropped_note(schema: Any) -> str:
    dropped = [c.name for c in schema.columns if not c.kept]
    hashed = [c.name for c in schema.kept_columns if c.role == "personal"]
    note = ""
    if dropped:
        note += f" Dropped at entry (personal or ignored): {', '.join(dropped)}."
    if hashed:
        note += f" Kept only as keyed pseudonyms (HMAC-SHA256): {', '.join(hashed)}."
    return note


def _failure_table(failures: dict[str, dict[str, int]]) -> dg.TableMetadataValue:
    return table(
        (
            {"column": column, "check": check, "failures": count}
            for column, checks in sorted(failures.items())
            for check, count in sorted(checks.items())
        ),
        {"column": "string", "check": "string", "failures": "int"},
    )


def _pseudonym_key(pipeline: PipelineSpec) -> bytes | None:
    """The pipeline's pseudonymisation key, when a column is kept as a pseudonym."""
    if not any(c.role == "personal" for c in pipeline.schema.kept_columns):
        return None
    from secure_pipeline.validation.pseudonyms import pseudonym_key

    return pseudonym_key(pipeline.name)


def build_validation_stage(
    pipeline: PipelineSpec,
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Build ``validated_<source>`` and the checks of the raw and validated assets.

    Args:
        pipeline: The spec.

    Returns:
        ``(assets, checks)``.
    """
    schema, policy = pipeline.schema, pipeline.policy
    raw_key, validated_key = pipeline.names.raw, pipeline.names.validated
    owners = list(pipeline.owners) or None

    @dg.asset_check(
        asset=raw_key,
        name=PROVENANCE_COMPLETE,
        blocking=True,
        description=(
            "The provenance record of the latest ingestion is complete (source, time, size, "
            "SHA-256, connector facts: TLS 1.3 details for https, ETag and version for S3) and "
            "matches the stored files and the current schema. A failure means the origin of the "
            "data cannot be shown: nothing downstream is built from it."
        ),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        **partition_check_options(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def provenance_complete(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.ingestion.provenance import provenance_problems

        partition = partition_of(context)
        record = latest_record(context.instance, raw_key, partition)
        _key, index_sha, _fmt = recorded_snapshot(record, raw_key, partition)
        store = snapshot_store.get_store()
        meta = record.asset_materialization.metadata
        index = json.loads(store.read_bytes((meta["snapshot_key"].value, index_sha)))
        prov_key, prov_sha = meta.get("provenance_key"), meta.get("provenance_sha256")
        if prov_key is None or prov_sha is None:
            problems = ["the materialization records no provenance snapshot"]
        else:
            document = json.loads(store.read_bytes((prov_key.value, prov_sha.value)))
            problems = provenance_problems(
                document,
                index,
                index_sha256=index_sha,
                run_id=record.run_id,
                schema_version=schema.version,
            )
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=INGEST,
            run_id=context.run.run_id,
            asset_key=raw_key,
            check_name=PROVENANCE_COMPLETE,
            passed=not problems,
            subject=index_sha,
            summary={"problems": len(problems)},
            metadata={
                "problems": bullets(problems),
                "problems_found": float(len(problems)),
                "files": len(index["files"]),
            },
            description=problems[0] if problems else None,
        )

    @dg.asset_check(
        asset=raw_key,
        name=SCHEMA_CONFORMS,
        blocking=True,
        description=(
            f"The raw files conform to the {schema.name} schema (pandera: types, ranges, allowed "
            "categories, nullability, exact column set). Structural problems — unreadable or "
            "empty files, a wrong header, a column failing in every row — fail with ERROR and "
            "block everything downstream. Row-level failures are reported as a warning with "
            "per-column counts and examples; those rows are quarantined."
        ),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        **partition_check_options(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def schema_conforms(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        partition = partition_of(context)
        record = latest_record(context.instance, raw_key, partition)
        chunks, report = _parse_and_validate(
            pipeline, snapshot_store.get_store(), record, partition, remember=True
        )
        for _chunk in chunks:
            pass  # the report is final once every chunk is read (and every member verified)
        structural = bool(report.structural)
        passed = not structural and report.rejected_rows == 0
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=INGEST,
            run_id=context.run.run_id,
            asset_key=raw_key,
            check_name=SCHEMA_CONFORMS,
            passed=passed,
            # Row-level failures warn (the rows are quarantined); anything structural blocks.
            severity=dg.AssetCheckSeverity.WARN
            if report.rejected_rows and not structural
            else dg.AssetCheckSeverity.ERROR,
            subject=recorded_snapshot(record, raw_key, partition)[1],
            summary={
                "rows": report.rows,
                "rejected_rows": report.rejected_rows,
                "structural_problems": len(report.structural),
            },
            metadata={
                "schema_version": schema.version,
                "rows": report.rows,
                "rejected_rows": report.rejected_rows,
                "reject_rate": float(round(report.reject_rate, 6)),
                "structural_problems": bullets(report.structural),
                "failures_by_column": _failure_table(report.failures),
                "failing_examples": dg.MetadataValue.json(report.examples),
                "unparseable_lines": report.unparseable_lines,
                "comment_lines": dg.MetadataValue.json(report.comment_lines),
                "chunks": report.chunks,
            },
            description=(report.structural or [None])[0],
        )

    @dg.asset(
        key=validated_key,
        deps=[raw_key],
        group_name="ingestion",
        kinds={"pandera", "parquet"},
        owners=owners,
        code_version=pipeline.code_version,
        description=(
            f"Rows of `{raw_key.to_user_string()}` that conform to the {schema.name} schema, "
            "typed, with a `split` column naming the file each came from. Rejected rows are "
            "kept as an immutable quarantine snapshot with the reason for each; the batch is "
            f"held back when more than {policy.max_reject_rate:.2%} of rows are rejected."
            + _dropped_note(schema)
        ),
        check_specs=[
            dg.AssetCheckSpec(
                REJECT_RATE,
                asset=validated_key,
                blocking=True,
                description=(
                    f"At most {policy.max_reject_rate:.2%} of the batch's rows were quarantined. "
                    "More means the source changed or broke: nothing downstream is built."
                ),
                **partition_check_options(pipeline),
            )
        ],
        metadata={COLUMN_SCHEMA: declared_table_schema(pipeline, validated=True)},
        tags=pipeline.names.asset_tags("validation"),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        freshness_policy=ingest_freshness_policy(pipeline),
        partitions_def=daily_partitions(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def validated(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ):  # no return annotation: with a check spec, dagster reads one as per-output types
        from secure_pipeline.validation.quarantine import quarantine_table
        from secure_pipeline.validation.schema import validated_rows
        from secure_pipeline.validation.streaming import count_splits

        # First: without its key (production must configure it) nothing is parsed at all.
        key = _pseudonym_key(pipeline)
        store = snapshot_store.get_store()
        partition = partition_of(context)
        raw_record = latest_record(context.instance, raw_key, partition)
        raw_digest = recorded_snapshot(raw_record, raw_key, partition)[1]
        upstream = {raw_key.to_user_string(): raw_digest}
        # In the same process as schema_conforms (the default executor), its parse of a small
        # fileset is reused; elsewhere, or for a large one, it is parsed again a chunk at a time.
        chunks, report = _parse_and_validate(pipeline, store, raw_record, partition, remember=False)
        from secure_pipeline.storage.tables import ParquetStream, frame_table

        kept_stream, quarantine_stream = ParquetStream(), ParquetStream()
        quarantine_bytes = bytearray()
        splits: Counter[str] = Counter()

        def kept_rows() -> Iterator[Any]:
            """validated_*, a table per chunk; raises (nothing stored) on a structural problem."""
            for batch, chunk in chunks:
                if report.structural:
                    continue  # read on: every member's digest is checked at its end
                kept = validated_rows(batch, chunk, schema, key)
                count_splits(kept[RESERVED_SPLIT_COLUMN], splits)
                quarantine_bytes.extend(
                    quarantine_stream.write(quarantine_table(batch, chunk, schema, key))
                )
                yield frame_table(kept)
            if report.structural:
                raise dg.Failure(
                    description=(
                        f"{raw_key.to_user_string()} does not conform to the schema; nothing "
                        "was validated: " + "; ".join(report.structural)
                    ),
                    metadata={"structural_problems": bullets(report.structural)},
                )

        # Stored here, not by the IO manager: the reject-rate verdict must name the digest of
        # the snapshot it lets through.
        validated_ref, validated_metadata = store_snapshot(
            snapshot_store,
            validated_key,
            kept_stream.chunks(kept_rows()),
            ext="parquet",
            fmt="parquet",
            partition=partition,
            upstream=upstream,
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
            identity=INGEST,
            encrypt=pipeline.holds_personal_data,
            describe=kept_stream.summary,
        )
        # The declared schema (roles, descriptions, rules) over the physical one.
        validated_metadata[COLUMN_SCHEMA] = declared_table_schema(pipeline, validated=True)
        quarantine_bytes.extend(quarantine_stream.finish())
        quarantined = store.put_bytes(
            [*validated_key.path, "_quarantine"],
            bytes(quarantine_bytes),
            ext="parquet",
            format="parquet",
            partition=partition,
            upstream=upstream,
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
            extra={"rows": quarantine_stream.rows},
            encrypt=pipeline.holds_personal_data,
        )
        rate = report.reject_rate
        passed = rate <= policy.max_reject_rate
        check = verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=INGEST,
            run_id=context.run.run_id,
            asset_key=validated_key,
            check_name=REJECT_RATE,
            passed=passed,
            subject=validated_ref.sha256,
            summary={"rows": report.rows, "rejected_rows": report.rejected_rows},
            metadata={
                "reject_rate": float(round(rate, 6)),
                "max_reject_rate": policy.max_reject_rate,
                "rejected_rows": report.rejected_rows,
                "rows": report.rows,
            },
            description=None
            if passed
            else (
                f"{report.rejected_rows} of {report.rows} rows rejected ({rate:.2%}); the policy "
                f"allows {policy.max_reject_rate:.2%}"
            ),
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(validated_ref.sha256),
            metadata={
                **validated_metadata,
                "rows_in": report.rows,
                "rows_valid": kept_stream.rows,
                "rows_quarantined": report.rejected_rows,
                "reject_rate": round(rate, 6),
                "rows_by_split": dg.MetadataValue.json({str(k): int(v) for k, v in splits.items()}),
                "failures_by_column": _failure_table(report.failures),
                "quarantine_uri": quarantined.uri,
                "quarantine_sha256": quarantined.sha256,
                "schema_version": schema.version,
            },
            check_results=[check],
        )

    @dg.asset_check(
        asset=validated_key,
        name=EXPECTATIONS_MET,
        blocking=True,
        description=(
            "The validated batch meets the statistical expectations (Great Expectations): row "
            "count bounds, share of missing values, value ranges and means, every label class "
            "present. A batch of more than one chunk is judged by the same suite a row group "
            "at a time, in bounded memory (metadata 'engine'). The full result is stored as a "
            "snapshot. A failure means the batch does not look like this dataset: nothing "
            "downstream is built from it."
        ),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        **partition_check_options(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def expectations_met(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        partition = partition_of(context)
        record = latest_record(context.instance, validated_key, partition)
        store = snapshot_store.get_store()
        key, subject, fmt = recorded_snapshot(record, validated_key, partition)
        if fmt != "parquet":
            raise IntegrityError(
                f"{validated_key.to_user_string()} records a {fmt!r} snapshot, expected a "
                "Parquet table: it was not made by this pipeline. Re-materialize it."
            )
        report = _expectations_report(store, (key, subject), schema)
        document = store.put_bytes(
            [*validated_key.path, "_expectations"],
            canonical_json(json.loads(json.dumps(report.document, default=str))),
            ext="json",
            format="json",
            partition=partition,
            upstream={validated_key.to_user_string(): subject},
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
        )
        outcomes = table(
            (
                {
                    "expectation": o.expectation,
                    "column": o.column or "(table)",
                    "success": o.success,
                    "observed": o.observed,
                }
                for o in report.outcomes
            ),
            {"expectation": "string", "column": "string", "success": "bool", "observed": "string"},
        )
        failed = [f"{o.expectation}({o.column}): observed {o.observed}" for o in report.failed]
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=INGEST,
            run_id=context.run.run_id,
            asset_key=validated_key,
            check_name=EXPECTATIONS_MET,
            passed=report.success,
            subject=subject,
            summary={"expectations": len(report.outcomes), "failed": len(report.failed)},
            metadata={
                "expectations": len(report.outcomes),
                "failed": len(report.failed),
                "engine": report.document["meta"]["engine"],
                "success_rate": round(
                    1.0 - len(report.failed) / len(report.outcomes) if report.outcomes else 0.0, 6
                ),
                "outcomes": outcomes,
                "failed_expectations": bullets(failed),
                "result_uri": document.uri,
                "result_sha256": document.sha256,
            },
            description=failed[0] if failed else None,
        )

    return [validated], [provenance_complete, schema_conforms, expectations_met]


def _expectations_report(
    store: "SnapshotStore", ref: tuple[str, str], schema: "DatasetSchema"
) -> "ExpectationsReport":
    """The expectations' verdict on a validated snapshot, verified before it is read.

    A snapshot of one row group (one chunk of the source, or less) is judged whole by Great
    Expectations; a larger one a row group at a time (`stream_expectations`), so memory holds
    at most two row groups, never the table.
    """
    from secure_pipeline.storage.tables import verified_row_groups
    from secure_pipeline.validation.expectations import run_expectations, stream_expectations

    with verified_row_groups(store, ref) as groups:
        head = list(itertools.islice(groups, 2))
        if len(head) == 1:
            return run_expectations(head.pop().to_pandas(), schema)

        def tables() -> Iterator[Any]:
            while head:  # handed on, not kept: each row group is freed once judged
                yield head.pop(0)
            yield from groups

        return stream_expectations(tables(), schema)
