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

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from secure_pipeline.metadata import (
    COLUMN_SCHEMA,
    bullets,
    declared_table_schema,
    ingest_freshness_policy,
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
from secure_pipeline.storage.io_manager import load_recorded, recorded_snapshot, store_snapshot
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import canonical_json
from secure_pipeline.trust.identities import INGEST
from secure_pipeline.verdicts import verdict


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> Any:
    record = instance.get_latest_materialization_event(key)
    if record is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized yet")
    return record


# What schema_conforms parsed and validated, for validated_* in the same process: pipeline name
# -> (fileset digest, schema version, batch, report). At most one entry per pipeline, popped on
# use. It holds only what this process computed from bytes it read verified by digest, and is
# served only for the very same bytes (their SHA-256) and schema; a step in another process
# (multiprocess, a k8s step pod) finds nothing here and parses again.
_PARSED: dict[str, tuple[str, str, Any, Any]] = {}


def _fileset_digest(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for member in sorted(files):
        digest.update(f"{len(member)}:{member}:{len(files[member])}:".encode())
        digest.update(files[member])
    return digest.hexdigest()


def _parse_and_validate(
    pipeline: PipelineSpec, files: Mapping[str, bytes], *, remember: bool
) -> tuple[Any, Any]:
    """Parse and pandera-validate a raw fileset, or take the result this process just made.

    Args:
        pipeline: The spec (its name keys the memo, its schema version must match).
        files: The raw files, as read (verified) from the store.
        remember: Keep the result for the next caller (schema_conforms), instead of taking
            a kept one (validated_*).

    Returns:
        ``(batch, report)``.
    """
    from secure_pipeline.validation.parsing import parse_fileset
    from secure_pipeline.validation.schema import validate_batch

    digest, version = _fileset_digest(files), pipeline.schema.version
    kept = None if remember else _PARSED.pop(pipeline.name, None)
    if kept is not None and kept[0] == digest and kept[1] == version:
        return kept[2], kept[3]
    batch = parse_fileset(files, pipeline.schema)
    report = validate_batch(batch, pipeline.schema)
    if remember:
        _PARSED.pop(pipeline.name, None)
        if not report.structural:  # else blocking: validated_* will not run to take it
            _PARSED[pipeline.name] = (digest, version, batch, report)
    return batch, report


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
    )
    @retry_transient_io(pipeline.orchestration)
    def provenance_complete(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.ingestion.provenance import provenance_problems

        record = _latest(context.instance, raw_key)
        _key, index_sha, _fmt = recorded_snapshot(record, raw_key)
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
    )
    @retry_transient_io(pipeline.orchestration)
    def schema_conforms(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        record = _latest(context.instance, raw_key)
        files = load_recorded(snapshot_store.get_store(), record, raw_key)
        batch, report = _parse_and_validate(pipeline, files, remember=True)
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
            subject=recorded_snapshot(record, raw_key)[1],
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
                "unparseable_lines": len(report.rejected_lines),
                "comment_lines": dg.MetadataValue.json(batch.comment_lines),
            },
            description=(report.structural or [None])[0],
        )

    @dg.asset(
        key=validated_key,
        ins={"raw": dg.AssetIn(key=raw_key)},
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
            )
        ],
        metadata={COLUMN_SCHEMA: declared_table_schema(pipeline, validated=True)},
        tags=pipeline.names.asset_tags("validation"),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        freshness_policy=ingest_freshness_policy(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def validated(
        context: dg.AssetExecutionContext, raw: dict, snapshot_store: SnapshotStoreResource
    ):  # no return annotation: with a check spec, dagster reads one as per-output types
        from secure_pipeline.validation.quarantine import quarantine_table
        from secure_pipeline.validation.schema import validated_rows

        # First: without its key (production must configure it) nothing is parsed at all.
        key = _pseudonym_key(pipeline)
        # In the same process as schema_conforms (the default executor), its parse of these
        # very bytes is reused; elsewhere they are parsed again.
        batch, report = _parse_and_validate(pipeline, raw, remember=False)
        if report.structural:
            raise dg.Failure(
                description=(
                    f"{raw_key.to_user_string()} does not conform to the schema; nothing was "
                    "validated: " + "; ".join(report.structural)
                ),
                metadata={"structural_problems": bullets(report.structural)},
            )
        assert report.rejected is not None
        # Only the kept columns go on: ignored and personal ones end here (pseudonymised ones
        # as keyed hashes), in validated_* and in the quarantine alike.
        kept = validated_rows(batch, report, schema, key)
        store = snapshot_store.get_store()
        raw_record = context.instance.get_latest_materialization_event(raw_key)
        raw_digest = recorded_snapshot(raw_record, raw_key)[1] if raw_record else None
        quarantine = quarantine_table(batch, report, schema, key)
        from secure_pipeline.storage.tables import schema_summary, table_to_parquet, to_arrow

        # Stored here, not by the IO manager: the reject-rate verdict must name the digest of
        # the snapshot it lets through.
        table = to_arrow(kept)
        validated_ref, validated_metadata = store_snapshot(
            snapshot_store,
            validated_key,
            table_to_parquet(table),
            ext="parquet",
            fmt="parquet",
            rows=table.num_rows,
            schema=schema_summary(table),
            upstream={raw_key.to_user_string(): raw_digest} if raw_digest else {},
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
            identity=INGEST,
            encrypt=pipeline.holds_personal_data,
        )
        # The declared schema (roles, descriptions, rules) over the physical one.
        validated_metadata[COLUMN_SCHEMA] = declared_table_schema(pipeline, validated=True)

        quarantined = store.put_bytes(
            [*validated_key.path, "_quarantine"],
            table_to_parquet(quarantine),
            ext="parquet",
            format="parquet",
            upstream={raw_key.to_user_string(): raw_digest} if raw_digest else {},
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
            extra={"rows": quarantine.num_rows},
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
        splits = kept[RESERVED_SPLIT_COLUMN].value_counts().to_dict()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(validated_ref.sha256),
            metadata={
                **validated_metadata,
                "rows_in": report.rows,
                "rows_valid": len(kept),
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
            "present. The full result is stored as a snapshot. A failure means the batch does "
            "not look like this dataset: nothing downstream is built from it."
        ),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
    )
    @retry_transient_io(pipeline.orchestration)
    def expectations_met(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.validation.expectations import run_expectations

        record = _latest(context.instance, validated_key)
        store = snapshot_store.get_store()
        frame = load_recorded(store, record, validated_key)
        report = run_expectations(frame, schema)
        subject = recorded_snapshot(record, validated_key)[1]
        document = store.put_bytes(
            [*validated_key.path, "_expectations"],
            canonical_json(json.loads(json.dumps(report.document, default=str))),
            ext="json",
            format="json",
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
