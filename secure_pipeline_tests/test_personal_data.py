"""Personal data end to end, as a data protection officer and an operator meet it.

A credit source naming 1,000 applicants by case id and name: trained and promoted; one applicant
asks to be erased; the champion is refused by the model server at once; the next scheduled
ingestion leaves the applicant out; the privacy job (the Dagster job its schedule runs) shreds
the data keys of every snapshot that held the applicant; the retrained model is promoted and
served. And the same source ingested into S3 with AWS KMS data keys (moto) leaves no name in any
object of the bucket.
"""

from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ErasedError
from secure_pipeline.names import CHAMPION
from secure_pipeline.privacy.erasure import erase, hash_identifiers, locate
from secure_pipeline.serving.server import ModelService
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.trust.identities import PRIVACY
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import pointed_at
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.privacy.erasure_helpers import Run, new_run

ERASED = "C00421"


def _serve(run: Run) -> ModelService:
    service = ModelService(run.pipeline, f"models:/credit@{CHAMPION}", "blue")
    service.load()
    return service


def _privacy_job(run: Run) -> dg.ExecuteInProcessResult:
    """Run the pipeline's privacy job exactly as its daily schedule launches it."""
    defs = run.pipeline.build_definitions(Environment.LOCAL)
    job = defs.resolve_job_def("credit_privacy")
    assert defs.resolve_schedule_def("credit_privacy_schedule").job_name == "credit_privacy"
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> dict:
    run = new_run(tmp_path_factory, "lifecycle")
    seen: dict = {"run": run}
    with pointed_at(run.home, dev_keys):
        run.run_all()
        served = _serve(run)
        seen["before"] = (served.state, served.model_sha256)
        store, trust = run.store(), trust_policy()
        (subject,) = hash_identifiers(run.pipeline, [ERASED])
        seen["located"] = locate(store, run.pipeline, trust, subject)
        seen["receipt"] = erase(
            store, run.pipeline, trust, [ERASED], now=False, signer=signer_for(PRIVACY)
        )
        refused = _serve(run)
        seen["refused"] = (refused.state, refused.reason)
        with dg.DagsterInstance.get() as instance:
            seen["ingest"] = materialize(
                run.pipeline, instance, ["raw_credit", "validated_credit", "features"],
                raise_on_error=False,
            )  # fmt: skip
        seen["job"] = _privacy_job(run)
        seen["retrained"] = run.run_all()
        served = _serve(run)
        seen["after"] = (served.state, served.reason, served.model_sha256)
        seen["chain"] = AuditLog(store).verify(trust=trust)
        seen["events"] = [r.event for r in AuditLog(store).verified_records(trust)]
    return seen


def test_the_champion_is_served_until_its_data_subject_asks_to_be_erased(lifecycle) -> None:
    state, model = lifecycle["before"]
    assert state == "ready"
    located = lifecycle["located"]
    assert len(located.ingestions) == 1
    assert located.models
    assert model in {m.model_sha256 for m in located.models}
    state, reason = lifecycle["refused"]
    assert state == "refused"
    assert "trained on data erased on" in reason


def test_the_next_ingestion_excludes_the_subject_and_the_job_shreds_what_held_it(
    lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = lifecycle["ingest"]
    assert ingest.success, [e.message for e in ingest.all_events if e.is_failure]
    raw = next(
        e for e in ingest.get_asset_materialization_events()
        if e.asset_key.path[-1] == "raw_credit"
    ).materialization.metadata  # fmt: skip
    assert raw["excluded_rows"].value == 1
    job = lifecycle["job"]
    assert job.success
    (output,) = [e for e in job.all_node_events if e.is_successful_output]
    report = output.event_specific_data.metadata["report"].value
    shredded = {s["key"] for s in report["shredded"]}
    held = set(lifecycle["receipt"].located[0].snapshot_keys())
    assert held
    assert shredded == held
    store = lifecycle["run"].point(monkeypatch).store()
    for key in held:
        with pytest.raises(ErasedError):
            store.read_bytes((key, key.rsplit("/", 1)[-1].split(".")[0]))


def test_the_retrained_model_is_promoted_and_served_and_every_receipt_verifies(
    lifecycle,
) -> None:
    retrained = lifecycle["retrained"]
    assert retrained.success
    state, reason, model = lifecycle["after"]
    assert state == "ready", reason
    assert model != lifecycle["before"][1]
    assert lifecycle["chain"].count == len(lifecycle["events"])  # verify() raises when broken
    events = lifecycle["events"]
    assert "privacy.erasure" in events
    assert "privacy.shredded" in events
    assert events.index("privacy.erasure") < events.index("privacy.shredded")


@pytest.fixture
def on_s3_with_kms(
    tmp_path_factory: pytest.TempPathFactory,
    dev_keys: Path,
    moto_endpoint: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    run = new_run(tmp_path_factory, "kms").point(monkeypatch)
    monkeypatch.setenv("SECURE_PIPELINE_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("SECURE_PIPELINE_DATA_KEYRING", "kms")
    monkeypatch.setenv("SECURE_PIPELINE_KMS_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return run


def test_on_s3_every_object_is_free_of_names_and_each_snapshot_has_its_kms_key(
    on_s3_with_kms: Run, s3_client, s3_bucket: str, moto_endpoint: str
) -> None:
    import boto3

    run = on_s3_with_kms
    names = run.source()
    with dg.DagsterInstance.get() as instance:
        result = materialize(
            run.pipeline, instance, ["raw_credit", "validated_credit", "features"],
            raise_on_error=False,
        )  # fmt: skip
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    store = run.store()
    listed = store.list_keys("snapshots/credit/raw_credit/")
    raw_keys = [k for k in listed if "manifest" not in k]
    assert raw_keys
    infos = [store.encryption_info(k) for k in raw_keys if k.endswith(".csv")]
    assert infos
    assert all(i is not None and i.provider == "kms" for i in infos), infos
    probes = [n.encode() for n in names[:50]] + [b"C00421"]
    keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket) for o in page.get("Contents", [])]  # fmt: skip
    assert any("raw_credit" in k for k in keys)
    for key in keys:
        body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        leaked = [p for p in probes if p in body]
        assert not leaked, f"{key} holds {leaked[:2]}"
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    used = {i.key_id for i in infos}
    for key_id in used:
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_an_erasure_deleted_from_the_list_is_restored_from_the_audit_trail(
    tmp_path_factory: pytest.TempPathFactory, dev_keys: Path
) -> None:
    from datetime import UTC, datetime

    from secure_pipeline.privacy.erasure import enforce
    from secure_pipeline.privacy.subjects import erased_subjects, erasures_prefix

    run = new_run(tmp_path_factory, "restore")
    with pointed_at(run.home, dev_keys):
        assert run.ingest().success
        store, trust = run.store(), trust_policy()
        erase(store, run.pipeline, trust, [ERASED], now=False, signer=signer_for(PRIVACY))
        (subject,) = hash_identifiers(run.pipeline, [ERASED])
        assert subject in erased_subjects(store, "credit", trust)
        # The insider removes the entry with a file edit: the next ingestion would take the
        # subject back in.
        for key in store.list_keys(erasures_prefix("credit")):
            path = run.home / "store" / key
            path.chmod(0o644)
            path.unlink()
        assert erased_subjects(store, "credit", trust) == frozenset()
        report = enforce(
            store, run.pipeline, trust, today=datetime.now(UTC), signer=signer_for(PRIVACY)
        )
        assert any("missing from the erasure list" in p for p in report.problems)
        assert subject in erased_subjects(store, "credit", trust)
        ingest = run.ingest()
        raw = next(
            e for e in ingest.get_asset_materialization_events()
            if e.asset_key.path[-1] == "raw_credit"
        ).materialization.metadata  # fmt: skip
        assert raw["excluded_rows"].value == 1
