"""Audit trail verify at 10k, 100k and 1M records (local and a moto S3 server), resume, lookup.

Trails are built by a private bulk builder that writes what appends write for the objects
verify and lookups read: sealed segments of 1,000 records with their signed seals, the
per-record objects and signed checkpoints of the unsealed tail, and the index markers of one
subject. Every record and seal is signed with a real development key. (Per-record objects and
checkpoints inside sealed ranges, which verify never reads, are not written, to keep the build
short.) Printed: build time, verify records/s and its ratio to the 10k rate (linear = ~1.0),
the per-record verify rate (every record an object with its signature, as before segments) as
the baseline of the same invocation, the cost of a resumed verify after 1,000 new records, and
`records_about` time at 1k..1M records (ratio to 1k; flat = ~1.0).

Run: ``.venv/bin/python benchmarks/bench_audit.py [--quick]`` (``--quick``: 10k and 100k).
"""

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import moto_server

from secure_pipeline.storage.audit import (
    GENESIS_HASH,
    SEAL_TYPE,
    SEGMENT_RECORDS,
    AuditLog,
    ChainStatus,
    checkpoint_key,
    index_prefix,
    record_key,
    seal_key,
    segment_key,
)
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json

SUBJECT = "5" * 64
ABOUT = 10  # records about SUBJECT in every trail, whatever its length
TAIL = 37  # unsealed records after the last segment


def _record(seq: int, prev: str, signer, subject: str | None) -> dict:
    body = {
        "seq": seq,
        "ts": "2026-01-01T00:00:00.000000+00:00",
        "run_id": f"run-{seq}",
        "actor": "bench",
        "event": "snapshot.stored",
        "subject": subject,
        "details": {"rows": seq, "sha256": hashlib.sha256(str(seq).encode()).hexdigest()},
        "prev_hash": prev,
        "identity": signer.identity,
        "keyid": signer.keyid,
    }
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    return {**body, "hash": digest, "signature": signer.sign(digest.encode())}


def _signed(body: dict, signer) -> bytes:
    return canonical_json({**body, "signature": signer.sign(canonical_json(body))})


def build(
    store: SnapshotStore,
    count: int,
    signer,
    *,
    sealed: bool = True,
    start: ChainStatus | None = None,
) -> ChainStatus:
    """Write records ``start.count + 1`` .. ``count`` as appends would leave them."""
    first = (start.count if start else 0) + 1
    prev = start.head_hash if start else GENESIS_HASH
    # A subject's records are recent and close together (a snapshot stored, its checks):
    # the same ten positions from the end in every trail, so lookups do the same work.
    about = {count - 50 * i for i in range(ABOUT)} if count - first >= 500 else set()
    sealed_upto = count // SEGMENT_RECORDS * SEGMENT_RECORDS if sealed else first - 1
    lines: list[bytes] = []
    segment_prev = prev
    if start and sealed:
        # The unsealed tail so far joins the next segment, as the sealer would read it.
        for seq in range(start.count // SEGMENT_RECORDS * SEGMENT_RECORDS + 1, start.count + 1):
            data = store.read_object(record_key(seq))
            lines.append(data)
            if len(lines) == 1:
                segment_prev = json.loads(data)["prev_hash"]
    for seq in range(first, count + 1):
        subject = SUBJECT if seq in about else None
        record = _record(seq, prev, signer, subject)
        if subject:
            store.try_create_object(f"{index_prefix(SUBJECT)}{seq:012d}", record["hash"].encode())
        prev = record["hash"]
        if seq <= sealed_upto:
            lines.append(canonical_json(record))
            if seq % SEGMENT_RECORDS == 0:
                data = b"\n".join(lines) + b"\n"
                store.try_create_object(segment_key(seq), data)
                seal = {"type": SEAL_TYPE, "first": seq - len(lines) + 1, "last": seq,
                        "sha256": hashlib.sha256(data).hexdigest(), "prev_hash": segment_prev,
                        "head": prev, "identity": signer.identity, "keyid": signer.keyid,
                        "ts": record["ts"]}  # fmt: skip
                store.try_create_object(seal_key(seq), _signed(seal, signer))
                lines, segment_prev = [], prev
        else:
            store.try_create_object(record_key(seq), canonical_json(record))
    checkpoint = {"type": "secure-pipeline/audit-checkpoint/v1", "count": count, "head": prev,
                  "ts": "2026-01-01T00:00:00.000000+00:00", "identity": signer.identity,
                  "keyid": signer.keyid}  # fmt: skip
    store.try_create_object(checkpoint_key(count), _signed(checkpoint, signer))
    return ChainStatus(count, prev)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10k and 100k records only")
    parser.add_argument("--moto-max", type=int, default=1_000_000, help="largest trail on moto")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.update(SECURE_PIPELINE_HOME=str(work / "home"),
                      SECURE_PIPELINE_DEV_KEYS=str(work / "dev-keys"))  # fmt: skip
    from secure_pipeline.storage.s3 import S3SnapshotStore
    from secure_pipeline.trust.identities import INGEST
    from secure_pipeline.trust.policy import trust_policy
    from secure_pipeline.trust.signers import signer_for

    signer, trust = signer_for(INGEST), trust_policy()
    server, endpoint = moto_server()
    try:
        # Baseline: every record a signed per-record object, verified one by one.
        base_store = LocalSnapshotStore(work / "baseline", fsync=False)
        build(base_store, 10_000, signer, sealed=False)
        base_s, status = timed(lambda: AuditLog(base_store).verify(trust=trust))
        base_rate = status.count / base_s
        print(f"baseline per-record verify, 10k records (local): {base_rate:9.0f} records/s")

        import boto3

        raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        rates: dict[str, float] = {}
        local_rates: dict[int, float] = {}
        lookups: dict[int, float] = {}
        for n in sizes:
            local = LocalSnapshotStore(work / f"trail-{n}", fsync=False)
            build_s, _ = timed(lambda local=local, n=n: build(local, n + TAIL, signer))
            print(f"\nbuilt {n + TAIL} records locally in {build_s:.1f} s")
            log = AuditLog(local)
            seconds, status = timed(lambda log=log: log.verify(trust=trust))
            rate = status.count / seconds
            rates.setdefault("local", rate)
            local_rates[n] = rate
            print(f"  verify local        {seconds:7.2f} s  {rate:9.0f} records/s  "
                  f"ratio to 10k {rate / rates['local']:5.2f}  "
                  f"vs per-record {rate / base_rate:5.1f}x")  # fmt: skip
            lookup_s, found = timed(lambda log=log: log.records_about(SUBJECT, trust))
            lookups[n] = lookup_s
            assert len(found) == ABOUT
            if n <= 100_000:  # every signature again: ~4k records/s, too slow to wait for at 1M
                deep_s, _ = timed(lambda log=log: log.verify(trust=trust, deep=True))
                print(f"  verify --deep local {deep_s:7.2f} s  "
                      f"{status.count / deep_s:9.0f} records/s")  # fmt: skip
            extend_to = (status.count // SEGMENT_RECORDS + 2) * SEGMENT_RECORDS
            build(local, extend_to, signer, start=status)
            resume_s, resumed = timed(
                lambda log=log, status=status: log.verify(trust=trust, resume=status)
            )
            print(f"  resume after {resumed.count - status.count} new records: "
                  f"{resume_s * 1000:7.1f} ms")  # fmt: skip
            if n <= args.moto_max:
                bucket = f"bench-{n}"
                raw.create_bucket(Bucket=bucket)
                s3 = S3SnapshotStore(bucket, endpoint_url=endpoint, region="us-east-1",
                                     allow_loopback_http=True)  # fmt: skip
                copy_s, _ = timed(lambda s3=s3, n=n: build(s3, n + TAIL, signer))
                s3_log = AuditLog(s3)
                seconds, status = timed(lambda s3_log=s3_log: s3_log.verify(trust=trust))
                rate = status.count / seconds
                rates.setdefault("s3", rate)
                ratio = rate / rates["s3"]
                print(f"  verify moto S3      {seconds:7.2f} s  {rate:9.0f} records/s  "
                      f"ratio to 10k {ratio:5.2f}  (built in {copy_s:.1f} s)")  # fmt: skip
            shutil.rmtree(local.root)
        small = LocalSnapshotStore(work / "trail-1k", fsync=False)
        build(small, 1_000 + TAIL, signer)
        lookups[1_000], _ = timed(lambda: AuditLog(small).records_about(SUBJECT, trust))
        print(f"\nrecords_about ({ABOUT} records about the subject), local")
        for n in sorted(lookups):
            print(f"  {n:>9} records  {lookups[n] * 1000:8.1f} ms  ratio to 1k "
                  f"{lookups[n] / lookups[1_000]:5.2f}")  # fmt: skip
        # Judged at every size: a rate that holds at 10k but not at 1M is not linear.
        slowest = min(local_rates, key=local_rates.__getitem__)
        verdict = "meets" if local_rates[slowest] >= 50_000 else "MISSES"
        print(f"\ngoal >= 50k records/s locally at every size: {verdict} (slowest "
              f"{local_rates[slowest]:.0f} at {slowest:,} records)")  # fmt: skip
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
