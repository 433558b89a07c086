"""The audit trail: hash chain, tamper detection naming the record, concurrent appends."""

import csv
import hashlib
import io
import json
import threading

import pytest

from secure_pipeline.errors import AuditChainError
from secure_pipeline.storage.audit import GENESIS_HASH, AuditLog, AuditRecord, record_key
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json
from secure_pipeline_tests.conftest import delete_raw, overwrite_raw


def _fill(store: SnapshotStore, n: int) -> AuditLog:
    log = AuditLog(store)
    for i in range(n):
        log.append("snapshot.stored", actor="test", run_id=f"run-{i}", subject=f"{i:064x}")
    return log


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
    record = AuditLog(store).append("x", actor="other process")
    assert record.seq == 10
    assert AuditLog(store).verify().count == 10


def test_edited_record_is_named(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    record = json.loads(store.read_object(record_key(3)))
    record["actor"] = "someone else"
    overwrite_raw(store, record_key(3), json.dumps(record).encode())
    with pytest.raises(AuditChainError, match=r"audit record 3 .* was edited"):
        log.verify()


def test_edit_with_recomputed_hash_breaks_the_next_link(store: SnapshotStore) -> None:
    log = _fill(store, 5)
    record = AuditRecord(**json.loads(store.read_object(record_key(3))))
    forged_body = {**record.body(), "event": "nothing.happened"}
    forged = {**forged_body, "hash": hashlib.sha256(canonical_json(forged_body)).hexdigest()}
    overwrite_raw(store, record_key(3), canonical_json(forged))
    with pytest.raises(AuditChainError, match=r"audit record 4 .* does not follow record 3"):
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
    assert log.verify().count == 4  # a bare chain cannot know what came after its end
    with pytest.raises(AuditChainError, match="audit record 5 was recorded elsewhere"):
        log.verify({5: head.head_hash})


def test_rewritten_trail_is_caught_by_an_anchor(store: SnapshotStore) -> None:
    _fill(store, 3)
    anchor = json.loads(store.read_object(record_key(2)))["hash"]
    for seq in (3, 2):
        delete_raw(store, record_key(seq))
    fresh = AuditLog(store)
    fresh.append("rewritten", actor="attacker")
    fresh.append("rewritten", actor="attacker")
    assert fresh.verify().count == 3
    with pytest.raises(AuditChainError, match="rewritten from this record on"):
        fresh.verify({2: anchor})


def test_appending_to_a_broken_chain_is_refused(store: SnapshotStore) -> None:
    _fill(store, 2)
    overwrite_raw(store, record_key(2), b'{"not": "a record"}')
    with pytest.raises(AuditChainError):
        AuditLog(store).append("x", actor="t")


def test_concurrent_appends_never_fork(store: SnapshotStore) -> None:
    writers, per_writer = 4, 10
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        log = AuditLog(store)
        barrier.wait()
        try:
            for i in range(per_writer):
                log.append("concurrent", actor=f"writer-{w}", details={"i": i})
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
        actor="t",
        details={"source": "https://user:secret@example.com/data.csv?X-Amz-Signature=abc"},
    )
    assert record.details["source"] == "https://example.com/data.csv"
    assert b"secret" not in store.read_object(record_key(1))
    with pytest.raises(ValueError, match="limit"):
        log.append("dump", actor="t", details={"rows": "x" * 5000})
    with pytest.raises(ValueError, match="type"):
        log.append("dump", actor="t", details={"frame": object()})


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
    # records 1-3 remain and 4 is the head's successor: fine to append
    assert AuditLog(store).append("after truncation", actor="t").seq == 4
    delete_raw(store, record_key(2))
    # A new writer's head search stops at the hole (1 exists, 2 does not) and must not fill it.
    log = AuditLog(store)
    with pytest.raises(AuditChainError, match="audit record 2 is missing but record 3 exists"):
        log.append("x", actor="t")


def test_a_stale_writer_catches_up_with_many_appends(store: SnapshotStore) -> None:
    stale = AuditLog(store)
    stale.append("first", actor="stale")
    other = AuditLog(store)
    for i in range(80):
        other.append("busy", actor="other", details={"i": i})
    assert stale.append("late", actor="stale").seq == 82
    assert AuditLog(store).verify().count == 82


def test_credentials_inside_text_and_keys_are_redacted(store: SnapshotStore) -> None:
    record = AuditLog(store).append(
        "ingestion.failed",
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
