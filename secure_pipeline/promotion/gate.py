"""The promotion gate: verify again, count approvals, move aliases, audit every step.

Promotion never relies on checks having run in the same Dagster run: it downloads the version
back from the registry and re-verifies the signature, every file, the lineage (snapshots
re-hashed, every required verdict for this model digest in the audit trail) and today's
policy, then requires the policy's number of signed approvals. Only then does the version get
the ``challenger`` alias, and ``champion`` with the previous champion recorded for rollback.
"""

from typing import Any

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.promotion.approvals import verified_approvals
from secure_pipeline.registry.mlflow_registry import (
    alias_version,
    set_alias,
    tag_version,
    version_tags,
)
from secure_pipeline.registry.signing import trust_policy_from_environment
from secure_pipeline.registry.verification import Verification, resolve, verify_bundle_dir
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.snapshots import SnapshotStore

CHAMPION = "champion"
CHALLENGER = "challenger"


def verify_version(
    pipeline: SecurePipeline, name: str, version: str, store: SnapshotStore, audit: AuditLog
) -> Verification:
    """Download a registered version and verify everything about it, from those bytes."""
    trust = trust_policy_from_environment()
    tags = version_tags(name, version)
    with resolve(f"models:/{name}/{version}") as resolved:
        return verify_bundle_dir(
            resolved.directory,
            trust=trust,
            pipeline=pipeline,
            store=store,
            audit=audit,
            registry_tags=tags,
        )


def _refuse(audit: AuditLog, actor: str, run_id: str | None, subject: Any, why: str) -> None:
    audit.append(
        "promotion.refused", actor=actor, run_id=run_id, subject=subject, details={"reason": why}
    )
    raise PolicyViolation(why)


def promote(
    pipeline: SecurePipeline,
    name: str,
    version: str,
    *,
    store: SnapshotStore,
    audit: AuditLog,
    actor: str,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Promote a registered version to challenger, then champion, if the gate holds.

    Returns:
        What happened: version, model digest, approvals, previous champion.

    Raises:
        PolicyViolation: When verification fails or approvals are missing (audited).
    """
    verification = verify_version(pipeline, name, version, store, audit)
    subject = verification.model_sha256
    if not verification.ok:
        _refuse(audit, actor, run_id, subject,
                f"version {version} of {name} failed verification: "
                + "; ".join(verification.problems))  # fmt: skip
    audit.append(
        "promotion.verified",
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"name": name, "version": version, "signer": verification.signer},
    )
    trust = trust_policy_from_environment()
    approvals, problems = verified_approvals(store, str(subject), trust)
    needed = pipeline.policy.approvals_required
    if len(approvals) < needed:
        _refuse(audit, actor, run_id, subject,
                f"version {version} of {name} needs {needed} signed approval(s) from approvers "
                f"of the trust policy, has {len(approvals)}"
                + (f" ({'; '.join(problems)})" if problems else "")
                + ". Approve with: secure-pipeline approve models:/"
                + f"{name}/{version} --key <approver key> --approver <name>")  # fmt: skip
    previous = alias_version(name, CHAMPION)
    set_alias(name, CHALLENGER, version)
    audit.append(
        "promotion.challenger",
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"name": name, "version": version, "approvals": [a.approver for a in approvals]},
    )
    if previous != version:
        set_alias(name, CHAMPION, version)
        if previous is not None:
            tag_version(name, version, "previous_champion", previous)
        audit.append(
            "promotion.champion",
            actor=actor,
            run_id=run_id,
            subject=subject,
            details={"name": name, "version": version, "previous_champion": previous},
        )
    return {
        "name": name,
        "version": version,
        "model_sha256": subject,
        "bundle_digest": verification.bundle_digest,
        "signer": verification.signer,
        "approvals": [a.approver for a in approvals],
        "previous_champion": previous,
        "champion": version,
    }


def rollback(
    pipeline: SecurePipeline, name: str, *, store: SnapshotStore, audit: AuditLog, actor: str
) -> dict[str, Any]:
    """Point ``champion`` back at the previous champion, after verifying it again.

    Raises:
        PolicyViolation: When there is nothing to roll back to, or the previous champion no
            longer verifies (e.g. today's policy is stricter than the one it was judged by).
    """
    current = alias_version(name, CHAMPION)
    if current is None:
        _refuse(audit, actor, None, None, f"{name} has no champion to roll back from")
    previous = version_tags(name, str(current)).get("previous_champion")
    if previous is None:
        _refuse(audit, actor, None, None, f"champion {current} of {name} has no previous champion")
    verification = verify_version(pipeline, name, str(previous), store, audit)
    if not verification.ok:
        why = f"cannot roll back to version {previous}: " + "; ".join(verification.problems)
        _refuse(audit, actor, None, verification.model_sha256, why)
    set_alias(name, CHAMPION, str(previous))
    tag_version(name, str(previous), "rolled_back_from", str(current))
    audit.append(
        "promotion.rollback",
        actor=actor,
        subject=verification.model_sha256,
        details={"name": name, "from": current, "to": previous},
    )
    return {
        "name": name,
        "from": current,
        "to": previous,
        "model_sha256": verification.model_sha256,
    }
