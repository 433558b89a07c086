"""Registration as an attestation: which bundle the release identity made which model version.

MLflow's registry is a mutable record: whoever can write it can point a version at another
artifact source, or copy one version's tags onto another. So the release identity signs, for
every version it registers, a statement binding the registered name and version to the bundle's
digest and the source it uploaded it to; the envelope is stored create-only under
``attestations/registrations/<name>/<version>/``. A version verifies only if the registry's
source, the downloaded bundle's digest and that signed statement agree: re-pointing a version
or copying tags is detected, and registering again never changes an existing version.
"""

from collections.abc import Mapping
from typing import Any

from secure_pipeline.errors import SignatureError
from secure_pipeline.storage.snapshots import SnapshotStore, sha256_hex, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import RELEASE
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.trust.signers import IdentitySigner

REGISTRATIONS = "registrations"


def _scope(name: str, version: str) -> str:
    return f"{name}/{version}"


def record_registration(
    store: SnapshotStore,
    signer: IdentitySigner,
    *,
    pipeline: str,
    name: str,
    version: str,
    source: str,
    model_sha256: str,
    bundle_digest: str,
    lineage_sha256: str,
    runs: Mapping[str, Any],
) -> attestations.Attestation:
    """Sign and store the registration of ``name`` version ``version``.

    Returns:
        The stored attestation.
    """
    document = attestations.statement(
        {"model.skops": model_sha256, "bundle": bundle_digest},
        attestations.REGISTRATION_TYPE,
        {
            "pipeline": pipeline,
            "name": name,
            "version": str(version),
            "source": source,
            "bundle_digest": bundle_digest,
            "lineage_sha256": lineage_sha256,
            "trust_policy_sha256": signer.policy_digest,
            "registered_at": utc_now(),
            **dict(runs),
        },
    )
    data = attestations.sign(document, signer)
    attestations.store_envelope(store, REGISTRATIONS, _scope(name, version), data)
    return attestations.Attestation(data, sha256_hex(data), document, signer.identity, signer.keyid)


def registrations(
    store: SnapshotStore, trust: TrustPolicy, name: str, version: str
) -> tuple[list[attestations.Attestation], int]:
    """The valid signed registrations of a version, and how many stored envelopes were not."""
    found, rejected = [], 0
    for _key, data in attestations.stored_envelopes(store, REGISTRATIONS, _scope(name, version)):
        try:
            attestation = attestations.open_envelope(
                data,
                trust,
                identities=(RELEASE,),
                predicate_type=attestations.REGISTRATION_TYPE,
                what=f"registration of {name} version {version}",
            )
        except SignatureError:
            rejected += 1
            continue
        predicate = attestation.predicate
        if predicate.get("name") == name and predicate.get("version") == str(version):
            found.append(attestation)
    return found, rejected


def check_registration(
    store: SnapshotStore,
    trust: TrustPolicy,
    *,
    name: str,
    version: str,
    source: str,
    bundle_digest: str,
    model_sha256: str,
) -> tuple[attestations.Attestation | None, str]:
    """Whether the release identity registered exactly this bundle as this version.

    Returns:
        ``(attestation, detail)``: the matching registration (None when there is none) and a
        sentence saying what was found.
    """
    found, rejected = registrations(store, trust, name, version)
    for attestation in found:
        predicate = attestation.predicate
        if (
            predicate.get("bundle_digest") == bundle_digest
            and attestation.subjects.get("bundle") == bundle_digest
            and attestation.subjects.get("model.skops") == model_sha256
            and predicate.get("source") == source
        ):
            return attestation, (
                f"signed by the release identity ({attestation.keyid[:12]}) at "
                f"{predicate.get('registered_at')} for this bundle and source"
            )
    if found:
        other = found[0].predicate
        return None, (
            f"the release identity registered bundle {str(other.get('bundle_digest'))[:12]} "
            f"from {other.get('source')} as version {version} of {name}, but the registry now "
            f"serves bundle {bundle_digest[:12]} from {source}: the version was re-pointed"
        )
    return None, (
        f"no signed registration of {name} version {version} is in the store"
        + (f" ({rejected} envelope(s) there did not verify)" if rejected else "")
        + ": the version was not registered by the release stage (registry records or tags "
        "alone are not evidence)"
    )
