"""The subject index and the exclusion of erased subjects at entry.

The splitter is checked on hand-made files at every chunk boundary and on random files against
the csv module; exclusion and the index on real stores; the erasure list against forged and
unsigned entries; and the raw asset end to end: encrypted snapshots, no identifier anywhere in
the home, and an erased subject left out of the next ingestion.
"""

import csv
import hashlib
import hmac
import json
import random
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import IntegrityError, SignatureError, UntrustedSourceError
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    ModelSpec,
    OrchestrationSpec,
    SecurePipeline,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.privacy import subjects
from secure_pipeline.privacy.subjects import (
    ERASURE_TYPE,
    EntryFilter,
    erased_subjects,
    erasure_key,
    erasure_statement,
    ingestions,
    lookup,
    scan_subject,
    shard_key,
    subject_hash,
    subject_key,
    write_erasure_entry,
    write_subject_index,
)
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.encryption import MAGIC
from secure_pipeline.storage.keyrings import keyring_from_environment
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.snapshots import SnapshotStore, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import INGEST, PRIVACY
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.helpers import materialize

KEY = bytes(range(32))


def _h(identifier: str) -> str:
    return subject_hash(KEY, identifier)


def _d(identifier: str) -> bytes:
    return bytes.fromhex(_h(identifier))[:16]


def _run(schema: DatasetSchema, data: bytes, erased=(), size: int | None = None):
    """Filter ``data`` in chunks of ``size`` (all at once when None)."""
    entry = EntryFilter(schema, KEY, frozenset(_h(e) for e in erased))
    size = size or max(1, len(data))
    out = b"".join(entry.filter(data[i : i + size] for i in range(0, len(data), size)))
    return out, entry


# -- subject hashes ----------------------------------------------------------------------------


def test_subject_hash_is_keyed_hmac_of_the_stripped_identifier() -> None:
    expected = hmac.new(KEY, b"C00042", hashlib.sha256).hexdigest()
    assert subject_hash(KEY, "C00042") == expected
    assert subject_hash(KEY, "  C00042\t") == expected
    assert subject_hash(bytes(32), "C00042") != expected
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="names no subject"):
            subject_hash(KEY, empty)


def test_subject_key_is_derived_per_pipeline() -> None:
    from secure_pipeline.validation.pseudonyms import pseudonym_key

    first, second = subject_key("members"), subject_key("loans")
    assert len(first) == 32
    assert first != second
    assert first == subject_key("members")
    assert first != pseudonym_key("members")  # never equal to the pseudonyms' key


# -- the splitter ------------------------------------------------------------------------------

HEADER_SCHEMA = DatasetSchema(
    name="people",
    has_header=True,
    comment_prefix="#",
    missing_values=("?",),
    columns=(
        Column("row_id", "string", source="id"),
        Column("note", "string", role="personal"),
        # the identifier is the header's second "id"
        Column("member_id", "string", role="identifier", source="id", occurrence=2),
        Column("age", "int"),
    ),
)
# Quoted delimiters, doubled quotes, a quoted line break, CRLF, a comment, a blank line, a
# missing identifier, a quoted identifier, and no line break at the end.
FILE = (
    b'id,note,"id",age\r\n'
    b"# a comment, with a C7 in it\r\n"
    b'1,"Ann, Smith",C1,30\r\n'
    b'2,"says ""hi""",C2,31\r\n'
    b'3,"two\r\nlines",C3,32\r\n'
    b"\r\n"
    b"4,plain,?,33\r\n"
    b'5,x," C5 ",34\r\n'
    b"6,last,C6,35"
)
RECORDS = {
    "C1": b'1,"Ann, Smith",C1,30\r\n',
    "C2": b'2,"says ""hi""",C2,31\r\n',
    "C3": b'3,"two\r\nlines",C3,32\r\n',
    "C5": b'5,x," C5 ",34\r\n',
    "C6": b"6,last,C6,35",
}


@pytest.mark.parametrize(
    "erased", [(), ("C1",), ("C3",), ("C2", "C6"), ("C5",), ("C7", "?"), tuple(RECORDS)]
)
def test_every_chunk_boundary_gives_the_same_result(erased) -> None:
    expected = FILE
    for name in erased:
        expected = expected.replace(RECORDS.get(name, b"\x00never"), b"")
    kept = {n for n in RECORDS if n not in erased}
    for size in range(1, len(FILE) + 1):
        out, entry = _run(HEADER_SCHEMA, FILE, erased, size)
        assert out == expected, size
        assert entry.excluded_rows == len(set(erased) & set(RECORDS)), size
        assert entry.rows == len(kept) + 1, size  # and the row with a missing identifier
        # The two-line record is also read line by line, as a reader that ends records at
        # line breaks sees it: 3,"two is too short to reach the identifier (every field is
        # taken), and lines",C3,32 has 32 where the identifier is.
        extra = {_d("3"), _d("two"), _d("32")} if "C3" in kept else set()
        assert entry.digests == {_d(n) for n in kept} | extra, size
        assert entry.received_bytes == len(FILE)
        assert entry.received_sha256 == hashlib.sha256(FILE).hexdigest()


def test_nothing_erased_passes_the_chunks_through_unchanged() -> None:
    chunks = [FILE[:7], FILE[7:50], FILE[50:]]
    entry = EntryFilter(HEADER_SCHEMA, KEY, frozenset())
    out = list(entry.filter(iter(chunks)))
    assert out == chunks
    assert all(a is b for a, b in zip(out, chunks, strict=True))
    assert len(entry.digests) == 8  # C1, C2, C3, C5, C6 and the two-line record's 3, two, 32


def test_positional_columns_bare_cr_and_random_chunks() -> None:
    schema = DatasetSchema(
        name="plain",
        delimiter=";",
        columns=(Column("amount", "float"), Column("customer", "string", role="identifier")),
    )
    data = b"1.5;K1\r2.5;K2\r\n3.5; K3 \n4.5\n\n5.5;K5;extra\r"
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 6)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        entry = EntryFilter(schema, KEY, frozenset({_h("K3")}))
        out = b"".join(entry.filter(iter(pieces)))
        assert out == b"1.5;K1\r2.5;K2\r\n4.5\n\n5.5;K5;extra\r"
        assert entry.excluded_rows == 1
        # "4.5" does not reach the identifier: the parser rejects it and might show it, so
        # its one field is indexed as a possible identifier; the too-long row is indexed too
        assert entry.digests == {_d("K1"), _d("K2"), _d("4.5"), _d("K5")}


def test_a_record_too_short_for_the_identifier_is_indexed_by_every_field() -> None:
    # The parser rejects such a line and may show its text: its subject must still be found.
    schema = DatasetSchema(
        name="short",
        columns=(
            Column("a", "string"),
            Column("b", "string"),
            Column("who", "string", role="identifier"),
        ),
    )
    for data in (b"x,y,K1\nK2\nz,K3\n", b'x,y,K1\n"K2"\nz,"K3"\n'):
        for size in (1, len(data)):
            out, entry = _run(schema, data, erased=("K2", "K3"), size=size)
            assert out == b"x,y,K1\n"
            assert entry.excluded_rows == 2


def test_aliases_and_tokens_are_applied_as_the_parser_does() -> None:
    schema = DatasetSchema(
        name="aliased",
        missing_values=("n/a",),
        columns=(Column("ref", "string", role="identifier", aliases=(("OLD-1", "NEW-1"),)),),
    )
    out, entry = _run(schema, b"OLD-1\nn/a\n  n/a  \nNEW-2\n", erased=("NEW-1",))
    assert out == b"n/a\n  n/a  \nNEW-2\n"
    assert entry.digests == {_d("NEW-2")}


def test_a_record_is_dropped_when_any_identifier_is_erased() -> None:
    schema = DatasetSchema(
        name="pairs",
        has_header=True,
        columns=(
            Column("account", "string", role="identifier"),
            Column("holder", "string", role="identifier"),
            Column("v", "int"),
        ),
    )
    data = b'holder,v,account\nH1,1,A1\n"H2",2,A2\nH3,3,"A1"\n'
    for size in (1, 5, len(data)):
        out, entry = _run(schema, data, erased=("A1",), size=size)
        assert out == b'holder,v,account\n"H2",2,A2\n'
        assert entry.excluded_rows == 2
        assert entry.digests == {_d("H2"), _d("A2")}


def test_a_header_without_the_identifier_is_refused_without_quoting_it() -> None:
    data = b"id,note,age\n1,Jane Roe,30\n"
    entry = EntryFilter(HEADER_SCHEMA, KEY, frozenset(), name="file 'main'")
    with pytest.raises(UntrustedSourceError, match="'id' \\(occurrence 2\\)") as refused:
        b"".join(entry.filter([data]))
    assert "file 'main'" in str(refused.value)
    assert "nothing was stored" in str(refused.value)
    assert "note" not in str(refused.value)  # a first line may be a record: never quoted


def test_a_field_larger_than_the_csv_limit_is_still_split() -> None:
    big = b'"' + b"x, y\n" * 60_000 + b'"'  # 300 kB quoted, over the csv module's limit
    data = b"id,note,id,age\n1," + big + b",C1,9\n2,short,C2,9\n"
    for size in (len(data), 65536):
        out, entry = _run(HEADER_SCHEMA, data, erased=("C1",), size=size)
        assert out == b"id,note,id,age\n2,short,C2,9\n"
        assert entry.excluded_rows == 1
        assert _d("C2") in entry.digests


# (form feed, U+2028 and NEL split lines for str.splitlines, never for a CSV reader)
_ALPHABET = ["a", "C1", "C2", " ", ",", ",", '"', '"', '""', "\n", "\r\n", "\r", "#", "?",
             "\x0c", "\u2028", "\x85"]  # fmt: skip


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 30)))


def test_the_fallback_splitter_agrees_with_the_csv_module() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        text = _random_text(rng)
        lines = text.encode().splitlines(keepends=True)
        feed = [line.decode() for line in lines]
        reader = csv.reader(feed, delimiter=",", quotechar='"', strict=False)
        expected = [(reader.line_num, row) for row in reader]
        mine = subjects._PythonReader(feed, ",")
        assert [(mine.line_num, row) for row in mine] == expected, text


def _reference(schema: DatasetSchema, data: bytes, erased: set[str]) -> tuple[bytes, int, set]:
    """What the filter must do, from whole-file reads with the csv module."""
    position = 1  # the identifier of the fuzz schema
    raw = data.splitlines(keepends=True)
    feed = ["\n" if line.startswith(b"#") else line.decode() for line in raw]
    reader = csv.reader(feed, delimiter=",", quotechar='"', strict=False)
    kept, excluded, digests, start = [], 0, set(), 0
    for row in reader:
        end = reader.line_num
        # a record too short to reach the identifier: every field may be it
        values = [row[position]] if len(row) > position else row
        if end - start > 1:  # also read line by line (comment lines are "\n" here)
            for line in feed[start:end]:
                parts = next(csv.reader([line.rstrip("\r\n")]), [])
                values += [parts[position]] if len(parts) > position else parts
        names = {v.strip() for v in values} - {"", "?"}
        if row and names & erased:
            excluded += 1
        else:
            kept.extend(raw[start:end])
            digests |= {_d(n) for n in names} if row else set()
        start = end
    kept.extend(raw[start:])
    return b"".join(kept), excluded, digests


def test_random_files_split_like_whole_file_reads_at_any_chunking() -> None:
    schema = DatasetSchema(
        name="fuzz",
        comment_prefix="#",
        missing_values=("?",),
        columns=(Column("a", "string"), Column("who", "string", role="identifier")),
    )
    rng = random.Random(5)
    for _ in range(1500):
        data = _random_text(rng).encode()
        erased = {"C1"} if rng.random() < 0.7 else set()
        expected = _reference(schema, data, erased)
        for size in {1, 3, 7, len(data) or 1}:
            out, entry = _run(schema, data, erased, size)
            assert (out, entry.excluded_rows, entry.digests) == expected, (data, size)


@pytest.mark.parametrize("compact_at", [None, 256])
def test_exclusion_drops_exactly_the_erased_subjects_records(
    compact_at: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compact_at:  # digests merged as they come, not only at the end
        monkeypatch.setattr(subjects, "_COMPACT_AT", compact_at)
    schema = DatasetSchema(
        name="people",
        has_header=True,
        columns=(
            Column("member_id", "string", role="identifier"),
            Column("full_name", "string", role="personal"),
            Column("score", "int"),
        ),
    )
    lines = [b"member_id,full_name,score\n"]
    lines += [f'M{i:04d},"Person {i}, Jr",{i % 7}\n'.encode() for i in range(1000)]
    erased = {"M0003", "M0500", "M0999"}
    out, entry = _run(schema, b"".join(lines), erased, size=4096)
    assert out.splitlines(keepends=True) == [
        line for line in lines if line[:5].decode() not in erased
    ]
    assert entry.excluded_rows == 3
    assert entry.rows == 997
    assert entry.digests == {_d(f"M{i:04d}") for i in range(1000)} - {_d(e) for e in erased}
    assert entry.sorted_digests() == b"".join(sorted(entry.digests))


# -- the subject index -------------------------------------------------------------------------


def _ingestion(n: int) -> str:
    return hashlib.sha256(f"ingestion {n}".encode()).hexdigest()


def test_lookup_finds_the_ingestions_that_hold_a_subject(store: SnapshotStore) -> None:
    people = {n: {_d(f"P{i}") for i in range(n * 10, n * 10 + 40)} for n in range(3)}
    written = {
        n: write_subject_index(store, "members", _ingestion(n), digests, {"created_at": f"t{n}"})
        for n, digests in people.items()
    }
    assert {key.rsplit("/", 2)[-2] for key in store.list_keys("privacy/members/subjects/")} == set(
        subjects.SHARDS
    )  # every shard is written, empty ones too
    assert lookup(store, "members", _h("P0")) == [_ingestion(0)]
    assert lookup(store, "members", _h("P25")) == sorted(_ingestion(n) for n in (0, 1, 2))
    assert lookup(store, "members", _h("P45")) == sorted([_ingestion(1), _ingestion(2)])
    assert lookup(store, "members", _h("nobody")) == []
    assert lookup(store, "other_pipeline", _h("P0")) == []
    catalogues = ingestions(store, "members")
    assert [c["raw_index_sha256"] for c in catalogues] == [_ingestion(n) for n in range(3)]
    assert catalogues[0]["subjects"] == 40
    assert catalogues[0]["shards"] == written[0]["shards"]
    data = store.read_object(written[1]["catalogue_key"])
    assert hashlib.sha256(data).hexdigest() == written[1]["catalogue_sha256"]
    # the same ingestion again: its index stands; another subject list for it is refused
    again = write_subject_index(store, "members", _ingestion(0), people[0], {"created_at": "x"})
    assert not again["created"]
    assert again["catalogue_sha256"] == written[0]["catalogue_sha256"]
    with pytest.raises(IntegrityError):
        write_subject_index(store, "members", _ingestion(0), {_d("P999")}, {"created_at": "x"})


def test_a_malformed_shard_counts_as_holding_the_subject(local_store: LocalSnapshotStore) -> None:
    write_subject_index(local_store, "members", _ingestion(0), {_d("A")}, {})
    shard = _h("B")[0]
    local_store.create_object(shard_key("members", shard, _ingestion(9)), b"\x00" * 15)
    assert lookup(local_store, "members", _h("B")) == [_ingestion(9)]
    hit = scan_subject(local_store, "members", _h("B"))[_ingestion(9)]
    assert hit.malformed
    assert hit.holds


# -- the erasure list --------------------------------------------------------------------------


def test_erasure_entries_are_read_back(local_store: LocalSnapshotStore) -> None:
    signer = signer_for(PRIVACY)
    first = write_erasure_entry(
        local_store, "members", [_h("C1"), _h("C2")], requested_at=utc_now(), reason="req-1",
        signer=signer,
    )  # fmt: skip
    write_erasure_entry(
        local_store, "members", [_h("C9")], requested_at=utc_now(), reason="req-2", signer=signer
    )
    assert first == erasure_key("members", local_store.read_object(first))
    found = erased_subjects(local_store, "members", trust_policy())
    assert found == {_h("C1"), _h("C2"), _h("C9")}
    assert erased_subjects(local_store, "loans", trust_policy()) == frozenset()
    with pytest.raises(PermissionError):
        write_erasure_entry(local_store, "members", [_h("C3")], requested_at=utc_now(),
                            reason="r", signer=signer_for(INGEST))  # fmt: skip


def _store_forged(store: SnapshotStore, data: bytes) -> str:
    key = erasure_key("members", data)
    store.create_object(key, data)
    return key


def test_an_entry_signed_by_another_identity_is_refused(local_store: LocalSnapshotStore) -> None:
    statement = erasure_statement("members", [_h("C1")], utc_now(), "forged")
    forged = attestations.sign(statement, signer_for(INGEST))
    key = _store_forged(local_store, forged)
    ingest_key = signer_for(INGEST).keyid
    with pytest.raises(SignatureError) as refused:
        erased_subjects(local_store, "members", trust_policy())
    message = str(refused.value)
    assert key in message
    assert ingest_key[:16] in message
    assert "privacy" in message


@pytest.mark.parametrize("junk", [b"not an envelope", b'{"payload": "", "signatures": []}'])
def test_an_unsigned_entry_is_refused(local_store: LocalSnapshotStore, junk: bytes) -> None:
    _store_forged(local_store, junk)
    with pytest.raises(SignatureError, match="erasure list entry"):
        erased_subjects(local_store, "members", trust_policy())


def test_a_signed_entry_must_match_its_pipeline_and_subjects(
    local_store: LocalSnapshotStore,
) -> None:
    signer = signer_for(PRIVACY)
    other = attestations.sign(erasure_statement("loans", [_h("C1")], utc_now(), ""), signer)
    _store_forged(local_store, other)
    with pytest.raises(SignatureError, match="is for pipeline 'loans'"):
        erased_subjects(local_store, "members", trust_policy())
    unbound = erasure_statement("members", [_h("C1")], utc_now(), "")
    unbound["predicate"]["subjects"].append(_h("C2"))  # not what the in-toto subject binds
    local_store2 = LocalSnapshotStore(local_store.root.parent / "second")
    _store_forged(local_store2, attestations.sign(unbound, signer))
    with pytest.raises(SignatureError, match="other subjects than it is signed for"):
        erased_subjects(local_store2, "members", trust_policy())


def test_an_erasure_statement_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="subject hash"):
        erasure_statement("members", ["C00001"], utc_now(), "")  # an identifier, not a hash
    with pytest.raises(ValueError, match="1 to"):
        erasure_statement("members", [], utc_now(), "")
    with pytest.raises(ValueError, match="ISO 8601"):
        erasure_statement("members", [_h("C1")], "yesterday", "")
    largest = [hashlib.sha256(str(i).encode()).hexdigest()
               for i in range(subjects.MAX_SUBJECTS_PER_ENTRY)]  # fmt: skip
    statement = erasure_statement("members", largest, utc_now(), "x" * subjects.MAX_REASON_CHARS)
    assert statement["predicateType"] == ERASURE_TYPE
    with pytest.raises(ValueError, match="1 to"):
        erasure_statement("members", [*largest, _h("C1")], utc_now(), "")
    # the largest entry still fits in an envelope
    envelope = attestations.sign(statement, signer_for(PRIVACY))
    assert len(envelope) < attestations.MAX_ENVELOPE_BYTES


# -- the raw asset, end to end -----------------------------------------------------------------

NAMES = [f"Firstname{i:03d} Lastname{i * 7 % 101:03d}" for i in range(60)]
IDS = [f"MBR-{i:05d}" for i in range(60)]


def _members_pipeline(location: Path) -> SecurePipeline:
    return SecurePipeline(
        name="members",
        source=SourceSpec(
            "members",
            (SourceFile("main", "members.csv"),),
            location.as_uri() + "/",
            max_bytes=1 << 20,
        ),  # fmt: skip
        schema=DatasetSchema(
            name="members",
            has_header=True,
            positive_label="yes",
            columns=(
                Column("member_id", "string", role="identifier", source="Member ID"),
                Column("full_name", "string", role="personal"),
                Column("age", "int", minimum=0, maximum=130),
                Column("churned", "category", allowed=("yes", "no"), role="label"),
            ),
        ),
        model=ModelSpec(train_member="main", test_member=None),
        orchestration=OrchestrationSpec(ingest_cron=None),
    )


def _grep_home(home: Path, probes: list[bytes]) -> None:
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        leaked = [p for p in probes if p in data]
        assert not leaked, f"{path} holds {leaked[:2]}"


def _raw_metadata(instance: dg.DagsterInstance, pipeline: SecurePipeline) -> dict:
    event = instance.get_latest_materialization_event(pipeline.names.raw)
    return event.asset_materialization.metadata


def test_raw_asset_encrypts_indexes_and_excludes_erased_subjects(
    isolated_env: Path, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    rows = [f'{IDS[i]},"{NAMES[i]}",{20 + i},{"yes" if i % 3 else "no"}\n' for i in range(60)]
    source = ("Member ID,full_name,age,churned\n" + "".join(rows)).encode()
    (landing / "members.csv").write_bytes(source)
    pipeline = _members_pipeline(landing)
    probes = [n.encode() for n in NAMES] + [i.encode() for i in IDS]
    home = isolated_env
    (home / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        first = materialize(pipeline, instance)
        assert first.success
        checks = {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks.get("provenance_complete") is True, checks
        meta = _raw_metadata(instance, pipeline)
        assert meta["excluded_rows"].value == 0
        assert meta["subjects_indexed"].value == 60
        first_index = meta["sha256"].value
        store = LocalSnapshotStore(home / "store", keyring=keyring_from_environment())
        files = store.read_fileset((meta["snapshot_key"].value, first_index))
        assert files == {"main": source}  # nothing erased yet: stored as received
        member_key = json.loads(store.read_bytes((meta["snapshot_key"].value, first_index)))
        stored = (store.root / member_key["files"]["main"]["key"]).read_bytes()
        assert stored.startswith(MAGIC)  # encrypted at rest
        assert lookup(store, "members", subject_hash(subject_key("members"), IDS[7])) == [
            first_index
        ]
        _grep_home(home, probes)

        # Erase one member; the next ingestion of the same source leaves them out.
        write_erasure_entry(
            store, "members", [subject_hash(subject_key("members"), IDS[7])],
            requested_at=utc_now(), reason="request 1", signer=signer_for(PRIVACY),
        )  # fmt: skip
        second = materialize(pipeline, instance)
        assert second.success
        meta = _raw_metadata(instance, pipeline)
        assert meta["excluded_rows"].value == 1
        assert meta["subjects_indexed"].value == 59
        second_index = meta["sha256"].value
        assert second_index != first_index
        files = store.read_fileset((meta["snapshot_key"].value, second_index))
        assert files["main"] == source.replace(rows[7].encode(), b"")
        (provenance,) = meta["provenance"].value
        assert provenance["facts"]["excluded_rows"] == 1
        assert provenance["facts"]["received_sha256"] == hashlib.sha256(source).hexdigest()
        assert provenance["facts"]["received_bytes"] == len(source)
        assert provenance["sha256"] != provenance["facts"]["received_sha256"]
        checks = {e.asset_check_key.name: e.passed for e in second.get_asset_check_evaluations()}
        assert checks.get("provenance_complete") is True, checks
        key = subject_key("members")
        assert lookup(store, "members", subject_hash(key, IDS[7])) == [first_index]
        assert lookup(store, "members", subject_hash(key, IDS[8])) == sorted(
            [first_index, second_index]
        )
        audit = AuditLog(store).verified_records()
        stored_events = [r for r in audit if r.event == "ingestion.stored"]
        index = stored_events[-1].details["subject_index"]
        assert index["excluded_rows"] == 1
        assert index["subjects"] == 59
        (catalogue,) = [
            c for c in ingestions(store, "members") if c["raw_index_sha256"] == second_index
        ]
        assert catalogue["catalogue_sha256"] == index["catalogue_sha256"]
        assert catalogue["members"]["main"]["key_id"]  # the snapshot's own data key
        _grep_home(home, probes)

        # A forged entry on the list: the next ingestion is refused, naming it.
        forged = attestations.sign(
            erasure_statement("members", [subject_hash(key, IDS[9])], utc_now(), "forged"),
            signer_for(INGEST),
        )
        forged_key = erasure_key("members", forged)
        store.create_object(forged_key, forged)
        refused = materialize(pipeline, instance, raise_on_error=False)
        assert not refused.success
        failure = next(e for e in refused.all_events if e.is_step_failure)
        error = failure.event_specific_data.error.to_string()
        assert "SignatureError" in error
        assert forged_key in error
        assert _raw_metadata(instance, pipeline)["sha256"].value == second_index


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ({"received_sha256": "a" * 64, "received_bytes": 10, "excluded_rows": 0}, None),
        ({"received_sha256": "b" * 64, "received_bytes": 12, "excluded_rows": 2}, None),
        ({"received_sha256": "b" * 64, "received_bytes": 12, "excluded_rows": 0}, "no rows were"),
        ({"received_sha256": "b" * 64, "received_bytes": 10, "excluded_rows": 1}, "no more than"),
        ({"received_sha256": "b" * 64, "received_bytes": 12, "excluded_rows": "1"}, "a count"),
    ],
)
def test_provenance_of_a_filtered_file_must_add_up(facts: dict, problem: str | None) -> None:
    from secure_pipeline.ingestion.provenance import provenance_problems

    record = {
        "member": "main", "uri": "file:///data/x.csv", "connector": "file",
        "retrieved_at": utc_now(), "size": 10, "sha256": "a" * 64, "run_id": "r",
        "schema_version": "v", "facts": {"path": "/data/x.csv", **facts},
    }  # fmt: skip
    found = provenance_problems(
        {"fileset_sha256": "f" * 64, "files": [record]},
        {"files": {"main": {"sha256": "a" * 64, "size": 10}}},
        index_sha256="f" * 64,
        run_id="r",
        schema_version="v",
    )
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0]
