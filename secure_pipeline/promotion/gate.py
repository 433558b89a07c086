"""The promotion gate: verify again, count approvals, sign the decision, mirror the aliases.

Promotion never relies on checks having run in the same Dagster run: it downloads the version
back from the registry and re-verifies the release signature, every file, the signed verdicts
of its lineage under today's policy, and the release identity's signed registration of exactly
this bundle as this version; then it requires the policy's number of signed approvals. Only then
does the gate sign its decision (`secure_pipeline.registry.decisions`): ``challenger`` (passed
the gate) or ``champion``. The MLflow aliases ``challenger`` and ``champion`` mirror those
decisions for the UI; nothing reads them as evidence.
"""

import hashlib
from typing import Any

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.names import CHALLENGER, CHAMPION
from secure_pipeline.registry.approvals import Approval, verified_approvals
from secure_pipeline.registry.decisions import Decision, by_digest, champion, decisions, issue
from secure_pipeline.registry.evidence import Evidence, Requirement, verify_reference
from secure_pipeline.registry.mlflow_registry import alias_version, set_alias, tag_version
from secure_pipeline.registry.verification import Verification
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.snapshots import SnapshotStore
from secure_pipeline.trust.identities import GATE
from secure_pipeline.trust.policy import TrustPolicy, trust_policy
from secure_pipeline.trust.signers import IdentitySigner, signer_for

__all__ = ["CHALLENGER", "CHAMPION", "make_champion", "promote", "rollback"]

# Characters of a refusal reason kept in its audit record (the record limit is 1024).
_REASON_CHARS = 900


def _verify(
    pipeline: PipelineSpec,
    name: str,
    version: str,
    store: SnapshotStore,
    trust: TrustPolicy,
    require: Requirement = None,
) -> Evidence:
    """`verify_reference` of ``models:/name/version``.

    The bundle's files are only read inside it; the gate keeps the digests and steps found.
    """
    with verify_reference(
        f"models:/{name}/{version}", pipeline=pipeline, trust=trust, store=store, require=require
    ) as evidence:
        return evidence


def _approvals(
    pipeline: PipelineSpec,
    verification: Verification,
    store: SnapshotStore,
    trust: TrustPolicy,
    refuse: Any,
    name: str,
    version: str,
) -> list[Approval]:
    """The verified approvals of a bundle; refuses (audited) when fewer than the policy needs."""
    subject = str(verification.model_sha256)
    approvals, problems = verified_approvals(store, subject, trust, str(verification.bundle_digest))
    needed = pipeline.policy.approvals_required
    if len(approvals) < needed:
        refuse(
            subject,
            f"version {version} of {name} needs {needed} signed approval(s) from approvers of "
            f"the trust policy, has {len(approvals)}"
            + (f" ({'; '.join(problems)})" if problems else "")
            + f". Approve with: secure-pipeline approve models:/{name}/{version} --key "
            "<approver key>",
        )
    return approvals


def _refuser(audit: AuditLog, signer: IdentitySigner, actor: str, run_id: str | None) -> Any:
    def refuse(subject: Any, why: str) -> None:
        # A reason listing many problems can exceed the audit record's string limit; the record
        # keeps its start and the digest of the whole text, the exception carries all of it.
        recorded = why if len(why) <= _REASON_CHARS else why[: _REASON_CHARS - 1] + "…"
        audit.append(
            "promotion.refused",
            signer=signer,
            actor=actor,
            run_id=run_id,
            subject=subject,
            details={"reason": recorded, "reason_sha256": hashlib.sha256(why.encode()).hexdigest()},
        )
        raise PolicyViolation(why)

    return refuse


def _inputs(verification: Verification, approvals: list[Approval]) -> list[tuple[str, str]]:
    """Every attestation a decision relies on: the bundle's verdicts, registration, approvals."""
    from secure_pipeline.registry.registration import REGISTRATIONS
    from secure_pipeline.trust.attestations import key_for

    assert verification.lineage is not None
    inputs = [
        (f"bundle:{c['attestation']}", str(c["attestation_sha256"]))
        for c in verification.lineage.get("checks", [])
    ]
    if verification.registration is not None:
        scope = f"{verification.name}/{verification.version}"
        key = key_for(REGISTRATIONS, scope, verification.registration.data)
        inputs.append((key, verification.registration.sha256))
    inputs += [(a.key, a.sha256) for a in approvals]
    return inputs


def _mirror_champion(name: str, version: str, previous: Decision | None) -> None:
    """Point the champion alias at the signed champion, for the UI (it is no evidence)."""
    set_alias(name, CHAMPION, version)
    if previous is not None and previous.version != version:
        tag_version(name, version, "previous_champion", previous.version)


def promote(
    pipeline: PipelineSpec,
    name: str,
    version: str,
    *,
    store: SnapshotStore,
    audit: AuditLog,
    actor: str,
    run_id: str | None = None,
    crown: bool = True,
) -> dict[str, Any]:
    """Admit a registered version through the gate: challenger, then champion.

    With ``crown=False`` the gate's decision is only ``challenger``: a blue-green release makes
    it champion after its canary passed (`make_champion`).

    Returns:
        What happened: version, model digest, approvals, previous champion, the decision.

    Raises:
        PolicyViolation: When verification fails or approvals are missing (audited).
    """
    trust, signer = trust_policy(), signer_for(GATE)
    refuse = _refuser(audit, signer, actor, run_id)
    verification = _verify(pipeline, name, version, store, trust).verification
    subject = verification.model_sha256
    if not verification.ok:
        refuse(subject, f"version {version} of {name} failed verification: "
               + "; ".join(verification.problems))  # fmt: skip
    audit.append(
        "promotion.verified",
        signer=signer,
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"name": name, "version": version, "signer": verification.signer},
    )
    approvals = _approvals(pipeline, verification, store, trust, refuse, name, version)
    previous = champion(decisions(store, trust, name)[0])
    decision = issue(
        store, signer, pipeline=pipeline.name, name=name, version=str(version),
        decision=CHAMPION if crown else CHALLENGER, reason="promotion",
        model_sha256=str(subject), bundle_digest=str(verification.bundle_digest),
        security_policy_sha256=pipeline.policy.fingerprint(),
        inputs=_inputs(verification, approvals),
        previous_champion=previous if crown else None,
        audit_head=audit.latest_checkpoint(trust),
    )  # fmt: skip
    set_alias(name, CHALLENGER, version)
    audit.append(
        "promotion.challenger",
        signer=signer,
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"name": name, "version": version, "decision": decision.key,
                 "approvals": [a.approver for a in approvals]},
    )  # fmt: skip
    if crown:
        _mirror_champion(name, str(version), previous)
        audit.append(
            "promotion.champion",
            signer=signer,
            actor=actor,
            run_id=run_id,
            subject=subject,
            details={"name": name, "version": version, "decision": decision.key,
                     "previous_champion": previous.version if previous else None},
        )  # fmt: skip
    previous_version = previous.version if previous else None
    return {
        "name": name,
        "version": version,
        "model_sha256": subject,
        "bundle_digest": verification.bundle_digest,
        "signer": verification.signer,
        "approvals": [a.approver for a in approvals],
        "previous_champion": previous_version,
        "champion": version if crown else previous_version,
        "decision": decision.key,
    }


def make_champion(
    pipeline: PipelineSpec,
    name: str,
    version: str,
    *,
    store: SnapshotStore,
    audit: AuditLog,
    actor: str,
    run_id: str | None = None,
    reason: str = "canary",
) -> Decision:
    """Crown a version the gate admitted (after its canary passed): a signed champion decision.

    The version is verified again, and must have a valid gate decision for exactly its bundle,
    whose cited approvals still verify under today's policy.

    Returns:
        The champion decision.

    Raises:
        PolicyViolation: When the version does not verify or the gate never admitted it.
    """
    trust, signer = trust_policy(), signer_for(GATE)
    refuse = _refuser(audit, signer, actor, run_id)
    # The whole chain, as every other use checks it: the bundle, its registration, the gate's
    # decision for exactly this bundle, the approvals it cites under today's policy.
    evidence = _verify(pipeline, name, version, store, trust, require="promoted")
    verification = evidence.verification
    if not evidence.ok:
        refuse(verification.model_sha256, f"version {version} of {name} cannot be crowned: "
               + "; ".join(evidence.problems))  # fmt: skip
    admitted = evidence.decision
    assert admitted is not None
    history = decisions(store, trust, name)[0]
    previous = champion(history)
    if (
        previous is not None
        and previous.version == str(version)
        and (previous.bundle_digest == verification.bundle_digest)
    ):
        _mirror_champion(name, str(version), None)
        return previous
    decision = issue(
        store, signer, pipeline=pipeline.name, name=name, version=str(version),
        decision=CHAMPION, reason=reason, model_sha256=str(verification.model_sha256),
        bundle_digest=str(verification.bundle_digest),
        security_policy_sha256=pipeline.policy.fingerprint(),
        # The admitting decision, and every attestation it relied on (the bundle's verdicts,
        # the registration, the approvals): what any use of the champion checks it against.
        inputs=[(admitted.key, admitted.sha256), *_inputs(verification, list(evidence.approvals))],
        previous_champion=previous, audit_head=audit.latest_checkpoint(trust),
    )  # fmt: skip
    _mirror_champion(name, str(version), previous)
    audit.append(
        "promotion.champion",
        signer=signer,
        actor=actor,
        run_id=run_id,
        subject=verification.model_sha256,
        details={"name": name, "version": version, "decision": decision.key, "reason": reason,
                 "previous_champion": previous.version if previous else None},
    )  # fmt: skip
    return decision


def rollback(
    pipeline: PipelineSpec, name: str, *, store: SnapshotStore, audit: AuditLog, actor: str
) -> dict[str, Any]:
    """Make the previous champion champion again, after verifying it and its approvals again.

    The target is the previous champion the current signed champion decision names (never a
    registry tag); it is verified under today's policy and needs today's approvals.

    Raises:
        PolicyViolation: When there is nothing to roll back to, or the previous champion no
            longer verifies (e.g. today's policy is stricter than the one it was judged by).
    """
    trust, signer = trust_policy(), signer_for(GATE)
    refuse = _refuser(audit, signer, actor, None)
    history = decisions(store, trust, name)[0]
    current = champion(history)
    if current is None:
        refuse(None, f"{name} has no signed champion decision to roll back from")
    assert current is not None
    named = current.facts.get("previous_champion") or {}
    if not named:
        refuse(current.model_sha256,
               f"champion {current.version} of {name} has no previous champion")  # fmt: skip
    previous = by_digest(history, str(named.get("attestation")))
    if previous is None or previous.decision != CHAMPION:
        refuse(current.model_sha256,
               f"the previous champion ({named.get('version')}) named by the current decision "
               "has no valid signed champion decision in the store; refusing to roll back to "
               "it")  # fmt: skip
    assert previous is not None
    verification = _verify(pipeline, name, previous.version, store, trust).verification
    if not verification.ok or verification.bundle_digest != previous.bundle_digest:
        refuse(verification.model_sha256,
               f"cannot roll back to version {previous.version}: "
               + ("; ".join(verification.problems)
                  or "its bundle is not the one the gate admitted"))  # fmt: skip
    approvals = _approvals(pipeline, verification, store, trust, refuse, name, previous.version)
    decision = issue(
        store, signer, pipeline=pipeline.name, name=name, version=previous.version,
        decision=CHAMPION, reason="rollback", model_sha256=str(verification.model_sha256),
        bundle_digest=str(verification.bundle_digest),
        security_policy_sha256=pipeline.policy.fingerprint(),
        inputs=[(previous.key, previous.sha256), *_inputs(verification, approvals)],
        previous_champion=current, audit_head=audit.latest_checkpoint(trust),
    )  # fmt: skip
    set_alias(name, CHAMPION, previous.version)
    tag_version(name, previous.version, "rolled_back_from", current.version)
    audit.append(
        "promotion.rollback",
        signer=signer,
        actor=actor,
        subject=verification.model_sha256,
        details={"name": name, "from": current.version, "to": previous.version,
                 "decision": decision.key},
    )  # fmt: skip
    return {
        "name": name,
        "from": current.version,
        "to": previous.version,
        "model_sha256": verification.model_sha256,
        "decision": decision.key,
    }


def alias_agrees(name: str, store: SnapshotStore, trust: TrustPolicy | None = None) -> str | None:
    """Why the champion alias disagrees with the signed champion decision, or None."""
    current = champion(decisions(store, trust or trust_policy(), name)[0])
    alias = alias_version(name, CHAMPION)
    if current is None and alias is None:
        return None
    if current is None:
        return f"the alias points to version {alias}, but {name} has no signed champion decision"
    if alias != current.version:
        return (
            f"the alias points to version {alias}, but the signed champion is version "
            f"{current.version}"
        )
    return None
