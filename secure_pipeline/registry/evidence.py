"""The chain of evidence of a model, verified at every use.

One sequence, `verify_reference`, used by ``secure-pipeline verify`` and ``evidence``, the model
server, blue-green releases, the gate (promotion, crowning, rollback) and the drift check:
resolve the reference, verify the bundle (release signature, every file, no pickle, the signed
verdicts in its lineage), the release identity's signed registration of exactly this bundle as
this version, that the privacy identity has not flagged the model as trained on erased or expired
data (``privacy.erased_data_models``: refuse, or pass with a warning), and — when a promotion is
required — the gate's signed decision admitting it, the approvals that decision cites, and the
audit trail's signed checkpoint at the moment of the decision. Nothing here reads a registry tag
or alias as evidence: an alias that disagrees with the signed champion decision is refused.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from secure_pipeline.errors import PolicyViolation, SignatureError
from secure_pipeline.names import CHAMPION
from secure_pipeline.registry.approvals import Approval, open_approval
from secure_pipeline.registry.bundle import signed_verdicts
from secure_pipeline.registry.decisions import Decision, champion, decisions, for_version
from secure_pipeline.registry.verification import (
    ERASED_STEP,
    Resolved,
    Verification,
    resolve,
    verify_bundle_dir,
    verify_registered,
)
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.snapshots import SnapshotStore, sha256_hex
from secure_pipeline.trust.identities import APPROVER_PREFIX
from secure_pipeline.trust.policy import TrustPolicy

Requirement = Literal["promoted", "champion"] | None


@dataclass
class Evidence:
    """A model reference and everything established about it.

    Attributes:
        resolved: The reference, resolved (its directory exists while the context is open).
        verification: The bundle and registration verification, with every step.
        decision: The gate's decision admitting it, when one was required (or found).
        approvals: The approvals that decision cites, verified.
        checkpoint: The audit trail's latest signed checkpoint ``(count, head)``.
    """

    resolved: Resolved
    verification: Verification
    decision: Decision | None = None
    approvals: list[Approval] = field(default_factory=list)
    checkpoint: tuple[int, str] | None = None

    @property
    def ok(self) -> bool:
        """Whether every step passed."""
        return self.verification.ok

    @property
    def problems(self) -> list[str]:
        """Each failed step's detail."""
        return self.verification.problems

    def report(self) -> str:
        """One line per step."""
        return self.verification.report()

    def fail(self, step: str, detail: str) -> None:
        """Record a failed step."""
        self.verification.steps.append((step, False, detail))

    def passed(self, step: str, detail: str) -> None:
        """Record a passed step."""
        self.verification.steps.append((step, True, detail))


@contextmanager
def verify_reference(
    reference: str,
    *,
    pipeline: PipelineSpec | None,
    trust: TrustPolicy,
    store: SnapshotStore | None,
    require: Requirement = None,
) -> Iterator[Evidence]:
    """Resolve and verify a model reference with its whole chain of evidence.

    ``models:/name@champion`` always requires the champion decision (and that the alias agrees
    with it); ``models:/name@challenger`` a gate decision.

    Args:
        reference: ``models:/name@alias``, ``models:/name/N``, ``oci://host/repo@sha256:...``
            (or ``:tag``) or a bundle directory.
        pipeline: Today's spec (today's policy and approvals apply); None skips only the
            today's-policy step and cannot be combined with a required promotion.
        trust: The trust policy.
        store: The snapshot store; None verifies the bundle alone, offline (and then no
            promotion can be required).
        require: ``promoted`` (a gate decision for exactly this version and bundle) or
            ``champion`` (the latest champion decision is this version).

    Yields:
        The evidence; the bundle directory exists until the context exits. Failed steps are
        recorded, never raised.
    """
    with resolve(reference, trust) as resolved:
        if resolved.oci is not None:
            from secure_pipeline.registry.oci import check_artifact

            evidence = Evidence(
                resolved,
                verify_bundle_dir(resolved.directory, trust=trust, pipeline=pipeline, store=store),
            )
            check_artifact(evidence, pipeline=pipeline, trust=trust, store=store, require=require)
            if pipeline is not None and store is not None and evidence.verification.model_sha256:
                _check_erased_data(evidence, pipeline, trust, store)
            yield evidence
            return
        if resolved.alias == CHAMPION:
            require = CHAMPION
        elif resolved.alias is not None and require is None:
            require = "promoted"
        if resolved.name and resolved.version and store is not None:
            verification = verify_registered(
                resolved.directory, trust=trust, pipeline=pipeline, store=store,
                name=resolved.name, version=resolved.version, source=str(resolved.source),
            )  # fmt: skip
        else:
            verification = verify_bundle_dir(
                resolved.directory, trust=trust, pipeline=pipeline, store=store
            )
        evidence = Evidence(resolved, verification)
        if pipeline is not None and store is not None and verification.model_sha256:
            _check_erased_data(evidence, pipeline, trust, store)
        if require is not None and verification.bundle_digest is not None:
            if pipeline is None:
                evidence.fail(
                    "promotion", "a promotion decision is checked against today's policy: no spec"
                )
            elif store is None:
                evidence.fail(
                    "promotion", "a promotion decision cannot be checked offline (no store)"
                )
            else:
                check_promotion(evidence, pipeline, trust, store, require)
        yield evidence


def _check_erased_data(
    evidence: Evidence, pipeline: PipelineSpec, trust: TrustPolicy, store: SnapshotStore
) -> None:
    """Refuse (or warn about) a model the privacy identity flagged as trained on erased data.

    Only flags signed by the privacy identity count: one that does not verify is ignored (and
    said so), so junk written into the store neither blocks a good model nor hides a flag.
    """
    from secure_pipeline.privacy.flags import describe_flags, scan_flags

    model_sha256 = str(evidence.verification.model_sha256)
    scan = scan_flags(store, trust, pipeline.name, model_sha256)
    ignored = (
        f" ({len(scan.ignored)} stored flag(s) did not verify and were ignored: "
        f"{'; '.join(scan.ignored[:3])})"
        if scan.ignored
        else ""
    )
    if not scan.flags:
        evidence.passed(
            "erased data", f"no signed flag: not trained on erased or expired data{ignored}"
        )
        return
    versions = sorted({str(v) for f in scan.flags for v in f.predicate.get("versions", [])})
    which = f" (version {', '.join(versions)})" if versions else ""
    detail = (
        f"model {model_sha256[:12]}{which} was trained on data erased on "
        f"{describe_flags(scan.flags)}, signed by the {scan.flags[0].identity} identity: "
        "retrain it on the current data (later ingestions exclude erased subjects) and "
        f"promote the new version{ignored}"
    )
    if pipeline.privacy.erased_data_models == "warn":
        evidence.passed("erased data", f"warning: {detail}")
    else:
        evidence.fail("erased data", detail)


def check_promotion(
    evidence: Evidence,
    pipeline: PipelineSpec,
    trust: TrustPolicy,
    store: SnapshotStore,
    require: str,
) -> None:
    """Find in the store the gate's decision ``require`` calls for, and check it.

    Then its approvals and the audit checkpoint; failed steps are recorded on ``evidence``.
    """
    resolved, verification = evidence.resolved, evidence.verification
    name = resolved.name or pipeline.name
    history, rejected = decisions(store, trust, name)
    ignored = (
        f" ({rejected} stored decision(s) did not verify and were ignored)" if rejected else ""
    )
    if require == CHAMPION:
        current = champion(history)
        if current is None:
            evidence.fail("promotion", f"{name} has no signed champion decision{ignored}")
            return
        if resolved.version is not None and current.version != resolved.version:
            evidence.fail(
                "promotion",
                f"the alias points to version {resolved.version}, but the latest signed champion "
                f"decision is version {current.version} ({current.sha256[:12]}): the alias was "
                "moved outside the gate; refusing it",
            )
            return
        decision = current
    else:
        version = resolved.version
        candidates = (
            [d for d in history if d.bundle_digest == verification.bundle_digest]
            if version is None
            else history
        )
        decision = (
            for_version(candidates, version, str(verification.bundle_digest))
            if version is not None
            else (candidates[-1] if candidates else None)
        )
        if decision is None:
            which = version or f"(bundle {str(verification.bundle_digest)[:12]})"
            evidence.fail(
                "promotion",
                f"{name} version {which} was never admitted by the gate: no signed promotion "
                f"decision for this bundle{ignored}",
            )
            return
    evidence.decision = decision
    check_decision(evidence, pipeline, trust, store)


def check_decision(
    evidence: Evidence, pipeline: PipelineSpec, trust: TrustPolicy, store: SnapshotStore
) -> None:
    """Check a decision against the verified bundle, its approvals and the audit checkpoint."""
    decision, verification = evidence.decision, evidence.verification
    assert decision is not None
    mismatched = []
    if decision.model_sha256 != verification.model_sha256:
        mismatched.append("model digest")
    if decision.bundle_digest != verification.bundle_digest:
        mismatched.append("bundle digest")
    if verification.version is not None and decision.version != verification.version:
        mismatched.append("version")
    registration = verification.registration
    cited = {i.get("digest", {}).get("sha256") for i in decision.inputs("attestations/regis")}
    if registration is not None and registration.sha256 not in cited:
        mismatched.append("registration")
    if mismatched:
        evidence.fail(
            "promotion",
            f"the {decision.describe()} is about another {', '.join(mismatched)} than this bundle",
        )
        return
    evidence.passed("promotion", decision.describe())
    _check_approvals(evidence, pipeline, trust, store)
    _check_checkpoint(evidence, trust, store)


def _check_approvals(
    evidence: Evidence, pipeline: PipelineSpec, trust: TrustPolicy, store: SnapshotStore
) -> None:
    def read(key: str, digest: str | None) -> tuple[bytes | None, str | None]:
        try:
            data = store.read_object(key)
        except FileNotFoundError:
            return None, f"cited approval {key} is not in the store"
        if sha256_hex(data) != digest:
            return None, f"cited approval {key} is not the one the decision cites"
        return data, None

    tally_approvals(evidence, pipeline, trust, read)


def tally_approvals(
    evidence: Evidence,
    pipeline: PipelineSpec,
    trust: TrustPolicy,
    read: Callable[[str, str | None], tuple[bytes | None, str | None]],
) -> None:
    """Count the approvals the decision cites and record the ``approvals`` step.

    Args:
        evidence: The evidence, with its decision.
        pipeline: Today's spec (how many approvals are required).
        trust: Today's trust policy (who is an approver).
        read: ``(uri, sha256)`` of a cited approval -> its envelope, or None and why it is
            missing or not the one cited (tampering: the step fails).
    """
    decision = evidence.decision
    assert decision is not None
    # A cited approval that is gone or altered is tampering; one that no longer verifies under
    # today's policy (its approver was removed) only stops counting.
    tampered: list[str] = []
    uncounted: list[str] = []
    for cited in decision.inputs("approvals/"):
        key, digest = str(cited.get("uri")), cited.get("digest", {}).get("sha256")
        data, problem = read(key, digest)
        if data is None:
            tampered.append(str(problem))
            continue
        try:
            attestation = open_approval(
                data, trust, model_sha256=str(decision.model_sha256),
                bundle_digest=str(decision.bundle_digest), where=key,
            )  # fmt: skip
        except SignatureError as exc:
            uncounted.append(str(exc))
            continue
        name = attestation.identity[len(APPROVER_PREFIX) :]
        if all(a.approver != name for a in evidence.approvals):
            evidence.approvals.append(
                Approval(name, attestation.keyid, str(attestation.predicate.get("reason", "")),
                         str(attestation.predicate.get("created_at")), key, attestation.sha256)
            )  # fmt: skip
    needed = pipeline.policy.approvals_required
    count = len(evidence.approvals)
    if count < needed or tampered:
        evidence.fail(
            "approvals",
            f"{needed} signed approval(s) by approvers of today's trust policy are required, "
            f"the decision cites {count} that verify"
            + (f" ({'; '.join(tampered + uncounted)})" if tampered or uncounted else ""),
        )
    else:
        names = ", ".join(a.approver for a in evidence.approvals) or "none"
        note = f"; {len(uncounted)} cited no longer count" if uncounted else ""
        evidence.passed("approvals", f"{count} of {needed} required: {names}{note}")


def _check_checkpoint(evidence: Evidence, trust: TrustPolicy, store: SnapshotStore) -> None:
    """The trail still holds, at the decision's point, what the gate saw (a constant-time read)."""
    from secure_pipeline.errors import AuditChainError

    decision = evidence.decision
    assert decision is not None
    head = decision.facts.get("audit_head") or {}
    audit = AuditLog(store)
    try:
        checkpoint = audit.latest_checkpoint(trust)
        count, digest = int(head.get("count", 0)), str(head.get("hash", ""))
        if checkpoint is None or checkpoint[0] < count:
            raise AuditChainError(
                f"the decision was made at audit record {count}, but the trail's latest signed "
                f"checkpoint is {checkpoint[0] if checkpoint else 'missing'}: records were removed"
            )
        record = audit.record(count, trust) if count else None
        if record is not None and record.hash != digest:
            raise AuditChainError(
                f"audit record {count} no longer has the hash the decision recorded: the trail "
                "was rewritten"
            )
    except AuditChainError as exc:
        evidence.fail("audit checkpoint", str(exc))
        return
    evidence.checkpoint = checkpoint
    evidence.passed(
        "audit checkpoint",
        f"signed checkpoint at record {checkpoint[0]}; the decision's record {count} is intact",
    )


def champion_lineage(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy
) -> tuple[str, dict[str, Any]] | None:
    """The current champion's version and verified lineage, or None when there is none.

    The champion is the latest signed champion decision (not the alias); its bundle is
    downloaded and verified. Today's policy is not required: the lineage is only read.

    Raises:
        PolicyViolation: When the champion does not verify.
    """
    name = pipeline.names.model_name
    current = champion(decisions(store, trust, name)[0])
    if current is None:
        return None
    with verify_reference(
        f"models:/{name}/{current.version}", pipeline=None, trust=trust, store=store
    ) as evidence:
        verification = evidence.verification
    # Data the champion was trained on may since have been erased: its signed lineage still
    # says which snapshots those were (the caller learns they are gone when it reads them).
    failed = [step for step, ok, _detail in verification.steps if not ok]
    if (
        any(step != ERASED_STEP for step in failed)
        or verification.lineage is None
        or verification.bundle_digest != current.bundle_digest
    ):
        raise PolicyViolation(
            f"champion version {current.version} of {name} does not verify: "
            + ("; ".join(verification.problems) or "its bundle is not the one the gate admitted")
        )
    return current.version, verification.lineage


def champion_verdict(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy, *, stage: str, check: str
) -> tuple[str, dict[str, Any]] | None:
    """The signed verdict of ``check`` on the champion's ``stage`` snapshot.

    The verdict is the very attestation the champion's verified lineage names (by digest), read
    from the store and verified as signed by the identity that judges ``stage``.

    Returns:
        The champion's version and the verdict's predicate; None when there is no champion or
        its lineage holds no such verdict (a champion from before the check existed).

    Raises:
        PolicyViolation: When the champion does not verify, or the attestation its lineage
            names is not in the store as a verified verdict.
    """
    found = champion_lineage(pipeline, store, trust)
    if found is None:
        return None
    version, lineage = found
    entry = next(
        (c for c in lineage.get("checks", []) if c["stage"] == stage and c["check"] == check),
        None,
    )
    if entry is None:
        return None
    verdicts, _ = signed_verdicts(
        store, trust, stage=stage, asset=entry["asset"], digest=entry["subject"]
    )
    named = next((v for v in verdicts if v.sha256 == entry["attestation_sha256"]), None)
    if named is None:
        raise PolicyViolation(
            f"the {check} verdict champion version {version} was admitted with "
            f"({str(entry['attestation_sha256'])[:12]}) is not in the store as a verified "
            "verdict: the store's evidence does not match the champion's lineage"
        )
    return version, dict(named.predicate)
