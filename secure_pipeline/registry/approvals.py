"""Signed human approvals, bound to one model digest and one bundle.

``secure-pipeline approve MODEL_REF --key approver.pem`` first checks that the key is an
approver's of the trust policy (a key that is not is refused before anything is written), then
verifies the bundle, then signs an in-toto statement (subjects: the model digest and the bundle
digest; predicate: approver, decision, reason, time) into a DSSE envelope with the approver's
key, stored create-only under ``approvals/<model digest>/``. Promotion counts only approvals that
verify with an approver key of today's trust policy, for exactly this model *and* bundle; several
approvals by one approver count once.
"""

from dataclasses import dataclass

from secure_pipeline.errors import SignatureError
from secure_pipeline.storage.snapshots import SnapshotStore, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import APPROVER_PREFIX, approver_identity
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.trust.signers import IdentitySigner

APPROVALS_PREFIX = "approvals/"


@dataclass(frozen=True)
class Approval:
    """A verified approval.

    Attributes:
        approver: The approver's name in the trust policy.
        key_fingerprint: The signing key's fingerprint.
        reason: Why they approved.
        created_at: When.
        key: Where it is stored.
        sha256: Digest of its envelope (how a promotion attestation cites it).
    """

    approver: str
    key_fingerprint: str
    reason: str
    created_at: str
    key: str
    sha256: str


def sign_approval(
    signer: IdentitySigner, *, model_sha256: str, bundle_digest: str, reason: str
) -> bytes:
    """Sign an approval of a model digest in a bundle.

    Args:
        signer: The approver's signer (`secure_pipeline.trust.signers.approver_signer`).
        model_sha256: The model digest approved.
        bundle_digest: The bundle digest it was seen in.
        reason: Why.

    Returns:
        The DSSE envelope.
    """
    if not signer.identity.startswith(APPROVER_PREFIX):
        raise ValueError(f"{signer.identity} is not an approver identity")
    document = attestations.statement(
        {"model.skops": model_sha256, "bundle": bundle_digest},
        attestations.APPROVAL_TYPE,
        {
            "approver": signer.identity[len(APPROVER_PREFIX) :],
            "decision": "approve",
            "reason": reason,
            "created_at": utc_now(),
            "trust_policy_sha256": signer.policy_digest,
        },
    )
    return attestations.sign(document, signer)


def store_approval(store: SnapshotStore, model_sha256: str, document: bytes) -> str:
    """Store an approval create-only; returns its key."""
    key = f"{APPROVALS_PREFIX}{model_sha256}/{attestations.sha256_of(document)}.json"
    store.create_object(key, document)
    return key


def open_approval(
    data: bytes, trust: TrustPolicy, *, model_sha256: str, bundle_digest: str, where: str
) -> attestations.Attestation:
    """Verify one approval envelope for exactly this model and bundle.

    Raises:
        SignatureError: When it is not signed by an approver of the policy, or approves
            something else.
    """
    identities = [approver_identity(name) for name in trust.approvers]
    if not identities:
        raise SignatureError(f"{where}: the trust policy lists no approvers")
    attestation = attestations.open_envelope(
        data, trust, identities=identities, predicate_type=attestations.APPROVAL_TYPE, what=where
    )
    if attestation.predicate.get("decision") != "approve":
        raise SignatureError(f"{where}: not an approval")
    subjects = attestation.subjects
    if subjects.get("model.skops") != model_sha256:
        raise SignatureError(f"{where}: approves model {subjects.get('model.skops')}, not this one")
    if subjects.get("bundle") != bundle_digest:
        raise SignatureError(
            f"{where}: approves bundle {str(subjects.get('bundle'))[:12]}, not this bundle "
            f"{bundle_digest[:12]}"
        )
    return attestation


def verified_approvals(
    store: SnapshotStore, model_sha256: str, trust: TrustPolicy, bundle_digest: str
) -> tuple[list[Approval], list[str]]:
    """The approvals of a bundle that verify with an approver key of the trust policy.

    An approval counts for the model digest *and* the bundle digest it names: approving a model
    is approving it with its lineage and card, not any other bundle holding the same bytes.

    Returns:
        ``(approvals, problems)``: one approval per approver, and why any stored approval did
        not count.
    """
    counted: dict[str, Approval] = {}
    problems: list[str] = []
    for key in store.list_keys(f"{APPROVALS_PREFIX}{model_sha256}/"):
        try:
            attestation = open_approval(
                store.read_object(key), trust, model_sha256=model_sha256,
                bundle_digest=bundle_digest, where=key,
            )  # fmt: skip
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        except FileNotFoundError:
            continue
        name = attestation.identity[len(APPROVER_PREFIX) :]
        counted.setdefault(
            name,
            Approval(
                name,
                attestation.keyid,
                str(attestation.predicate.get("reason", "")),
                str(attestation.predicate.get("created_at")),
                key,
                attestation.sha256,
            ),
        )
    return list(counted.values()), problems
