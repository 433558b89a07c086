"""The training window of a partitioned pipeline: the days a model learns from, as one snapshot.

A partitioned source's features are a snapshot per day. Training reads the spec's window of
consecutive days ending with the latest day materialized. The window is stored as a small
JSON snapshot naming every day's features snapshot by digest, and its digest is what the
model's record, its checks and its signed lineage name as the training data. The document
holds nothing but the days and their digests, so anyone holding the lineage can rebuild it and
check its digest without the store (`window_document`); every day's table is read verified
against the digest the window names.
"""

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from secure_pipeline.canonical import canonical_json
from secure_pipeline.errors import IntegrityError
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.snapshots import SnapshotRef, SnapshotStore, snapshot_key

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

WINDOW_FORMAT = "secure-pipeline/training-window@1"
# The window snapshot lives beside the features' own: snapshots/<pipeline>/features/_window/.
WINDOW_SUFFIX = "_window"


def window_path(pipeline: PipelineSpec) -> list[str]:
    """The asset path window snapshots are stored under."""
    return [*pipeline.names.features.path, WINDOW_SUFFIX]


def is_window_key(pipeline: PipelineSpec, key: str, sha256: str) -> bool:
    """Whether ``key`` is the window snapshot of digest ``sha256`` (not a features table)."""
    return key == snapshot_key(window_path(pipeline), sha256, "json")


def window_document(pipeline: str, asset: str, days: Sequence[Mapping[str, Any]]) -> bytes:
    """The canonical window document of ``days`` (each ``partition``, ``key``, ``sha256``).

    Args:
        pipeline: The pipeline's name.
        asset: Its features asset (``adult/features``).
        days: The days, in order.
    """
    return canonical_json(
        {
            "format": WINDOW_FORMAT,
            "pipeline": pipeline,
            "asset": asset,
            "days": [
                {"partition": d["partition"], "key": d["key"], "sha256": d["sha256"]} for d in days
            ],
        }
    )


def window_days(pipeline: PipelineSpec, instance: "dg.DagsterInstance") -> list[str]:
    """The days training reads: ``window`` consecutive days ending with the latest one stored.

    Raises:
        dg.Failure: When no day is materialized, the window reaches before the first day, or a
            day inside it is missing (a model trained on part of its window would claim data
            it never saw: backfill the day first).
    """
    import dagster as dg

    from secure_pipeline.metadata import daily_partitions

    partitions, spec = daily_partitions(pipeline), pipeline.source.partitions
    if partitions is None or spec is None:
        raise ValueError(f"pipeline {pipeline.name!r} has no partitions: it has no window")
    features = pipeline.names.features
    stored = set(instance.get_materialized_partitions(features))
    if not stored:
        raise dg.Failure(
            f"no day of {features.to_user_string()} is materialized: run the ingest job for a "
            "day (or backfill the window) before training"
        )
    keys = partitions.get_partition_keys()
    known = stored & set(keys)
    if not known:
        raise dg.Failure(f"no materialized day of {features.to_user_string()} is in its partitions")
    latest = max(known)
    end = keys.index(latest) + 1
    if end < spec.window:
        raise dg.Failure(
            f"the training window is {spec.window} days, but {latest} is day {end} of the "
            f"source (it starts {spec.start}): wait for more days or shorten the window"
        )
    days = keys[end - spec.window : end]
    missing = [d for d in days if d not in stored]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise dg.Failure(
            f"the training window {days[0]}..{days[-1]} lacks {features.to_user_string()} for "
            f"{shown}: backfill the ingest job for those days before training"
        )
    return days


def store_window(
    pipeline: PipelineSpec, store: SnapshotStore, instance: "dg.DagsterInstance", run_id: str
) -> tuple[SnapshotRef, list[dict[str, str]]]:
    """Store the window of the latest days (see `window_days`); return it and its days."""
    from secure_pipeline.storage.io_manager import latest_record, recorded_snapshot

    features = pipeline.names.features
    days = []
    for day in window_days(pipeline, instance):
        key, sha, _ = recorded_snapshot(latest_record(instance, features, day), features, day)
        days.append({"partition": day, "key": key, "sha256": sha})
    ref = store.put_bytes(
        window_path(pipeline),
        window_document(pipeline.name, pipeline.names.features.to_user_string(), days),
        ext="json",
        format=WINDOW_FORMAT,
        upstream={},
        run_id=run_id,
        code_version=pipeline.code_version,
        extra={"days": len(days), "first": days[0]["partition"], "last": days[-1]["partition"]},
    )
    return ref, days


def read_window(store: SnapshotStore, pipeline: PipelineSpec, sha256: str) -> list[dict[str, str]]:
    """The days of a stored window, read verified; each must be a day of this features asset.

    Raises:
        IntegrityError: When the window does not verify, is not a window document, or names
            a snapshot other than a day's features.
    """
    key = snapshot_key(window_path(pipeline), sha256, "json")
    document = json.loads(store.read_bytes((key, sha256)))
    days = document.get("days") if isinstance(document, dict) else None
    if document.get("format") != WINDOW_FORMAT or not isinstance(days, list) or not days:
        raise IntegrityError(f"{key} is not a training window document")
    features = pipeline.names.features
    for day in days:
        expected = snapshot_key(features.path, str(day.get("sha256")), "parquet", day["partition"])
        if day.get("key") != expected:
            raise IntegrityError(
                f"training window {sha256[:12]} names {day.get('key')} for {day['partition']}, "
                f"which is not that day's {features.to_user_string()} snapshot"
            )
    if window_document(
        pipeline.name, pipeline.names.features.to_user_string(), days
    ) != canonical_json(document):
        raise IntegrityError(f"{key} holds fields a training window does not have")
    return days


def training_snapshots(
    store: SnapshotStore, pipeline: PipelineSpec, key: str, sha256: str
) -> list[tuple[str, str]]:
    """The features tables a model's recorded training data is: one, or a window's days.

    Raises:
        IntegrityError: When the record names neither this pipeline's features snapshot nor a
            window of them.
    """
    if is_window_key(pipeline, key, sha256):
        return [(d["key"], d["sha256"]) for d in read_window(store, pipeline, sha256)]
    if key != snapshot_key(pipeline.names.features.path, sha256, "parquet"):
        raise IntegrityError(
            f"the training data named {key} is not the features snapshot {sha256} nor a "
            "training window"
        )
    return [(key, sha256)]


def read_tables(store: SnapshotStore, refs: Sequence[tuple[str, str]]) -> "pd.DataFrame":
    """Features tables read verified, one after another as one frame (a window's days)."""
    import pandas as pd

    from secure_pipeline.storage.tables import parquet_to_table

    tables = [parquet_to_table(store.read_bytes(ref)).to_pandas() for ref in refs]
    return tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)


def read_training_features(
    store: SnapshotStore, pipeline: PipelineSpec, key: str, sha256: str
) -> "pd.DataFrame":
    """The training data a record names, every table verified, the window's days in order."""
    return read_tables(store, training_snapshots(store, pipeline, key, sha256))


def window_metadata(days: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a model's materialization shows of its window."""
    import dagster as dg

    return {
        "training_window": dg.MetadataValue.json(
            {"first": days[0]["partition"], "last": days[-1]["partition"], "days": len(days)}
        )
    }


def lineage_snapshots(lineage: Mapping[str, Any]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Every data snapshot a lineage names: ``(stage, partition, entry)``, upstream first.

    One of each stage for an unpartitioned pipeline; each day's of a partitioned one (its
    ``data`` holds the ``window`` and the days under ``partitions``).
    """
    data = lineage.get("data", {})
    if not isinstance(data, Mapping):
        return []
    if "window" not in data:
        return [(stage, None, entry) for stage, entry in data.items()]
    days = data.get("partitions")
    if not isinstance(days, Mapping):
        return []
    return [
        (stage, str(day), entry)
        for day, stages in sorted(days.items())
        if isinstance(stages, Mapping)
        for stage, entry in stages.items()
    ]


def training_features(lineage: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """The features snapshots a model was trained on, ``(key, sha256, day)``, in order."""
    return [
        (str(e.get("key")), str(e.get("sha256")), day)
        for stage, day, e in lineage_snapshots(lineage)
        if stage == "features" and isinstance(e, Mapping)
    ]
