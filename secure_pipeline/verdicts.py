"""Check verdicts: every gate's decision becomes an audit record and a Dagster check result.

A verdict is recorded before it is returned, so the audit trail holds every decision a gate
made, including the failures that stopped a run. The record names the digest of the snapshot
that was judged; the check result carries the record's ``seq:hash`` as an anchor.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from secure_pipeline.storage.io_manager import AUDIT_RECORD, SHA256
from secure_pipeline.storage.resources import SnapshotStoreResource


def judged_digest(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> str | None:
    """Digest of the latest materialization of ``asset_key``: what a check evaluates."""
    record = instance.get_latest_materialization_event(asset_key)
    if record is None or record.asset_materialization is None:
        return None
    entry = record.asset_materialization.metadata.get(SHA256)
    return str(entry.value) if entry is not None else None


def verdict(
    store: SnapshotStoreResource,
    *,
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
    """Record a check's decision in the audit trail and build its Dagster result.

    Args:
        store: The snapshot store resource (holds the audit trail).
        run_id: The run that evaluated the check.
        asset_key: The asset checked.
        check_name: The check's name.
        passed: Whether the check passed.
        severity: ERROR blocks downstream assets (for blocking checks); WARN only reports.
        subject: Digest of what was judged.
        summary: A few numbers for the audit record (no row values).
        metadata: Check metadata for the UI.
        description: Optional one-line explanation shown with the result.

    Returns:
        The check result, with the audit anchor in its metadata.
    """
    record = store.get_audit_log().append(
        "check.evaluated",
        actor=f"check:{asset_key.to_user_string()}:{check_name}",
        run_id=run_id,
        subject=subject,
        details={
            "asset": asset_key.to_user_string(),
            "check": check_name,
            "passed": passed,
            "severity": severity.value,
            **summary,
        },
    )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=severity,
        description=description,
        metadata={**metadata, AUDIT_RECORD: f"{record.seq}:{record.hash}"},
    )
