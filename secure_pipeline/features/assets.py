"""The features stage as Dagster definitions: ``features`` and its ``feature_drift`` check."""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.features.engineering import (
    LABEL_COLUMN,
    describe_derivation,
    feature_catalog,
)
from secure_pipeline.metadata import (
    COLUMN_SCHEMA,
    daily_partitions,
    ingest_freshness_policy,
    partition_check_options,
    partition_of,
    split_column,
    table,
    table_column,
)
from secure_pipeline.names import FEATURE_DRIFT
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, PipelineSpec
from secure_pipeline.storage.io_manager import (
    ENCRYPTED_METADATA,
    latest_record,
    recorded_snapshot,
)
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import SnapshotStore, snapshot_key
from secure_pipeline.trust.identities import INGEST
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.verdicts import verdict

if TYPE_CHECKING:
    import pandas as pd

# Reads the current champion's verified lineage: ``(version, lineage)`` or None. The registry
# provides it (`secure_pipeline.registry.evidence.champion_lineage`); composition passes it in,
# because the registry sits above this stage.
ChampionLineage = Callable[
    [PipelineSpec, SnapshotStore, TrustPolicy], tuple[str, dict[str, Any]] | None
]


def champion_features(pipeline: PipelineSpec, lineage: dict[str, Any]) -> list[tuple[str, str]]:
    """The features snapshots a champion's signed lineage names: ``(key, sha256)`` of each.

    One for an unpartitioned pipeline; a partitioned one's window of days, in order.

    Raises:
        IntegrityError: When one is not a snapshot of this pipeline's ``features`` asset.
    """
    from secure_pipeline.errors import IntegrityError
    from secure_pipeline.features.window import training_features

    found = []
    for key, sha, day in training_features(lineage):
        directory, _, filename = key.rpartition("/")
        expected = snapshot_key(pipeline.names.features.path, sha, "parquet", day)
        if directory != expected.rpartition("/")[0] or not filename.startswith(f"{sha}."):
            raise IntegrityError(
                f"the champion's signed lineage names {key} as its training features, expected "
                f"a snapshot under snapshots/{pipeline.name}/features/: the champion was made "
                "before asset keys were scoped by pipeline (start a new home, see the README's "
                "migration note) or belongs to another pipeline"
            )
        found.append((key, sha))
    return found


def drift_reference(
    instance: dg.DagsterInstance,
    store: SnapshotStore,
    pipeline: PipelineSpec,
    champion_lineage: ChampionLineage,
) -> tuple[list[tuple[str, str]], str, str]:
    """The features drift is measured against: ``(snapshots, digest, description)``.

    The snapshots the current champion model was trained on (a partitioned pipeline's window
    of days), read from the champion's signed lineage (kept, verified, in the snapshot store);
    until a model has been promoted, the first features snapshot ever materialized. The digest
    names the reference: its one snapshot's, or the champion's training window's.

    Raises:
        dg.Failure: When no features snapshot exists yet.
        PolicyViolation: When the champion's bundle does not verify.
        IntegrityError: When its lineage names something other than a features snapshot.
    """
    from secure_pipeline.trust.policy import trust_policy

    champion = champion_lineage(pipeline, store, trust_policy())
    erased = ""
    if champion is not None:
        version, lineage = champion
        refs = champion_features(pipeline, lineage)
        if not any(store.shredded(key) for key, _ in refs):
            window = lineage["data"].get("window")
            digest = str(window["sha256"]) if window else refs[0][1]
            what = "the snapshot" if len(refs) == 1 else f"the {len(refs)} days of features"
            return refs, digest, f"{what} champion version {version} was trained on"
        # Erased (or expired) since: the closest reference left is the oldest readable one.
        erased = f"the snapshot champion version {version} was trained on was erased; "
    features_key = pipeline.names.features
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=features_key), limit=100, cursor=cursor,
            ascending=True,
        )  # fmt: skip
        for record in result.records:
            key, sha, _ = recorded_snapshot(record, features_key, record.partition_key)
            if not store.shredded(key):
                first = "the oldest readable" if erased else "the first"
                return (
                    [(key, sha)],
                    sha,
                    f"{erased}{first} features snapshot" + ("" if erased else " (no champion yet)"),
                )
        if not result.has_more:
            break
        cursor = result.cursor
    raise dg.Failure(
        f"{features_key.to_user_string()} has no readable snapshot yet"
        + (f" ({erased.rstrip('; ')})" if erased else "")
    )


def _row_groups(
    store: SnapshotStore, ref: tuple[str, str], columns: list[str]
) -> "Iterator[pd.DataFrame]":
    """A features snapshot's columns as frames, one verified row group at a time."""
    from secure_pipeline.storage.tables import verified_row_groups

    with verified_row_groups(store, ref) as groups:
        for group in groups:
            yield group.select(columns).to_pandas()


def features_table_schema(pipeline: PipelineSpec) -> dg.TableSchema:
    """The feature table's columns for the UI: how each is derived, its role, its codes.

    Categorical features are integer codes (-1 missing) whose allowed values name what each
    code means; a numeric feature read straight from a column keeps that column's range.
    """
    schema = pipeline.schema
    columns = {c.name: c for c in schema.columns}
    excluded = set(pipeline.model.exclude_features)
    found = []
    for feature in feature_catalog(pipeline):
        source = columns.get(feature.source)
        direct = feature.derivation is None and feature.name == feature.source
        notes = [f"from {', '.join(feature.sources)}"]
        if feature.name in excluded:
            notes.append("not a model input (model.exclude_features)")
        if feature.kind == "categorical":
            found.append(
                table_column(
                    feature.name,
                    "int",
                    role="sensitive" if feature.sensitive else "feature",
                    description=describe_derivation(feature, pipeline),
                    minimum=-1,
                    maximum=len(feature.categories) - 1,
                    allowed=[f"{i}={c}" for i, c in enumerate(feature.categories)],
                    notes=[*notes, "-1 = missing or not listed"],
                )
            )
            continue
        nullable = any(columns[s].nullable for s in feature.sources if s in columns)
        found.append(
            table_column(
                feature.name,
                "float",
                role="sensitive" if feature.sensitive else "feature",
                description=describe_derivation(feature, pipeline),
                nullable=nullable or feature.derivation is not None,
                minimum=source.minimum if direct and source is not None else None,
                maximum=source.maximum if direct and source is not None else None,
                notes=notes,
            )
        )
    if schema.label is not None and schema.positive_label is not None:
        found.append(
            table_column(
                LABEL_COLUMN,
                "int",
                role="label",
                description=f"1 when {schema.label} is {schema.positive_label!r}, else 0.",
                minimum=0,
                maximum=1,
            )
        )
    found.append(split_column())
    return dg.TableSchema(columns=found)


def build_features_stage(
    pipeline: PipelineSpec, champion_lineage: ChampionLineage
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Build ``features`` and ``feature_drift``.

    Args:
        pipeline: The spec.
        champion_lineage: Reads the champion's verified lineage (drift is measured against
            the snapshot it was trained on).

    Returns:
        ``(assets, checks)``.
    """
    validated_key, features_key = pipeline.names.validated, pipeline.names.features
    catalog = feature_catalog(pipeline)
    policy = pipeline.policy
    catalog_table = table(
        (
            {
                "feature": f.name,
                "kind": f.kind,
                "from": ", ".join(f.sources),
                "derivation": describe_derivation(f, pipeline)[:300],
                "codes": ", ".join(f"{i}={c}" for i, c in enumerate(f.categories))[:300],
                "sensitive": f.sensitive,
            }
            for f in catalog
        ),
        {"feature": "string", "kind": "string", "from": "string", "derivation": "string",
         "codes": "string", "sensitive": "bool"},
    )  # fmt: skip

    @dg.asset(
        key=features_key,
        deps=[validated_key],
        group_name="features",
        kinds={"pandas", "parquet"},
        owners=list(pipeline.owners) or None,
        code_version=pipeline.code_version,
        description=(
            "The feature table: numeric columns as floats, categories as stable integer codes "
            "(the schema's order; -1 missing), bands of numeric columns as a sensitive-attribute "
            "view for fairness audits, log-amounts, the declared derived features (value maps, "
            "bands, date differences: the same code the model server runs), the 0/1 label and "
            "the split. Stored as an immutable, content-addressed snapshot whose digest is the "
            "data version, made a row group of validated rows at a time (memory holds one). "
            "The feature catalog says how each feature is derived."
        ),
        metadata={
            COLUMN_SCHEMA: features_table_schema(pipeline),
            "feature_catalog": catalog_table,
            # A feature row is still a person's row when the source identifies people.
            ENCRYPTED_METADATA: pipeline.holds_personal_data,
        },
        tags=pipeline.names.asset_tags("features"),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        freshness_policy=ingest_freshness_policy(pipeline),
        partitions_def=daily_partitions(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def features(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from collections import Counter

        from secure_pipeline.features.engineering import build_features
        from secure_pipeline.storage.io_manager import store_snapshot
        from secure_pipeline.storage.tables import ParquetStream, frame_table, verified_row_groups
        from secure_pipeline.validation.streaming import count_splits

        partition = partition_of(context)
        source = recorded_snapshot(
            latest_record(context.instance, validated_key, partition), validated_key, partition
        )
        splits: Counter[str] = Counter()
        positives, labelled = 0, False
        stream = ParquetStream()

        def feature_rows() -> Any:
            nonlocal positives, labelled
            with verified_row_groups(snapshot_store.get_store(), source[:2]) as groups:
                for group in groups:
                    rows = build_features(group.to_pandas(), pipeline)
                    count_splits(rows[RESERVED_SPLIT_COLUMN], splits)
                    if LABEL_COLUMN in rows:
                        labelled = True
                        positives += int(rows[LABEL_COLUMN].sum())
                    yield frame_table(rows)

        ref, metadata = store_snapshot(
            snapshot_store,
            features_key,
            stream.chunks(feature_rows()),
            ext="parquet",
            fmt="parquet",
            partition=partition,
            upstream={validated_key.to_user_string(): source[1]},
            run_id=context.run.run_id,
            code_version=pipeline.code_version,
            identity=INGEST,
            # A feature row is still a person's row when the source identifies people.
            encrypt=pipeline.holds_personal_data,
            describe=stream.summary,
        )
        # The declared columns (descriptions, roles) stay the UI's view of the table.
        metadata.pop(COLUMN_SCHEMA, None)
        metadata.update(
            {
                "features": len(catalog),
                "sensitive_features": ", ".join(f.name for f in catalog if f.sensitive) or "none",
                "rows_by_split": dg.MetadataValue.json(dict(splits)),
            }
        )
        if labelled and stream.rows:
            metadata["positive_rate"] = round(positives / stream.rows, 4)
        context.log.info(f"{stream.rows} rows, {len(catalog)} features")
        return dg.MaterializeResult(data_version=dg.DataVersion(ref.sha256), metadata=metadata)

    @dg.asset_check(
        asset=features_key,
        name=FEATURE_DRIFT,
        blocking=True,
        description=(
            "Population stability index of every feature against the reference snapshot (the "
            "one the current champion was trained on, from its signed lineage; the first "
            "snapshot until a model is promoted). Warns at PSI >= "
            f"{policy.drift_warn_psi}, fails at "
            f">= {policy.drift_fail_psi}: the population changed, and a model trained on it "
            "must not replace one trained on the reference without review."
        ),
        op_tags=pipeline.orchestration.ingest.dagster_tags(INGEST),
        **partition_check_options(pipeline),
    )
    @retry_transient_io(pipeline.orchestration)
    def feature_drift(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.features.drift import chunked_stability

        store = snapshot_store.get_store()
        partition = partition_of(context)
        current_record = latest_record(context.instance, features_key, partition)
        references, reference_digest, reference_what = drift_reference(
            context.instance, store, pipeline, champion_lineage
        )
        current_key, subject, _fmt = recorded_snapshot(current_record, features_key, partition)
        names = [f.name for f in catalog]
        # Both tables a row group at a time, each verified before its first row is read.
        drift = chunked_stability(
            lambda: (g for ref in references for g in _row_groups(store, ref, names)),
            _row_groups(store, (current_key, subject), names),
            catalog,
            policy.drift_bins,
        )
        worst = drift[0] if drift else None
        psi = worst.psi if worst else 0.0
        failed = psi >= policy.drift_fail_psi
        warned = psi >= policy.drift_warn_psi
        psi_table = table(
            ({"feature": d.feature, "psi": round(d.psi, 6), "bins": d.bins} for d in drift),
            {"feature": "string", "psi": "float", "bins": "int"},
        )
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=INGEST,
            run_id=context.run.run_id,
            asset_key=features_key,
            check_name=FEATURE_DRIFT,
            passed=not warned,
            severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
            subject=subject,
            summary={
                "max_psi": round(psi, 6),
                "feature": worst.feature if worst else None,
                "reference": reference_digest,
            },
            metadata={
                "max_psi": float(round(psi, 6)),
                "most_drifted": worst.feature if worst else "none",
                # Read by the metrics exporter (one gauge per feature); the table is for people.
                "psi_by_feature": dg.MetadataValue.json(
                    {d.feature: float(round(d.psi, 6)) for d in drift}
                ),
                "psi_table": psi_table,
                "reference_sha256": reference_digest,
                "reference": reference_what
                if reference_digest != subject
                else f"{reference_what}, which is this snapshot (no drift)",
                "warn_at": policy.drift_warn_psi,
                "fail_at": policy.drift_fail_psi,
            },
            description=None
            if not warned
            else f"{worst.feature} drifted: PSI {psi:.3f} (warn {policy.drift_warn_psi}, fail "
            f"{policy.drift_fail_psi})",
        )

    return [features], [feature_drift]
