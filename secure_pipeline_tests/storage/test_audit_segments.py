"""Sealed audit segments, resumable verification and the subject index, attacked as the insider.

The insider can rewrite, delete and add any object under ``audit/`` (raw file edits or boto3)
but holds no identity's key. Segments hold 4 records here so a few appends seal some.
"""

import hashlib
import json

import pytest

from secure_pipeline.errors import AuditChainError
from secure_pipeline.storage.audit import (
    AuditLog,
    AuditRecord,
    ChainStatus,
    index_prefix,
    record_key,
    seal_key,
    segment_key,
)
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json
from secure_pipeline.trust.identities import INGEST, SERVE
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import delete_raw, overwrite_raw

EVENT = "snapshot.stored"
N = 4


def _log(store: SnapshotStore) -> AuditLog:
    return AuditLog(store, segment_records=N)


def _fill(store: SnapshotStore, n: int, subject: str | None = None) -> AuditLog:
    log = _log(store)
    for i in range(n):
        log.append(EVENT, signer=signer_for(INGEST), actor="test", details={"i": i},
                   subject=subject or f"{i:064x}")  # fmt: skip
    return log


def _seal(store: SnapshotStore, last: int) -> dict:
    return json.loads(store.read_object(seal_key(last)))


def _lines(store: SnapshotStore, last: int) -> list[bytes]:
    return store.read_object(segment_key(last)).splitlines()


def _resign(body: dict, signer) -> bytes:
    body = {k: v for k, v in body.items() if k != "signature"}
    return canonical_json({**body, "signature": signer.sign(canonical_json(body))})


def test_full_segments_are_sealed_and_verify_without_per_record_objects(
    store: SnapshotStore,
) -> None:
    log = _fill(store, 10)
    assert store.exists(seal_key(4))
    assert store.exists(seal_key(8))
    assert not store.exists(segment_key(12))
    seal = _seal(store, 8)
    assert (seal["first"], seal["last"], seal["type"]) == (5, 8, "secure-pipeline/audit-seal/v1")
    assert seal["sha256"] == hashlib.sha256(store.read_object(segment_key(8))).hexdigest()
    expected = log.verify()
    # The segment is the authority for its range: the per-record objects are not read.
    for seq in range(1, 9):
        delete_raw(store, record_key(seq))
    assert _log(store).verify() == expected
    assert [r.seq for r in _log(store).verified_records()] == list(range(1, 11))
    assert _log(store).verify(deep=True) == expected


def test_an_edited_byte_inside_a_sealed_segment_is_named(store: SnapshotStore) -> None:
    _fill(store, 9)
    data = bytearray(store.read_object(segment_key(4)))
    data[data.index(b'"actor":"test"') + 9] = ord("T")
    overwrite_raw(store, segment_key(4), bytes(data))
    with pytest.raises(AuditChainError, match=r"segment .*000000000004\.jsonl does not match"):
        _log(store).verify()


def test_a_segment_resealed_with_an_untrusted_key_is_refused(store: SnapshotStore) -> None:
    from securesystemslib.signer import CryptoSigner

    _fill(store, 9)
    intruder = CryptoSigner.generate_ecdsa()
    lines = _lines(store, 4)
    forged = AuditRecord(**json.loads(lines[1]))
    body = {**forged.body(), "actor": "attacker"}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    lines[1] = canonical_json({**body, "hash": digest, "signature": forged.signature})
    data = b"\n".join(lines) + b"\n"
    overwrite_raw(store, segment_key(4), data)
    seal = {**_seal(store, 4), "sha256": hashlib.sha256(data).hexdigest(),
            "keyid": intruder.public_key.keyid}  # fmt: skip
    seal.pop("signature")
    signature = intruder.sign(canonical_json(seal)).signature
    overwrite_raw(store, seal_key(4), canonical_json({**seal, "signature": signature}))
    with pytest.raises(AuditChainError, match="seal .* not signed by a key of the trust policy"):
        _log(store).verify()


def test_a_seal_by_an_identity_that_may_not_append_is_refused(store: SnapshotStore) -> None:
    _fill(store, 9)
    serve = signer_for(SERVE)
    seal = {**_seal(store, 4), "identity": serve.identity, "keyid": serve.keyid}
    overwrite_raw(store, seal_key(4), _resign(seal, serve))
    with pytest.raises(AuditChainError, match="signed by serve, which may not append"):
        _log(store).verify()


def test_a_seal_naming_another_head_or_prev_hash_is_refused(store: SnapshotStore) -> None:
    """Even signed by a trusted key, a seal that does not describe its segment fails."""
    _fill(store, 9)
    ingest = signer_for(INGEST)
    original = store.read_object(seal_key(8))
    overwrite_raw(store, seal_key(8), _resign({**_seal(store, 8), "head": "a" * 64}, ingest))
    with pytest.raises(AuditChainError, match="its seal names record 8 and head aaaa"):
        _log(store).verify()
    overwrite_raw(store, seal_key(8), original)
    overwrite_raw(store, seal_key(8), _resign({**_seal(store, 8), "prev_hash": "b" * 64}, ingest))
    with pytest.raises(AuditChainError, match=r"audit record 5 .* does not follow record 4"):
        _log(store).verify()


def test_a_deleted_segment_and_its_seal_are_named(store: SnapshotStore) -> None:
    _fill(store, 13)
    delete_raw(store, segment_key(8))
    delete_raw(store, seal_key(8))
    with pytest.raises(AuditChainError, match="audit record 5 is missing: the sealed trail"):
        _log(store).verify()


def test_a_deleted_segment_under_its_seal_is_named(store: SnapshotStore) -> None:
    _fill(store, 9)
    delete_raw(store, segment_key(4))
    with pytest.raises(AuditChainError, match="segment .* is missing but its seal exists"):
        _log(store).verify()


def test_a_deleted_seal_before_a_later_one_is_named(store: SnapshotStore) -> None:
    _fill(store, 9)
    delete_raw(store, seal_key(4))
    with pytest.raises(AuditChainError, match="has no seal but the later segment"):
        _log(store).verify()


def test_swapped_segments_are_named(store: SnapshotStore) -> None:
    _fill(store, 9)
    for a, b in ((segment_key(4), segment_key(8)), (seal_key(4), seal_key(8))):
        data_a, data_b = store.read_object(a), store.read_object(b)
        overwrite_raw(store, a, data_b)
        overwrite_raw(store, b, data_a)
    with pytest.raises(AuditChainError, match="does not describe segment 4"):
        _log(store).verify()


def test_a_record_cut_from_a_segment_with_the_seal_recomputed_is_refused(
    store: SnapshotStore,
) -> None:
    """The insider drops record 3, re-links 4 and recomputes the seal's fields: no key, no seal."""
    _fill(store, 9)
    lines = _lines(store, 4)
    del lines[2]
    data = b"\n".join(lines) + b"\n"
    overwrite_raw(store, segment_key(4), data)
    seal = {**_seal(store, 4), "sha256": hashlib.sha256(data).hexdigest(), "last": 3}
    overwrite_raw(store, seal_key(4), canonical_json(seal))
    with pytest.raises(AuditChainError, match="seal .* not signed by a key"):
        _log(store).verify()


def test_tail_truncation_after_a_sealed_segment_is_named(store: SnapshotStore) -> None:
    _fill(store, 7)
    for seq in (7, 6):
        delete_raw(store, record_key(seq))
    with pytest.raises(AuditChainError, match="ends at record 5, but a signed checkpoint exists"):
        _log(store).verify()


def test_a_crash_before_the_seal_is_verified_as_a_tail_and_repaired(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    # As if the appender of record 4 stopped before sealing (the keyless insider can do this
    # too: it hides nothing, the per-record objects are then verified one by one).
    delete_raw(store, seal_key(4))
    delete_raw(store, segment_key(4))
    assert _log(store).verify().count == 5
    log.append(EVENT, signer=signer_for(INGEST), actor="next")
    assert _log(store).append(EVENT, signer=signer_for(INGEST), actor="next").seq == 7
    assert store.exists(seal_key(4))
    assert _log(store).verify().count == 7


def test_deep_verify_rechecks_record_signatures_inside_segments(store: SnapshotStore) -> None:
    """A key holder seals a record with a bad signature: the seal vouches, --deep still names it."""
    _fill(store, 5)
    lines = _lines(store, 4)
    record = json.loads(lines[1])
    record["signature"] = "00" * 64
    lines[1] = canonical_json(record)
    data = b"\n".join(lines) + b"\n"
    overwrite_raw(store, segment_key(4), data)
    seal = {**_seal(store, 4), "sha256": hashlib.sha256(data).hexdigest()}
    overwrite_raw(store, seal_key(4), _resign(seal, signer_for(INGEST)))
    assert _log(store).verify().count == 5
    with pytest.raises(AuditChainError, match=r"audit record 2 \(segment .* not signed by a key"):
        _log(store).verify(deep=True)


@pytest.mark.parametrize("point", [2, 4, 6])
def test_resume_verifies_what_follows(store: SnapshotStore, point: int) -> None:
    log = _fill(store, point)
    status = log.verify()
    for _ in range(7):
        log.append(EVENT, signer=signer_for(INGEST), actor="later")
    assert _log(store).verify(resume=status) == _log(store).verify()


def test_a_resume_status_whose_head_no_longer_matches_is_refused(store: SnapshotStore) -> None:
    """A key holder rewrites the whole trail; the verifier's own status still tells."""
    _fill(store, 6)
    status = _log(store).verify()
    rewritten = AuditLog(store, segment_records=1000)  # a fresh store prefix, same store
    for key in list(store.list_keys("audit/")):
        delete_raw(store, key)
    for i in range(9):
        rewritten.append(EVENT, signer=signer_for(INGEST), actor="rewriter", details={"i": i})
    assert rewritten.verify().count == 9
    with pytest.raises(AuditChainError, match="record 6 .*resume status"):
        rewritten.verify(resume=status)
    bogus = ChainStatus(status.count, "c" * 64)
    with pytest.raises(AuditChainError, match="resume status"):
        _log(store).verify(resume=bogus)


def test_record_of_a_sealed_seq_is_the_segment_copy_never_the_edit(store: SnapshotStore) -> None:
    _fill(store, 5)
    original = _log(store).record(2)
    forged = AuditRecord(**json.loads(store.read_object(record_key(2))))
    body = {**forged.body(), "actor": "attacker"}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    edited = canonical_json({**body, "hash": digest, "signature": forged.signature})
    overwrite_raw(store, record_key(2), edited)
    assert _log(store).record(2) == original


def test_records_about_a_subject_come_from_the_index(store: SnapshotStore) -> None:
    subject = "d" * 64
    log = _fill(store, 6)
    log.append(EVENT, signer=signer_for(INGEST), actor="t", subject=subject)
    _fill(store, 3)
    log.append("check.evaluated", signer=signer_for(INGEST), actor="t", subject=subject)
    found = _log(store).records_about(subject)
    assert [r.seq for r in found] == [7, 11]
    assert all(r.subject == subject for r in found)
    assert _log(store).records_about("e" * 64) == []


def test_a_marker_pointing_at_another_record_is_refused(store: SnapshotStore) -> None:
    subject = "d" * 64
    log = _fill(store, 6)
    log.append(EVENT, signer=signer_for(INGEST), actor="t", subject=subject)
    other = log.record(3)
    overwrite_raw(store, f"{index_prefix(subject)}{3:012d}", other.hash.encode())
    with pytest.raises(AuditChainError, match=r"index marker .*000000000003 is forged"):
        log.records_about(subject)


def test_a_marker_with_a_wrong_hash_is_refused(store: SnapshotStore) -> None:
    subject = "d" * 64
    log = _fill(store, 2)
    log.append(EVENT, signer=signer_for(INGEST), actor="t", subject=subject)
    overwrite_raw(store, f"{index_prefix(subject)}{3:012d}", b"f" * 64)
    with pytest.raises(AuditChainError, match="index marker .* is forged"):
        log.records_about(subject)
