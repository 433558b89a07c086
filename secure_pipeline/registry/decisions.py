"""Promotion decisions as SLSA verification summary attestations, signed by the gate.

When the gate admits a version it signs a VSA (``https://slsa.dev/verification_summary/v1``):
subjects the model and bundle digests, ``resourceUri`` the registry version, ``policy`` the
trust policy's digest, ``inputAttestations`` every envelope it relied on (the bundle's signed
verdicts, the release identity's registration, the approvals, the previous decision), and a
``secure_pipeline`` block with the decision (``challenger``: passed the gate; ``champion``: the
version serving production), the previous champion and the audit trail's signed checkpoint at
that moment. Envelopes are stored create-only under ``attestations/promotions/<name>/``.

*Champion* means the latest valid champion decision for a name, by the gate's signed time; the
MLflow alias only mirrors it for the UI. An alias moved by hand, a decision forged or edited, or
a decision copied under another file name changes nothing: the first is refused where it
disagrees, the second does not verify, the third is the same envelope (same digest).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secure_pipeline.errors import SignatureError
from secure_pipeline.names import CHALLENGER, CHAMPION
from secure_pipeline.storage.snapshots import SnapshotStore, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.trust.signers import IdentitySigner

PROMOTIONS = "promotions"
VERIFIER_ID = "https://secure-pipeline.dev/promotion-gate"
LEVELS = {CHALLENGER: "SECURE_PIPELINE_GATE_PASSED", CHAMPION: "SECURE_PIPELINE_CHAMPION"}


@dataclass(frozen=True)
class Decision:
    """A verified promotion decision.

    Attributes:
        attestation: The gate's verified VSA.
        key: Where it is stored.
    """

    attestation: attestations.Attestation
    key: str

    @property
    def facts(self) -> Mapping[str, Any]:
        """The project's block of the VSA."""
        return self.attestation.predicate.get("secure_pipeline", {})

    @property
    def decision(self) -> str:
        """``challenger`` or ``champion``."""
        return str(self.facts.get("decision"))

    @property
    def version(self) -> str:
        """The registry version decided on."""
        return str(self.facts.get("version"))

    @property
    def name(self) -> str:
        """The registered model name."""
        return str(self.facts.get("name"))

    @property
    def time(self) -> str:
        """When the gate decided (signed)."""
        return str(self.attestation.predicate.get("timeVerified"))

    @property
    def sha256(self) -> str:
        """Digest of the envelope."""
        return self.attestation.sha256

    @property
    def model_sha256(self) -> str | None:
        """The model digest decided on."""
        return self.attestation.subjects.get("model.skops")

    @property
    def bundle_digest(self) -> str | None:
        """The bundle digest decided on."""
        return self.attestation.subjects.get("bundle")

    def inputs(self, prefix: str) -> list[Mapping[str, Any]]:
        """The cited input attestations whose URI starts with ``prefix``."""
        return [
            i
            for i in self.attestation.predicate.get("inputAttestations", [])
            if str(i.get("uri", "")).startswith(prefix)
        ]

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"{self.decision} decision for {self.name} version {self.version}, signed by the "
            f"gate ({self.attestation.keyid[:12]}) at {self.time} [{self.sha256[:12]}]"
        )


def issue(
    store: SnapshotStore,
    signer: IdentitySigner,
    *,
    pipeline: str,
    name: str,
    version: str,
    decision: str,
    reason: str,
    model_sha256: str,
    bundle_digest: str,
    security_policy_sha256: str,
    inputs: Sequence[tuple[str, str]],
    previous_champion: "Decision | None",
    audit_head: tuple[int, str] | None,
) -> Decision:
    """Sign and store a promotion decision.

    Args:
        store: Where decisions are kept.
        signer: The gate identity's signer.
        pipeline: The pipeline's name.
        name: Registered model name.
        version: Registered version.
        decision: ``challenger`` or ``champion``.
        reason: ``promotion``, ``canary`` or ``rollback``.
        model_sha256: The model digest.
        bundle_digest: The bundle digest.
        security_policy_sha256: Fingerprint of the thresholds the model was admitted under.
        inputs: ``(uri, sha256)`` of every attestation relied on.
        previous_champion: The champion decision this one follows (champion decisions).
        audit_head: The audit trail's latest signed checkpoint ``(count, hash)``.

    Returns:
        The stored decision.
    """
    from importlib.metadata import version as package_version

    if decision not in LEVELS:
        raise ValueError(f"decision must be one of {sorted(LEVELS)}, found {decision!r}")
    document = attestations.statement(
        {"model.skops": model_sha256, "bundle": bundle_digest},
        attestations.VSA_TYPE,
        {
            "verifier": {
                "id": VERIFIER_ID,
                "version": {"secure-pipeline": package_version("secure-pipeline")},
            },
            "timeVerified": utc_now(),
            "resourceUri": f"models:/{name}/{version}",
            "policy": {
                "uri": "secure-pipeline:trust-policy",
                "digest": {"sha256": signer.policy_digest},
            },
            "inputAttestations": [{"uri": u, "digest": {"sha256": d}} for u, d in inputs],
            "verificationResult": "PASSED",
            "verifiedLevels": [LEVELS[decision]],
            "secure_pipeline": {
                "pipeline": pipeline,
                "name": name,
                "version": str(version),
                "decision": decision,
                "reason": reason,
                "security_policy_sha256": security_policy_sha256,
                "previous_champion": (
                    {"version": previous_champion.version, "attestation": previous_champion.sha256}
                    if previous_champion is not None
                    else None
                ),
                "audit_head": (
                    {"count": audit_head[0], "hash": audit_head[1]} if audit_head else None
                ),
            },
        },
    )
    data = attestations.sign(document, signer)
    key = attestations.store_envelope(store, PROMOTIONS, name, data)
    return Decision(
        attestations.Attestation(
            data, attestations.sha256_of(data), document, signer.identity, signer.keyid
        ),
        key,
    )


def decisions(store: SnapshotStore, trust: TrustPolicy, name: str) -> tuple[list[Decision], int]:
    """Every valid decision for ``name``, oldest first, and how many envelopes did not verify."""
    found: dict[str, Decision] = {}
    rejected = 0
    for key, data in attestations.stored_envelopes(store, PROMOTIONS, name):
        try:
            attestation = attestations.open_envelope(
                data, trust, identities=(GATE,), predicate_type=attestations.VSA_TYPE,
                what=f"promotion decision {key}",
            )  # fmt: skip
        except SignatureError:
            rejected += 1
            continue
        decision = Decision(attestation, key)
        predicate = attestation.predicate
        if (
            decision.name != name
            or decision.decision not in LEVELS
            or predicate.get("verificationResult") != "PASSED"
            or predicate.get("resourceUri") != f"models:/{name}/{decision.version}"
        ):
            rejected += 1
            continue
        # A copy under another file name is the same envelope: counted once.
        found.setdefault(decision.sha256, decision)
    return sorted(found.values(), key=lambda d: (d.time, d.sha256)), rejected


def champion(history: Iterable[Decision]) -> Decision | None:
    """The latest champion decision."""
    champions = [d for d in history if d.decision == CHAMPION]
    return champions[-1] if champions else None


def for_version(history: Iterable[Decision], version: str, bundle_digest: str) -> Decision | None:
    """The latest decision admitting exactly this version and bundle, if any."""
    matching = [
        d for d in history if d.version == str(version) and d.bundle_digest == bundle_digest
    ]
    return matching[-1] if matching else None


def by_digest(history: Iterable[Decision], sha256: str) -> Decision | None:
    """The decision whose envelope has this digest."""
    return next((d for d in history if d.sha256 == sha256), None)
