"""Signed models in OCI registries: push with their evidence, verify by digest, mirror.

A registry is one more place anyone with write access can change: a tag can be moved, a manifest
re-pushed with another layer, a referrer deleted or forged. So nothing read from it is taken on
its word. Pushing packages a bundle that verified with its whole chain of evidence as a ModelPack
artifact, and attaches as referrers (``subject`` = the model manifest) the model-signing bundle
and the DSSE envelopes that make up its evidence: the release identity's registration, the gate's
decision, the approvals it cites, and a push record the release identity signs for this manifest
digest and tag (also kept in the store, the record a moved tag is checked against).

Using an ``oci://`` reference pulls the manifest *by digest* (a tag is resolved first, and the
digest is what is recorded), writes the layers as a bundle directory and verifies it exactly like
a bundle from MLflow (signature under the trust policy, every file, no pickle, signed lineage),
then the carried evidence: every envelope must verify under the trust policy and be about this
bundle. With the store reachable, its records win (a later registration, a moved tag); at a site
that has only the registry (an air-gapped mirror), the carried envelopes are the evidence.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from secure_pipeline.errors import (
    ConfigurationError,
    PolicyViolation,
    SecurePipelineError,
    SignatureError,
)
from secure_pipeline.registry.decisions import Decision, decisions, for_version
from secure_pipeline.registry.registration import registrations
from secure_pipeline.registry.signing import SIGNATURE_FILE, signed_digests, verify_bundle
from secure_pipeline.storage.snapshots import SnapshotStore, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE, RELEASE
from secure_pipeline.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from secure_pipeline.oci.client import RegistryClient
    from secure_pipeline.oci.reference import OciReference
    from secure_pipeline.registry.evidence import Evidence, Requirement
    from secure_pipeline.registry.verification import Verification
    from secure_pipeline.spec import PipelineSpec
    from secure_pipeline.trust.signers import IdentitySigner

PUSH_TYPE = "https://secure-pipeline.dev/attestation/oci-push/v1"
PUSHES = "oci-pushes"
ARTIFACT_STEP = "oci artifact"
PUSH_STEP = "oci push"
# Evidence layer titles: what each carried envelope is.
_REGISTRATION, _DECISION, _PUSH, _APPROVAL = "registration", "decision", "push", "approval"
# Who must have signed each kind of carried envelope, and what it states.
_CARRIED_KINDS = {
    _PUSH: (RELEASE, PUSH_TYPE),
    _REGISTRATION: (RELEASE, attestations.REGISTRATION_TYPE),
    _DECISION: (GATE, attestations.VSA_TYPE),
}


@dataclass
class Pulled:
    """An ``oci://`` reference pulled into a bundle directory, before verification.

    Attributes:
        reference: The reference as given.
        pinned: The same artifact by digest (what is recorded).
        digest: The model manifest's digest.
        signatures: How many signature referrers were attached.
        envelopes: The carried evidence envelopes ``(title, bytes)``, unverified.
        problems: Referrers that could not be read (said in the report).
    """

    reference: "OciReference"
    pinned: "OciReference"
    digest: str
    signatures: int
    envelopes: list[tuple[str, bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PushResult:
    """What ``push`` stored.

    Attributes:
        pinned: The pushed artifact by digest.
        digest: The model manifest digest.
        name: Registered model name.
        version: Registered version.
        push_record: Digest of the signed push record.
    """

    pinned: "OciReference"
    digest: str
    name: str
    version: str
    push_record: str


def client_for(reference: "OciReference") -> "RegistryClient":
    """A registry client for the reference's host, configured from the environment."""
    from secure_pipeline.oci.client import RegistryClient

    return RegistryClient(reference.registry)


def _by_digest(reference: "OciReference", digest: str) -> "OciReference":
    """The artifact by digest alone: what is recorded and printed (a tag can move)."""
    import dataclasses

    return dataclasses.replace(reference.pinned(digest), tag=None)


def _scope(reference: "OciReference") -> str:
    """Where the push records of one registry repository and tag are kept."""
    host = reference.registry.replace(":", "_")
    return f"{host}/{reference.repository}/{reference.tag or '_digest'}"


def pull(reference: str, destination: Path, trust: TrustPolicy) -> Pulled:
    """Pull an ``oci://`` model by digest into ``destination`` as a bundle directory.

    The signature referrer becomes the bundle's ``model.sig``; when several are attached (one
    may be foreign), the one that verifies under the trust policy is kept, else the first, so
    verification reports why it fails.

    Raises:
        ConfigurationError: For a malformed reference, an unreachable registry or refused
            credentials.
        IntegrityError: For a manifest or blob that does not match its digest, or a manifest
            that is not a model artifact.
    """
    from secure_pipeline.oci.layout import (
        EVIDENCE_ARTIFACT_TYPE,
        SIGNATURE_ARTIFACT_TYPE,
        pull_bundle,
        referrer_layers,
    )
    from secure_pipeline.oci.reference import parse_reference

    ref = parse_reference(reference)
    client = client_for(ref)
    artifact = pull_bundle(client, ref, destination)
    pulled = Pulled(ref, _by_digest(ref, artifact.digest), artifact.digest, 0)
    signatures: list[bytes] = []
    for descriptor in artifact.referrers:
        kind = descriptor.get("artifactType")
        if kind not in (SIGNATURE_ARTIFACT_TYPE, EVIDENCE_ARTIFACT_TYPE):
            continue
        try:
            layers = referrer_layers(client, ref.repository, descriptor)
        except SecurePipelineError as exc:
            # A deleted or altered referrer is reported; without a signature nothing verifies.
            pulled.problems.append(f"referrer {str(descriptor.get('digest'))[:19]}: {exc}")
            continue
        if kind == SIGNATURE_ARTIFACT_TYPE:
            signatures += [data for _title, data in layers[:1]]
        else:
            pulled.envelopes += layers
    pulled.signatures = len(signatures)
    signature = destination / SIGNATURE_FILE
    if len(signatures) == 1:
        signature.write_bytes(signatures[0])
    elif signatures:
        for candidate in signatures:
            signature.write_bytes(candidate)
            try:
                verify_bundle(destination, trust)
                break
            except SignatureError:
                continue
        else:
            signature.write_bytes(signatures[0])
    return pulled


def check_artifact(
    evidence: "Evidence",
    *,
    pipeline: "PipelineSpec | None",
    trust: TrustPolicy,
    store: SnapshotStore | None,
    require: "Requirement",
) -> None:
    """Add the OCI steps to a pulled bundle's verification (never raises for a failed check).

    Steps: the artifact (by digest, with a signature referrer), the signed push record (and,
    for a tag, that the tag still points where the release identity pushed it), the signed
    registration, and — when required or carried — the gate's decision and its approvals.
    """
    pulled: Pulled = evidence.resolved.oci
    verification = evidence.verification
    tag = f" (tag {pulled.reference.tag} resolved to it)" if pulled.reference.tag else ""
    unread = f"; unreadable: {'; '.join(pulled.problems)}" if pulled.problems else ""
    if pulled.signatures:
        detail = (
            f"{pulled.pinned}{tag}: {pulled.signatures} signature and "
            f"{len(pulled.envelopes)} evidence envelope(s) attached{unread}"
        )
    else:
        detail = (
            f"{pulled.pinned}{tag} has no model-signing bundle attached as a referrer{unread}: "
            "an unsigned artifact is never used. Push models with `secure-pipeline oci push`"
        )
    verification.steps.insert(0, (ARTIFACT_STEP, bool(pulled.signatures), detail))
    if verification.bundle_digest is None or verification.model_sha256 is None:
        return  # the bundle itself did not verify: nothing it carries is worth reading
    carried = _Carried.open(pulled.envelopes, trust)
    push = _check_push(evidence, carried, trust, store)
    if push is None:
        return
    name, version = str(push.predicate.get("name")), str(push.predicate.get("version"))
    evidence.resolved.name, evidence.resolved.version = name, version
    verification.name, verification.version = name, version
    _check_registration(evidence, carried, trust, store, name, version)
    history = decisions(store, trust, name)[0] if store is not None else []
    if require is not None and history and pipeline is not None:
        from secure_pipeline.registry.evidence import check_promotion

        # The store holds this model's decisions (the site that released it): the full check,
        # with approvals and the audit checkpoint read from there.
        check_promotion(evidence, pipeline, trust, store, require)  # type: ignore[arg-type]
        return
    if require == "champion":
        evidence.fail(
            "promotion",
            "which version is the champion is only known from the store's signed decisions: "
            + ("none is there for " + name if store is not None else "verifying offline"),
        )
        return
    if require is not None and pipeline is None:
        evidence.fail(
            "promotion", "a promotion decision is checked against today's policy: no spec"
        )
        return
    if require is not None or carried.decisions:
        _check_carried_decision(evidence, carried, pipeline, trust, version, store is None)


@dataclass
class _Carried:
    """The carried envelopes that verified, by kind, and those that did not."""

    pushes: list[attestations.Attestation] = field(default_factory=list)
    registrations: list[attestations.Attestation] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    approvals: dict[str, bytes] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, envelopes: list[tuple[str, bytes]], trust: TrustPolicy) -> "_Carried":
        carried = cls()
        for title, data in envelopes:
            kind = title.split("-", 1)[0].removesuffix(".json")
            if kind == _APPROVAL:
                # Approvals are verified against the decision that cites them, by digest.
                carried.approvals[attestations.sha256_of(data)] = data
                continue
            if kind not in _CARRIED_KINDS:
                carried.rejected.append(f"{title}: not a kind of evidence this project writes")
                continue
            identity, predicate_type = _CARRIED_KINDS[kind]
            try:
                opened = attestations.open_envelope(
                    data, trust, identities=(identity,), predicate_type=predicate_type,
                    what=f"carried {title}",
                )  # fmt: skip
            except SignatureError as exc:
                carried.rejected.append(str(exc))
                continue
            if kind == _PUSH:
                carried.pushes.append(opened)
            elif kind == _REGISTRATION:
                carried.registrations.append(opened)
            else:
                carried.decisions.append(Decision(opened, f"oci:{title}"))
        return carried

    def ignored(self) -> str:
        """A note on envelopes that did not verify, for the report."""
        if not self.rejected:
            return ""
        return (
            f" ({len(self.rejected)} carried envelope(s) did not verify and were ignored: "
            f"{'; '.join(self.rejected[:3])})"
        )


def _check_push(
    evidence: "Evidence", carried: _Carried, trust: TrustPolicy, store: SnapshotStore | None
) -> attestations.Attestation | None:
    """The release identity's push record for this manifest and bundle; the tag check."""
    pulled: Pulled = evidence.resolved.oci
    verification = evidence.verification
    mine = [
        p
        for p in carried.pushes
        if p.predicate.get("manifest_digest") == pulled.digest
        and p.subjects.get("bundle") == verification.bundle_digest
        and p.subjects.get("model.skops") == verification.model_sha256
    ]
    if not mine:
        evidence.fail(
            PUSH_STEP,
            f"no push record signed by the release identity names manifest {pulled.digest} "
            f"with this bundle{carried.ignored()}: the artifact was not pushed by the release "
            "stage (`secure-pipeline oci push`), or its evidence referrer was removed",
        )
        return None
    push = sorted(mine, key=lambda p: str(p.predicate.get("pushed_at")))[-1]
    where = (
        f"pushed by the release identity ({push.keyid[:12]}) as "
        f"{push.predicate.get('reference')} at {push.predicate.get('pushed_at')}: "
        f"{push.predicate.get('name')} version {push.predicate.get('version')}"
    )
    tag = pulled.reference.tag
    if tag is None:
        evidence.passed(PUSH_STEP, where)
        return push
    # A tag is mutable: where the release identity last pushed it is the truth, not the registry.
    recorded = _recorded_pushes(store, trust, pulled.reference) if store is not None else []
    if recorded:
        latest = recorded[-1]
        if latest.predicate.get("manifest_digest") != pulled.digest:
            evidence.fail(
                PUSH_STEP,
                f"tag {tag} of {pulled.reference.registry}/{pulled.reference.repository} now "
                f"points to {pulled.digest}, but the release identity last pushed it as "
                f"{latest.predicate.get('manifest_digest')} at "
                f"{latest.predicate.get('pushed_at')}: the tag was moved outside the release "
                "stage; refusing it (refer to models by digest)",
            )
            return None
        evidence.passed(PUSH_STEP, f"{where}; the tag is where the release stage last pushed it")
        return push
    repository = pulled.reference.repository
    named = [
        p
        for p in mine
        if p.predicate.get("tag") == tag and p.predicate.get("repository") == repository
    ]
    if not named:
        evidence.fail(
            PUSH_STEP,
            f"tag {tag} points to {pulled.digest}, but no signed push record names that tag for "
            "this artifact: the tag was moved to it outside the release stage; refer to the "
            "model by digest",
        )
        return None
    evidence.passed(
        PUSH_STEP,
        f"{where}; the tag is named in the signed push record (no record of this registry in "
        "the store: a mirror)",
    )
    return push


def _recorded_pushes(
    store: SnapshotStore, trust: TrustPolicy, reference: "OciReference"
) -> list[attestations.Attestation]:
    """The store's signed push records for the reference's registry, repository and tag."""
    found = []
    for key, data in attestations.stored_envelopes(store, PUSHES, _scope(reference)):
        try:
            found.append(
                attestations.open_envelope(
                    data, trust, identities=(RELEASE,), predicate_type=PUSH_TYPE, what=key
                )
            )
        except SignatureError:
            continue  # junk written into the store neither moves nor pins a tag
    return sorted(found, key=lambda p: (str(p.predicate.get("pushed_at")), p.sha256))


def _check_registration(
    evidence: "Evidence",
    carried: _Carried,
    trust: TrustPolicy,
    store: SnapshotStore | None,
    name: str,
    version: str,
) -> None:
    verification = evidence.verification

    def matches(attestation: attestations.Attestation) -> bool:
        predicate = attestation.predicate
        return (
            predicate.get("name") == name
            and predicate.get("version") == version
            and predicate.get("bundle_digest") == verification.bundle_digest
            and attestation.subjects.get("bundle") == verification.bundle_digest
            and attestation.subjects.get("model.skops") == verification.model_sha256
        )

    stored = registrations(store, trust, name, version)[0] if store is not None else []
    if stored and not any(matches(a) for a in stored):
        other = stored[0].predicate
        evidence.fail(
            "registration",
            f"the release identity registered bundle {str(other.get('bundle_digest'))[:12]} "
            f"as {name} version {version}, not this artifact's bundle "
            f"{str(verification.bundle_digest)[:12]}",
        )
        return
    found = next((a for a in [*stored, *carried.registrations] if matches(a)), None)
    if found is None:
        evidence.fail(
            "registration",
            f"no registration of {name} version {version} signed by the release identity for "
            f"this bundle is attached or in the store{carried.ignored()}",
        )
        return
    verification.registration = found
    source = "in the store" if found in stored else "carried by the artifact"
    evidence.passed(
        "registration",
        f"signed by the release identity ({found.keyid[:12]}) at "
        f"{found.predicate.get('registered_at')} for this bundle ({source})",
    )


def _check_carried_decision(
    evidence: "Evidence",
    carried: _Carried,
    pipeline: "PipelineSpec | None",
    trust: TrustPolicy,
    version: str,
    offline: bool,
) -> None:
    """The gate's decision and approvals the artifact carries (a site without its store)."""
    verification = evidence.verification
    decision = for_version(carried.decisions, version, str(verification.bundle_digest))
    if decision is None or decision.model_sha256 != verification.model_sha256:
        evidence.fail(
            "promotion",
            f"{version} carries no decision signed by the gate admitting this bundle"
            f"{carried.ignored()}: only a version the gate admitted is served",
        )
        return
    registration = verification.registration
    cited = {i.get("digest", {}).get("sha256") for i in decision.inputs("attestations/regis")}
    if registration is not None and registration.sha256 not in cited:
        evidence.fail("promotion", f"the carried {decision.describe()} cites another registration")
        return
    evidence.decision = decision
    head = (decision.facts.get("audit_head") or {}).get("count")
    where = "offline" if offline else "here (the store holds no decision for this model)"
    evidence.passed(
        "promotion",
        f"{decision.describe()} (carried by the artifact; its audit checkpoint at record {head} "
        f"is in the releasing site's trail, not checked {where})",
    )
    if pipeline is None:
        return
    from secure_pipeline.registry.evidence import tally_approvals

    def read(key: str, digest: str | None) -> tuple[bytes | None, str | None]:
        data = carried.approvals.get(str(digest))
        return (data, None) if data is not None else (None, f"cited approval {key} is not attached")

    tally_approvals(evidence, pipeline, trust, read)


def push(
    model_ref: str,
    target: str,
    *,
    pipeline: "PipelineSpec",
    trust: TrustPolicy,
    store: SnapshotStore,
    signer: "IdentitySigner",
    actor: str,
) -> PushResult:
    """Verify a model with its whole chain of evidence, then push it with that evidence.

    Args:
        model_ref: ``models:/name@alias`` or ``models:/name/N`` (a version the gate admitted).
        target: ``oci://host/repo:tag`` (or without a tag: pushed by digest only).
        pipeline: The model's pipeline spec (today's policy applies).
        trust: The trust policy.
        store: The snapshot store (evidence is read there; the push record is kept there).
        signer: The release identity's signer (it signs the push record).
        actor: Who pushes, for the audit trail.

    Raises:
        PolicyViolation: When the model does not verify (nothing is pushed).
        ConfigurationError: For a bad target, an unreachable registry or refused credentials.
    """
    from secure_pipeline.oci.reference import parse_reference
    from secure_pipeline.registry.evidence import verify_reference

    if not model_ref.startswith("models:/"):
        raise ConfigurationError(
            f"{model_ref!r}: push a registered version, models:/name/N or models:/name@alias"
        )
    destination = parse_reference(target)
    if destination.digest is not None:
        raise ConfigurationError(
            f"{target}: push to oci://host/repository:tag; the digest is what the push computes"
        )
    with verify_reference(
        model_ref, pipeline=pipeline, trust=trust, store=store, require="promoted"
    ) as evidence:
        if not evidence.ok:
            raise PolicyViolation(
                f"refusing to push {model_ref}: it does not verify: " + "; ".join(evidence.problems)
            )
        verification = evidence.verification
        decision, registration = evidence.decision, verification.registration
        assert decision is not None  # required above
        assert registration is not None
        return publish(
            destination,
            evidence.resolved.directory,
            pipeline_name=pipeline.name,
            name=str(evidence.resolved.name),
            version=str(evidence.resolved.version),
            verification=verification,
            registration=registration,
            decision=decision.attestation,
            # Every approval the decision cites, as the store holds it: the carried tally then
            # sees what the store's does (one whose approver was since removed stops counting).
            approvals=[store.read_object(str(i.get("uri"))) for i in decision.inputs("approvals/")],
            store=store,
            signer=signer,
            actor=actor,
        )


def publish(
    destination: "OciReference",
    directory: Path,
    *,
    pipeline_name: str,
    name: str,
    version: str,
    verification: "Verification",
    registration: attestations.Attestation,
    decision: attestations.Attestation,
    approvals: list[bytes],
    store: SnapshotStore,
    signer: "IdentitySigner",
    actor: str,
) -> PushResult:
    """Push a bundle that verified, with its evidence as referrers; record the push.

    `push` calls it once the model verified with its whole chain; it is separate so the
    packaging can be measured on its own.

    Args:
        destination: Where to push (a tag, or none).
        directory: The verified bundle.
        pipeline_name: The model's pipeline.
        name: Registered model name.
        version: Registered version.
        verification: The bundle's passed verification.
        registration: The release identity's registration of the bundle.
        decision: The gate's decision admitting it.
        approvals: The envelopes of the approvals the decision cites.
        store: Where the signed push record is kept (and the audit trail).
        signer: The release identity's signer.
        actor: Who pushes, for the audit trail.
    """
    from secure_pipeline.oci.layout import (
        DSSE_MEDIA_TYPE,
        EVIDENCE_ARTIFACT_TYPE,
        SIGNATURE_ARTIFACT_TYPE,
        attach,
        package_bundle,
    )
    from secure_pipeline.storage.audit import AuditLog

    signed = signed_digests(directory) or {}
    files = [(n, directory / n) for n in sorted(signed)]
    client = client_for(destination)
    lineage = verification.lineage or {}
    annotations = {
        "org.opencontainers.image.created": utc_now(),
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": version,
        "org.cncf.model.name": name,
        "org.cncf.model.version": version,
        "dev.secure-pipeline.pipeline": pipeline_name,
        "dev.secure-pipeline.bundle-digest": str(verification.bundle_digest),
    }
    config = {
        "descriptor": {"name": name, "version": version, "createdAt": utc_now()},
        "config": {
            "format": "skops",
            "architecture": str(lineage.get("model", {}).get("estimator", "")),
        },
    }
    digest = package_bundle(
        client, destination, directory, files, annotations=annotations, config=config
    )
    manifest, _ = client.get_manifest(destination.repository, digest)
    pinned = _by_digest(destination, digest)
    attach(
        client, destination.repository, digest, len(manifest),
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        layers=[(SIGNATURE_FILE, (directory / SIGNATURE_FILE).read_bytes(),
                 SIGNATURE_ARTIFACT_TYPE)],
    )  # fmt: skip
    record = attestations.sign(
        attestations.statement(
            {
                "model.skops": str(verification.model_sha256),
                "bundle": str(verification.bundle_digest),
                "oci-manifest": digest.removeprefix("sha256:"),
            },
            PUSH_TYPE,
            {
                "pipeline": pipeline_name,
                "name": name,
                "version": version,
                "registry": destination.registry,
                "repository": destination.repository,
                "tag": destination.tag,
                "reference": str(pinned),
                "manifest_digest": digest,
                "registration_sha256": registration.sha256,
                "decision_sha256": decision.sha256,
                "pushed_at": utc_now(),
            },
        ),  # fmt: skip
        signer,
    )
    attestations.store_envelope(store, PUSHES, _scope(destination), record)
    layers = [
        (f"{_REGISTRATION}.json", registration.data, DSSE_MEDIA_TYPE),
        (f"{_DECISION}.json", decision.data, DSSE_MEDIA_TYPE),
        (f"{_PUSH}.json", record, DSSE_MEDIA_TYPE),
    ]
    for number, approval in enumerate(approvals, 1):
        layers.append((f"{_APPROVAL}-{number}.json", approval, DSSE_MEDIA_TYPE))
    attach(
        client, destination.repository, digest, len(manifest),
        artifact_type=EVIDENCE_ARTIFACT_TYPE, layers=layers,
    )  # fmt: skip
    AuditLog(store).append(
        "oci.pushed", signer=signer, actor=actor, subject=str(verification.model_sha256),
        # The repository without the oci:// scheme: the trail redacts what parses as a URI.
        details={"name": name, "version": version, "manifest_digest": digest,
                 "repository": f"{destination.registry}/{destination.repository}",
                 "tag": destination.tag or "", "push": attestations.sha256_of(record)},
    )  # fmt: skip
    return PushResult(pinned, digest, name, version, attestations.sha256_of(record))


def mirror(source: str, target: str, *, trust: TrustPolicy) -> "OciReference":
    """Copy a model with every referrer to another registry; verify the copy there, offline.

    The source is verified first (offline: signature, files, carried evidence), so a tampered
    artifact is not spread; the copy is byte-identical (same digests) and verified again at the
    target from the target alone.

    Raises:
        PolicyViolation: When the source or the copy does not verify.
    """
    from secure_pipeline.oci import layout
    from secure_pipeline.oci.reference import parse_reference
    from secure_pipeline.registry.evidence import verify_reference

    src, dst = parse_reference(source), parse_reference(target)
    if dst.digest is not None:
        raise ConfigurationError(f"{target}: mirror to oci://host/repository[:tag]")
    with verify_reference(source, pipeline=None, trust=trust, store=None) as evidence:
        if not evidence.ok:
            raise PolicyViolation(
                f"refusing to mirror {source}: it does not verify: " + "; ".join(evidence.problems)
            )
        pinned = evidence.resolved.oci.pinned
    digest = layout.mirror(client_for(src), pinned, client_for(dst), dst)
    copy = _by_digest(dst, digest)
    with verify_reference(str(copy), pipeline=None, trust=trust, store=None) as evidence:
        if not evidence.ok:
            raise PolicyViolation(
                f"the copy {copy} does not verify: " + "; ".join(evidence.problems)
            )
    return copy


__all__ = [
    "PUSH_TYPE", "PushResult", "Pulled", "check_artifact", "mirror", "publish", "pull", "push",
]  # fmt: skip
