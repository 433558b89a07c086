"""Automatic recovery: back to the previous champion when a live check failed on the current one.

The trigger is evidence, not an alarm: a verdict of a blocking live check (``live_input_drift``,
``live_score_drift``, ``live_error_rate``, ``live_performance``, ``live_fairness``) that failed
with ERROR severity, signed by the ``monitor`` identity, about the live window given, and naming
the current champion's model digest as the model judged. Anything else is refused (audited): a
forged or unsigned verdict, one about another pipeline, a warning, or a failure of a model that
is no longer champion (so a second trigger for the same window changes nothing).

Recovery is the same verified rollback as ``secure-pipeline rollback``
(`secure_pipeline.promotion.gate.rollback`: the previous champion named by the current signed
decision, verified again under today's policy with today's approvals, a new signed champion
decision), then, with a serving deployment, the traffic: all of it to the slot serving the
previous champion when that slot still runs it (the blue-green release keeps the old slot
running), else the idle slot is started on it, verifies it and takes the traffic once ready.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_pipeline.errors import PolicyViolation, SignatureError
from secure_pipeline.names import LIVE_CHECKS
from secure_pipeline.registry.decisions import champion, decisions
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.snapshots import SnapshotStore
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE, MONITOR
from secure_pipeline.trust.policy import TrustPolicy

# The verdicts of a live window are stored under the window manifest's digest.
_VERDICTS = "verdicts"
_REASON_CHARS = 900


@dataclass(frozen=True)
class FailedLiveCheck:
    """A verified, failed, blocking live check about the champion.

    Attributes:
        check: The check's name.
        key: Where its signed verdict is stored.
        model_sha256: The model it judged.
        version: That model's registry version.
        metrics: The key figures it signed.
    """

    check: str
    key: str
    model_sha256: str
    version: str
    metrics: Mapping[str, Any]


@dataclass
class RecoveryOutcome:
    """What a recovery did.

    Attributes:
        name: The registered model.
        rolled_back_from: The version that failed its live checks.
        restored: The previous champion, champion again.
        model_sha256: Its model digest.
        decision: The key of the new signed champion decision.
        failed: The failed live checks that triggered it.
        slot: The slot now taking all the traffic (None without a serving deployment).
        seconds: How long the recovery took (verification, decision, traffic).
    """

    name: str
    rolled_back_from: str
    restored: str
    model_sha256: str
    decision: str
    failed: list[FailedLiveCheck] = field(default_factory=list)
    slot: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON form for run metadata."""
        return {
            "name": self.name,
            "rolled_back_from": self.rolled_back_from,
            "restored": self.restored,
            "model_sha256": self.model_sha256,
            "decision": self.decision,
            "failed_checks": [f.check for f in self.failed],
            "slot": self.slot,
            "seconds": round(self.seconds, 3),
        }


def failed_live_checks(
    store: SnapshotStore, trust: TrustPolicy, pipeline: PipelineSpec, window_sha256: str
) -> tuple[list[FailedLiveCheck], list[str]]:
    """The verified failed blocking live checks of one live window, and what was refused.

    Only verdicts signed by the ``monitor`` identity about this pipeline's ``live_traffic``
    count; an envelope that does not verify is listed as refused, never counted.
    """
    from secure_pipeline.trust.attestations import VERDICT_TYPE

    asset = pipeline.names.live_traffic.to_user_string()
    failed: list[FailedLiveCheck] = []
    refused: list[str] = []
    for key, data in attestations.stored_envelopes(store, _VERDICTS, window_sha256):
        try:
            verdict = attestations.open_envelope(
                data, trust, identities=[MONITOR], predicate_type=VERDICT_TYPE,
                what=f"live verdict {key}",
            )  # fmt: skip
        except SignatureError as exc:
            refused.append(f"{key}: {exc}")
            continue
        predicate = verdict.predicate
        if verdict.subjects.get(asset) != window_sha256:
            refused.append(f"{key}: it is not about live window {window_sha256} of {asset}")
            continue
        if (
            predicate.get("pipeline") != pipeline.name
            or predicate.get("check") not in LIVE_CHECKS
            or predicate.get("passed") is not False
            or predicate.get("severity") != "ERROR"
        ):
            continue
        metrics = dict(predicate.get("metrics") or {})
        failed.append(
            FailedLiveCheck(
                check=str(predicate["check"]),
                key=key,
                model_sha256=str(metrics.get("model_sha256", "")),
                version=str(metrics.get("champion_version", "")),
                metrics=metrics,
            )  # fmt: skip
        )
    return failed, refused


def recover(
    pipeline: PipelineSpec,
    *,
    store: SnapshotStore,
    audit: AuditLog,
    trust: TrustPolicy,
    window_sha256: str,
    actor: str,
    run_id: str | None = None,
    serving_dir: Path | None = None,
    clock: Any = time.monotonic,
) -> RecoveryOutcome:
    """Roll the champion back after a failed live check, verified, signed, audited.

    Args:
        pipeline: The spec (its name is the registered model).
        store: The snapshot store (evidence, decisions, audit trail).
        audit: The audit trail.
        trust: The trust policy.
        window_sha256: The live window whose checks failed (the ``live_traffic`` data version).
        actor: Who asks (the rollback job's op, a person).
        run_id: The Dagster run, if any.
        serving_dir: The serving deployment whose traffic moves (None: decisions only).
        clock: Monotonic clock (for the recovery's duration).

    Raises:
        PolicyViolation: When no verified failed live verdict about the current champion exists
            for this window, or the previous champion does not verify (audited; nothing
            changed).
    """
    from secure_pipeline.promotion.gate import rollback
    from secure_pipeline.trust.signers import signer_for

    started = clock()
    name = pipeline.name
    signer = signer_for(GATE)
    failed, refused = failed_live_checks(store, trust, pipeline, window_sha256)
    current = champion(decisions(store, trust, name)[0])

    def refuse(reason: str, subject: str | None) -> None:
        audit.append("promotion.refused", signer=signer, actor=actor, run_id=run_id,
                     subject=subject,
                     details={"name": name, "window": window_sha256,
                              "reason": reason[:_REASON_CHARS]})  # fmt: skip
        raise PolicyViolation(reason)

    if current is None:
        refuse(f"{name} has no signed champion decision: there is nothing to roll back", None)
    assert current is not None
    about_champion = [f for f in failed if f.model_sha256 == current.model_sha256]
    if not about_champion:
        seen = (
            f"failed verdicts judged {sorted({f.model_sha256[:12] for f in failed})}"
            if failed
            else "no failed blocking live verdict signed by the monitor identity"
        )
        extra = f"; refused: {'; '.join(refused)}" if refused else ""
        refuse(
            f"live window {window_sha256[:12]} of {name} gives no reason to roll back champion "
            f"{current.version} ({current.model_sha256[:12]}): {seen}{extra}. Automatic "
            "recovery acts only on a signed failed live check of the current champion",
            current.model_sha256,
        )
    outcome = rollback(pipeline, name, store=store, audit=audit, actor=actor)
    result = RecoveryOutcome(
        name=name, rolled_back_from=str(outcome["from"]), restored=str(outcome["to"]),
        model_sha256=str(outcome["model_sha256"]), decision=str(outcome["decision"]),
        failed=about_champion,
    )  # fmt: skip
    if serving_dir is not None:
        from secure_pipeline.promotion.bluegreen import BlueGreen

        result.slot = BlueGreen(serving_dir, pipeline).restore(
            result.restored, result.model_sha256, audit=audit, actor=actor, run_id=run_id
        )
    result.seconds = clock() - started
    audit.append(
        "serving.rolled_back",
        signer=signer,
        actor=actor,
        run_id=run_id,
        subject=result.model_sha256,
        details={
            "name": name, "from": result.rolled_back_from, "to": result.restored,
            "window": window_sha256, "checks": [f.check for f in about_champion],
            "verdicts": [f.key for f in about_champion], "slot": result.slot,
            "decision": result.decision, "seconds": round(result.seconds, 3),
        },
    )  # fmt: skip
    return result
