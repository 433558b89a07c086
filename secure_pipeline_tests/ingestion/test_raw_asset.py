"""raw_<source>: byte-for-byte snapshots, provenance, one audit event per materialization."""

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError, UntrustedSourceError
from secure_pipeline.ingestion.connectors import connector_for
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    ModelSpec,
    SecurePipeline,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.helpers import materialize

# Published digests of the UCI files (reference/data/SOURCE.md).
ADULT_DATA_SHA256 = "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"
ADULT_TEST_SHA256 = "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05"


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _materialize(pipeline: SecurePipeline, instance) -> dg.ExecuteInProcessResult:
    return materialize(pipeline, instance)


def _store(home: Path) -> LocalSnapshotStore:
    return LocalSnapshotStore(home / "store")


def test_reference_raw_adult_is_stored_byte_for_byte(instance, isolated_env: Path) -> None:
    result = _materialize(adult_pipeline(), instance)
    assert result.success
    store = _store(isolated_env)
    mat = instance.get_latest_materialization_event(dg.AssetKey(["adult", "raw_adult"]))
    meta = mat.asset_materialization.metadata
    files = store.read_fileset((meta["snapshot_key"].value, meta["sha256"].value))
    assert hashlib.sha256(files["train"]).hexdigest() == ADULT_DATA_SHA256
    assert hashlib.sha256(files["test"]).hexdigest() == ADULT_TEST_SHA256
    assert files["train"] == (DATA_DIR / "adult.data").read_bytes()
    assert mat.asset_materialization.tags["dagster/data_version"] == meta["sha256"].value
    assert meta["bytes"].value == 3974305 + 2003153

    provenance = meta["provenance"].value
    assert {p["member"] for p in provenance} == {"train", "test"}
    for record in provenance:
        assert record["run_id"] == result.run_id
        assert record["connector"] == "file"
        assert record["retrieved_at"].endswith("Z")
        assert record["schema_version"].startswith("uci_adult@")
        assert record["uri"].startswith("file://")
    # The provenance document is itself an immutable snapshot.
    prov_key = meta["provenance_uri"].value.split("/store/", 1)[1]
    document = json.loads(store.read_bytes((prov_key, prov_key.rsplit("/", 1)[1].split(".")[0])))
    assert document["fileset_sha256"] == meta["sha256"].value


def test_one_audit_event_per_materialization(instance, isolated_env: Path) -> None:
    pipeline = adult_pipeline()
    for _ in range(2):
        assert _materialize(pipeline, instance).success
    store = _store(isolated_env)
    out = __import__("io").StringIO()
    status = AuditLog(store).export(out, "jsonl")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [r for r in records if r["event"] == "ingestion.stored"]
    assert len(events) == 2
    assert events[0]["details"]["new"] is True
    assert events[1]["details"]["new"] is False  # same bytes: snapshot reused
    assert events[0]["subject"] == events[1]["subject"]
    assert events[0]["details"]["files"]["train"]["sha256"] == ADULT_DATA_SHA256
    mat = instance.get_latest_materialization_event(dg.AssetKey(["adult", "raw_adult"]))
    seq, _, digest = mat.asset_materialization.metadata["audit_record"].value.partition(":")
    assert records[int(seq) - 1]["hash"] == digest
    assert records[int(seq) - 1]["event"] == "ingestion.stored"
    assert status.count == len(records)


def test_source_location_override(instance, isolated_env: Path, tmp_path: Path, monkeypatch):
    elsewhere = tmp_path / "mirror"
    elsewhere.mkdir()
    for name in ("adult.data", "adult.test"):
        (elsewhere / name).write_bytes((DATA_DIR / name).read_bytes()[:1000])
    monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", elsewhere.as_uri())
    assert _materialize(adult_pipeline(), instance).success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["adult", "raw_adult"])
    ).asset_materialization.metadata
    assert meta["source"].value == elsewhere.as_uri()
    assert meta["bytes"].value == 2000


def _tiny_pipeline(location: Path, max_bytes: int = 1024) -> SecurePipeline:
    return SecurePipeline(
        name="loans",
        source=SourceSpec(
            name="loans",
            files=(SourceFile("main", "loans.csv"),),
            location=location.as_uri() + "/",
            max_bytes=max_bytes,
        ),
        schema=DatasetSchema(
            name="loans",
            columns=(
                Column("amount", "float", minimum=0),
                Column("approved", "category", allowed=("yes", "no")),
            ),
            label="approved",
            positive_label="yes",
        ),
        model=ModelSpec(train_member="main", test_member=None),
    )


def test_second_pipeline_from_the_same_spec(instance, isolated_env: Path, tmp_path: Path):
    data = tmp_path / "loans"
    data.mkdir()
    (data / "loans.csv").write_bytes(b"100.0,yes\n250.5,no\n")
    pipeline = _tiny_pipeline(data)
    defs = pipeline.build_definitions(Environment.LOCAL)
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "loans/raw_loans",
        "loans/validated_loans",
        "loans/features",
        "loans/trained_model",
        "loans/registered_model",
        "loans/promoted_model",
        "loans/live_traffic",
    }
    assert _materialize(pipeline, instance).success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["loans", "raw_loans"])
    ).asset_materialization.metadata
    files = _store(isolated_env).read_fileset((meta["snapshot_key"].value, meta["sha256"].value))
    assert files == {"main": b"100.0,yes\n250.5,no\n"}


def test_oversize_file_is_refused_and_nothing_stored(instance, isolated_env, tmp_path):
    data = tmp_path / "loans"
    data.mkdir()
    (data / "loans.csv").write_bytes(b"x" * 2048)
    with pytest.raises(UntrustedSourceError, match="over the limit of 1024"):
        _materialize(_tiny_pipeline(data, max_bytes=1024), instance)
    assert list(_store(isolated_env).list_keys("snapshots/")) == []
    assert instance.get_latest_materialization_event(dg.AssetKey(["loans", "raw_loans"])) is None


def test_symlink_out_of_the_source_directory_is_refused(instance, isolated_env, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"1,yes\n")
    data = tmp_path / "loans"
    data.mkdir()
    os.symlink(secret, data / "loans.csv")
    with pytest.raises(UntrustedSourceError, match="outside the allowed root"):
        _materialize(_tiny_pipeline(data), instance)
    assert list(_store(isolated_env).list_keys("snapshots/")) == []


def test_missing_source_file_is_a_clear_error(instance, tmp_path):
    with pytest.raises(UntrustedSourceError, match="does not exist"):
        _materialize(_tiny_pipeline(tmp_path), instance)


def test_plain_http_source_is_refused(monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", "http://example.com/adult/")
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_SOURCE_URI must be a file://"):
        adult_pipeline().build_definitions(Environment.LOCAL)
    # The connector refuses it too, for sources resolved any other way.
    with pytest.raises(UntrustedSourceError, match="refusing plain http"):
        connector_for("http://example.com/adult/adult.data", location="http://example.com/adult/")


def test_raw_asset_carries_ui_metadata() -> None:
    defs = adult_pipeline().build_definitions(Environment.LOCAL)
    spec = next(
        s for s in defs.resolve_all_asset_specs() if s.key == dg.AssetKey(["adult", "raw_adult"])
    )
    assert spec.group_name == "ingestion"
    assert spec.kinds == {"csv"}
    assert spec.owners == ["team:ml-platform"]
    assert "byte-for-byte" in (spec.description or "")
    schema = spec.metadata["declared_schema"]
    assert [c.name for c in schema.columns][:3] == ["age", "workclass", "fnlwgt"]
    sex = next(c for c in schema.columns if c.name == "sex")
    assert "sensitive" in sex.constraints.other


def test_fifo_source_is_refused_without_hanging(instance, isolated_env, tmp_path):
    data = tmp_path / "loans"
    data.mkdir()
    os.mkfifo(data / "loans.csv")
    with pytest.raises(UntrustedSourceError, match="not a regular file"):
        _materialize(_tiny_pipeline(data), instance)
