"""Flags on models trained on data that was since erased or expired.

When an erasure or retention destroys (or is about to destroy) the data a model was trained on,
the privacy identity signs a statement saying so: predicate type
``https://secure-pipeline.dev/attestation/trained-on-erased-data/v1``, subject the model's
digest, predicate ``{pipeline, model_sha256, versions, reason, subjects, snapshots,
created_at}``. It is stored create-only at
``privacy/<pipeline>/flags/<model_sha256>/<envelope sha256>.json``.

`secure_pipeline.registry.evidence.verify_reference` (promotion, serving, release and
``secure-pipeline verify``) looks the flags of a model up and refuses it, or warns, as the
pipeline's ``privacy.erased_data_models`` says. Only flags that verify as the privacy
identity's count: an insider who can write the store can add junk there, but junk neither
clears a flag (flags are never removed, only added) nor blocks a good model (it does not
verify, so it is ignored and reported).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from secure_pipeline.canonical import sha256_hex
from secure_pipeline.errors import SignatureError
from secure_pipeline.storage.snapshots import SnapshotStore, check_sha256, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import PRIVACY
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.trust.signers import IdentitySigner

FLAG_TYPE = "https://secure-pipeline.dev/attestation/trained-on-erased-data/v1"
MODEL_SUBJECT = "model.skops"
FlagReason = Literal["erasure", "retention"]
REASONS: tuple[str, ...] = ("erasure", "retention")


def flags_prefix(pipeline_name: str, model_sha256: str) -> str:
    """Where the flags of one model are stored."""
    return f"privacy/{pipeline_name}/flags/{check_sha256(model_sha256)}/"


def flag_model(
    store: SnapshotStore,
    pipeline_name: str,
    model_sha256: str,
    *,
    versions: Sequence[str],
    reason: str,
    subjects: Sequence[str],
    snapshots: Sequence[str],
    signer: IdentitySigner,
) -> str:
    """Sign and store a flag: this model was trained on data erased or expired.

    Args:
        store: The snapshot store.
        pipeline_name: The pipeline whose model it is.
        model_sha256: The model's digest.
        versions: Its registered versions (may be empty: not registered yet).
        reason: ``erasure`` or ``retention``.
        subjects: The hashed subject identifiers erased (empty for retention).
        snapshots: Store keys of the snapshots it was trained from that are erased.
        signer: The privacy identity's signer.

    Returns:
        The flag's store key.

    Raises:
        ValueError: For an unknown reason or a malformed digest.
        PermissionError: When the signer is not the privacy identity (a flag by anyone else
            would be ignored; refusing to write it says so at once).
    """
    if reason not in REASONS:
        raise ValueError(f"a flag's reason is one of {', '.join(REASONS)}, found {reason!r}")
    if signer.identity != PRIVACY:
        raise PermissionError(
            f"flags are signed by the {PRIVACY} identity; {signer.identity} may not write one"
        )
    prefix = flags_prefix(pipeline_name, model_sha256)
    document = attestations.statement(
        {MODEL_SUBJECT: model_sha256},
        FLAG_TYPE,
        {
            "pipeline": pipeline_name,
            "model_sha256": model_sha256,
            "versions": sorted({str(v) for v in versions}, key=_version_order),
            "reason": reason,
            "subjects": sorted(set(subjects)),
            "snapshots": sorted(set(snapshots)),
            "created_at": utc_now(),
        },
    )
    data = attestations.sign(document, signer)
    key = f"{prefix}{sha256_hex(data)}.json"
    store.create_object(key, data)
    return key


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


@dataclass
class FlagScan:
    """The flags of a model, as found in the store.

    Attributes:
        flags: The flags that verify as the privacy identity's, about this model, oldest first.
        ignored: One line per stored object that does not (junk, forged, another model's).
    """

    flags: list[attestations.Attestation] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def scan_flags(
    store: SnapshotStore, trust: TrustPolicy, pipeline_name: str, model_sha256: str
) -> FlagScan:
    """Every stored flag of a model, verified; the ones that do not verify are listed apart."""
    scan = FlagScan()
    prefix = flags_prefix(pipeline_name, model_sha256)
    seen: set[str] = set()
    for key in store.list_keys(prefix):
        try:
            data = store.read_object(key)
        except FileNotFoundError:
            continue
        try:
            attestation = attestations.open_envelope(
                data, trust, identities=(PRIVACY,), predicate_type=FLAG_TYPE,
                what=f"flag {key}",
            )  # fmt: skip
        except SignatureError as exc:
            scan.ignored.append(str(exc))
            continue
        problem = _mismatch(attestation, pipeline_name, model_sha256)
        if problem:
            scan.ignored.append(f"flag {key} {problem}")
            continue
        # A copy under another name is the same envelope: counted once.
        if attestation.sha256 not in seen:
            seen.add(attestation.sha256)
            scan.flags.append(attestation)
    scan.flags.sort(key=lambda a: (str(a.predicate.get("created_at")), a.sha256))
    return scan


def _mismatch(
    attestation: attestations.Attestation, pipeline_name: str, model_sha256: str
) -> str | None:
    """Why a verified flag does not apply to this model, or None when it does."""
    predicate = attestation.predicate
    if attestation.subjects != {MODEL_SUBJECT: model_sha256}:
        return "is about another model: copied from elsewhere"
    if predicate.get("model_sha256") != model_sha256 or predicate.get("pipeline") != (
        pipeline_name
    ):
        return "names another model or pipeline than where it is stored"
    if predicate.get("reason") not in REASONS:
        return f"gives an unknown reason {predicate.get('reason')!r}"
    return None


def erased_data_flags(
    store: SnapshotStore, trust: TrustPolicy, pipeline_name: str, model_sha256: str
) -> list[attestations.Attestation]:
    """The valid flags of a model (signed by the privacy identity), oldest first."""
    return scan_flags(store, trust, pipeline_name, model_sha256).flags


def describe_flags(flags: Iterable[attestations.Attestation]) -> str:
    """One sentence on why a model is flagged: when and why its data was erased."""
    parts = []
    for flag in flags:
        predicate: Mapping[str, Any] = flag.predicate
        when = str(predicate.get("created_at", ""))[:10]
        reason = str(predicate.get("reason"))
        if reason == "erasure":
            count = len(predicate.get("subjects", []))
            why = f"erasure of {count} data subject{'s' if count != 1 else ''}"
        else:
            why = "retention period expired"
        parts.append(f"{when} ({why})")
    return "; ".join(dict.fromkeys(parts))


def covers(
    flags: Iterable[attestations.Attestation],
    *,
    reason: str,
    subjects: Iterable[str] = (),
    snapshots: Iterable[str] = (),
) -> bool:
    """Whether existing flags already say all of this (so no new flag is needed)."""
    wanted_subjects, wanted_snapshots = set(subjects), set(snapshots)
    have_subjects: set[str] = set()
    have_snapshots: set[str] = set()
    found = False
    for flag in flags:
        if flag.predicate.get("reason") != reason:
            continue
        found = True
        have_subjects.update(flag.predicate.get("subjects", []))
        have_snapshots.update(flag.predicate.get("snapshots", []))
    return found and wanted_subjects <= have_subjects and wanted_snapshots <= have_snapshots
