"""The validation and features stages inside real Dagster runs: every bad input is stopped by a
blocking check (or the connector) and nothing downstream of it is materialized."""

import io
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    FeatureSpec,
    ModelSpec,
    SecurePipeline,
    SecurityPolicy,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.conftest import overwrite_raw
from secure_pipeline_tests.helpers import materialize, materialize_all
from secure_pipeline_tests.tls_server import serve

HEADER = b"applicant,amount,term,region,approved\n"
GOOD_ROWS = [
    b"a1,1200.0,12,N,yes",
    b"a2,500.5,24,S,no",
    b"a3,9000,36,,no",
    b"a4,150.0,6,N,yes",
    b"a5,2500,48,S,no",
    b"a6,780,12,N,yes",
    b"a7,3100,60,S,no",
    b"a8,640,24,N,no",
    b"a9,8800,36,S,yes",
    b"a10,1010,12,N,no",
]
GOOD = HEADER + b"\n".join(GOOD_ROWS) + b"\n"


def loans_pipeline(location: str, **source: object) -> SecurePipeline:
    """A second pipeline: another source, another schema (with a header), the same controls."""
    return SecurePipeline(
        name="loans",
        source=SourceSpec(
            name="loans",
            files=(SourceFile("main", "loans.csv"),),
            location=location,
            max_bytes=4096,
            **source,  # type: ignore[arg-type]
        ),
        schema=DatasetSchema(
            name="loans",
            columns=(
                Column("applicant", "string"),
                Column("amount", "float", minimum=0, maximum=1e6, mean_between=(100, 10_000)),
                Column("term", "int", minimum=6, maximum=360),
                Column(
                    "region", "category", nullable=True, allowed=("N", "S"), max_null_fraction=0.2
                ),
                Column("approved", "category", allowed=("yes", "no")),
            ),
            label="approved",
            positive_label="yes",
            has_header=True,
            min_rows=8,
            max_rows=1000,
        ),
        sensitive_features=("region",),
        features=FeatureSpec(bands={"amount": (1000, 5000)}),
        policy=SecurityPolicy(max_reject_rate=0.05, drift_warn_psi=0.1, drift_fail_psi=0.25),
        model=ModelSpec(train_member="main", test_member=None),
    )


def materialize_data(pipeline: SecurePipeline, instance) -> dg.ExecuteInProcessResult:
    """The data stages (ingestion to features) with their checks; training is tested apart."""
    return materialize(
        pipeline,
        instance,
        assets=[pipeline.raw_asset_name, f"validated_{pipeline.source.name}", "features"],
        raise_on_error=False,
    )


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _source(tmp_path: Path, data: bytes) -> str:
    folder = tmp_path / "landing"
    folder.mkdir(exist_ok=True)
    (folder / "loans.csv").write_bytes(data)
    return folder.as_uri() + "/"


def _check(result: dg.ExecuteInProcessResult, asset: str, name: str):
    for evaluation in result.get_asset_check_evaluations():
        key = evaluation.asset_check_key
        # Each run here builds one pipeline: its assets are named by their last key component.
        if key.asset_key.path[-1] == asset and key.name == name:
            return evaluation
    return None


def _materialized(instance, asset: str) -> bool:
    return any(
        instance.get_latest_materialization_event(dg.AssetKey([pipeline, asset])) is not None
        for pipeline in ("adult", "loans")
    )


def test_reference_pipeline_passes_every_gate(instance, isolated_env) -> None:
    result = materialize_all(adult_pipeline(), instance)
    assert result.success
    for asset, check in [
        ("raw_adult", "provenance_complete"),
        ("raw_adult", "schema_conforms"),
        ("validated_adult", "reject_rate_within_limit"),
        ("validated_adult", "expectations_met"),
        ("features", "feature_drift"),
        ("features", "poisoning_screen"),
        ("trained_model", "performance_meets_policy"),
        ("trained_model", "adversarial_robustness"),
        ("trained_model", "membership_inference_risk"),
        ("trained_model", "fairness_audit"),
        ("trained_model", "onnx_equivalent"),
    ]:
        evaluation = _check(result, asset, check)
        assert evaluation is not None, (asset, check)
        assert evaluation.passed, (asset, check)
    validated = instance.get_latest_materialization_event(dg.AssetKey(["adult", "validated_adult"]))
    meta = validated.asset_materialization.metadata
    assert meta["rows_valid"].value == 48842
    assert meta["rows_quarantined"].value == 0
    features = instance.get_latest_materialization_event(dg.AssetKey(["adult", "features"]))
    assert features.asset_materialization.metadata["dagster/row_count"].value == 48842
    expectations = _check(result, "validated_adult", "expectations_met").metadata
    store = LocalSnapshotStore(isolated_env / "store")
    key = expectations["result_uri"].value.split("/store/", 1)[1]
    document = json.loads(store.read_bytes((key, expectations["result_sha256"].value)))
    assert document["success"] is True
    assert len(document["results"]) == expectations["expectations"].value
    out = io.StringIO()
    AuditLog(store).export(out)
    verdicts = [json.loads(x) for x in out.getvalue().splitlines()]
    checks = {(r["details"]["check"], r["details"]["passed"]) for r in verdicts
              if r["event"] == "check.evaluated"}  # fmt: skip
    assert ("expectations_met", True) in checks
    assert ("feature_drift", True) in checks


def test_second_pipeline_gets_the_same_controls(instance, tmp_path) -> None:
    result = materialize_data(loans_pipeline(_source(tmp_path, GOOD)), instance)
    assert result.success
    assert _materialized(instance, "features")
    evaluations = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    assert evaluations == {
        ("provenance_complete", True),
        ("schema_conforms", True),
        ("reject_rate_within_limit", True),
        ("expectations_met", True),
        ("feature_drift", True),
        ("poisoning_screen", False),  # ten rows cannot be judged: a warning, blocking nothing
    }


BAD_INPUTS = {
    # input: (file bytes, the check that stops it, text its description must contain)
    "empty file": (b"", "schema_conforms", "is empty"),
    "binary garbage": (
        b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4,
        "schema_conforms",
        "not text",
    ),  # fmt: skip
    "renamed column": (GOOD.replace(b"region", b"area", 1), "schema_conforms", "missing"),
    "odd column names": (
        GOOD.replace(b"amount,term", b"Amount ,term", 1),
        "schema_conforms",
        "unexpected",
    ),  # fmt: skip
    "wrong column count": (
        HEADER + b"\n".join(r.rsplit(b",", 1)[0] for r in GOOD_ROWS) + b"\n",
        "schema_conforms",
        "no line has the declared 5 fields",
    ),
    "wrong types": (
        GOOD.replace(b"a3,9000,36", b"a3,9000,thirty-six"),
        "reject_rate_within_limit",
        "rows rejected",
    ),  # fmt: skip
    "truncated csv": (GOOD[: len(GOOD) - 9], "reject_rate_within_limit", "rows rejected"),
    "too few rows": (
        HEADER + b"\n".join(GOOD_ROWS[:4]) + b"\n",
        "expectations_met",
        "expect_table_row_count_to_be_between",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_stopped_by_a_blocking_check(instance, tmp_path, case) -> None:
    data, check, message = BAD_INPUTS[case]
    result = materialize_data(loans_pipeline(_source(tmp_path, data)), instance)
    assert not result.success
    evaluation = _check(result, "validated_loans" if check != "schema_conforms" else "raw_loans",
                        check)  # fmt: skip
    assert evaluation is not None, f"{check} did not run"
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert message in (evaluation.description or ""), evaluation.description
    assert not _materialized(instance, "features")
    if check == "schema_conforms":
        assert not _materialized(instance, "validated_loans")


def test_oversize_payload_is_refused_by_the_connector(instance, tmp_path) -> None:
    big = GOOD + b"\n".join(GOOD_ROWS * 40)
    result = materialize_data(loans_pipeline(_source(tmp_path, big)), instance)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure.cause.cls_name == "UntrustedSourceError"
    assert "over the limit of 4096" in failure.cause.message
    assert not _materialized(instance, "raw_loans")


def test_quarantine_keeps_each_rejected_row_with_its_reason(instance, tmp_path, isolated_env):
    data = GOOD.replace(b"a3,9000,36", b"a3,9000,thirty-six") + b"a11,50,12,W,no\n"
    materialize_data(loans_pipeline(_source(tmp_path, data)), instance)
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["loans", "validated_loans"])
    ).asset_materialization.metadata
    assert meta["rows_valid"].value == 9
    assert meta["rows_quarantined"].value == 2
    store = LocalSnapshotStore(isolated_env / "store")
    key = meta["quarantine_uri"].value.split("/store/", 1)[1]
    table = pq.read_table(pa.BufferReader(store.read_bytes((key, meta["quarantine_sha256"].value))))
    rows = {r["applicant"]: r for r in table.to_pylist()}
    assert rows["a3"]["reason"] == "term: not a valid int"
    assert rows["a3"]["term"] == "thirty-six"  # the value as it arrived
    assert rows["a11"]["reason"] == "region: not an allowed value"


def test_drift_against_the_first_snapshot_blocks(instance, tmp_path) -> None:
    assert materialize_data(loans_pipeline(_source(tmp_path, GOOD)), instance).success
    shifted = (
        HEADER
        + b"\n".join(r.replace(b",N,", b",S,").replace(b",,", b",S,") for r in GOOD_ROWS)
        + b"\n"
    )
    result = materialize_data(loans_pipeline(_source(tmp_path, shifted)), instance)
    drift = _check(result, "features", "feature_drift")
    assert not drift.passed
    assert drift.severity == dg.AssetCheckSeverity.ERROR
    assert "region" in drift.description
    assert drift.metadata["max_psi"].value >= 0.25


def test_failed_runs_leave_earlier_snapshots_intact(instance, tmp_path, isolated_env) -> None:
    assert materialize_data(loans_pipeline(_source(tmp_path, GOOD)), instance).success
    store = LocalSnapshotStore(isolated_env / "store")
    before = {k: store.read_object(k) for k in store.list_keys("snapshots/")}
    materialize_data(loans_pipeline(_source(tmp_path, b"\x00garbage")), instance)
    after = {k: store.read_object(k) for k in store.list_keys("snapshots/")}
    assert {k: after[k] for k in before} == before
    assert AuditLog(store).verify().count > 0


def test_https_source_with_header_goes_through_the_same_gates(instance, tmp_path, pki, monkeypatch):
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "loans.csv").write_bytes(GOOD.replace(b"region", b"area", 1))
    monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
    with serve(folder, pki) as server:
        result = materialize_data(loans_pipeline(f"{server.url}/data/"), instance)
    assert _check(result, "raw_loans", "provenance_complete").passed
    schema = _check(result, "raw_loans", "schema_conforms")
    assert not schema.passed
    assert "unexpected: ['area']" in schema.description
    assert not _materialized(instance, "validated_loans")


def _landing(s3_client, versioned: bool) -> str:
    import uuid

    bucket = f"landing-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=bucket)
    if versioned:
        s3_client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    s3_client.put_object(Bucket=bucket, Key="loans/loans.csv", Body=GOOD)
    return f"s3://{bucket}/loans/"


def test_s3_landing_zone_records_etag_and_version(instance, s3_client, moto_endpoint, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", moto_endpoint)
    result = materialize_data(loans_pipeline(_landing(s3_client, versioned=True)), instance)
    assert result.success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["loans", "raw_loans"])
    ).asset_materialization.metadata
    facts = meta["provenance"].value[0]["facts"]
    assert facts["etag"]
    assert facts["version_id"]
    assert meta["provenance"].value[0]["connector"] == "s3"


def test_unversioned_landing_zone_fails_provenance(instance, s3_client, moto_endpoint, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", moto_endpoint)
    result = materialize_data(loans_pipeline(_landing(s3_client, versioned=False)), instance)
    provenance = _check(result, "raw_loans", "provenance_complete")
    assert not provenance.passed
    assert "version_id" in provenance.description
    assert not _materialized(instance, "validated_loans")


def test_a_forged_drift_reference_is_refused(instance, tmp_path, isolated_env) -> None:
    # The insider rewrites the reference snapshot, a valid Parquet file at the same key, to
    # look like the shifted data it wants to pass: without verification the index would be 0.
    assert materialize_data(loans_pipeline(_source(tmp_path, GOOD)), instance).success
    store = LocalSnapshotStore(isolated_env / "store")
    (key,) = [k for k in store.list_keys("snapshots/loans/features/") if k.endswith(".parquet")]
    reference = pq.read_table(store.root / key)
    region = reference.schema.get_field_index("region")
    forged = reference.set_column(
        region, "region", pa.array([1] * reference.num_rows, reference.schema.field(region).type)
    )
    sink = io.BytesIO()
    pq.write_table(forged, sink)
    overwrite_raw(store, key, sink.getvalue())
    shifted = (
        HEADER
        + b"\n".join(r.replace(b",N,", b",S,").replace(b",,", b",S,") for r in GOOD_ROWS)
        + b"\n"
    )
    result = materialize_data(loans_pipeline(_source(tmp_path, shifted)), instance)
    assert not result.success
    drift = _check(result, "features", "feature_drift")
    assert drift is None or not drift.passed
    errors = [e.step_failure_data.error.to_string() for e in result.get_step_failure_events()]
    assert any(f"{key} failed verification" in error for error in errors), errors
