"""The cost of signed OCI publishing: push + pull + verify of a 200 MB bundle vs a plain round trip.

Measured: `secure_pipeline.registry.oci.publish` (ModelPack layers, the signature and evidence
referrers, the signed push record) followed by `verify_reference` of the pushed digest (pull by
digest, every blob checked, the bundle signature over every file, lineage, the carried
registration, push record and gate decision). Baseline: the same files pushed as the same
ModelPack manifest and pulled back with the same client, nothing verified beyond the blob
digests the transport always checks. Same registry (a real distribution server on 127.0.0.1 with
TLS 1.3 and htpasswd), a fresh repository every time so every blob is really uploaded.
Goal: <= 1.3x.

One real run of the reference pipeline is made first in a temporary home; its bundle gets a
200 MB weights file and is signed again, registered and admitted with the development keys.
"""

import os
import shutil
import sys
import uuid
from pathlib import Path

from _common import interleaved, report, temporary_home

SIZE = 200 * 1024 * 1024


def main() -> None:
    work, home = temporary_home("bench-oci-")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        import dagster as dg

        from secure_pipeline.oci.layout import package_bundle, pull_bundle
        from secure_pipeline.oci.reference import parse_reference
        from secure_pipeline.reference.adult import adult_pipeline
        from secure_pipeline.registry import decisions
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.registry.oci import publish
        from secure_pipeline.registry.registration import record_registration
        from secure_pipeline.registry.signing import (
            SIGNATURE_FILE,
            sign_bundle,
            signed_digests,
            signer_from_environment,
        )
        from secure_pipeline.registry.verification import resolve, verify_bundle_dir
        from secure_pipeline.storage.local import LocalSnapshotStore
        from secure_pipeline.trust.identities import GATE, RELEASE
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import signer_for
        from secure_pipeline_tests.helpers import materialize_all
        from secure_pipeline_tests.oci.registry_server import running_registry
        from secure_pipeline_tests.tls_server import make_pki

        pipeline = adult_pipeline()
        with dg.DagsterInstance.get() as instance:
            assert materialize_all(pipeline, instance).success
        store, trust = LocalSnapshotStore(home / "store"), trust_policy()
        bundle = work / "bundle"
        with resolve("models:/adult/1") as resolved:
            shutil.copytree(resolved.directory, bundle)
        with (bundle / "weights.bin").open("wb") as out:  # not a pickle: no 0x80 first byte
            out.write(b"W" + os.urandom(SIZE - 1))
        (bundle / SIGNATURE_FILE).unlink()
        sign_bundle(bundle, signer_from_environment())
        verification = verify_bundle_dir(bundle, trust=trust, pipeline=pipeline, store=None)
        assert verification.ok, verification.report()
        release = signer_for(RELEASE)
        registration = record_registration(
            store, release, pipeline="adult", name="adult", version="1", source="benchmark",
            model_sha256=str(verification.model_sha256),
            bundle_digest=str(verification.bundle_digest), lineage_sha256="0" * 64, runs={},
        )  # fmt: skip
        decision = decisions.issue(
            store, signer_for(GATE), pipeline="adult", name="adult", version="1",
            decision="challenger", reason="promotion",
            model_sha256=str(verification.model_sha256),
            bundle_digest=str(verification.bundle_digest), security_policy_sha256="0" * 64,
            inputs=[(f"attestations/registrations/adult/1/{registration.sha256}.json",
                     registration.sha256)],
            previous_champion=None, audit_head=None,
        )  # fmt: skip
        files = [(name, bundle / name) for name in sorted(signed_digests(bundle) or {})]
        config = {"descriptor": {"name": "adult", "version": "1"}, "config": {"format": "skops"}}
        with running_registry(work / "registry", make_pki(work / "pki")) as registry:
            os.environ.update(
                SECURE_PIPELINE_OCI_CA_BUNDLE=str(registry.ca_bundle),
                SECURE_PIPELINE_OCI_USERNAME=registry.username,
                SECURE_PIPELINE_OCI_PASSWORD=registry.password,
            )  # fmt: skip
            client = registry.client()

            def target():  # noqa: ANN202 - a fresh repository: every blob is uploaded again
                return parse_reference(registry.reference(f"bench/{uuid.uuid4().hex[:10]}", "v1"))

            def plain() -> None:
                ref = target()
                digest = package_bundle(client, ref, bundle, files, annotations={}, config=config)
                out = work / f"plain-{uuid.uuid4().hex[:6]}"
                pull_bundle(client, ref.pinned(digest), out)
                shutil.rmtree(out)

            def verified() -> None:
                result = publish(
                    target(), bundle, pipeline_name="adult", name="adult", version="1",
                    verification=verification, registration=registration,
                    decision=decision.attestation, approvals=[], store=store, signer=release,
                    actor="benchmark",
                )  # fmt: skip
                with verify_reference(
                    str(result.pinned), pipeline=pipeline, trust=trust, store=None,
                    require="promoted",
                ) as evidence:  # fmt: skip
                    assert evidence.ok, evidence.report()

            times = interleaved({"plain push + pull": plain, "signed push + pull + verify":
                                 verified}, repeats=3)  # fmt: skip
            report(
                f"OCI round trip of a {SIZE // 2**20} MB bundle (local registry, TLS 1.3)",
                times, "plain push + pull", 1.3,
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
