"""The cost of signed evidence: verifying a champion's whole chain, and serving start-up.

1. Verifying a champion's whole evidence chain — the release signature over every file, each of
   the lineage's signed verdicts, the signed registration, the gate's signed decision with the
   approvals it cites, and the audit trail's signed checkpoint — vs the bundle signature alone,
   on the same downloaded bundle. Goal: <= 1.5x.
2. Serving start-up (a model-server slot downloading, verifying and loading its version) with an
   audit trail of 1,000 and of 100,000 records. Goal: it does not grow with the trail (the
   slot reads the checkpoint and one record, never the trail).

One real run of the reference pipeline is made first, in a temporary home. ``--chain-only``
stops after the first figure (padding a trail to 100,000 records takes minutes).
"""

import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _common import interleaved, report, temporary_home


def _pad(store, target: int) -> float:
    """Append signed records (and checkpoints) until the trail has ``target``; seconds taken."""
    from secure_pipeline.storage.audit import AuditLog, AuditRecord, checkpoint_key, record_key
    from secure_pipeline.storage.snapshots import canonical_json, utc_now
    from secure_pipeline.trust.signers import signer_for

    log = AuditLog(store)
    head = log._find_head()
    previous = log.record(head).hash
    signer = signer_for("ingest")
    started = time.perf_counter()
    # Written as `AuditLog.append` writes them (same fields, signature and checkpoint), without
    # its per-record head search, so that building the trail does not dominate the benchmark.
    for seq in range(head + 1, target + 1):
        body = {"seq": seq, "ts": utc_now(), "run_id": "padding", "actor": "benchmark",
                "event": "snapshot.stored", "subject": f"{seq:064x}",
                "details": {"key": "padding", "bytes": seq}, "prev_hash": previous,
                "identity": signer.identity, "keyid": signer.keyid}  # fmt: skip
        digest = hashlib.sha256(canonical_json(body)).hexdigest()
        record = AuditRecord(**body, hash=digest, signature=signer.sign(digest.encode()))
        store.try_create_object(record_key(seq), record.to_json())
        point = {"type": "secure-pipeline/audit-checkpoint/v1", "count": seq, "head": digest,
                 "ts": body["ts"], "identity": signer.identity, "keyid": signer.keyid}  # fmt: skip
        point["signature"] = signer.sign(canonical_json(point))
        store.try_create_object(checkpoint_key(seq), canonical_json(point))
        previous = digest
    return time.perf_counter() - started


def main() -> None:
    work, home = temporary_home("bench-evidence-")
    try:
        import dagster as dg

        from secure_pipeline.reference.adult import adult_pipeline
        from secure_pipeline.registry.decisions import champion, decisions
        from secure_pipeline.registry.evidence import Evidence, check_decision, verify_reference
        from secure_pipeline.registry.registration import check_registration
        from secure_pipeline.registry.signing import verify_bundle
        from secure_pipeline.registry.verification import Resolved, resolve, verify_bundle_dir
        from secure_pipeline.serving.server import ModelService
        from secure_pipeline.storage.audit import AuditLog
        from secure_pipeline.storage.local import LocalSnapshotStore
        from secure_pipeline.trust.policy import trust_policy

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from secure_pipeline_tests.helpers import materialize_all

        pipeline = adult_pipeline()
        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            assert materialize_all(pipeline, instance).success
        print(f"reference run: {time.perf_counter() - started:.1f} s")
        store = LocalSnapshotStore(home / "store")
        trust = trust_policy()
        with resolve("models:/adult/1") as resolved:
            bundle = Path(shutil.copytree(resolved.directory, work / "bundle"))
            source = str(resolved.source)

        def signature_alone() -> None:
            verify_bundle(bundle, trust)

        def whole_chain() -> None:
            verification = verify_bundle_dir(bundle, trust=trust, pipeline=pipeline, store=None)
            verification.name, verification.version, verification.source = "adult", "1", source
            verification.registration, _ = check_registration(
                store, trust, name="adult", version="1", source=source,
                bundle_digest=str(verification.bundle_digest),
                model_sha256=str(verification.model_sha256),
            )  # fmt: skip
            decision = champion(decisions(store, trust, "adult")[0])
            evidence = Evidence(Resolved(bundle, "adult", "1"), verification, decision)
            check_decision(evidence, pipeline, trust, store)
            assert evidence.ok, evidence.problems

        def from_the_registry() -> None:
            with verify_reference("models:/adult@champion", pipeline=pipeline, trust=trust,
                          store=store) as evidence:  # fmt: skip
                assert evidence.ok, evidence.problems

        times = interleaved(
            {"bundle signature alone": signature_alone, "whole evidence chain": whole_chain},
            repeats=41,
        )
        report("Verifying the champion: whole evidence chain vs the bundle signature alone",
               times, "bundle signature alone", 1.5)  # fmt: skip
        chain_cost = statistics.median(times["whole evidence chain"]) - statistics.median(
            times["bundle signature alone"]
        )
        # The chain's cost is fixed (a dozen signature checks and their parsing); the
        # signature's grows with the model. Its cost for a 64 MB model, measured on a copy of
        # the bundle with a 64 MB weights file, re-signed with the release key:
        from secure_pipeline.registry.signing import sign_bundle, signer_from_environment

        large = Path(shutil.copytree(bundle, work / "bundle-64mb"))
        (large / "weights.bin").write_bytes(os.urandom(64 << 20))
        (large / "model.sig").unlink()
        sign_bundle(large, signer_from_environment())
        big = interleaved({"64 MB": lambda: verify_bundle(large, trust)}, repeats=7)
        signature_64 = statistics.median(big["64 MB"])
        print(
            f"  with a 64 MB model: signature alone {signature_64 * 1000:.1f} ms, the chain's "
            f"fixed {chain_cost * 1000:.1f} ms on top: "
            f"{(signature_64 + chain_cost) / signature_64:.2f}x"
        )
        times = interleaved(
            {"bundle signature alone": signature_alone,
             "verify models:/adult@champion (download, snapshots re-hashed)": from_the_registry},
            repeats=5,
        )  # fmt: skip
        report("For reference: the whole `verify` command's work from the registry and store",
               times, "bundle signature alone", None)  # fmt: skip

        def start_slot() -> float:
            service = ModelService(pipeline, "models:/adult/1", "blue")
            began = time.perf_counter()
            service.load()
            assert service.state == "ready", service.reason
            return time.perf_counter() - began

        if "--chain-only" in sys.argv:
            return
        startup: dict[int, list[float]] = {}
        for size in (1_000, 100_000):
            padded = _pad(store, size)
            print(f"\naudit trail padded to {size:,} records ({padded:.1f} s)")
            startup[size] = [start_slot() for _ in range(5)]
        small, large = (statistics.median(startup[n]) for n in (1_000, 100_000))
        print("\nServing start-up (download, whole chain, load) vs audit trail length")
        print(f"  1,000 records    median {small * 1000:8.1f} ms")
        print(f"  100,000 records  median {large * 1000:8.1f} ms   ratio {large / small:5.2f}x")
        verdict = "meets" if large / small <= 1.15 else "MISSES"
        print(f"  goal: does not grow with the trail (<= 1.15x, the machine's noise): {verdict}")

        began = time.perf_counter()
        status = AuditLog(store).verify()
        seconds = time.perf_counter() - began
        print(f"\nFor reference: `audit verify` of {status.count:,} signed records: "
              f"{seconds:.1f} s ({status.count / seconds:,.0f} records/s)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
