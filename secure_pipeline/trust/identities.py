"""The signing identities, and what each may write.

An identity is a role, not a person or a process: every pod or command acting as that role
holds (or reaches, through KMS) that role's key and nothing else's. The audit trail refuses a
record whose event the signing identity may not write, so a training key cannot record an
ingestion, and no stage key can record an approval.
"""

from collections.abc import Mapping

INGEST = "ingest"
TRAIN = "train"
RELEASE = "release"
GATE = "gate"
MONITOR = "monitor"
# The serving slots: they sign the batches of live traffic they record, and nothing else.
SERVE = "serve"
PRIVACY = "privacy"

# Order matters only for display (the trust policy, `trust init`, error messages).
STAGE_IDENTITIES: tuple[str, ...] = (INGEST, TRAIN, RELEASE, GATE, MONITOR, PRIVACY, SERVE)
APPROVER_PREFIX = "approver:"

# Events each identity may append to the audit trail.
EVENTS: Mapping[str, frozenset[str]] = {
    INGEST: frozenset({"ingestion.stored", "snapshot.stored", "check.evaluated"}),
    TRAIN: frozenset({"model.trained", "snapshot.stored", "check.evaluated"}),
    RELEASE: frozenset(
        {
            "model.registered",
            "registration.refused",
            "snapshot.stored",
            "check.evaluated",
            "oci.pushed",
        }
    ),
    GATE: frozenset(
        {
            "snapshot.stored",
            "promotion.verified",
            "promotion.refused",
            "promotion.challenger",
            "promotion.champion",
            "promotion.rollback",
            "canary.started",
            "canary.passed",
            "canary.rolled_back",
            "canary.refused",
            "serving.rolled_back",
        }
    ),
    # Failed runs, and the verdicts of the live checks on what the champion scores.
    MONITOR: frozenset({"run.failed", "check.evaluated", "snapshot.stored"}),
    # A slot writes signed batches to the store, never to the audit trail.
    SERVE: frozenset(),
    # Erasure requests and the destruction of data keys (erasure completion, retention).
    PRIVACY: frozenset({"privacy.erasure", "privacy.shredded", "snapshot.stored"}),
}
APPROVER_EVENTS = frozenset({"approval.recorded"})

# Which identity judges the checks of each stage's snapshot.
VERDICT_IDENTITY: Mapping[str, str] = {
    "raw": INGEST,
    "validated": INGEST,
    "features": INGEST,
    "model": TRAIN,
    "registry": RELEASE,
    "live": MONITOR,
}


def approver_identity(name: str) -> str:
    """The identity of an approver named ``name`` in the trust policy."""
    return f"{APPROVER_PREFIX}{name}"


def may_write(identity: str, event: str) -> bool:
    """Whether ``identity`` may append an ``event`` record to the audit trail."""
    if identity.startswith(APPROVER_PREFIX):
        return event in APPROVER_EVENTS
    return event in EVENTS.get(identity, frozenset())


def signer_variable(identity: str) -> str:
    """The environment variable holding an identity's private key URI."""
    return f"SECURE_PIPELINE_SIGNER_{identity.upper()}"
