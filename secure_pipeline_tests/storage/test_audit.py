"""The audit trail: signed hash chain, tamper detection naming the record, concurrent appends.

The insider of the threat model can write every object of the store but holds no identity's
key; each attack below is what they can do with file edits or boto3, and each is named.
"""

import csv
import hashlib
import io
import json
import threading

import pytest

from secure_pipeline.errors import AuditChainError
from secure_pipeline.storage.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    checkpoint_key,
    record_key,
)
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json
from secure_pipeline.trust.identities import INGEST, TRAIN
from secure_pipeline.trust.signers import IdentitySigner, signer_for
from secure_pipeline_tests.conftest import delete_raw, overwrite_raw

EVENT = "snapshot.stored"


def _signer() -> IdentitySigner:
    return signer_for(INGEST)


def _fill(store: SnapshotStore, n: int) -> AuditLog:
    log = AuditLog(store)
    for i in range(n):
        log.append(EVENT, signer=_signer(), actor="test", run_id=f"run-{i}", subject=f"{i:064x}")
    return log


def _rewrite(record: AuditRecord, signature: str | None = None, **changes: object) -> bytes:
    """A record with changed content and a recomputed hash: what needs no key to compute."""
    body = {**record.body(), **changes}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    return canonical_json({**body, "hash": digest, "signature": signature or record.signature})


def _load(store: SnapshotStore, seq: int) -> AuditRecord:
    return AuditRecord(**json.loads(store.read_object(record_key(seq))))


def test_chain_links_and_verifies(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    status = log.verify()
    assert status.count == 5
    first = json.loads(store.read_object(record_key(1)))
    second = json.loads(store.read_object(record_key(2)))
    assert first["prev_hash"] == GENESIS_HASH
    assert second["prev_hash"] == first["hash"]
    assert status.head_hash == json.loads(store.read_object(record_key(5)))["hash"]


def test_a_new_log_object_finds_the_head(store: SnapshotStore) -> None:
    _fill(store, 9)
    record = AuditLog(store).append(EVENT, signer=_signer(), actor="other process")
    assert record.seq == 10
    assert AuditLog(store).verify().count == 10


def test_edited_record_is_named(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    record = json.loads(store.read_object(record_key(3)))
    record["actor"] = "someone else"
    overwrite_raw(store, record_key(3), json.dumps(record).encode())
    with pytest.raises(AuditChainError, match=r"audit record 3 .* was edited"):
        log.verify()


def test_edit_with_recomputed_hash_is_named_by_its_signature(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    overwrite_raw(store, record_key(3), _rewrite(_load(store, 3), subject="f" * 64))
    with pytest.raises(AuditChainError, match=r"audit record 3 .* not signed by a key"):
        log.verify()


def test_a_consistent_rewrite_of_the_tail_is_named(store: SnapshotStore) -> None:
    """Every later record re-linked and re-hashed, as a keyless insider can: still named."""
    log = _fill(store, 5)
    prev = _load(store, 2).hash
    for seq in (3, 4, 5):
        forged = json.loads(_rewrite(_load(store, seq), prev_hash=prev, actor="attacker"))
        overwrite_raw(store, record_key(seq), canonical_json(forged))
        prev = forged["hash"]
    with pytest.raises(AuditChainError, match=r"audit record 3 .* not signed by a key"):
        log.verify()


def test_a_forged_append_is_named(store: SnapshotStore, tmp_path) -> None:
    """The next record, correctly chained, signed with a key the trust policy does not know."""
    from securesystemslib.signer import CryptoSigner

    log = _fill(store, 3)
    head = _load(store, 3)
    intruder = CryptoSigner.generate_ecdsa()
    body = {
        **head.body(),
        "seq": 4,
        "prev_hash": head.hash,
        "keyid": intruder.public_key.keyid,
        "event": "check.evaluated",
        "details": {"check": "schema_conforms", "passed": True},
    }
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    signature = intruder.sign(digest.encode()).signature
    overwrite_raw(store, record_key(4),
                  canonical_json({**body, "hash": digest, "signature": signature}))  # fmt: skip
    with pytest.raises(AuditChainError, match=r"audit record 4 .* not signed by a key"):
        log.verify()


def test_a_key_used_outside_its_role_is_refused_and_named(store: SnapshotStore) -> None:
    log = _fill(store, 2)
    with pytest.raises(PermissionError, match="train identity may not write 'ingestion.stored'"):
        log.append("ingestion.stored", signer=signer_for(TRAIN), actor="t")
    # Written by hand with the train key, as whoever holds only that key could: named.
    train = signer_for(TRAIN)
    head = _load(store, 2)
    body = {**head.body(), "seq": 3, "prev_hash": head.hash, "event": "ingestion.stored",
            "identity": "train", "keyid": train.keyid}  # fmt: skip
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    overwrite_raw(store, record_key(3), canonical_json(
        {**body, "hash": digest, "signature": train.sign(digest.encode())}))  # fmt: skip
    with pytest.raises(AuditChainError, match="signed by train, which may not write it"):
        log.verify()


def test_tail_truncation_is_named_by_the_signed_checkpoint(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    for seq in (5, 4):
        delete_raw(store, record_key(seq))
    with pytest.raises(AuditChainError, match="ends at record 3, but a signed checkpoint exists"):
        log.verify()


def test_a_forged_checkpoint_is_named(store: SnapshotStore) -> None:
    log = _fill(store, 3)
    checkpoint = json.loads(store.read_object(checkpoint_key(3)))
    checkpoint["head"] = "0" * 64
    overwrite_raw(store, checkpoint_key(3), canonical_json(checkpoint))
    with pytest.raises(AuditChainError, match="checkpoint .* not signed"):
        log.verify()


def test_an_unsigned_record_is_named(store: SnapshotStore) -> None:
    log = _fill(store, 3)
    record = json.loads(store.read_object(record_key(2)))
    del record["signature"]
    overwrite_raw(store, record_key(2), canonical_json(record))
    with pytest.raises(AuditChainError, match="audit record 2 .* is not signed"):
        log.verify()


def test_deleted_record_is_named(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    delete_raw(store, record_key(2))
    with pytest.raises(AuditChainError, match="audit record 2 is missing"):
        log.verify()


def test_swapped_records_are_named(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    two, four = store.read_object(record_key(2)), store.read_object(record_key(4))
    overwrite_raw(store, record_key(2), four)
    overwrite_raw(store, record_key(4), two)
    with pytest.raises(AuditChainError, match=r"audit record 2 .* holds record 4"):
        log.verify()


def test_truncated_tail_is_caught_by_an_anchor(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    head = log.verify()
    delete_raw(store, record_key(5))
    delete_raw(store, checkpoint_key(5))
    # Record and checkpoint both gone: only what was recorded elsewhere can tell (a bucket with
    # Object Lock refuses both deletions).
    assert log.verify().count == 4
    with pytest.raises(AuditChainError, match="audit record 5 was recorded elsewhere"):
        log.verify({5: head.head_hash})


def test_rewritten_trail_is_caught_by_an_anchor(store: SnapshotStore) -> None:
    """Even a key holder who rewrites the tail is caught where a hash was kept elsewhere."""
    _fill(store, 3)
    anchor = json.loads(store.read_object(record_key(2)))["hash"]
    for seq in (3, 2):
        delete_raw(store, record_key(seq))
        delete_raw(store, checkpoint_key(seq))
    fresh = AuditLog(store)
    fresh.append(EVENT, signer=_signer(), actor="rewriter")
    fresh.append(EVENT, signer=_signer(), actor="rewriter")
    assert fresh.verify().count == 3
    with pytest.raises(AuditChainError, match="rewritten from this record on"):
        fresh.verify({2: anchor})


def test_appending_to_a_broken_chain_is_refused(store: SnapshotStore) -> None:
    _fill(store, 2)
    overwrite_raw(store, record_key(2), b'{"not": "a record"}')
    with pytest.raises(AuditChainError):
        AuditLog(store).append(EVENT, signer=_signer(), actor="t")


def test_concurrent_appends_never_fork(store: SnapshotStore) -> None:
    writers, per_writer = 4, 10
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        log = AuditLog(store)
        barrier.wait()
        try:
            for i in range(per_writer):
                log.append(EVENT, signer=_signer(), actor=f"writer-{w}", details={"i": i})
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    status = AuditLog(store).verify()
    assert status.count == writers * per_writer


def test_details_are_redacted_and_bounded(store: SnapshotStore) -> None:
    log = AuditLog(store)
    record = log.append(
        "ingestion.stored",
        signer=_signer(),
        actor="t",
        details={"source": "https://user:secret@example.com/data.csv?X-Amz-Signature=abc"},
    )
    assert record.details["source"] == "https://example.com/data.csv"
    assert b"secret" not in store.read_object(record_key(1))
    with pytest.raises(ValueError, match="limit"):
        log.append(EVENT, signer=_signer(), actor="t", details={"rows": "x" * 5000})
    with pytest.raises(ValueError, match="type"):
        log.append(EVENT, signer=_signer(), actor="t", details={"frame": object()})


def test_export_jsonl_and_csv(store: SnapshotStore) -> None:
    log = _fill(store, 3)
    out = io.StringIO()
    assert log.export(out, "jsonl").count == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3]
    out = io.StringIO()
    log.export(out, "csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == GENESIS_HASH


def test_export_of_a_broken_chain_writes_nothing(store: SnapshotStore) -> None:
    log = _fill(store, 3)
    delete_raw(store, record_key(2))
    out = io.StringIO()
    with pytest.raises(AuditChainError):
        log.export(out, "jsonl")
    assert out.getvalue() == ""


def test_appending_into_a_deleted_slot_is_refused(store: SnapshotStore) -> None:
    _fill(store, 5)
    for seq in (5, 4):
        delete_raw(store, record_key(seq))
    # records 1-3 remain and 4 is the head's successor: the append itself goes through (the
    # checkpoint left at 5 still shows the truncation to `verify`)
    assert AuditLog(store).append(EVENT, signer=_signer(), actor="t").seq == 4
    delete_raw(store, record_key(2))
    # A new writer's head search stops at the hole (1 exists, 2 does not) and must not fill it.
    log = AuditLog(store)
    with pytest.raises(AuditChainError, match="audit record 2 is missing but record 3 exists"):
        log.append(EVENT, signer=_signer(), actor="t")


def test_a_stale_writer_catches_up_with_many_appends(store: SnapshotStore) -> None:
    stale = AuditLog(store)
    stale.append(EVENT, signer=_signer(), actor="stale")
    other = AuditLog(store)
    for i in range(80):
        other.append(EVENT, signer=_signer(), actor="other", details={"i": i})
    assert stale.append(EVENT, signer=_signer(), actor="stale").seq == 82
    assert AuditLog(store).verify().count == 82


def test_credentials_inside_text_and_keys_are_redacted(store: SnapshotStore) -> None:
    record = AuditLog(store).append(
        "ingestion.stored",
        signer=_signer(),
        actor="t",
        details={
            "error": "fetch failed: https://alice:s3cr3t@data.example.com/a.csv (timeout)",
            "src=https://bob:hunter2@h/x": 1,
        },
    )
    stored = store.read_object(record_key(record.seq))
    assert b"s3cr3t" not in stored
    assert b"hunter2" not in stored
    assert record.details["error"] == "fetch failed: https://data.example.com/a.csv (timeout)"


def test_a_rotated_key_verifies_its_old_records_and_nothing_after(
    local_store, tmp_path, monkeypatch
) -> None:
    from secure_pipeline.errors import ConfigurationError
    from secure_pipeline.trust.keys import fingerprint, generate_key
    from secure_pipeline.trust.policy import trust_policy
    from secure_pipeline_tests.trust_helpers import dev_document

    log = _fill(local_store, 3)
    retired = _signer()
    replacement = generate_key(tmp_path / "ingest-2027.pem")
    document = dev_document()
    [old] = document["identities"]["ingest"]["keys"]
    document["identities"]["ingest"] = {
        "keys": [{"keyid": fingerprint(replacement.read_bytes()),
                  "public_key": replacement.read_text()}],
        "retired_keys": [{**old, "last_record": 3}],
    }  # fmt: skip
    policy = tmp_path / "rotated.json"
    policy.write_text(json.dumps(document))
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(policy))
    assert log.verify(trust=trust_policy()).count == 3
    with pytest.raises(ConfigurationError, match="not one the trust policy gives to the ingest"):
        signer_for(INGEST)  # the development key is retired: no new signature by it
    # Whoever kept the retired key signs one more record: it counts for nothing.
    log.append(EVENT, signer=retired, actor="kept the old key")
    with pytest.raises(AuditChainError, match=r"audit record 4 .* not signed by a key"):
        log.verify(trust=trust_policy())
