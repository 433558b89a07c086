"""The promotion gate: verify again, count approvals, move aliases, audit every step.

Promotion never relies on checks having run in the same Dagster run: it downloads the version
back from the registry and re-verifies the signature, every file, the lineage (snapshots
re-hashed, every required verdict for this model digest in the audit trail) and today's
policy, then requires the policy's number of signed approvals. Only then does the version get
the ``challenger`` alias, and ``champion`` with the previous champion recorded for rollback.
"""

import hashlib
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
# Characters of a refusal reason kept in its audit record (the record limit is 1024).
_REASON_CHARS = 900


def verify_version(
    pipeline: SecurePipeline | None,
    name: str,
    version: str,
    store: SnapshotStore,
    audit: AuditLog,
) -> Verification:
    """Download a registered version and verify everything about it, from those bytes.

    Args:
        pipeline: Today's spec; None skips only the today's-policy step.
        name: Registered model name.
        version: Version.
        store: The snapshot store.
        audit: The audit trail.
    """
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


def champion_lineage(
    pipeline: SecurePipeline, store: SnapshotStore, audit: AuditLog
) -> tuple[str, dict[str, Any]] | None:
    """The current champion's version and verified lineage, or None when there is none.

    The lineage comes from the champion's bundle, downloaded and verified (signature, files,
    lineage snapshots and verdicts); today's policy is not required, since the lineage is only
    read, not acted on.

    Raises:
        PolicyViolation: When the champion does not verify.
    """
    version = alias_version(pipeline.name, CHAMPION)
    if version is None:
        return None
    verification = verify_version(None, pipeline.name, version, store, audit)
    if not verification.ok or verification.lineage is None:
        raise PolicyViolation(
            f"champion version {version} of {pipeline.name} does not verify: "
            + "; ".join(verification.problems)
        )
    return version, verification.lineage


def _approvals(
    pipeline: SecurePipeline,
    verification: Verification,
    store: SnapshotStore,
    audit: AuditLog,
    actor: str,
    run_id: str | None,
    name: str,
    version: str,
) -> list[Any]:
    """The verified approvals of a bundle; refuses (audited) when fewer than the policy needs."""
    subject = str(verification.model_sha256)
    approvals, problems = verified_approvals(
        store, subject, trust_policy_from_environment(), str(verification.bundle_digest)
    )
    needed = pipeline.policy.approvals_required
    if len(approvals) < needed:
        _refuse(audit, actor, run_id, subject,
                f"version {version} of {name} needs {needed} signed approval(s) from approvers "
                f"of the trust policy, has {len(approvals)}"
                + (f" ({'; '.join(problems)})" if problems else "")
                + f". Approve with: secure-pipeline approve models:/{name}/{version} "
                "--key <approver key> --approver <name>")  # fmt: skip
    return approvals


def _refuse(audit: AuditLog, actor: str, run_id: str | None, subject: Any, why: str) -> None:
    # A reason listing many problems can exceed the audit record's string limit; the record
    # keeps its start and the digest of the whole text, the exception carries all of it.
    recorded = why if len(why) <= _REASON_CHARS else why[: _REASON_CHARS - 1] + "…"
    audit.append(
        "promotion.refused",
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"reason": recorded, "reason_sha256": hashlib.sha256(why.encode()).hexdigest()},
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
    crown: bool = True,
) -> dict[str, Any]:
    """Promote a registered version to challenger, then champion, if the gate holds.

    With ``crown=False`` the version becomes only the challenger: a blue-green release makes it
    champion after its canary passed (`secure_pipeline.promotion.bluegreen`).

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
    approvals = _approvals(pipeline, verification, store, audit, actor, run_id, name, version)
    previous = alias_version(name, CHAMPION)
    set_alias(name, CHALLENGER, version)
    audit.append(
        "promotion.challenger",
        actor=actor,
        run_id=run_id,
        subject=subject,
        details={"name": name, "version": version, "approvals": [a.approver for a in approvals]},
    )
    if crown:
        make_champion(name, version, str(subject), audit=audit, actor=actor, run_id=run_id)
    return {
        "name": name,
        "version": version,
        "model_sha256": subject,
        "bundle_digest": verification.bundle_digest,
        "signer": verification.signer,
        "approvals": [a.approver for a in approvals],
        "previous_champion": previous,
        "champion": version if crown else previous,
    }


def make_champion(
    name: str, version: str, subject: str, *, audit: AuditLog, actor: str, run_id: str | None
) -> str | None:
    """Point ``champion`` at a version that passed the gate, recording the previous one.

    Returns:
        The previous champion (None when there was none).
    """
    previous = alias_version(name, CHAMPION)
    if previous == version:
        return previous
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
    return previous


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
    # The registry's tag only suggests the target: it must have been champion through this gate
    # (the audit trail says so, for this digest), and it needs today's approvals.
    was_champion = any(
        record.event == "promotion.champion"
        and record.subject == verification.model_sha256
        and str(record.details.get("version")) == str(previous)
        and record.details.get("name") == name
        for record in audit.verified_records()
    )
    if not was_champion:
        _refuse(audit, actor, None, verification.model_sha256,
                f"version {previous} of {name} was never promoted to champion through the gate "
                "(no promotion.champion audit record for its digest); refusing to roll back "
                "to it")  # fmt: skip
    _approvals(pipeline, verification, store, audit, actor, None, name, str(previous))
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
