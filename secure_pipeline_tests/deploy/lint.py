"""Lints of the deployment material: IAM and bucket policies, Object Lock, the Dockerfile.

Each lint returns a list of problems (empty: clean) rather than asserting, so a test can feed
it a deliberately bad document and check that the problem is reported.
"""

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Actions no role may be granted: deleting or hiding data, weakening retention, or changing
# the bucket's protections.
FORBIDDEN_ACTION_PREFIXES = ("s3:Delete", "s3:PutBucket")
FORBIDDEN_ACTIONS = {
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
    "s3:PutLifecycleConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:PutReplicationConfiguration",
    "s3:PutObjectAcl",
    "s3:PutObjectVersionAcl",
    "s3:PutAccessPointPolicy",
}
WRITE_ACTIONS = {"s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectTagging"}
KMS_ACTIONS = {"kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"}
# What securesystemslib's AWSSigner calls when a stage signs (the public key comes from the
# trust policy, so not even kms:GetPublicKey is needed at run time).
SIGN_ACTIONS = {"kms:Sign"}
# The trust policy's keys are ECDSA P-256; AWSSigner hashes locally and sends the digest.
SIGNING_CONDITIONS = {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "DIGEST"}
# Key policy actions that would let someone other than the stage sign with its key: using it,
# granting its use, or copying it to another region under another key policy.
KEY_USE_ACTIONS = {
    "kms:Sign",
    "kms:CreateGrant",
    "kms:ReplicateKey",
    "kms:UpdatePrimaryRegion",
    "kms:ImportKeyMaterial",
}
# Snapshot data keys: one symmetric KMS key per encrypted snapshot, created (and tagged) by the
# ingest stage, used to wrap and unwrap that snapshot's data key, destroyed by the privacy stage.
PURPOSE_TAG = "secure-pipeline:purpose"
ASSET_TAG = "secure-pipeline:asset"
DATA_KEY_PURPOSE = "snapshot-data-key"
DATA_KEY_ACTIONS = {
    "kms:CreateKey",
    "kms:TagResource",
    "kms:GenerateDataKey",
    "kms:DescribeKey",
    "kms:Decrypt",
    "kms:ScheduleKeyDeletion",
}
# What every data-key statement pins about the key itself: a symmetric AWS_KMS key, so no signing
# key (ECC, SIGN_VERIFY) can be used or destroyed through these grants whatever its tags say.
DATA_KEY_PROPERTIES = {"kms:KeySpec": "SYMMETRIC_DEFAULT", "kms:KeyOrigin": "AWS_KMS"}
# The encryption context of every wrapped data key (storage/encryption.py).
CONTEXT_KEYS = [ASSET_TAG]
DESTRUCTIVE_ACTIONS = {
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectRetention",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutLifecycleConfiguration",
}


def as_list(value: Any) -> list[Any]:
    """A policy field that may be a single value or a list, as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in as_list(document.get("Statement")) if isinstance(s, dict)]


def lint_document(document: dict[str, Any]) -> list[str]:
    """Rules for every policy document: version, effects, no wildcard grants, no Not* elements.

    A wildcard is accepted only as ``s3:*`` in a Deny statement, where it widens the denial.
    """
    problems = []
    if document.get("Version") != "2012-10-17":
        problems.append(f"Version must be 2012-10-17, found {document.get('Version')!r}")
    statements = _statements(document)
    if not statements:
        problems.append("no statements")
    for index, statement in enumerate(statements):
        name = statement.get("Sid", f"#{index}")
        if statement.get("Effect") not in ("Allow", "Deny"):
            problems.append(f"{name}: Effect must be Allow or Deny")
        for element in ("NotAction", "NotResource", "NotPrincipal"):
            if element in statement:
                problems.append(f"{name}: {element} is not allowed (it grants by exclusion)")
        for action in as_list(statement.get("Action")):
            if "*" in action and not (statement.get("Effect") == "Deny" and action == "s3:*"):
                problems.append(f"{name}: wildcard action {action!r}")
    return problems


def _matches_prefix(resource: str, allowed: Iterable[str]) -> bool:
    return resource in set(allowed)


def _signing_problems(
    name: str, statement: dict[str, Any], resources: list[str], own: set[str]
) -> list[str]:
    problems = []
    others = [r for r in resources if r not in own]
    if not resources or others:
        problems.append(
            f"{name}: kms:Sign on {others or 'no key'}: a role may sign only with its own "
            f"identity keys {sorted(own) or '(none)'}"
        )
    if set(as_list(statement.get("Action"))) - SIGN_ACTIONS:
        problems.append(f"{name}: kms:Sign shares a statement with other actions")
    pinned = statement.get("Condition", {}).get("StringEquals", {})
    for key, value in SIGNING_CONDITIONS.items():
        if pinned.get(key) != value:
            problems.append(f"{name}: kms:Sign without {key} = {value} (StringEquals)")
    return problems


def _tag_problems(name: str, condition: dict[str, Any]) -> list[str]:
    """The request-tag rules of a statement that creates or tags a snapshot data key."""
    problems = []
    request = f"aws:RequestTag/{PURPOSE_TAG}"
    if condition.get("StringEquals", {}).get(request) != DATA_KEY_PURPOSE:
        problems.append(f"{name}: without {request} = {DATA_KEY_PURPOSE} (StringEquals)")
    if str(condition.get("Null", {}).get(f"aws:RequestTag/{ASSET_TAG}")).lower() != "false":
        problems.append(f"{name}: without a required aws:RequestTag/{ASSET_TAG}")
    keys = condition.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
    if not keys or not set(as_list(keys)) <= {PURPOSE_TAG, ASSET_TAG}:
        problems.append(f"{name}: aws:TagKeys not limited to {PURPOSE_TAG} and {ASSET_TAG}")
    return problems


def _data_key_problems(
    name: str, statement: dict[str, Any], allowed: set[str], data_keys: str | None
) -> list[str]:
    """Rules for a statement on snapshot data keys (one statement, all its actions)."""
    problems = []
    actions = set(as_list(statement.get("Action")))
    resources = as_list(statement.get("Resource"))
    condition = statement.get("Condition", {})
    for action in sorted(actions - allowed):
        problems.append(f"{name}: {action} on snapshot data keys is not this role's to use")
    if "kms:CreateKey" in actions:
        if actions != {"kms:CreateKey"}:
            problems.append(f"{name}: kms:CreateKey shares a statement with other actions")
        if resources != ["*"]:
            problems.append(f"{name}: kms:CreateKey takes Resource '*', found {resources}")
        problems.extend(_tag_problems(name, condition))
        pinned = condition.get("StringEquals", {})
        for key, value in {**DATA_KEY_PROPERTIES, "kms:KeyUsage": "ENCRYPT_DECRYPT"}.items():
            if pinned.get(key) != value:
                problems.append(f"{name}: kms:CreateKey without {key} = {value}")
        if str(condition.get("Bool", {}).get("kms:MultiRegion")).lower() != "false":
            problems.append(f"{name}: kms:CreateKey without kms:MultiRegion = false")
        return problems
    if resources != [data_keys]:
        problems.append(f"{name}: snapshot data keys must be {data_keys}, found {resources}")
    if "kms:TagResource" in actions:
        if actions != {"kms:TagResource"}:
            problems.append(f"{name}: kms:TagResource shares a statement with other actions")
        return [*problems, *_tag_problems(name, condition)]
    tag = f"aws:ResourceTag/{PURPOSE_TAG}"
    strict = condition.get("StringEquals", {}).get(tag) == DATA_KEY_PURPOSE
    relaxed = condition.get("StringEqualsIfExists", {}).get(tag) == DATA_KEY_PURPOSE
    if not (strict or relaxed):
        problems.append(f"{name}: use of data keys without {tag} = {DATA_KEY_PURPOSE}")
    pinned = condition.get("StringEquals", {})
    for key, value in DATA_KEY_PROPERTIES.items():
        if pinned.get(key) != value:
            problems.append(f"{name}: use of data keys without {key} = {value} (StringEquals)")
    if "kms:ScheduleKeyDeletion" in actions:
        if actions != {"kms:ScheduleKeyDeletion"}:
            problems.append(f"{name}: kms:ScheduleKeyDeletion shares a statement with others")
        if not strict:
            # A key whose tags are not (yet) visible must never be destroyable.
            problems.append(f"{name}: kms:ScheduleKeyDeletion needs {tag} in StringEquals")
    if actions & {"kms:GenerateDataKey", "kms:Decrypt"}:
        if "kms:DescribeKey" in actions:
            problems.append(
                f"{name}: kms:DescribeKey carries no encryption context; give it its own statement"
            )
        keys = condition.get("ForAllValues:StringEquals", {}).get("kms:EncryptionContextKeys")
        present = str(condition.get("Null", {}).get("kms:EncryptionContextKeys")).lower()
        if as_list(keys) != CONTEXT_KEYS or present != "false":
            problems.append(f"{name}: wrapping or unwrapping without the context {CONTEXT_KEYS}")
    return problems


def lint_role_policy(
    document: dict[str, Any],
    *,
    write_resources: Iterable[str],
    kms_key: str,
    signing_keys: Iterable[str] = (),
    data_keys: str | None = None,
    data_key_actions: Iterable[str] = (),
) -> list[str]:
    """Rules for a role's identity policy.

    Args:
        document: The policy.
        write_resources: The only object ARNs (patterns) the role may write to.
        kms_key: The only KMS key it may use for SSE-KMS (through S3 only).
        signing_keys: The only KMS keys it may sign with: those of the identities acting as
            this role (none for a role that signs nothing).
        data_keys: ARN pattern of the snapshot data keys (``arn:aws:kms:R:A:key/*``).
        data_key_actions: What the role may do with them (none: it never touches one).
    """
    problems = lint_document(document)
    allowed_writes = set(write_resources)
    own_signing_keys = set(signing_keys)
    allowed_data_key_actions = set(data_key_actions)
    for index, statement in enumerate(_statements(document)):
        name = statement.get("Sid", f"#{index}")
        actions = as_list(statement.get("Action"))
        resources = as_list(statement.get("Resource"))
        if statement.get("Effect") != "Allow":
            # A denial can only narrow the grants; only KMS denials on named keys belong here
            # (the bucket's denials are in the bucket policy).
            if not actions or any(not a.startswith("kms:") for a in actions):
                problems.append(f"{name}: a role policy only denies KMS actions on named keys")
            if not resources or any("*" in r for r in resources):
                problems.append(f"{name}: a denial must name its keys, found {resources}")
            continue
        if "*" in resources and actions != ["kms:CreateKey"]:
            problems.append(f"{name}: Resource '*'")
        data_key_statement = False
        for action in actions:
            service = action.split(":", 1)[0]
            if service not in ("s3", "kms"):
                problems.append(f"{name}: unexpected service in {action!r}")
            if action in FORBIDDEN_ACTIONS or action.startswith(FORBIDDEN_ACTION_PREFIXES):
                problems.append(f"{name}: forbidden action {action!r}")
            if action in WRITE_ACTIONS:
                outside = [r for r in resources if not _matches_prefix(r, allowed_writes)]
                if outside:
                    problems.append(f"{name}: {action} outside the role's prefixes: {outside}")
            if action == "s3:ListBucket":
                conditions = statement.get("Condition", {})
                prefixes = [
                    conditions.get(op, {}).get("s3:prefix")
                    for op in ("StringLike", "StringLikeIfExists", "StringEquals")
                ]
                if not any(prefixes):
                    problems.append(f"{name}: s3:ListBucket without an s3:prefix condition")
            if action in SIGN_ACTIONS:
                problems.extend(_signing_problems(name, statement, resources, own_signing_keys))
            elif service == "kms" and resources == [kms_key]:
                if action not in KMS_ACTIONS:
                    problems.append(
                        f"{name}: KMS action {action!r} is not needed for SSE-KMS or signing"
                    )
                via = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                if not (isinstance(via, str) and via.startswith("s3.")):
                    problems.append(f"{name}: KMS use must be limited to S3 (kms:ViaService)")
            elif (
                service == "kms"
                and action in DATA_KEY_ACTIONS
                and (resources == [data_keys] or (action == "kms:CreateKey" and data_keys))
            ):
                data_key_statement = True
            elif service == "kms":
                if action not in KMS_ACTIONS | DATA_KEY_ACTIONS:
                    problems.append(
                        f"{name}: KMS action {action!r} is not needed for SSE-KMS, signing or "
                        "snapshot data keys"
                    )
                else:
                    problems.append(
                        f"{name}: KMS must be scoped to {kms_key} (SSE, through S3) or to the "
                        f"snapshot data keys {data_keys}, found {resources}"
                    )
        if data_key_statement:
            problems.extend(
                _data_key_problems(name, statement, allowed_data_key_actions, data_keys)
            )
    return problems


def data_key_grants(document: dict[str, Any], *, kms_key: str) -> set[str]:
    """The KMS actions an identity policy allows on keys other than the SSE key and signing.

    That is everything a role may do with snapshot data keys, however it is scoped.
    """
    return {
        action
        for statement in _statements(document)
        if statement.get("Effect") == "Allow" and as_list(statement.get("Resource")) != [kms_key]
        for action in as_list(statement.get("Action"))
        if action.startswith("kms:") and action not in SIGN_ACTIONS
    }


def lint_key_destruction(policies: Mapping[str, dict[str, Any]], *, shredder: str) -> list[str]:
    """Across all roles: only ``shredder`` may destroy KMS keys, and only snapshot data keys.

    Destroying a data key erases a snapshot for good (crypto-shredding under Object Lock), so
    the grant is checked whichever document carries it, and however it is written.

    Args:
        policies: Role name -> its identity policy.
        shredder: The one role that completes erasures and retention.
    """
    problems = []
    tag = f"aws:ResourceTag/{PURPOSE_TAG}"
    for role, document in sorted(policies.items()):
        granted = [
            s
            for s in _statements(document)
            if s.get("Effect") == "Allow"
            and any(
                a == "kms:ScheduleKeyDeletion" or (a.startswith("kms:") and "*" in a)
                for a in as_list(s.get("Action"))
            )
        ]
        if role != shredder:
            for statement in granted:
                problems.append(
                    f"{role} may destroy KMS keys ({statement.get('Sid')}): only {shredder} may"
                )
            continue
        if not granted:
            problems.append(f"{shredder} cannot destroy snapshot data keys: erasure cannot end")
        for statement in granted:
            pinned = statement.get("Condition", {}).get("StringEquals", {})
            if pinned.get(tag) != DATA_KEY_PURPOSE:
                problems.append(
                    f"{shredder} may destroy keys not tagged {PURPOSE_TAG}={DATA_KEY_PURPOSE} "
                    f"({statement.get('Sid')})"
                )
    if shredder not in policies:
        problems.append(f"the shredder {shredder} has no policy")
    return problems


def signing_grants(document: dict[str, Any]) -> set[str]:
    """The KMS key ARNs (or ``*``) an identity policy allows ``kms:Sign`` on."""
    return {
        resource
        for statement in _statements(document)
        if statement.get("Effect") == "Allow"
        and SIGN_ACTIONS & set(as_list(statement.get("Action")))
        for resource in as_list(statement.get("Resource"))
    }


def lint_signing_separation(
    policies: Mapping[str, dict[str, Any]], owners: Mapping[str, Iterable[str]]
) -> list[str]:
    """Across all roles: each identity key is signable by its owning roles and by no other.

    A per-role lint sees one document; this one sees them all, so a key granted to a role that
    does not act as its identity, or a role that cannot sign as its identity, is reported
    whichever document is wrong. Most keys have one owner; an identity acting in two places
    (``monitor``: the code server's run-failure records and the monitor job's live checks) has
    one owner per place.

    Args:
        policies: Role name -> its identity policy.
        owners: Signing key ARN -> the roles that may sign with it.
    """
    problems = []
    holders = {key: frozenset(roles) for key, roles in owners.items()}
    for role, document in sorted(policies.items()):
        granted = signing_grants(document)
        for key in sorted(granted):
            if key not in holders:
                problems.append(f"{role} may sign with {key}, which is no identity's key")
            elif role not in holders[key]:
                problems.append(
                    f"{role} may sign with {key}, the key of {', '.join(sorted(holders[key]))}: "
                    "it could sign evidence as another stage"
                )
        for key in sorted(k for k, roles in holders.items() if role in roles):
            if key not in granted:
                problems.append(f"{role} cannot sign with its own identity key {key}")
    for key, roles in sorted(holders.items()):
        if not roles:
            problems.append(f"{key} has no owner: its identity could not sign")
        for owner in sorted(roles - set(policies)):
            problems.append(f"the owner {owner} of {key} has no policy")
    return problems


def _writes(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(statement name, resource) of every object a policy lets its role write."""
    found = []
    for index, statement in enumerate(_statements(document)):
        if statement.get("Effect") != "Allow":
            continue
        actions = as_list(statement.get("Action"))
        if any(a in WRITE_ACTIONS or (a.startswith("s3:") and "*" in a) for a in actions):
            name = statement.get("Sid", f"#{index}")
            found.extend((name, resource) for resource in as_list(statement.get("Resource")))
    return found


def lint_exclusive_writes(
    policies: Mapping[str, dict[str, Any]], exclusive: Mapping[str, Iterable[str]]
) -> list[str]:
    """Across all roles: objects that only some roles may create are writable by no other.

    The per-role lint compares a role's writes with what that role is expected to write; this
    one states who alone may write an object, whatever the other roles are expected to do, and
    sees through wildcards (``attestations/*``, ``*``) that would cover it.

    Args:
        policies: Role name -> its identity policy.
        exclusive: An object ARN (a real key, not a pattern) -> the only roles that may write it.
    """
    problems = []
    for role, document in sorted(policies.items()):
        for name, resource in _writes(document):
            for arn, writers in sorted(exclusive.items()):
                if role not in set(writers) and fnmatch.fnmatchcase(arn, resource):
                    problems.append(
                        f"{role} ({name}) may write {arn} through {resource}: only "
                        f"{', '.join(sorted(writers))} may"
                    )
    for arn, writers in sorted(exclusive.items()):
        if not any(
            fnmatch.fnmatchcase(arn, resource)
            for role in writers
            for _, resource in _writes(policies.get(role, {}))
        ):
            problems.append(f"none of {', '.join(sorted(writers))} may write {arn}")
    return problems


def lint_signing_key_policy(document: dict[str, Any], *, signers: Iterable[str]) -> list[str]:
    """Rules for the key policy of one identity's KMS signing key.

    The key policy is what makes the key usable at all: when it gives the account (``root``)
    no use of the key, no IAM policy anywhere can grant ``kms:Sign`` to another principal.

    Args:
        document: The key policy.
        signers: ARNs of the only principals (the roles acting as the identity) that may sign
            with the key; each of them must be able to.
    """
    problems = lint_document(document)
    allowed = set(signers)
    signing: set[str] = set()
    for index, statement in enumerate(_statements(document)):
        name = statement.get("Sid", f"#{index}")
        principal = statement.get("Principal")
        aws = as_list(principal.get("AWS")) if isinstance(principal, dict) else []
        if not aws or set(principal) != {"AWS"} or "*" in aws:
            problems.append(f"{name}: the principal must name AWS principals, found {principal!r}")
        if statement.get("Effect") != "Allow":
            continue
        used = sorted(KEY_USE_ACTIONS & set(as_list(statement.get("Action"))))
        if not used:
            continue
        if not set(aws) <= allowed or used != ["kms:Sign"]:
            problems.append(
                f"{name}: {', '.join(used)} for {aws}: only {', '.join(sorted(allowed))} may use "
                "the key, and only to sign"
            )
            continue
        pinned = statement.get("Condition", {}).get("StringEquals", {})
        missing = [k for k, v in SIGNING_CONDITIONS.items() if pinned.get(k) != v]
        if missing:
            problems.append(f"{name}: kms:Sign without {', '.join(missing)} pinned")
        signing |= set(aws)
    for signer in sorted(allowed - signing):
        problems.append(f"{signer} is not allowed kms:Sign: the stage could not sign")
    return problems


def lint_irsa_trust(document: dict[str, Any], *, namespace: str, service_account: str) -> list[str]:
    """Rules for an IRSA trust policy: one federated OIDC principal, exact subject and audience."""
    problems = lint_document(document)
    statements = _statements(document)
    if len(statements) != 1:
        return [*problems, "an IRSA trust policy has exactly one statement"]
    (statement,) = statements
    federated = statement.get("Principal", {}).get("Federated", "")
    if ":oidc-provider/" not in federated:
        problems.append(f"principal must be an OIDC provider, found {federated!r}")
    if statement.get("Action") != "sts:AssumeRoleWithWebIdentity":
        problems.append("action must be sts:AssumeRoleWithWebIdentity")
    equals = statement.get("Condition", {}).get("StringEquals", {})
    subjects = {v for k, v in equals.items() if k.endswith(":sub")}
    audiences = {v for k, v in equals.items() if k.endswith(":aud")}
    expected = f"system:serviceaccount:{namespace}:{service_account}"
    if subjects != {expected}:
        problems.append(f"sub must be exactly {expected!r}, found {sorted(subjects)}")
    if audiences != {"sts.amazonaws.com"}:
        problems.append(f"aud must be sts.amazonaws.com, found {sorted(audiences)}")
    if "StringLike" in statement.get("Condition", {}):
        problems.append("StringLike in a trust condition lets other service accounts in")
    return problems


def _denies(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s for s in _statements(document) if s.get("Effect") == "Deny" and s.get("Principal") == "*"
    ]


def lint_bucket_policy(
    document: dict[str, Any], *, bucket: str, kms_key: str, create_only: Iterable[str]
) -> list[str]:
    """The bucket policy's required denials, and no grants.

    Args:
        document: The bucket policy.
        bucket: The bucket name.
        kms_key: The only KMS key ARN objects may be written with.
        create_only: Key prefixes (``snapshots/``) where writes must carry If-None-Match.
    """
    problems = lint_document(document)
    arn = f"arn:aws:s3:::{bucket}"
    denies = _denies(document)
    if any(s.get("Effect") == "Allow" for s in _statements(document)):
        problems.append("the bucket policy grants nothing; access comes from the role policies")

    def having(operator: str, key: str) -> list[dict[str, Any]]:
        return [s for s in denies if key in s.get("Condition", {}).get(operator, {})]

    transport = having("Bool", "aws:SecureTransport")
    if not any(
        str(s["Condition"]["Bool"]["aws:SecureTransport"]).lower() == "false"
        and "s3:*" in as_list(s.get("Action"))
        and {arn, f"{arn}/*"} <= set(as_list(s.get("Resource")))
        for s in transport
    ):
        problems.append("missing: deny s3:* on the bucket and its objects without TLS")
    if not any(
        float(s["Condition"]["NumericLessThan"]["s3:TlsVersion"]) >= 1.2
        and "s3:*" in as_list(s.get("Action"))
        for s in having("NumericLessThan", "s3:TlsVersion")
    ):
        problems.append("missing: deny TLS versions below 1.2 (s3:TlsVersion)")
    encryption = "s3:x-amz-server-side-encryption"
    if not any(
        s["Condition"]["StringNotEquals"][encryption] == "aws:kms"
        and "s3:PutObject" in as_list(s.get("Action"))
        for s in having("StringNotEquals", encryption)
    ):
        problems.append("missing: deny PutObject with an encryption other than aws:kms")
    key_id = "s3:x-amz-server-side-encryption-aws-kms-key-id"
    if not any(
        s["Condition"]["StringNotEquals"][key_id] == kms_key
        and "s3:PutObject" in as_list(s.get("Action"))
        for s in having("StringNotEquals", key_id)
    ):
        problems.append(f"missing: deny PutObject with a KMS key other than {kms_key}")
    guarded: set[str] = set()
    for statement in having("Null", "s3:if-none-match"):
        if str(statement["Condition"]["Null"]["s3:if-none-match"]).lower() == "true" and (
            "s3:PutObject" in as_list(statement.get("Action"))
        ):
            guarded |= set(as_list(statement.get("Resource")))
    for prefix in create_only:
        if f"{arn}/{prefix}*" not in guarded:
            problems.append(f"missing: deny PutObject without If-None-Match on {prefix}")
    denied = {a for s in denies if not s.get("Condition") for a in as_list(s.get("Action"))}
    for action in sorted(DESTRUCTIVE_ACTIONS - denied):
        problems.append(f"missing: unconditional deny of {action} for every principal")
    return problems


def lint_object_lock(document: dict[str, Any]) -> list[str]:
    """Object Lock must be enabled in COMPLIANCE mode with a default retention."""
    problems = []
    if document.get("ObjectLockEnabled") != "Enabled":
        problems.append("ObjectLockEnabled must be Enabled")
    retention = document.get("Rule", {}).get("DefaultRetention", {})
    if retention.get("Mode") != "COMPLIANCE":
        problems.append(f"retention mode must be COMPLIANCE, found {retention.get('Mode')!r}")
    period = retention.get("Days") or retention.get("Years")
    if not (isinstance(period, int) and period > 0):
        problems.append("a positive default retention (Days or Years) is required")
    return problems


_SECRET_NAME = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|CREDENTIAL", re.I)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _assignments(arguments: str) -> list[tuple[str, str]]:
    return re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)", arguments)


def lint_dockerfile(text: str) -> list[str]:
    """Rules for the production Dockerfile.

    Final stage runs as a numeric non-root user; dependencies come from the lock without dev
    groups; nothing is fetched with ADD; no build argument or environment variable carries
    something named like a secret; every base image has an explicit tag or digest.
    """
    problems = []
    instructions = dockerfile_instructions(text)
    args = {}
    for word, arguments in instructions:
        if word == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    if not stages:
        return ["no FROM"]
    aliases = set()
    for index in stages:
        words = instructions[index][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            aliases.add(words[2])
        if image in aliases - {words[-1]}:
            continue  # an earlier stage, not an image
        if "@sha256:" not in image and ":" not in image.rsplit("/", 1)[-1]:
            problems.append(f"base image {image!r} has no tag or digest")
        elif image.endswith(":latest"):
            problems.append(f"base image {image!r} uses the latest tag")
    final = instructions[stages[-1] :]
    users = [arguments for word, arguments in final if word == "USER"]
    if not users:
        problems.append("the final stage sets no USER (it would run as root)")
    else:
        user, _, group = users[-1].partition(":")
        if not user.isdigit() or int(user) == 0:
            problems.append(f"final USER must be a numeric non-root uid, found {users[-1]!r}")
        if group and (not group.isdigit() or int(group) == 0):
            problems.append(f"final USER group must be a numeric non-root gid, found {group!r}")
    syncs = [a for w, a in instructions if w == "RUN" and "uv sync" in a]
    if not syncs:
        problems.append("no RUN uv sync")
    for command in syncs:
        for flag in ("--frozen", "--no-dev"):
            if flag not in command.split():
                problems.append(f"uv sync without {flag}: {command!r}")
    for word, arguments in instructions:
        if word == "ADD" and re.search(r"https?://", arguments):
            problems.append(f"ADD from a URL: {arguments!r}")
        if word in ("ENV", "ARG"):
            pairs = _assignments(arguments) or [tuple(arguments.split(None, 1) + [""])[:2]]
            for name, value in pairs:
                if _SECRET_NAME.search(name) and value.strip('"'):
                    problems.append(f"{word} {name} looks like a secret baked into the image")
    return problems
