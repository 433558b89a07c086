"""Signed human approvals, bound to one model digest.

``secure-pipeline approve MODEL_REF --key approver.pem --approver NAME`` verifies the bundle,
then writes an approval: a small JSON statement (model digest, bundle digest, approver, key
fingerprint, reason, time) signed with the approver's EC key, stored create-only in the
snapshot store under ``approvals/<model digest>/``. Promotion counts only approvals whose
signature verifies with a key the trust policy lists as an approver, for exactly this model
digest; several approvals by one key count once.
"""

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from secure_pipeline.registry.signing import TrustPolicy, key_fingerprint
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json, sha256_hex, utc_now

APPROVALS_PREFIX = "approvals/"
APPROVAL_TYPE = "secure-pipeline/approval/v1"


@dataclass(frozen=True)
class Approval:
    """A verified approval.

    Attributes:
        approver: The approver's name in the trust policy.
        key_fingerprint: The signing key's fingerprint.
        reason: Why they approved.
        created_at: When.
    """

    approver: str
    key_fingerprint: str
    reason: str
    created_at: str


def sign_approval(
    private_key: Path, *, model_sha256: str, bundle_digest: str, approver: str, reason: str
) -> bytes:
    """Create a signed approval document.

    Args:
        private_key: The approver's PEM EC private key.
        model_sha256: The model digest approved.
        bundle_digest: The bundle digest it was seen in.
        approver: The approver's name.
        reason: Why.

    Returns:
        The approval document (JSON bytes).
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(private_key.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{private_key} is not an EC private key")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = canonical_json(
        {
            "type": APPROVAL_TYPE,
            "model_sha256": model_sha256,
            "bundle_digest": bundle_digest,
            "approver": approver,
            "key_fingerprint": key_fingerprint(public),
            "decision": "approve",
            "reason": reason,
            "created_at": utc_now(),
        }
    )
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return canonical_json(
        {
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
    )


def store_approval(store: SnapshotStore, model_sha256: str, document: bytes) -> str:
    """Store an approval create-only; returns its key."""
    key = f"{APPROVALS_PREFIX}{model_sha256}/{sha256_hex(document)}.json"
    store.create_object(key, document)
    return key


def verified_approvals(
    store: SnapshotStore, model_sha256: str, trust: TrustPolicy, bundle_digest: str
) -> tuple[list[Approval], list[str]]:
    """The approvals of a bundle that verify with an approver key of the trust policy.

    An approval counts for the model digest *and* the bundle digest it names: approving a model
    is approving it with its lineage and card, not any other bundle holding the same bytes.

    Returns:
        ``(approvals, problems)``: one approval per approver key, and why any stored approval
        did not count.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    allowed = {}
    for approver in trust.approvers:
        pem = approver.public_key.read_bytes()
        allowed[key_fingerprint(pem)] = (approver.name, serialization.load_pem_public_key(pem))
    counted: dict[str, Approval] = {}
    problems: list[str] = []
    for key in store.list_keys(f"{APPROVALS_PREFIX}{model_sha256}/"):
        try:
            envelope = json.loads(store.read_object(key))
            payload = base64.b64decode(envelope["payload"])
            signature = base64.b64decode(envelope["signature"])
            statement = json.loads(payload)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{key}: not an approval document ({exc})")
            continue
        fingerprint = statement.get("key_fingerprint")
        if fingerprint not in allowed:
            problems.append(
                f"{key}: signed by key {str(fingerprint)[:16]}, which the trust policy does not "
                "list as an approver"
            )
            continue
        name, public_key = allowed[fingerprint]
        try:
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            problems.append(f"{key}: the signature does not verify with {name}'s key")
            continue
        if statement.get("type") != APPROVAL_TYPE or statement.get("decision") != "approve":
            problems.append(f"{key}: not an approval")
            continue
        if statement.get("model_sha256") != model_sha256:
            problems.append(f"{key}: approves model {statement.get('model_sha256')}, not this one")
            continue
        if statement.get("bundle_digest") != bundle_digest:
            problems.append(
                f"{key}: approves bundle {str(statement.get('bundle_digest'))[:12]}, not this "
                f"bundle {bundle_digest[:12]}"
            )
            continue
        counted.setdefault(
            fingerprint,
            Approval(name, fingerprint, str(statement.get("reason", "")),
                     str(statement.get("created_at"))),
        )  # fmt: skip
    return list(counted.values()), problems
