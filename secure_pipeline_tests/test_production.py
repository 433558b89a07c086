"""Production mode end to end, without Kubernetes, from the command line as CI runs it.

The whole reference graph is materialized with ``dagster asset materialize`` under
``SECURE_PIPELINE_ENV=production``: the Dagster instance is ``deploy/dagster.yaml`` on a real
PostgreSQL server (TLS 1.3 only), snapshots and the audit trail go to an S3 API server over TLS
(moto) into an Object Lock bucket with SSE-KMS, the model registry is an MLflow tracking server
process over TLS, the source is an HTTPS server with the test CA, and the release is signed with
a production key named in a trust policy. Steps run on the local executor (the
single-host mode); the Kubernetes executor's pods are covered by ``orchestration/test_jobs``.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import dagster as dg
import pytest

from secure_pipeline.names import LIVE_CHECKS, LIVE_TRAFFIC
from secure_pipeline.reference.adult import DATA_DIR
from secure_pipeline.trust.keys import fingerprint, generate_key
from secure_pipeline.trust.policy import policy_document, sign_policy
from secure_pipeline_tests.services import BIN, mlflow_server, postgres_server, s3_server
from secure_pipeline_tests.tls_server import serve

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "sp-prod-snapshots"
IDENTITIES = ("ingest", "train", "release", "gate", "monitor")
ASSETS = (
    "raw_adult",
    "validated_adult",
    "features",
    "trained_model",
    "registered_model",
    "promoted_model",
)


@dataclass
class Deployment:
    env: dict[str, str]
    run: subprocess.CompletedProcess
    kms_key: str


def _clean_environ() -> dict[str, str]:
    prefixes = ("SECURE_PIPELINE_", "MLFLOW_", "AWS_", "DAGSTER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _cli(deployment: Deployment, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=deployment.env["DAGSTER_HOME"],
    )


@pytest.fixture(scope="module")
def deployment(pki, tmp_path_factory, dev_keys) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("production")
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    keys = work / "keys"
    for name in ("root", *IDENTITIES):
        generate_key(keys / f"{name}.pem")
    with (
        postgres_server(pki) as pg,
        s3_server(pki, work) as s3_endpoint,
        mlflow_server(pki, work) as tracking,
        serve(DATA_DIR, pki) as source,
    ):
        aws = {"AWS_ACCESS_KEY_ID": "prod-test", "AWS_SECRET_ACCESS_KEY": "prod-test"}
        session = boto3.Session(region_name="us-east-1", **_aws_kwargs(aws))
        kms = session.client("kms", endpoint_url=s3_endpoint, verify=str(pki.ca))
        key_arn = kms.create_key(Description="secure_pipeline snapshots")["KeyMetadata"]["Arn"]
        # Each identity has its own key, and the policy naming them is signed by a root that
        # then goes offline. (A KMS key would do for any of them — securesystemslib's awskms
        # signer — but moto's KMS ignores MessageType=DIGEST, so it cannot stand in for one.)
        document = policy_document({n: [(keys / f"{n}.pub").read_bytes()] for n in IDENTITIES})
        (work / "trust.json").write_bytes(sign_policy(document, keys / "root.pem"))
        s3 = session.client("s3", endpoint_url=s3_endpoint, verify=str(pki.ca))
        s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(
            Bucket=BUCKET,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
            },
        )
        env = {
            **_clean_environ(),
            **aws,
            "SECURE_PIPELINE_ENV": "production",
            "SECURE_PIPELINE_EXECUTOR": "local",
            "SECURE_PIPELINE_SOURCE_URI": f"{source.url}/data/",
            "SECURE_PIPELINE_CA_BUNDLE": str(pki.ca),
            "SECURE_PIPELINE_S3_BUCKET": BUCKET,
            "SECURE_PIPELINE_S3_ENDPOINT": s3_endpoint,
            "SECURE_PIPELINE_S3_KMS_KEY_ID": key_arn,
            "AWS_REGION": "us-east-1",
            "AWS_CA_BUNDLE": str(pki.ca),
            "MLFLOW_TRACKING_URI": tracking,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(pki.ca),
            "SECURE_PIPELINE_SIGNING_MODE": "key",
            "SECURE_PIPELINE_SIGNING_KEY": str(work / "keys" / "release.pem"),
            "SECURE_PIPELINE_TRUST_POLICY": str(work / "trust.json"),
            "SECURE_PIPELINE_TRUST_ROOT": fingerprint((keys / "root.pub").read_bytes()),
            # The release identity signs with SECURE_PIPELINE_SIGNING_KEY (key mode).
            **{
                f"SECURE_PIPELINE_SIGNER_{n.upper()}": f"file2:{keys / f'{n}.pem'}"
                for n in IDENTITIES
                if n != "release"
            },
            "SECURE_PIPELINE_DEV_KEYS": str(dev_keys),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": pg.host,
            "DAGSTER_PG_PORT": str(pg.port),
            "DAGSTER_PG_USER": pg.user,
            "DAGSTER_PG_PASSWORD": pg.password,
            "DAGSTER_PG_DB": pg.database,
        }
        run = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "--select", "*",
             "-m", "secure_pipeline.definitions"],
            env=env, capture_output=True, text=True, timeout=900, cwd=home,
        )  # fmt: skip
        yield Deployment(env, run, key_arn)


def _aws_kwargs(aws: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def production_env(deployment, monkeypatch) -> Deployment:
    """This process sees the deployment's environment (its instance, stores and registry)."""
    for name in list(os.environ):
        if name.startswith(("SECURE_PIPELINE_", "MLFLOW_", "AWS_", "DAGSTER_")):
            monkeypatch.delenv(name)
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    return deployment


def test_the_cli_materializes_the_whole_graph_in_production(deployment) -> None:
    assert deployment.run.returncode == 0, (
        deployment.run.stdout[-4000:] + deployment.run.stderr[-8000:]
    )


def test_the_run_is_recorded_in_postgres_with_every_check_passed(production_env) -> None:
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        [run] = instance.get_runs()
        assert run.is_success
        for asset in ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(["adult", asset]))
            assert event is not None, asset
            assert event.run_id == run.run_id
        checks = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            )
        ]
        # live_traffic has no traffic in a pipeline run: its checks are inconclusive warnings.
        failed = [f"{c.asset_key.to_user_string()}:{c.check_name}" for c in checks
                  if not c.passed and c.asset_key.path[-1] != LIVE_TRAFFIC]  # fmt: skip
        assert not failed
        live = [c for c in checks if c.asset_key.path[-1] == LIVE_TRAFFIC]
        assert {c.severity for c in live if not c.passed} <= {dg.AssetCheckSeverity.WARN}
        assert {c.check_name for c in checks} == {
            "provenance_complete", "schema_conforms", "reject_rate_within_limit",
            "expectations_met", "feature_drift", "poisoning_screen", "performance_meets_policy",
            "adversarial_robustness", "membership_inference_risk", "fairness_audit",
            "onnx_equivalent", "signature_verifies", *LIVE_CHECKS,
        }  # fmt: skip


def test_snapshots_are_encrypted_with_the_configured_key_and_locked(production_env, pki) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=production_env.env["SECURE_PIPELINE_S3_ENDPOINT"],
        region_name="us-east-1",
        verify=str(pki.ca),
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    prefixes = {k.split("/")[0] for k in keys}
    assert {"snapshots", "audit"} <= prefixes
    for asset in ("raw_adult", "features", "trained_model", "registered_model"):
        assert any(k.startswith(f"snapshots/adult/{asset}/") for k in keys), asset
    model = next(k for k in keys if k.startswith("snapshots/adult/trained_model/"))
    head = s3.head_object(Bucket=BUCKET, Key=model)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == production_env.kms_key
    assert head["ObjectLockMode"] == "COMPLIANCE"
    # the bucket refuses to delete a locked version, whoever asks
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=model)["Versions"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=BUCKET, Key=model, VersionId=versions[0]["VersionId"])


def test_the_audit_trail_and_the_champion_verify_from_the_cli(production_env) -> None:
    audit = _cli(production_env, "secure-pipeline", "audit", "verify", "--dagster-anchors")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    verified = _cli(production_env, "secure-pipeline", "verify", "models:/adult@champion")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "signed by release key" in verified.stdout  # the production signer of the policy
    assert "[ok] promotion: champion decision" in verified.stdout
    assert "signed by root" in verified.stdout
    evidence = _cli(production_env, "secure-pipeline", "evidence", "models:/adult@champion")
    assert evidence.returncode == 0, evidence.stdout + evidence.stderr
    for identity in ("ingest", "train", "release"):
        assert f"signed by {identity}" in evidence.stdout


def test_the_chain_sensors_read_the_postgres_instance(production_env) -> None:
    from secure_pipeline.reference.adult import adult_pipeline

    defs = adult_pipeline().build_definitions()
    with dg.DagsterInstance.get() as instance:
        digest = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "features"])
        ).asset_materialization.tags["dagster/data_version"]
        sensor = defs.resolve_sensor_def("adult_train_on_new_features")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        [request] = sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).run_requests
    assert request.run_key == f"train:{digest}"
