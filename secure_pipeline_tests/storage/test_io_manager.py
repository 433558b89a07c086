"""The snapshot IO manager inside real Dagster runs (in-process, temporary instance)."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from secure_pipeline.errors import IntegrityError
from secure_pipeline.names import IDENTITY_TAG
from secure_pipeline.storage.io_manager import SnapshotIOManager
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.resources import (
    LocalSnapshotStoreResource,
    S3SnapshotStoreResource,
    SnapshotStoreResource,
)
from secure_pipeline.storage.tables import table_to_parquet, to_arrow
from secure_pipeline.trust.identities import INGEST
from secure_pipeline_tests.conftest import overwrite_raw

VERSION = {"n": 0}
# Every stored snapshot is recorded by a signing identity, named by this op tag.
SIGNED = {IDENTITY_TAG: INGEST}


@dg.asset(op_tags=SIGNED)
def table() -> pd.DataFrame:
    """A small table whose content changes with VERSION."""
    n = VERSION["n"]
    return pd.DataFrame({"x": [n, n + 1, n + 2], "label": ["a", "b", "c"]})


@dg.asset(op_tags=SIGNED)
def doubled(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(x=table["x"] * 2)


@dg.asset(op_tags=SIGNED)
def as_arrow(table: pa.Table) -> dict:
    return {"type": type(table).__name__, "rows": table.num_rows}


@dg.asset(op_tags=SIGNED, metadata={"secure_pipeline/extension": "txt"})
def blob() -> bytes:
    return b"plain bytes"


@dg.asset(op_tags=SIGNED)
def blob_size(blob: bytes) -> dict:
    return {"size": len(blob)}


class Opaque:
    pass


@dg.asset(op_tags=SIGNED)
def opaque() -> Opaque:
    return Opaque()


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture(params=["local", "s3"])
def store_resource(request, tmp_path: Path) -> SnapshotStoreResource:
    if request.param == "local":
        return LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3SnapshotStoreResource(
        bucket=bucket, endpoint_url=endpoint, region="us-east-1", allow_loopback_http=True
    )


def _resources(store: SnapshotStoreResource) -> dict:
    return {"snapshot_store": store, "io_manager": SnapshotIOManager(store=store)}


def _latest(instance, key: str):
    return instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization


def test_table_metadata_and_data_version(instance, store_resource) -> None:
    VERSION["n"] = 0
    result = dg.materialize([table], instance=instance, resources=_resources(store_resource))
    assert result.success
    mat = _latest(instance, "table")
    meta = mat.metadata
    sha = meta["sha256"].value
    assert meta["snapshot_key"].value == f"snapshots/table/{sha}.parquet"
    assert meta["format"].value == "parquet"
    assert meta["dagster/row_count"].value == 3
    assert meta["bytes"].value > 0
    columns = [c.name for c in meta["dagster/column_schema"].schema.columns]
    assert columns == ["x", "label"]
    assert str(meta["uri"].value).endswith(f"{sha}.parquet")
    assert mat.tags["dagster/data_version"] == sha
    seq, _, digest = meta["audit_record"].value.partition(":")
    assert store_resource.get_audit_log().verify({int(seq): digest}).count == 1


def test_unchanged_content_keeps_the_data_version(instance, store_resource) -> None:
    VERSION["n"] = 0
    resources = _resources(store_resource)
    dg.materialize([table], instance=instance, resources=resources)
    first = _latest(instance, "table")
    dg.materialize([table], instance=instance, resources=resources)
    second = _latest(instance, "table")
    assert first.tags["dagster/data_version"] == second.tags["dagster/data_version"]
    assert second.metadata["stored"].value == "identical snapshot already stored"


def test_downstream_reads_the_recorded_snapshot_and_records_upstream(
    instance, store_resource
) -> None:
    VERSION["n"] = 10
    resources = _resources(store_resource)
    assert dg.materialize(
        [table, doubled, as_arrow], instance=instance, resources=resources
    ).success
    up = _latest(instance, "table").metadata["sha256"].value
    down = _latest(instance, "doubled")
    store = store_resource.get_store()
    frame = pd.read_parquet(
        pa.BufferReader(store.read_bytes((down.metadata["snapshot_key"].value,
                                          down.metadata["sha256"].value)))
    )  # fmt: skip
    assert frame["x"].tolist() == [20, 22, 24]
    manifest = store.read_manifest(
        (down.metadata["snapshot_key"].value, down.metadata["sha256"].value)
    )
    assert manifest.upstream == {"table": up}
    assert down.tags["dagster/input_data_version/table"] == up
    arrow = _latest(instance, "as_arrow")
    arrow_doc = store.read_bytes(
        (arrow.metadata["snapshot_key"].value, arrow.metadata["sha256"].value)
    )
    assert b'"type":"Table"' in arrow_doc


def test_planted_newer_file_is_ignored(instance, tmp_path: Path) -> None:
    """Loading follows the materialization record, never "the newest file in the folder"."""
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    resources = _resources(resource)
    VERSION["n"] = 1
    dg.materialize([table], instance=instance, resources=resources)
    # Someone writes another valid snapshot of `table` into the store, bypassing Dagster.
    store = resource.get_store()
    planted = pd.DataFrame({"x": [1000, 1000, 1000], "label": ["p", "p", "p"]})
    store.put_bytes("table", table_to_parquet(to_arrow(planted)), ext="parquet", format="parquet")
    result = dg.materialize(
        [table, doubled], selection=["doubled"], instance=instance, resources=resources
    )
    assert result.output_for_node("doubled")["x"].tolist() == [2, 4, 6]


def test_record_pointing_at_another_assets_snapshot_is_refused(instance, tmp_path: Path):
    """A reported materialization cannot redirect an input to other (valid) bytes."""
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    resources = _resources(resource)
    VERSION["n"] = 3
    dg.materialize([table], instance=instance, resources=resources)
    secret = resource.get_store().put_bytes(
        "salaries",
        table_to_parquet(to_arrow(pd.DataFrame({"x": [100000], "label": ["ceo"]}))),
        ext="parquet",
        format="parquet",
    )
    meta = _latest(instance, "table").metadata
    forged = {k: v for k, v in meta.items()}
    forged.update({"snapshot_key": secret.key, "sha256": secret.sha256})
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="table", metadata=forged,
                                tags={"dagster/data_version": secret.sha256})
    )  # fmt: skip
    with pytest.raises(IntegrityError, match="without a run|not a snapshot of table"):
        dg.materialize([table, doubled], selection=["doubled"], instance=instance,
                       resources=resources)  # fmt: skip


def test_tampered_upstream_snapshot_fails_the_downstream_step(instance, store_resource) -> None:
    VERSION["n"] = 2
    resources = _resources(store_resource)
    dg.materialize([table], instance=instance, resources=resources)
    meta = _latest(instance, "table").metadata
    store = store_resource.get_store()
    original = store.read_bytes((meta["snapshot_key"].value, meta["sha256"].value))
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    overwrite_raw(store, meta["snapshot_key"].value, bytes(tampered))
    with pytest.raises(IntegrityError, match="failed verification"):
        dg.materialize([table, doubled], selection=["doubled"], instance=instance,
                       resources=resources)  # fmt: skip
    assert instance.get_latest_materialization_event(dg.AssetKey("doubled")) is None


def test_bytes_round_trip_with_extension(instance, tmp_path: Path) -> None:
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    result = dg.materialize([blob, blob_size], instance=instance, resources=_resources(resource))
    assert result.success
    assert _latest(instance, "blob").metadata["snapshot_key"].value.endswith(".txt")
    assert result.output_for_node("blob_size") == {"size": len(b"plain bytes")}


def test_objects_that_would_need_pickle_are_refused(instance, tmp_path: Path) -> None:
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    with pytest.raises(TypeError, match="pickle"):
        dg.materialize([opaque], instance=instance, resources=_resources(resource))
    assert not list(LocalSnapshotStore(tmp_path / "store").list_keys("snapshots/"))


def test_missing_upstream_materialization_is_a_clear_error(instance, tmp_path: Path) -> None:
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    with pytest.raises(IntegrityError, match="no materialization of table"):
        dg.materialize([table, doubled], selection=["doubled"], instance=instance,
                       resources=_resources(resource))  # fmt: skip


regions = dg.StaticPartitionsDefinition(["eu-west", "us-east"])


@dg.asset(op_tags=SIGNED, partitions_def=regions)
def regional(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"region": [context.partition_key], "n": [len(context.partition_key)]})


@dg.asset(op_tags=SIGNED)
def all_regions(regional: dict) -> dict:
    return {name: frame["n"].tolist() for name, frame in regional.items()}


def test_partitions_get_their_own_keys_and_load_together(instance, tmp_path: Path) -> None:
    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    resources = _resources(resource)
    for region in ("eu-west", "us-east"):
        dg.materialize([regional], partition_key=region, instance=instance, resources=resources)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("regional"), asset_partitions=["us-east"]),
        limit=1,
    ).records
    key = records[0].asset_materialization.metadata["snapshot_key"].value
    assert key.startswith("snapshots/regional/us-east/")
    result = dg.materialize(
        [regional, all_regions], selection=["all_regions"], instance=instance, resources=resources
    )
    assert result.output_for_node("all_regions") == {"eu-west": [7], "us-east": [7]}


def test_an_asset_without_a_signing_identity_is_refused(instance, tmp_path: Path) -> None:
    @dg.asset(name="unsigned")
    def unsigned() -> bytes:
        return b"data"

    resource = LocalSnapshotStoreResource(root=str(tmp_path / "store"))
    with pytest.raises(Exception, match="has no 'secure_pipeline/identity' op tag"):
        dg.materialize([unsigned], instance=instance, resources=_resources(resource))
    assert not (tmp_path / "store" / "snapshots").exists()
