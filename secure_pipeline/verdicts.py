"""Check verdicts: each gate's decision is a signed attestation, an audit record, a check result.

A verdict is an in-toto statement signed by the identity of the stage that judged (``ingest``
for the data checks, ``train`` for the model gates, ``release`` for ``signature_verifies``):
subject the digest judged, predicate the check, asset, outcome, severity, key figures, the
policy fingerprint it was judged under, the trust policy's digest, the code version and the run.
It is stored create-only under ``attestations/verdicts/<digest>/`` before the result is
returned, so the store holds every decision a gate made, including the failures that stopped a
run. Registration accepts a model only on such signed verdicts; the Dagster check result and the
audit record are for people and for the UI, and carry the record's ``seq:hash`` as an anchor.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.storage.io_manager import AUDIT_RECORD, SHA256
from secure_pipeline.storage.resources import SnapshotStoreResource

if TYPE_CHECKING:
    from secure_pipeline.spec import PipelineSpec

VERDICTS = "verdicts"
ATTESTATION = "attestation"


def judged_digest(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> str | None:
    """Digest of the latest materialization of ``asset_key``: what a check evaluates."""
    record = instance.get_latest_materialization_event(asset_key)
    if record is None or record.asset_materialization is None:
        return None
    entry = record.asset_materialization.metadata.get(SHA256)
    return str(entry.value) if entry is not None else None


def verdict_statement(
    pipeline: "PipelineSpec",
    *,
    asset: str,
    check: str,
    subject: str,
    passed: bool,
    severity: str,
    summary: Mapping[str, Any],
    run_id: str,
    trust_digest: str,
) -> dict[str, Any]:
    """The in-toto statement of one verdict."""
    from secure_pipeline.storage.snapshots import utc_now
    from secure_pipeline.trust.attestations import VERDICT_TYPE, statement

    return statement(
        {asset: subject},
        VERDICT_TYPE,
        {
            "pipeline": pipeline.name,
            "asset": asset,
            "check": check,
            "passed": passed,
            "severity": severity,
            "metrics": dict(summary),
            "policy_sha256": pipeline.policy.fingerprint(),
            "trust_policy_sha256": trust_digest,
            "code_version": pipeline.code_version,
            "run_id": run_id,
            "evaluated_at": utc_now(),
        },
    )


def verdict(
    store: SnapshotStoreResource,
    *,
    pipeline: "PipelineSpec",
    identity: str,
    run_id: str,
    asset_key: dg.AssetKey,
    check_name: str,
    passed: bool,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    subject: str | None,
    summary: Mapping[str, Any],
    metadata: Mapping[str, Any],
    description: str | None = None,
) -> dg.AssetCheckResult:
    """Sign a check's decision, store it, audit it, and build its Dagster result.

    Args:
        store: The snapshot store resource (holds attestations and the audit trail).
        pipeline: The spec whose policy the check applied.
        identity: The stage identity that judges this check.
        run_id: The run that evaluated the check.
        asset_key: The asset checked.
        check_name: The check's name.
        passed: Whether the check passed.
        severity: ERROR blocks downstream assets (for blocking checks); WARN only reports.
        subject: Digest of what was judged (None when there was nothing to judge: then there is
            no attestation, since a verdict about nothing can admit nothing).
        summary: A few numbers for the attestation and audit record (no row values).
        metadata: Check metadata for the UI.
        description: Optional one-line explanation shown with the result.

    Returns:
        The check result, with the attestation's key and the audit anchor in its metadata.
    """
    from secure_pipeline.trust import attestations
    from secure_pipeline.trust.signers import signer_for

    signer = signer_for(identity)
    asset = asset_key.to_user_string()
    details: dict[str, Any] = {
        "asset": asset,
        "check": check_name,
        "passed": passed,
        "severity": severity.value,
        **summary,
    }
    extra: dict[str, Any] = {}
    if subject is not None:
        document = verdict_statement(
            pipeline, asset=asset, check=check_name, subject=subject, passed=passed,
            severity=severity.value, summary=summary, run_id=run_id,
            trust_digest=signer.policy_digest,
        )  # fmt: skip
        envelope = attestations.sign(document, signer)
        key = attestations.store_envelope(store.get_store(), VERDICTS, subject, envelope)
        details[ATTESTATION] = key
        extra[ATTESTATION] = key
    record = store.get_audit_log().append(
        "check.evaluated",
        signer=signer,
        actor=f"check:{asset}:{check_name}",
        run_id=run_id,
        subject=subject,
        details=details,
    )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=severity,
        description=description,
        metadata={
            **metadata,
            **extra,
            "signed_by": identity,
            AUDIT_RECORD: f"{record.seq}:{record.hash}",
        },
    )
