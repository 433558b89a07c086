"""deploy/iam and deploy/s3: least-privilege roles, a bucket nobody can weaken, and lints that
demonstrably fail on bad documents."""

import copy
import json
from typing import Any

import pytest

from secure_pipeline.trust.identities import STAGE_IDENTITIES
from secure_pipeline_tests.deploy.lint import (
    as_list,
    data_key_grants,
    lint_bucket_policy,
    lint_document,
    lint_exclusive_writes,
    lint_irsa_trust,
    lint_key_destruction,
    lint_object_lock,
    lint_role_policy,
    lint_signing_key_policy,
    lint_signing_separation,
    signing_grants,
)
from secure_pipeline_tests.deploy.rendering import DEPLOY, SAMPLE, rendered, rendered_json

BUCKET = f"arn:aws:s3:::{SAMPLE['SP_BUCKET']}"
KMS_KEY = SAMPLE["SP_KMS_KEY_ARN"]
CREATE_ONLY = ("snapshots/", "audit/", "approvals/", "attestations/", "privacy/")
ATTESTATIONS = (
    "attestations/verdicts/*",
    "attestations/registrations/*",
    "attestations/promotions/*",
)
# The live traffic the serving slots record: Parquet batches and their signed envelopes.
LIVE = ("snapshots/live/*", "attestations/live-batches/*")
# The monitor job's window manifests (content-addressed snapshots of the live_traffic asset).
WINDOWS = "snapshots/*/live_traffic/*"


def _objects(*prefixes: str, bucket: str = BUCKET) -> set[str]:
    return {f"{bucket}/{p}" for p in prefixes}


# Where each role may write; everything else it may at most read.
# Signed verdicts go under attestations/verdicts/<digest>/ (ingest and train judge their
# snapshots, release judges signature_verifies); registrations and promotions are the release
# job's. Checkpoints of the audit trail are under audit/, which every writer already holds.
# Ingestion writes the subject index of what it stored (privacy/<pipeline>/subjects/, and the
# catalogue under privacy/<pipeline>/ingestions/); erasure entries and flags are the privacy
# job's, which writes nothing else but audit records. The slots write only the live traffic they
# record; the monitor job only its window manifests, its verdicts and audit records.
WRITES: dict[str, set[str]] = {
    "sp-ingest": _objects(
        "snapshots/*/raw_*",
        "snapshots/*/validated_*",
        "snapshots/*/features/*",
        "attestations/verdicts/*",
        "audit/*",
        "privacy/*/subjects/*",
        "privacy/*/ingestions/*",
    ),
    "sp-train": _objects("snapshots/*/trained_model/*", "attestations/verdicts/*", "audit/*"),
    "sp-registry": _objects(
        "snapshots/*/registered_model/*", "snapshots/*/promoted_model/*", *ATTESTATIONS, "audit/*"
    ),
    "sp-serve": _objects(*LIVE),
    "sp-code-server": _objects("audit/*"),
    "sp-approver": _objects("approvals/*", "audit/*"),
    "sp-privacy": _objects("privacy/*", "audit/*"),
    "sp-monitor": _objects(WINDOWS, "attestations/verdicts/*", "audit/*"),
    "sp-mlflow-server": _objects(
        "mlflow-artifacts/*", bucket=f"arn:aws:s3:::{SAMPLE['SP_MLFLOW_ARTIFACT_BUCKET']}"
    ),
}
LINEAGE = (
    "snapshots/*/raw_*",
    "snapshots/*/validated_*",
    "snapshots/*/features/*",
    "snapshots/*/trained_model/*",
    "snapshots/*/registered_model/*",
)
# Flags of models trained on erased data: every verifier of a model reference reads them.
FLAGS = "privacy/*/flags/*"
# What each role must be able to read, from what the code it runs verifies: the drift check
# of ingest finds the champion (promotions) and verifies its bundle (verdicts, registration);
# ingestion verifies every erasure entry; the approval sensor reads promotions and approvals;
# the model server verifies the gate's decision, the approvals it cites and the audit
# checkpoint; the privacy job reads snapshot headers and manifests, the champion's lineage,
# the audit trail and its own records; the monitor job reads the live traffic and verifies the
# champion as the model server does.
READS: dict[str, set[str]] = {
    "sp-ingest": _objects(*LINEAGE, *ATTESTATIONS, "audit/*", "privacy/*/erasures/*", FLAGS),
    "sp-train": _objects("snapshots/*/features/*", "attestations/verdicts/*", "audit/*"),
    "sp-registry": _objects(*LINEAGE, *ATTESTATIONS, "approvals/*", "audit/*", FLAGS),
    "sp-serve": _objects(*LINEAGE, *ATTESTATIONS, "approvals/*", "audit/*", FLAGS, *LIVE),
    "sp-code-server": _objects("attestations/promotions/*", "approvals/*", "audit/*"),
    "sp-approver": _objects(*LINEAGE, *ATTESTATIONS, "approvals/*", "audit/*", FLAGS),
    "sp-privacy": _objects(*LINEAGE, *ATTESTATIONS, "audit/*", "privacy/*"),
    "sp-monitor": _objects(
        *LINEAGE, *ATTESTATIONS, "approvals/*", "audit/*", FLAGS, *LIVE, WINDOWS
    ),
}
# Prefixes each role lists (stored_envelopes, the audit head, approvals of a model, erasure
# entries, flags, for the privacy job the snapshots derived from an ingestion, and for the
# monitor job the live batches, their envelopes and the unsigned files beside them).
LISTS: dict[str, set[str]] = {
    "sp-ingest": {"audit/*", *ATTESTATIONS, "privacy/*/erasures/*", FLAGS},
    "sp-train": {"audit/*"},
    "sp-registry": {"audit/*", "approvals/*", *ATTESTATIONS, FLAGS},
    "sp-serve": {"audit/*", *ATTESTATIONS, FLAGS},
    "sp-code-server": {"audit/*", "approvals/*", "attestations/promotions/*"},
    "sp-approver": {"audit/*", "approvals/*", *ATTESTATIONS, FLAGS},
    "sp-privacy": {
        "audit/*",
        *ATTESTATIONS,
        "privacy/*",
        "snapshots/*/raw_*",
        "snapshots/*/validated_*",
        "snapshots/*/features/*",
    },
    "sp-monitor": {"audit/*", *ATTESTATIONS, FLAGS, *LIVE},
}
# The roles acting as each signing identity: the release job (sp-registry) runs both the
# release and the gate steps; the monitor identity signs the run-failure records of the code
# server's sensor and the live checks of the monitor job; the slots sign their live batches.
SIGNER_ROLES: dict[str, tuple[str, ...]] = {
    "ingest": ("sp-ingest",),
    "train": ("sp-train",),
    "release": ("sp-registry",),
    "gate": ("sp-registry",),
    "monitor": ("sp-code-server", "sp-monitor"),
    "privacy": ("sp-privacy",),
    "serve": ("sp-serve",),
}
SIGNING_KEY = {
    identity: SAMPLE[f"SP_SIGNER_{identity.upper()}_KEY_ARN"] for identity in SIGNER_ROLES
}
KEY_OWNER = {SIGNING_KEY[identity]: frozenset(roles) for identity, roles in SIGNER_ROLES.items()}
ROLE_ARN = f"arn:aws:iam::{SAMPLE['SP_ACCOUNT_ID']}:role/"
# IRSA subjects; sp-approver is assumed by people (with MFA), not by a pod.
SUBJECTS = {
    "sp-ingest": ("sp-ingest", "sp-ingest"),
    "sp-train": ("sp-train", "sp-train"),
    "sp-registry": ("sp-registry", "sp-registry"),
    "sp-serve": ("sp-serve", "sp-serve"),
    "sp-code-server": ("sp-dagster", "sp-code"),
    "sp-privacy": ("sp-privacy", "sp-privacy"),
    "sp-monitor": ("sp-monitor", "sp-monitor"),
    "sp-mlflow-server": (SAMPLE["SP_MLFLOW_NAMESPACE"], SAMPLE["SP_MLFLOW_SERVICE_ACCOUNT"]),
}
# Snapshot data keys: one KMS key per encrypted snapshot (raw members, validated, quarantine,
# features of a pipeline holding personal data). Ingest creates them and wraps and unwraps with
# them; train, release and monitor unwrap; the privacy job destroys them and never unwraps;
# nobody else touches them.
DATA_KEYS = f"arn:aws:kms:{SAMPLE['SP_REGION']}:{SAMPLE['SP_ACCOUNT_ID']}:key/*"
DATA_KEY_ACTIONS: dict[str, set[str]] = {
    "sp-ingest": {
        "kms:CreateKey",
        "kms:TagResource",
        "kms:GenerateDataKey",
        "kms:DescribeKey",
        "kms:Decrypt",
    },
    "sp-train": {"kms:DescribeKey", "kms:Decrypt"},
    "sp-registry": {"kms:DescribeKey", "kms:Decrypt"},
    "sp-privacy": {"kms:DescribeKey", "kms:ScheduleKeyDeletion"},
    "sp-monitor": {"kms:DescribeKey", "kms:Decrypt"},
}
SHREDDER = "sp-privacy"
# The keys of the deployment itself: SSE and every identity's signing key.
DEPLOYMENT_KEYS = {KMS_KEY, *(SAMPLE[n] for n in SAMPLE if n.startswith("SP_SIGNER_"))}


def _policy(role: str) -> dict[str, Any]:
    return rendered_json(f"iam/policies/{role}.json")


def _without_statement(role: str, sid: str) -> dict[str, Any]:
    policy = copy.deepcopy(_policy(role))
    kept = [s for s in policy["Statement"] if s["Sid"] != sid]
    assert len(kept) == len(policy["Statement"]) - 1, f"{role} has no statement {sid}"
    policy["Statement"] = kept
    return policy


def test_every_role_has_a_policy_and_a_trust_policy() -> None:
    policies = {p.stem for p in (DEPLOY / "iam" / "policies").glob("*.json")}
    trusts = {p.stem for p in (DEPLOY / "iam" / "trust").glob("*.json")}
    assert policies == trusts == set(WRITES)


def _own_keys(role: str) -> set[str]:
    return {key for key, owners in KEY_OWNER.items() if role in owners}


def _lint(role: str, document: dict[str, Any] | None = None) -> list[str]:
    return lint_role_policy(
        _policy(role) if document is None else document,
        write_resources=WRITES[role],
        kms_key=KMS_KEY,
        signing_keys=_own_keys(role),
        data_keys=DATA_KEYS,
        data_key_actions=DATA_KEY_ACTIONS.get(role, ()),
    )


@pytest.mark.parametrize("role", sorted(WRITES))
def test_role_policy_is_least_privilege(role: str) -> None:
    assert _lint(role) == []


def _statements_with(role: str, action: str) -> list[dict[str, Any]]:
    return [
        s
        for s in _policy(role)["Statement"]
        if action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ]


@pytest.mark.parametrize("role", sorted(READS))
def test_each_role_reads_and_lists_what_it_verifies(role: str) -> None:
    reads = {r for s in _statements_with(role, "s3:GetObject") for r in s["Resource"]}
    assert READS[role] <= reads, sorted(READS[role] - reads)
    listed = {
        prefix
        for s in _statements_with(role, "s3:ListBucket")
        if s["Resource"] == BUCKET
        for prefix in s["Condition"]["StringLikeIfExists"]["s3:prefix"]
    }
    assert listed == LISTS[role]
    # A writer reads back what it wrote: create-only writes compare an existing object.
    assert WRITES[role] <= reads


@pytest.mark.parametrize("role", sorted(WRITES))
def test_written_prefixes_are_exactly_the_roles(role: str) -> None:
    written = {
        resource
        for statement in _policy(role)["Statement"]
        if "s3:PutObject" in statement["Action"]
        for resource in statement["Resource"]
    }
    assert written == WRITES[role]


def test_the_model_server_writes_and_signs_only_live_traffic() -> None:
    # Everything else a slot touches it only reads; it signs as the serve identity alone, and
    # GenerateDataKey is the SSE-KMS of its batches, through S3 only.
    policy = _policy("sp-serve")
    assert signing_grants(policy) == {SIGNING_KEY["serve"]}
    assert data_key_grants(policy, kms_key=KMS_KEY) == set()
    (sse,) = [s for s in policy["Statement"] if s["Sid"] == "KmsThroughS3Only"]
    assert sse["Resource"] == KMS_KEY
    assert sse["Condition"]["StringEquals"]["kms:ViaService"].startswith("s3.")


def test_the_monitor_job_decrypts_only_training_features_and_signs_as_monitor() -> None:
    policy = _policy("sp-monitor")
    assert signing_grants(policy) == {SIGNING_KEY["monitor"]}
    # The champion's training features may be encrypted (personal data); the raw and validated
    # snapshots it re-hashes to verify the lineage it never needs in plaintext.
    (decrypt,) = [s for s in policy["Statement"] if s["Sid"] == "DecryptSnapshots"]
    assert decrypt["Condition"]["StringLike"] == {
        "kms:EncryptionContext:secure-pipeline:asset": "*/features"
    }


def test_training_cannot_read_raw_or_validated_data() -> None:
    reads = json.dumps(_policy("sp-train"))
    assert "raw_" not in reads
    assert "validated_" not in reads
    assert "approvals/" not in reads
    assert "privacy/" not in reads


def test_the_privacy_job_reads_no_data_and_writes_only_its_records() -> None:
    text = json.dumps(_policy("sp-privacy"))
    # It finds snapshots by their headers and manifests and destroys their keys: it never needs
    # the plaintext, so it may not unwrap a data key (kms:Decrypt only through S3, for SSE).
    assert data_key_grants(_policy("sp-privacy"), kms_key=KMS_KEY) == {
        "kms:DescribeKey",
        "kms:ScheduleKeyDeletion",
    }
    assert "mlflow" not in text
    assert "approvals/" not in text


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
        (_grant(Action="kms:Sign", Resource=KMS_KEY), "may sign only with its own"),
        (_grant(Action="iam:PassRole", Resource="*"), "unexpected service"),
        ({"Version": "2008-10-17", "Statement": []}, "Version"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_role_lint_reports_bad_policies(bad: dict[str, Any], message: str) -> None:
    problems = _lint("sp-train", bad)
    assert any(message in p for p in problems), problems


# -- live traffic: created by the slots alone, overwritten and deleted by nobody ---------------

# Keys as the slots write them (serving/recording.py): a Parquet batch, its manifest, its
# signed envelope.
LIVE_OBJECTS = {
    f"{BUCKET}/snapshots/live/adult/traffic/2025-06-01/14/{'ab' * 32}.parquet": ("sp-serve",),
    f"{BUCKET}/snapshots/live/adult/feedback/2025-06-01/14/{'cd' * 32}.parquet.manifest.json": (
        "sp-serve",
    ),
    f"{BUCKET}/attestations/live-batches/adult/{'ef' * 32}.json": ("sp-serve",),
}


def _granted(role: str, **changes: Any) -> dict[str, Any]:
    policy = copy.deepcopy(_policy(role))
    policy["Statement"].append({"Sid": "Bad", "Effect": "Allow", **changes})
    return policy


def test_only_the_slots_create_live_traffic() -> None:
    policies = {role: _policy(role) for role in WRITES}
    assert lint_exclusive_writes(policies, LIVE_OBJECTS) == []


_LIVE_PUT = {"Action": ["s3:PutObject"], "Resource": [f"{BUCKET}/snapshots/live/*"]}


@pytest.mark.parametrize(
    ("role", "bad", "message"),
    [
        ("sp-monitor", _granted("sp-monitor", **_LIVE_PUT), "sp-monitor (Bad) may write"),
        (
            "sp-registry",
            _granted("sp-registry", Action="s3:PutObject", Resource=f"{BUCKET}/attestations/*"),
            "attestations/live-batches/adult/",
        ),
        (
            "sp-ingest",
            _granted("sp-ingest", Action="s3:PutObjectTagging", Resource=f"{BUCKET}/*"),
            "only sp-serve may",
        ),
        (
            "sp-train",
            _granted("sp-train", Action="s3:Put*", Resource=f"{BUCKET}/snapshots/live/*"),
            "sp-train",
        ),
        (
            "sp-serve",
            _without_statement("sp-serve", "CreateLiveTrafficBatches"),
            "none of sp-serve",
        ),
    ],
    ids=["monitor-creates", "registry-wildcard", "ingest-anything", "wildcard-action", "no-writer"],
)
def test_exclusive_writes_lint_reports_other_writers_of_live_traffic(
    role: str, bad: dict[str, Any], message: str
) -> None:
    policies = {r: _policy(r) for r in WRITES}
    policies[role] = bad
    problems = lint_exclusive_writes(policies, LIVE_OBJECTS)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("role", "bad", "message"),
    [
        (
            "sp-serve",
            _granted("sp-serve", Action="s3:DeleteObject", Resource=f"{BUCKET}/snapshots/live/*"),
            "forbidden action 's3:DeleteObject'",
        ),
        (
            "sp-serve",
            _granted(
                "sp-serve", Action="s3:DeleteObjectVersion", Resource=f"{BUCKET}/snapshots/live/*"
            ),
            "forbidden action",
        ),
        (
            "sp-serve",
            _granted("sp-serve", Action="s3:PutObject", Resource=f"{BUCKET}/snapshots/*"),
            "outside the role's prefixes",
        ),
        ("sp-monitor", _granted("sp-monitor", **_LIVE_PUT), "outside the role's prefixes"),
        (
            "sp-monitor",
            _granted(
                "sp-monitor",
                Action="s3:PutObject",
                Resource=f"{BUCKET}/attestations/live-batches/*",
            ),
            "outside the role's prefixes",
        ),
    ],
    ids=[
        "serve-deletes",
        "serve-deletes-versions",
        "serve-writes-snapshots",
        "monitor-live",
        "monitor-live-batches",
    ],  # fmt: skip
)
def test_role_lint_reports_bad_live_traffic_grants(
    role: str, bad: dict[str, Any], message: str
) -> None:
    problems = _lint(role, bad)
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
        (_weakened_if_none_match(), "without If-None-Match on attestations/"),
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


def test_every_written_prefix_is_create_only() -> None:
    (guard,) = [s for s in _bucket_policy()["Statement"] if s["Sid"] == "DenyOverwritableWrites"]
    guarded = tuple(r.removesuffix("*") for r in guard["Resource"])
    for role, writes in WRITES.items():
        for resource in writes:
            if resource.startswith(f"{BUCKET}/"):
                assert resource.startswith(guarded), f"{role} writes {resource} overwritably"


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


# -- signing keys: each identity's key is usable by its stage's role alone ---------------------


def test_every_identity_has_a_signing_key_and_a_role() -> None:
    assert set(SIGNER_ROLES) == set(STAGE_IDENTITIES)
    assert len(set(SIGNING_KEY.values()) | {KMS_KEY}) == len(SIGNING_KEY) + 1


def test_no_role_can_sign_with_another_stages_key() -> None:
    policies = {role: _policy(role) for role in WRITES}
    assert lint_signing_separation(policies, KEY_OWNER) == []
    for role in ("sp-approver", "sp-mlflow-server"):
        assert signing_grants(policies[role]) == set(), f"{role} signs nothing"
    # The slots sign their live batches and nothing else; the monitor identity's two places
    # sign with its key and no other.
    assert signing_grants(policies["sp-serve"]) == {SIGNING_KEY["serve"]}
    for role in SIGNER_ROLES["monitor"]:
        assert signing_grants(policies[role]) == {SIGNING_KEY["monitor"]}, role


def _with_sign_grant(role: str, resource: Any, **condition: str) -> dict[str, Any]:
    policy = copy.deepcopy(_policy(role))
    policy["Statement"].append(
        {
            "Sid": "Bad",
            "Effect": "Allow",
            "Action": ["kms:Sign"],
            "Resource": resource,
            "Condition": {
                "StringEquals": condition
                or {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "DIGEST"}
            },
        }
    )
    return policy


@pytest.mark.parametrize(
    ("role", "bad", "message"),
    [
        ("sp-train", _with_sign_grant("sp-train", SIGNING_KEY["ingest"]), "the key of sp-ingest"),
        ("sp-code-server", _with_sign_grant("sp-code-server", SIGNING_KEY["gate"]), "sp-registry"),
        ("sp-serve", _with_sign_grant("sp-serve", SIGNING_KEY["release"]), "the key of"),
        ("sp-ingest", _with_sign_grant("sp-ingest", "*"), "no identity's key"),
        ("sp-approver", _with_sign_grant("sp-approver", KMS_KEY), "no identity's key"),
        ("sp-train", copy.deepcopy(_policy("sp-ingest")), "sp-train cannot sign"),
        (
            "sp-monitor",
            _with_sign_grant("sp-monitor", SIGNING_KEY["gate"]),
            "the key of sp-registry",
        ),
        (
            "sp-serve",
            _with_sign_grant("sp-serve", SIGNING_KEY["monitor"]),
            "the key of sp-code-server, sp-monitor",
        ),
        ("sp-train", _with_sign_grant("sp-train", SIGNING_KEY["serve"]), "the key of sp-serve"),
        (
            "sp-monitor",
            _without_statement("sp-monitor", "SignAsMonitorIdentity"),
            "sp-monitor cannot",
        ),
        ("sp-serve", _without_statement("sp-serve", "SignAsServeIdentity"), "sp-serve cannot sign"),
    ],
    ids=[
        "train-signs-as-ingest",
        "monitor-as-gate",
        "serve-as-release",
        "wildcard",
        "sse-key",
        "stage-cannot-sign",
        "monitor-job-as-gate",
        "serve-as-monitor",
        "train-as-serve",
        "monitor-job-cannot-sign",
        "serve-cannot-sign",
    ],  # fmt: skip
)
def test_signing_separation_lint_reports_shared_keys(
    role: str, bad: dict[str, Any], message: str
) -> None:
    policies = {r: _policy(r) for r in WRITES}
    policies[role] = bad
    problems = lint_signing_separation(policies, KEY_OWNER)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_with_sign_grant("sp-train", SIGNING_KEY["ingest"]), "may sign only with its own"),
        (_with_sign_grant("sp-train", "*"), "Resource '*'"),
        (_with_sign_grant("sp-train", [SIGNING_KEY["train"], KMS_KEY]), "may sign only"),
        (
            _with_sign_grant("sp-train", SIGNING_KEY["train"], **{"kms:MessageType": "DIGEST"}),
            "without kms:SigningAlgorithm",
        ),
        (_grant(Action=["kms:Sign", "kms:Decrypt"], Resource=KMS_KEY), "shares a statement"),
        (_grant(Action="kms:GetPublicKey", Resource=SIGNING_KEY["train"]), "not needed"),
        (_grant(Action="kms:Sign*", Resource=SIGNING_KEY["train"]), "wildcard action"),
    ],
    ids=[
        "foreign-key",
        "any-key",
        "sse-key",
        "no-algorithm",
        "mixed",
        "get-public-key",
        "wildcard",
    ],  # fmt: skip
)
def test_role_lint_reports_bad_signing_grants(bad: dict[str, Any], message: str) -> None:
    problems = _lint("sp-train", bad)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("role", "key"),
    [
        ("sp-monitor", "gate"),
        ("sp-monitor", "serve"),
        ("sp-serve", "monitor"),
        ("sp-serve", "gate"),
    ],
)
def test_role_lint_reports_monitor_and_serve_signing_as_another(role: str, key: str) -> None:
    problems = _lint(role, _with_sign_grant(role, SIGNING_KEY[key]))
    assert any("may sign only with its own" in p for p in problems), problems


def _key_policy(identity: str) -> dict[str, Any]:
    return rendered_json(f"iam/keys/{identity}.json")


def test_every_identity_key_has_a_key_policy() -> None:
    assert {p.stem for p in (DEPLOY / "iam" / "keys").glob("*.json")} == set(SIGNER_ROLES)


def _signers(identity: str) -> list[str]:
    return [f"{ROLE_ARN}{role}" for role in SIGNER_ROLES[identity]]


@pytest.mark.parametrize("identity", sorted(SIGNER_ROLES))
def test_only_the_stage_role_may_sign_with_its_key(identity: str) -> None:
    assert lint_signing_key_policy(_key_policy(identity), signers=_signers(identity)) == []


def _key_policy_with(identity: str, **statement: Any) -> dict[str, Any]:
    policy = copy.deepcopy(_key_policy(identity))
    policy["Statement"].append({"Sid": "Bad", "Effect": "Allow", "Resource": "*", **statement})
    return policy


def _root_may(action: str) -> dict[str, Any]:
    policy = copy.deepcopy(_key_policy("ingest"))
    policy["Statement"][0]["Action"].append(action)
    return policy


def _unpinned_signing() -> dict[str, Any]:
    policy = copy.deepcopy(_key_policy("ingest"))
    del policy["Statement"][1]["Condition"]
    return policy


def _signer_removed() -> dict[str, Any]:
    policy = copy.deepcopy(_key_policy("ingest"))
    del policy["Statement"][1]
    return policy


_TRAIN_ROLE = {"AWS": f"{ROLE_ARN}sp-train"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_root_may("kms:Sign"), "only arn:aws:iam::123456789012:role/sp-ingest may use"),
        (_root_may("kms:CreateGrant"), "kms:CreateGrant"),
        (_root_may("kms:ReplicateKey"), "kms:ReplicateKey"),
        (_key_policy_with("ingest", Principal=_TRAIN_ROLE, Action="kms:Sign"), "sp-train"),
        (_key_policy_with("ingest", Principal="*", Action="kms:Verify"), "must name AWS"),
        (_key_policy_with("ingest", Principal={"AWS": "*"}, Action="kms:Sign"), "must name AWS"),
        (_key_policy_with("ingest", Principal=_TRAIN_ROLE, Action="kms:*"), "wildcard action"),
        (_unpinned_signing(), "without kms:SigningAlgorithm"),
        (_signer_removed(), "could not sign"),
    ],
    ids=[
        "root-signs",
        "grants",
        "replicas",
        "other-role",
        "anyone",
        "any-aws",
        "wildcard",
        "unpinned",
        "no-signer",
    ],  # fmt: skip
)
def test_key_policy_lint_reports_other_signers(bad: dict[str, Any], message: str) -> None:
    problems = lint_signing_key_policy(bad, signers=[f"{ROLE_ARN}sp-ingest"])
    assert any(message in p for p in problems), problems


def _signing_principals(identity: str, change: Any) -> dict[str, Any]:
    policy = copy.deepcopy(_key_policy(identity))
    (statement,) = [s for s in policy["Statement"] if "kms:Sign" in as_list(s["Action"])]
    statement["Principal"]["AWS"] = change(as_list(statement["Principal"]["AWS"]))
    return policy


@pytest.mark.parametrize(
    ("identity", "bad", "message"),
    [
        (
            "monitor",
            _signing_principals("monitor", lambda arns: [*arns, f"{ROLE_ARN}sp-registry"]),
            "may use the key",
        ),
        (
            "monitor",
            _signing_principals("monitor", lambda arns: [a for a in arns if "sp-monitor" not in a]),
            f"{ROLE_ARN}sp-monitor is not allowed kms:Sign",
        ),
        (
            "monitor",
            _signing_principals("monitor", lambda arns: [a for a in arns if "sp-code" not in a]),
            f"{ROLE_ARN}sp-code-server is not allowed kms:Sign",
        ),
        (
            "serve",
            _signing_principals("serve", lambda arns: [*arns, f"{ROLE_ARN}sp-monitor"]),
            "may use the key",
        ),
        (
            "serve",
            _signing_principals("serve", lambda arns: [f"{ROLE_ARN}sp-registry"]),
            f"{ROLE_ARN}sp-serve is not allowed kms:Sign",
        ),
        ("serve", _key_policy_with("serve", Principal=_TRAIN_ROLE, Action="kms:Sign"), "sp-train"),
    ],
    ids=[
        "monitor-third-role",
        "monitor-job-left-out",
        "code-server-left-out",
        "serve-shared",
        "serve-replaced",
        "serve-other-role",
    ],  # fmt: skip
)
def test_key_policy_lint_reports_signers_of_the_monitor_and_serve_keys(
    identity: str, bad: dict[str, Any], message: str
) -> None:
    problems = lint_signing_key_policy(bad, signers=_signers(identity))
    assert any(message in p for p in problems), problems


# -- snapshot data keys: created by ingest, read by train and release, destroyed by privacy ----


@pytest.mark.parametrize("role", sorted(WRITES))
def test_each_role_uses_data_keys_exactly_as_its_stage_needs(role: str) -> None:
    assert data_key_grants(_policy(role), kms_key=KMS_KEY) == DATA_KEY_ACTIONS.get(role, set())


def test_only_the_privacy_role_destroys_keys_and_only_tagged_data_keys() -> None:
    policies = {role: _policy(role) for role in WRITES}
    assert lint_key_destruction(policies, shredder=SHREDDER) == []
    assert "kms:ScheduleKeyDeletion" not in json.dumps(policies["sp-ingest"])


def test_the_deployments_own_keys_are_never_retagged_or_destroyed() -> None:
    # A data-key grant is scoped by tag; so no role may put that tag on the SSE key or an
    # identity key, and the role that destroys tagged keys is denied these keys outright.
    def denied(role: str, action: str) -> set[str]:
        return {
            resource
            for statement in _policy(role)["Statement"]
            if statement["Effect"] == "Deny" and action in statement["Action"]
            for resource in statement["Resource"]
        }

    assert denied("sp-ingest", "kms:TagResource") == DEPLOYMENT_KEYS
    assert denied("sp-ingest", "kms:UntagResource") == DEPLOYMENT_KEYS
    assert denied(SHREDDER, "kms:ScheduleKeyDeletion") == DEPLOYMENT_KEYS
    tagging = {role for role in WRITES if "kms:TagResource" in json.dumps(_policy(role))}
    assert tagging == {"sp-ingest"}


def _changed(role: str, sid: str | None, change: Any) -> dict[str, Any]:
    """``role``'s policy with statement ``sid`` changed in place (or a statement appended)."""
    policy = copy.deepcopy(_policy(role))
    if sid is None:
        policy["Statement"].append(change)
        return policy
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == sid]
    change(statement)
    return policy


def _use(actions: Any, **condition: Any) -> dict[str, Any]:
    return {
        "Sid": "Bad",
        "Effect": "Allow",
        "Action": actions,
        "Resource": DATA_KEYS,
        "Condition": condition
        or {
            "StringEquals": {
                "aws:ResourceTag/secure-pipeline:purpose": "snapshot-data-key",
                "kms:KeySpec": "SYMMETRIC_DEFAULT",
                "kms:KeyOrigin": "AWS_KMS",
            }
        },
    }


def _drop(*path: str) -> Any:
    def change(statement: dict[str, Any]) -> None:
        node = statement
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return change


def _relax_tag(statement: dict[str, Any]) -> None:
    tag = "aws:ResourceTag/secure-pipeline:purpose"
    value = statement["Condition"]["StringEquals"].pop(tag)
    statement["Condition"]["StringEqualsIfExists"] = {tag: value}


def _extra_tag_key(statement: dict[str, Any]) -> None:
    statement["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"].append("owner")


def _any_resource(statement: dict[str, Any]) -> None:
    statement["Resource"] = "*"


def _with_describe(statement: dict[str, Any]) -> None:
    statement["Action"] = ["kms:ScheduleKeyDeletion", "kms:DescribeKey"]


_REQUEST_TAG = "aws:RequestTag/secure-pipeline:purpose"
_RESOURCE_TAG = "aws:ResourceTag/secure-pipeline:purpose"


@pytest.mark.parametrize(
    ("role", "bad", "message"),
    [
        ("sp-ingest", _changed("sp-ingest", None, _use("kms:ScheduleKeyDeletion")), "not this"),
        ("sp-train", _changed("sp-train", None, _use("kms:GenerateDataKey")), "not this role's"),
        ("sp-privacy", _changed("sp-privacy", None, _use("kms:Decrypt")), "not this role's"),
        ("sp-serve", _changed("sp-serve", None, _use("kms:DescribeKey")), "not this role's"),
        (
            "sp-ingest",
            _changed(
                "sp-ingest",
                "CreateSnapshotDataKeys",
                _drop("Condition", "StringEquals", _REQUEST_TAG),
            ),
            f"without {_REQUEST_TAG}",
        ),
        (
            "sp-ingest",
            _changed("sp-ingest", "CreateSnapshotDataKeys", _extra_tag_key),
            "aws:TagKeys not limited",
        ),
        (
            "sp-ingest",
            _changed("sp-ingest", "CreateSnapshotDataKeys", _drop("Condition", "Bool")),
            "kms:MultiRegion",
        ),
        (
            "sp-ingest",
            _changed(
                "sp-ingest",
                "CreateSnapshotDataKeys",
                _drop("Condition", "StringEquals", "kms:KeySpec"),
            ),
            "without kms:KeySpec",
        ),
        (
            "sp-ingest",
            _changed(
                "sp-ingest",
                "TagSnapshotDataKeysAtCreation",
                _drop("Condition", "StringEquals", _REQUEST_TAG),
            ),
            f"without {_REQUEST_TAG}",
        ),
        (
            "sp-ingest",
            _changed("sp-ingest", "TagSnapshotDataKeysAtCreation", _any_resource),
            "Resource '*'",
        ),
        (
            "sp-train",
            _changed(
                "sp-train", "DecryptSnapshots", _drop("Condition", "StringEquals", _RESOURCE_TAG)
            ),
            f"without {_RESOURCE_TAG}",
        ),
        (
            "sp-registry",
            _changed(
                "sp-registry",
                "DescribeSnapshotDataKeys",
                _drop("Condition", "StringEquals", "kms:KeySpec"),
            ),
            "without kms:KeySpec",
        ),
        (
            "sp-train",
            _changed("sp-train", "DecryptSnapshots", _drop("Condition", "Null")),
            "without the context",
        ),
        (
            "sp-train",
            _changed("sp-train", "DecryptSnapshots", _any_resource),
            "KMS must be scoped",
        ),
        (
            "sp-privacy",
            _changed("sp-privacy", "ShredSnapshotDataKeys", _relax_tag),
            f"needs {_RESOURCE_TAG} in StringEquals",
        ),
        (
            "sp-privacy",
            _changed("sp-privacy", "ShredSnapshotDataKeys", _with_describe),
            "shares a statement",
        ),
        (
            "sp-ingest",
            _changed("sp-ingest", None, _use("kms:UntagResource")),
            "not needed",
        ),
        (
            "sp-privacy",
            _changed(
                "sp-privacy",
                None,
                {"Sid": "Bad", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"},
            ),
            "only denies KMS actions",
        ),
    ],
    ids=[
        "ingest-shreds",
        "train-wraps",
        "privacy-decrypts",
        "serve-describes",
        "create-untagged",
        "create-other-tags",
        "create-multi-region",
        "create-any-spec",
        "tag-untagged",
        "tag-any-key",
        "decrypt-any-tag",
        "describe-any-spec",
        "decrypt-without-context",
        "decrypt-any-key",
        "shred-untagged",
        "shred-mixed",
        "untag",
        "s3-deny",
    ],  # fmt: skip
)
def test_role_lint_reports_bad_data_key_grants(
    role: str, bad: dict[str, Any], message: str
) -> None:
    problems = _lint(role, bad)
    assert any(message in p for p in problems), problems


def _shred_grant(role: str, resource: str = DATA_KEYS) -> dict[str, Any]:
    return _changed(role, None, {**_use("kms:ScheduleKeyDeletion"), "Resource": resource})


@pytest.mark.parametrize(
    ("role", "bad", "message"),
    [
        ("sp-ingest", _shred_grant("sp-ingest"), "sp-ingest may destroy KMS keys"),
        ("sp-registry", _shred_grant("sp-registry", KMS_KEY), "sp-registry may destroy"),
        ("sp-train", _changed("sp-train", None, _use("kms:*")), "sp-train may destroy"),
        (
            "sp-privacy",
            _changed("sp-privacy", "ShredSnapshotDataKeys", _relax_tag),
            "may destroy keys not tagged",
        ),
        (
            "sp-privacy",
            _changed("sp-privacy", "ShredSnapshotDataKeys", _drop("Condition")),
            "may destroy keys not tagged",
        ),
        (
            "sp-privacy",
            {
                **_policy("sp-privacy"),
                "Statement": [
                    s
                    for s in _policy("sp-privacy")["Statement"]
                    if s["Sid"] != "ShredSnapshotDataKeys"
                ],
            },
            "cannot destroy snapshot data keys",
        ),
    ],
    ids=["ingest", "registry-sse-key", "wildcard", "if-exists", "untagged", "missing"],
)
def test_destruction_lint_reports_other_destroyers(
    role: str, bad: dict[str, Any], message: str
) -> None:
    policies = {r: _policy(r) for r in WRITES}
    policies[role] = bad
    problems = lint_key_destruction(policies, shredder=SHREDDER)
    assert any(message in p for p in problems), problems
