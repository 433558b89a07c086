"""deploy/iam and deploy/s3: least-privilege roles, a bucket nobody can weaken, and lints that
demonstrably fail on bad documents."""

import copy
import json
from typing import Any

import pytest

from secure_pipeline_tests.deploy.lint import (
    lint_bucket_policy,
    lint_document,
    lint_irsa_trust,
    lint_object_lock,
    lint_role_policy,
)
from secure_pipeline_tests.deploy.rendering import DEPLOY, SAMPLE, rendered, rendered_json

BUCKET = f"arn:aws:s3:::{SAMPLE['SP_BUCKET']}"
KMS_KEY = SAMPLE["SP_KMS_KEY_ARN"]
CREATE_ONLY = ("snapshots/", "audit/", "approvals/")


def _objects(*prefixes: str, bucket: str = BUCKET) -> set[str]:
    return {f"{bucket}/{p}" for p in prefixes}


# Where each role may write; everything else it may at most read.
WRITES: dict[str, set[str]] = {
    "sp-ingest": _objects(
        "snapshots/raw_*", "snapshots/validated_*", "snapshots/features/*", "audit/*"
    ),
    "sp-train": _objects("snapshots/trained_model/*", "audit/*"),
    "sp-registry": _objects(
        "snapshots/registered_model/*", "snapshots/promoted_model/*", "audit/*"
    ),
    "sp-serve": set(),
    "sp-code-server": _objects("audit/*"),
    "sp-approver": _objects("approvals/*", "audit/*"),
    "sp-mlflow-server": _objects(
        "mlflow-artifacts/*", bucket=f"arn:aws:s3:::{SAMPLE['SP_MLFLOW_ARTIFACT_BUCKET']}"
    ),
}
# IRSA subjects; sp-approver is assumed by people (with MFA), not by a pod.
SUBJECTS = {
    "sp-ingest": ("sp-ingest", "sp-ingest"),
    "sp-train": ("sp-train", "sp-train"),
    "sp-registry": ("sp-registry", "sp-registry"),
    "sp-serve": ("sp-serve", "sp-serve"),
    "sp-code-server": ("sp-dagster", "sp-code"),
    "sp-mlflow-server": (SAMPLE["SP_MLFLOW_NAMESPACE"], SAMPLE["SP_MLFLOW_SERVICE_ACCOUNT"]),
}


def _policy(role: str) -> dict[str, Any]:
    return rendered_json(f"iam/policies/{role}.json")


def test_every_role_has_a_policy_and_a_trust_policy() -> None:
    policies = {p.stem for p in (DEPLOY / "iam" / "policies").glob("*.json")}
    trusts = {p.stem for p in (DEPLOY / "iam" / "trust").glob("*.json")}
    assert policies == trusts == set(WRITES)


@pytest.mark.parametrize("role", sorted(WRITES))
def test_role_policy_is_least_privilege(role: str) -> None:
    assert lint_role_policy(_policy(role), write_resources=WRITES[role], kms_key=KMS_KEY) == []


@pytest.mark.parametrize("role", sorted(WRITES))
def test_written_prefixes_are_exactly_the_roles(role: str) -> None:
    written = {
        resource
        for statement in _policy(role)["Statement"]
        if "s3:PutObject" in statement["Action"]
        for resource in statement["Resource"]
    }
    assert written == WRITES[role]


def test_the_model_server_only_reads() -> None:
    text = json.dumps(_policy("sp-serve"))
    assert "kms:GenerateDataKey" not in text
    assert "s3:PutObject" not in text


def test_training_cannot_read_raw_or_validated_data() -> None:
    reads = json.dumps(_policy("sp-train"))
    assert "raw_" not in reads
    assert "validated_" not in reads
    assert "approvals/" not in reads


@pytest.mark.parametrize("role", sorted(SUBJECTS))
def test_irsa_trust_is_bound_to_one_service_account(role: str) -> None:
    namespace, account = SUBJECTS[role]
    trust = rendered_json(f"iam/trust/{role}.json")
    assert lint_irsa_trust(trust, namespace=namespace, service_account=account) == []
    (statement,) = trust["Statement"]
    assert SAMPLE["SP_OIDC_PROVIDER"] in statement["Principal"]["Federated"]


def test_approver_role_requires_mfa() -> None:
    (statement,) = rendered_json("iam/trust/sp-approver.json")["Statement"]
    assert lint_document(rendered_json("iam/trust/sp-approver.json")) == []
    assert statement["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}


def _grant(**changes: Any) -> dict[str, Any]:
    policy = copy.deepcopy(_policy("sp-train"))
    policy["Statement"].append({"Sid": "Bad", "Effect": "Allow", **changes})
    return policy


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_grant(Action="s3:*", Resource=f"{BUCKET}/*"), "wildcard action"),
        (_grant(Action="s3:Get*", Resource=f"{BUCKET}/*"), "wildcard action"),
        (_grant(NotAction="s3:GetObject", Resource="*"), "NotAction"),
        (_grant(Action="s3:DeleteObject", Resource=f"{BUCKET}/audit/*"), "forbidden action"),
        (_grant(Action="s3:PutBucketPolicy", Resource=BUCKET), "forbidden action"),
        (_grant(Action="s3:PutObjectRetention", Resource=f"{BUCKET}/*"), "forbidden action"),
        (_grant(Action="s3:PutObject", Resource=f"{BUCKET}/snapshots/*"), "outside the role"),
        (_grant(Action="s3:ListBucket", Resource=BUCKET), "without an s3:prefix"),
        (_grant(Action="kms:Decrypt", Resource="*"), "KMS must be scoped"),
        (_grant(Action="kms:CreateGrant", Resource=KMS_KEY), "not needed"),
        (_grant(Action="iam:PassRole", Resource="*"), "unexpected service"),
        ({"Version": "2008-10-17", "Statement": []}, "Version"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_role_lint_reports_bad_policies(bad: dict[str, Any], message: str) -> None:
    problems = lint_role_policy(bad, write_resources=WRITES["sp-train"], kms_key=KMS_KEY)
    assert any(message in p for p in problems), problems


def test_trust_lint_reports_loose_subjects() -> None:
    trust = copy.deepcopy(rendered_json("iam/trust/sp-train.json"))
    condition = trust["Statement"][0]["Condition"]
    condition["StringLike"] = condition.pop("StringEquals")
    problems = lint_irsa_trust(trust, namespace="sp-train", service_account="sp-train")
    assert any("StringLike" in p for p in problems)
    assert any("sub must be" in p for p in problems)
    other = lint_irsa_trust(
        rendered_json("iam/trust/sp-ingest.json"), namespace="sp-train", service_account="sp-train"
    )
    assert any("sub must be" in p for p in other)


def _bucket_policy() -> dict[str, Any]:
    return rendered_json("s3/bucket-policy.json")


def test_bucket_policy_has_every_required_denial() -> None:
    problems = lint_bucket_policy(
        _bucket_policy(), bucket=SAMPLE["SP_BUCKET"], kms_key=KMS_KEY, create_only=CREATE_ONLY
    )
    assert problems == []


def _without(sid: str) -> dict[str, Any]:
    policy = copy.deepcopy(_bucket_policy())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != sid]
    return policy


def _weakened_if_none_match() -> dict[str, Any]:
    policy = copy.deepcopy(_bucket_policy())
    for statement in policy["Statement"]:
        if statement["Sid"] == "DenyOverwritableWrites":
            statement["Resource"] = [f"{BUCKET}/snapshots/*"]
    return policy


def _with_grant() -> dict[str, Any]:
    policy = copy.deepcopy(_bucket_policy())
    policy["Statement"].append(
        {
            "Sid": "Open",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"{BUCKET}/*",
        }
    )
    return policy


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_without("DenyInsecureTransport"), "without TLS"),
        (_without("DenyTlsOlderThan12"), "TLS versions below 1.2"),
        (_without("DenyEncryptionOtherThanKms"), "other than aws:kms"),
        (_without("DenyOtherKmsKey"), "KMS key other than"),
        (_without("DenyOverwritableWrites"), "without If-None-Match on snapshots/"),
        (_weakened_if_none_match(), "without If-None-Match on audit/"),
        (_without("DenyDestructiveActions"), "s3:DeleteObjectVersion"),
        (_with_grant(), "grants nothing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bucket_lint_reports_missing_denials(bad: dict[str, Any], message: str) -> None:
    problems = lint_bucket_policy(
        bad, bucket=SAMPLE["SP_BUCKET"], kms_key=KMS_KEY, create_only=CREATE_ONLY
    )
    assert any(message in p for p in problems), problems


def test_create_only_deny_exempts_multipart_steps_without_the_header() -> None:
    (statement,) = [
        s for s in _bucket_policy()["Statement"] if s["Sid"] == "DenyOverwritableWrites"
    ]
    # CreateMultipartUpload and UploadPart take no If-None-Match; CompleteMultipartUpload does.
    assert statement["Condition"]["Bool"] == {"s3:ObjectCreationOperation": "true"}


def test_object_lock_is_compliance_mode_with_retention() -> None:
    lock = rendered_json("s3/object-lock.json")
    assert lint_object_lock(lock) == []
    assert lock["Rule"]["DefaultRetention"]["Days"] >= 2557  # seven years
    assert rendered_json("s3/versioning.json") == {"Status": "Enabled"}
    (rule,) = rendered_json("s3/encryption.json")["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": KMS_KEY,
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2557}},
            },
            "COMPLIANCE",
        ),
        (
            {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE"}}},
            "positive default retention",
        ),
        ({"Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}}, "Enabled"),
    ],
)
def test_object_lock_lint_reports_weak_locks(bad: dict[str, Any], message: str) -> None:
    assert any(message in p for p in lint_object_lock(bad))


@pytest.mark.parametrize("path", sorted(p.name for p in (DEPLOY / "s3").glob("*.json")))
def test_s3_documents_are_json(path: str) -> None:
    json.loads(rendered(f"s3/{path}"))
