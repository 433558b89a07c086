"""Column roles, source names and the new types at entry: what reaches each snapshot after
``raw_*``, how a repeated header name is read, and the row rules of dates and strings."""

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.ingestion.assets import declared_table_schema
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    FeatureSpec,
    ModelSpec,
    SecurePipeline,
    SecurityPolicy,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.validation.parsing import WITHHELD, parse_fileset
from secure_pipeline.validation.pseudonyms import (
    KEY_VARIABLE,
    local_key_path,
    pseudonym_key,
    pseudonymise,
)
from secure_pipeline.validation.quarantine import quarantine_table
from secure_pipeline.validation.schema import validate_batch, validated_rows
from secure_pipeline_tests.helpers import materialize

COLUMNS = (
    Column("case_id", "string", role="identifier", pattern=r"C[0-9]{4}"),
    Column("full_name", "string", role="personal"),
    Column(
        "date_of_birth",
        "date",
        role="personal",
        format="%d/%m/%Y",
        earliest="1900-01-01",
        latest="2010-12-31",
    ),
    Column("person_id", "string", role="personal", pseudonymise=True),
    Column("score_first", "int", source="score", occurrence=1, minimum=0, maximum=10),
    Column("score_second", "int", source="score", occurrence=2, minimum=0, maximum=10),
    Column("screening_date", "date", earliest="2013-01-01", latest="2014-12-31"),
    Column("notes", "int", role="ignore"),  # declared int: an ignored column is never converted
    Column("region", "category", allowed=("N", "S")),
    Column("outcome", "category", allowed=("yes", "no")),
)
CASES = DatasetSchema(
    name="cases", columns=COLUMNS, label="outcome", positive_label="yes", has_header=True
)
# A header in its own order, repeating "score": the first is score_first, the second score_second.
HEADER = "person_id,case_id,score,full_name,notes,date_of_birth,score,screening_date,region,outcome"


def _row(i: int, **change: str) -> str:
    values = {
        "person_id": f"P-{i:05d}",
        "case_id": f"C{1000 + i}",
        "score": str(i % 11),
        "full_name": f"Zelda Quixote{i:02d}",
        "notes": f"secret-note-{i}",
        "date_of_birth": f"{1 + i % 28:02d}/03/{1950 + i}",
        "score2": str((i * 7) % 11),
        "screening_date": f"2013-{1 + i % 12:02d}-15",
        "region": "NS"[i % 2],
        "outcome": "yes" if i % 11 >= 5 else "no",  # learnable: a clean batch
    }
    values.update(change)
    return ",".join(values.values())


GOOD_ROWS = [_row(i) for i in range(40)]
# Rows each rule must quarantine (index in the file -> what is wrong).
BAD_ROWS = {
    40: _row(40, date_of_birth="31/02/1980"),  # no such day
    41: _row(41, date_of_birth="01/01/1890"),  # before earliest
    42: _row(42, screening_date="2015-06-01"),  # after latest
    43: _row(43, screening_date="13/08/2013"),  # not ISO 8601
    44: _row(44, case_id="X12"),  # does not match the pattern
}
SHORT_LINE = "P-09999,C9999,3,Zelda Quixote99"  # too few fields: no column can be trusted


def _file(rows: list[str]) -> bytes:
    return ("\n".join([HEADER, *rows]) + "\n").encode()


def cases_pipeline(location: str) -> SecurePipeline:
    return SecurePipeline(
        name="cases",
        source=SourceSpec(
            name="cases",
            files=(SourceFile("main", "cases.csv"),),
            location=location,
            max_bytes=1 << 16,
        ),
        schema=DatasetSchema(
            name="cases",
            columns=COLUMNS,
            label="outcome",
            positive_label="yes",
            has_header=True,
            min_rows=8,
        ),
        sensitive_features=("region",),
        features=FeatureSpec(),
        policy=SecurityPolicy(max_reject_rate=0.2, drift_warn_psi=0.1, drift_fail_psi=0.25),
        model=ModelSpec(train_member="main", test_member=None),
    )


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


# -- header: source names and repeated names -------------------------------------------------


def test_a_repeated_header_name_is_read_by_source_and_occurrence() -> None:
    batch = parse_fileset({"main": _file(GOOD_ROWS[:3])}, CASES)
    assert batch.problems == []
    # Each column from its own occurrence of "score", whatever the header's order.
    assert batch.frame["score_first"].tolist() == [0, 1, 2]
    assert batch.frame["score_second"].tolist() == [0, 7, 3]
    assert batch.frame["case_id"].tolist() == ["C1000", "C1001", "C1002"]
    # Ignored columns are not in the frame: counted as a field, never read.
    assert "notes" not in batch.frame.columns
    assert "notes" not in batch.text.column_names


def test_a_renamed_header_column_is_still_schema_drift() -> None:
    renamed = _file(GOOD_ROWS[:3]).replace(b",score,screening", b",points,screening", 1)
    problem = parse_fileset({"main": renamed}, CASES).problems[0]
    assert "unexpected: ['points']" in problem
    assert "fewer occurrences than declared: 'score' 1 of 2 times" in problem
    assert "schema drift" in problem
    added = _file(GOOD_ROWS[:3]).replace(b",outcome\n", b",outcome,extra\n", 1)
    assert "unexpected: ['extra']" in parse_fileset({"main": added}, CASES).problems[0]
    # An ignored column must be there too: presence is what is checked of it.
    missing = "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 4)
                        for line in [HEADER, *GOOD_ROWS[:3]]).encode()  # fmt: skip
    assert "missing: ['notes']" in parse_fileset({"main": missing}, CASES).problems[0]


def test_the_duplicate_name_error_names_the_duplicate_and_how_to_declare_it() -> None:
    schema = DatasetSchema(
        name="loans",
        columns=(Column("amount", "float"), Column("term", "int"), Column("region", "string")),
        has_header=True,
    )
    problem = parse_fileset({"f": b"amount,term,region,term\n1.5,12,N,24\n"}, schema).problems[0]
    assert "duplicated: ['term']" in problem
    assert "'term' 2 times (declared 1)" in problem
    assert "source='term' and occurrence=1, 2" in problem
    # It names what is wrong, not every column of the file.
    assert "amount" not in problem
    assert "region" not in problem


def test_an_undeclared_occurrence_is_refused() -> None:
    # Declared outside a PipelineSpec (which refuses this itself): occurrences 1 and 3.
    schema = DatasetSchema(
        name="s",
        columns=(
            Column("a", "int", source="x", occurrence=1),
            Column("b", "int", source="x", occurrence=3),
        ),
        has_header=True,
    )
    problem = parse_fileset({"f": b"x,x\n1,2\n"}, schema).problems[0]
    assert "header name 'x' occurrence 2 is not declared (declared occurrences: [1, 3])" in problem


def test_an_ignored_column_counts_as_a_field() -> None:
    batch = parse_fileset({"main": _file([*GOOD_ROWS[:3], SHORT_LINE])}, CASES)
    assert batch.problems == []
    assert len(batch.frame) == 3
    (line,) = batch.rejected_lines
    assert line.reason == "expected 10 fields, found 4"
    # The line cannot be split into columns, so its text (a name here) is not kept either.
    assert line.text == WITHHELD


# -- dates and strings -----------------------------------------------------------------------


def _reasons(rows: list[str]) -> tuple[object, dict[str, list[str]]]:
    batch = parse_fileset({"main": _file(rows)}, CASES)
    report = validate_batch(batch, CASES)
    assert report.structural == []
    ids = batch.frame["case_id"].tolist()
    return report, {ids[p]: r for p, r in report.reasons.items()}


def test_dates_are_parsed_with_their_format_or_iso() -> None:
    batch = parse_fileset({"main": _file(GOOD_ROWS[:2])}, CASES)
    assert str(batch.frame["date_of_birth"].dtype) == "datetime64[us]"
    assert batch.frame["date_of_birth"].dt.strftime("%Y-%m-%d").tolist() == [
        "1950-03-01",
        "1951-03-02",
    ]
    assert batch.frame["screening_date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2013-01-15",
        "2013-02-15",
    ]
    schema = DatasetSchema(
        name="t", columns=(Column("n", "int"), Column("at", "datetime", nullable=True))
    )
    data = (
        b"1,2013-08-14 06:03:42\n2,2013-08-14T06:03:42.5\n3,2013-08-14T08:03:42+02:00\n4,\n"
        b"5,2013-13-01\n"
    )
    batch = parse_fileset({"f": data}, schema)
    assert [str(v) for v in batch.frame["at"]] == [
        "2013-08-14 06:03:42",
        "2013-08-14 06:03:42.500000",
        "2013-08-14 06:03:42",  # an offset is converted to UTC
        "NaT",  # blank: missing, allowed
        "NaT",  # month 13: a type failure, not a silent null
    ]
    assert batch.type_failures["at"].tolist() == [False, False, False, False, True]


def test_malformed_and_out_of_range_dates_are_quarantined() -> None:
    report, reasons = _reasons(GOOD_ROWS + [BAD_ROWS[i] for i in (40, 41, 42, 43)])
    assert reasons == {
        "C1040": ["date_of_birth: not a valid date (format %d/%m/%Y)"],
        "C1041": ["date_of_birth: not_before(earliest=1900-01-01)"],
        "C1042": ["screening_date: not_after(latest=2014-12-31)"],
        "C1043": ["screening_date: not a valid date (ISO 8601, YYYY-MM-DD)"],
    }
    assert report.rejected_rows == 4
    # A personal column's failing values are checked but never quoted.
    assert report.examples["date_of_birth"] == [WITHHELD]
    assert report.examples["screening_date"] == ["13/08/2013", "2015-06-01 00:00:00"]


def test_a_date_with_a_time_of_day_is_not_a_date() -> None:
    schema = DatasetSchema(name="t", columns=(Column("d", "date", format="%Y-%m-%d %H:%M"),))
    batch = parse_fileset({"f": b"2013-08-14 00:00\n2013-08-14 06:03\n"}, schema)
    assert batch.type_failures["d"].tolist() == [False, True]


def test_string_length_and_pattern_failures_are_quarantined() -> None:
    schema = DatasetSchema(
        name="codes",
        columns=(
            Column("code", "string", min_length=3, max_length=5),
            Column("ref", "string", pattern=r"[A-Z]{2}[0-9]+", nullable=True),
        ),
        missing_values=("?",),
    )
    data = b"abc,AB12\nab,AB12\nabcdef,AB1\nabcd,AB12x\nabcd,xAB12\nabcd,?\nabc,AB\nabc,\n"
    report = validate_batch(parse_fileset({"f": data}, schema), schema)
    assert report.structural == []
    length = "code: length_within(min_length=3, max_length=5)"
    pattern = "ref: full_match(pattern=[A-Z]{2}[0-9]+)"
    assert report.reasons == {
        1: [length],  # too short
        2: [length],  # too long
        3: [pattern],  # a match, but not of the whole value
        4: [pattern],
        6: [pattern],
        7: [pattern],  # empty text is a value of a string column; "?" is the missing token
    }
    assert report.rejected.tolist() == [False, True, True, True, True, False, True, True]


# -- personal and ignored values never leave entry --------------------------------------------


def test_validated_rows_hold_exactly_the_kept_columns_with_keyed_pseudonyms() -> None:
    assert CASES.kept_names == (
        "case_id",
        "person_id",
        "score_first",
        "score_second",
        "screening_date",
        "region",
        "outcome",
    )
    batch = parse_fileset({"main": _file(GOOD_ROWS[:4])}, CASES)
    report = validate_batch(batch, CASES)
    key = pseudonym_key("cases")
    frame = validated_rows(batch, report, CASES, key)
    assert list(frame.columns) == [*CASES.kept_names, "split"]
    expected = [hmac.new(key, f"P-{i:05d}".encode(), hashlib.sha256).hexdigest() for i in range(4)]
    assert frame["person_id"].tolist() == expected
    with pytest.raises(ConfigurationError, match="no pseudonymisation key"):
        validated_rows(batch, report, CASES, None)
    with pytest.raises(ConfigurationError, match="no pseudonymisation key"):
        quarantine_table(batch, report, CASES, None)


def test_pseudonyms_keep_nulls_and_equal_values_equal() -> None:
    key = bytes(range(32))
    out = pseudonymise(["a", None, "a", "b"], key)
    assert out[1] is None
    assert out[0] == out[2] == hmac.new(key, b"a", hashlib.sha256).hexdigest()
    assert out[3] != out[0]
    assert pseudonymise(["a"], bytes(32)) != out[:1]  # another key, another pseudonym


def _plaintext(store_root: Path, path: Path) -> bytes:
    """A stored object's bytes, decrypted through the store when it is an encrypted snapshot."""
    from secure_pipeline.storage.encryption import is_encrypted
    from secure_pipeline.storage.keyrings import LocalKeyring
    from secure_pipeline.storage.local import LocalSnapshotStore
    from secure_pipeline.trust.keys import dev_keys_dir

    data = path.read_bytes()
    if not is_encrypted(data):
        return data
    store = LocalSnapshotStore(store_root, keyring=LocalKeyring(dev_keys_dir() / "data-keys"))
    return store.read_bytes((path.relative_to(store_root).as_posix(), path.name.split(".")[0]))


def _snapshot_values(store_root: Path, raw_dir: str) -> tuple[list[str], str]:
    """Every snapshot file under the store except the raw files, and their content as text
    (Parquet read back to its values; JSON and the rest as stored)."""
    names, parts = [], []
    for path in sorted(store_root.rglob("*")):
        if not path.is_file() or raw_dir in path.relative_to(store_root).parts:
            continue
        names.append(path.relative_to(store_root).as_posix())
        data = _plaintext(store_root, path)
        if path.suffix == ".parquet":
            table = pq.read_table(pa.BufferReader(data))
            parts.append(json.dumps(table.to_pylist(), default=str))
            parts.append(str(table.schema.metadata))
        else:
            parts.append(data.decode("utf-8", "replace"))
    return names, "\n".join(parts)


def test_personal_and_ignored_values_are_in_no_snapshot_after_raw(
    instance, tmp_path, isolated_env
) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    rows = GOOD_ROWS + list(BAD_ROWS.values()) + [SHORT_LINE]
    (folder / "cases.csv").write_bytes(_file(rows))
    pipeline = cases_pipeline(folder.as_uri() + "/")
    result = materialize(
        pipeline,
        instance,
        assets=["raw_cases", "validated_cases", "features"],
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    checks = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    assert ("reject_rate_within_limit", True) in checks
    assert ("expectations_met", True) in checks
    assert ("feature_drift", True) in checks

    store_root = isolated_env / "store"
    names, text = _snapshot_values(store_root, "raw_cases")
    assert any("validated_cases" in n and n.endswith(".parquet") for n in names)
    assert any("_quarantine" in n for n in names)
    assert any("/features/" in f"/{n}" for n in names)
    assert any("_expectations" in n for n in names)
    # The values the raw file holds (raw_* keeps them as evidence, byte for byte) ...
    raw_files = [p for p in store_root.rglob("*.csv") if "raw_cases" in p.parts]
    # encrypted at rest: the bytes on disk hold none of it
    assert raw_files
    assert not any(b"Quixote" in p.read_bytes() for p in raw_files)
    raw = b"".join(_plaintext(store_root, p) for p in raw_files)
    assert b"Zelda Quixote07" in raw
    assert b"secret-note-7" in raw
    assert b"P-00007" in raw
    # ... are nowhere after it.
    forbidden = ["Quixote", "secret-note", "P-0", "/03/19"]
    forbidden += [f"{1950 + i}-03-{1 + i % 28:02d}" for i in range(45)]  # parsed dates of birth
    for value in forbidden:
        assert value not in text, value
    # Nor in what the run reported (check metadata, examples, descriptions).
    reported = "\n".join(str(e.event_specific_data) for e in result.all_events)
    for value in forbidden:
        assert value not in reported, value

    validated = instance.get_latest_materialization_event(
        dg.AssetKey(["cases", "validated_cases"])
    ).asset_materialization.metadata
    key = validated["snapshot_key"].value
    table = pq.read_table(pa.BufferReader(_plaintext(store_root, store_root / key)))
    assert table.column_names == [*CASES.kept_names, "split"]
    assert table.num_rows == 40
    pseudonyms = table.column("person_id").to_pylist()
    secret = pseudonym_key("cases")
    assert pseudonyms == [
        hmac.new(secret, f"P-{i:05d}".encode(), hashlib.sha256).hexdigest() for i in range(40)
    ]
    assert table.column("case_id").to_pylist()[:2] == ["C1000", "C1001"]  # identifiers stay

    quarantined = store_root / validated["quarantine_uri"].value.split("/store/", 1)[1]
    quarantine = pq.read_table(pa.BufferReader(_plaintext(store_root, quarantined)))
    assert "full_name" not in quarantine.column_names
    assert "date_of_birth" not in quarantine.column_names
    assert "notes" not in quarantine.column_names
    rows = {r["case_id"]: r for r in quarantine.to_pylist()}
    assert rows["C1040"]["reason"] == "date_of_birth: not a valid date (format %d/%m/%Y)"
    assert rows["C1040"]["person_id"] == pseudonymise(["P-00040"], secret)[0]
    assert rows["C1042"]["reason"] == "screening_date: not_after(latest=2014-12-31)"
    assert rows["C1042"]["screening_date"] == "2015-06-01"  # kept columns show what arrived
    assert rows[None]["text"] == WITHHELD  # the unparseable line

    # The table schema shown in Dagster names each column's role.
    roles = {c.name: c.tags["role"] for c in validated["dagster/column_schema"].schema.columns}
    assert roles == {
        "case_id": "identifier",
        "person_id": "personal",
        "score_first": "feature",
        "score_second": "feature",
        "screening_date": "feature",
        "region": "sensitive",
        "outcome": "label",
        "split": "split",
    }
    # The raw asset's declared schema shows every column of the file, dropped ones too.
    raw_roles = {c.name: c.tags["role"] for c in declared_table_schema(pipeline).columns}
    assert raw_roles["notes"] == "ignore"
    assert raw_roles["full_name"] == "personal"
    assert len(raw_roles) == len(COLUMNS)


# -- the pseudonymisation key ----------------------------------------------------------------


def test_production_refuses_to_pseudonymise_without_its_key() -> None:
    with pytest.raises(ConfigurationError) as refused:
        pseudonym_key("cases", Environment.PRODUCTION)
    assert KEY_VARIABLE in str(refused.value)
    assert "openssl rand -hex 32" in str(refused.value)
    # Nothing generated behind the operator's back (a name no other test uses).
    with pytest.raises(ConfigurationError):
        pseudonym_key("never_keyed", Environment.PRODUCTION)
    assert not local_key_path("never_keyed").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ab" * 16, "holds 16 bytes"),
        (base64.b64encode(bytes(20)).decode(), "holds 20 bytes"),
        ("not a key!", "neither hex nor base64"),
    ],
)
def test_a_weak_or_malformed_key_is_refused(monkeypatch, value: str, message: str) -> None:
    monkeypatch.setenv(KEY_VARIABLE, value)
    with pytest.raises(ConfigurationError, match=message) as refused:
        pseudonym_key("cases", Environment.PRODUCTION)
    assert value not in str(refused.value)  # a key is never quoted back


def test_the_configured_key_is_derived_per_pipeline(monkeypatch) -> None:
    secret = os.urandom(32)
    monkeypatch.setenv(KEY_VARIABLE, secret.hex())
    from_hex = pseudonym_key("cases", Environment.PRODUCTION)
    monkeypatch.setenv(KEY_VARIABLE, base64.b64encode(secret).decode())
    assert pseudonym_key("cases", Environment.PRODUCTION) == from_hex
    assert pseudonym_key("loans", Environment.PRODUCTION) != from_hex
    assert len(from_hex) == 32
    assert secret not in from_hex


def test_the_local_key_is_generated_once_readable_by_its_owner_only(isolated_env) -> None:
    first = pseudonym_key("cases", Environment.LOCAL)
    path = local_key_path("cases")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert isolated_env not in path.parents  # not with the snapshots it would undo
    assert not list(path.parent.glob("*.pub"))
    assert pseudonym_key("cases", Environment.LOCAL) == first
    assert pseudonym_key("other", Environment.LOCAL) != first
    path.chmod(0o644)
    try:
        with pytest.raises(ConfigurationError, match="chmod 600"):
            pseudonym_key("cases", Environment.LOCAL)
    finally:
        path.chmod(0o600)


def test_a_pseudonym_is_not_a_plain_hash() -> None:
    value = "P-00001"
    assert (
        pseudonymise([value], pseudonym_key("cases"))[0]
        != hashlib.sha256(value.encode()).hexdigest()
    )
    assert np.unique(pseudonymise([f"P-{i}" for i in range(100)], bytes(32))).size == 100
