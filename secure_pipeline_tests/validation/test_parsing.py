"""Parsing raw files: every oddity handled explicitly, every problem reported."""

import numpy as np
import pytest

from secure_pipeline.pipeline import Column, DatasetSchema
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline.validation.schema import dataframe_model, validate_batch

ROW = (
    b"39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
    b"Male, 2174, 0, 40, United-States, <=50K"
)

LOANS = DatasetSchema(
    name="loans",
    columns=(
        Column("amount", "float", minimum=0),
        Column("term", "int", minimum=6, maximum=360),
        Column("region", "category", nullable=True, allowed=("N", "S")),
        Column("approved", "bool"),
    ),
    has_header=True,
)


def test_the_adult_files_parse_exactly() -> None:
    files = {m: (DATA_DIR / f).read_bytes() for m, f in (("train", "adult.data"),
                                                         ("test", "adult.test"))}  # fmt: skip
    batch = parse_fileset(files, ADULT_SCHEMA)
    assert batch.problems == []
    assert batch.rejected_lines == []
    assert batch.comment_lines == {"train": 0, "test": 1}  # "|1x3 Cross validator"
    assert batch.raw_rows == {"train": 32561, "test": 16281}
    frame = batch.frame
    # trailing-period labels of adult.test map to the two declared classes
    assert set(frame["income"].astype(str)) == {"<=50K", ">50K"}
    assert (frame[frame["split"] == "test"]["income"] == ">50K").sum() == 3846
    # "?" is a missing value, not a category
    assert frame["workclass"].isna().sum() == 2799
    assert frame["occupation"].isna().sum() == 2809
    assert frame["native_country"].isna().sum() == 857
    assert str(frame["age"].dtype) == "Int64"
    assert batch.type_failures == {}
    assert validate_batch(batch, ADULT_SCHEMA).rejected_rows == 0


def test_lines_with_the_wrong_field_count_are_numbered() -> None:
    data = b"|a comment\n" + ROW + b"\n" + ROW[:60] + b"\n" + ROW + b", extra\n" + ROW + b"\n"
    batch = parse_fileset({"f": data}, ADULT_SCHEMA)
    assert [(r.line, r.reason) for r in batch.rejected_lines] == [
        (3, "expected 15 fields, found 7"),
        (4, "expected 15 fields, found 16"),
    ]
    assert len(batch.frame) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\n\n  \n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not text: it contains NUL bytes"),
        (ROW.replace(b"State-gov", b"St\xe4te-gov") + b"\n", "not valid UTF-8"),
        (b"1;2;3\n4;5;6\n", "no line has the declared 15 fields"),
    ],
)
def test_file_level_problems(data: bytes, message: str) -> None:
    batch = parse_fileset({"train": data}, ADULT_SCHEMA)
    assert any(message in p for p in batch.problems), batch.problems
    assert validate_batch(batch, ADULT_SCHEMA).structural


def test_values_that_do_not_convert_are_failures_not_nulls() -> None:
    data = b"\n".join(
        [
            ROW,
            ROW.replace(b"39,", b"abc,"),
            ROW.replace(b"39,", b"39.5,"),
            ROW.replace(b"77516", b"99999999999999999999999"),
            ROW.replace(b"Male", b"Unknown"),
        ]
    )
    batch = parse_fileset({"train": data}, ADULT_SCHEMA)
    assert np.flatnonzero(batch.type_failures["age"]).tolist() == [1, 2]
    assert batch.type_examples["age"] == ["abc", "39.5"]
    assert np.flatnonzero(batch.type_failures["fnlwgt"]).tolist() == [3]
    assert np.flatnonzero(batch.type_failures["sex"]).tolist() == [4]
    report = validate_batch(batch, ADULT_SCHEMA)
    assert report.structural == []
    assert report.rejected.tolist() == [False, True, True, True, True]
    assert report.reasons[4] == ["sex: not an allowed value"]
    assert report.failures["age"] == {"dtype(int)": 2}  # not also counted as null


def test_header_drift_and_odd_names_are_structural() -> None:
    body = b"100.5,12,N,true\n"
    renamed = parse_fileset({"f": b"amount,term,area,approved\n" + body}, LOANS)
    assert "missing: ['region']" in renamed.problems[0]
    assert "unexpected: ['area']" in renamed.problems[0]
    assert "schema drift" in renamed.problems[0]
    odd = parse_fileset({"f": b"amount, term,region,Approved\n" + body}, LOANS)
    assert "unexpected: [' term', 'Approved']" in odd.problems[0]
    dup = parse_fileset({"f": b"amount,term,region,approved,term\n" + body}, LOANS)
    assert "duplicated: ['term']" in dup.problems[0]
    ok = parse_fileset({"f": b"term,amount,region,approved\n12,100.5,,yes\n"}, LOANS)
    assert ok.problems == []
    assert ok.frame["amount"].tolist() == [100.5]
    assert ok.frame["approved"].tolist() == [True]
    assert ok.frame["region"].isna().tolist() == [True]


def test_a_shifted_column_fails_as_drift_not_as_bad_rows() -> None:
    shifted = b"\n".join(b", ".join(ROW.split(b", ")[1:] + [b"x"]) for _ in range(5))
    report = validate_batch(parse_fileset({"train": shifted}, ADULT_SCHEMA), ADULT_SCHEMA)
    assert any("'age' fails dtype(int) in all 5 rows" in p for p in report.structural)
    assert any("schema drift" in p for p in report.structural)


def test_row_level_failures_are_counted_with_examples() -> None:
    data = b"\n".join([ROW] * 3 + [ROW.replace(b"39,", b"200,"), ROW.replace(b", 40,", b", 0,")])
    report = validate_batch(parse_fileset({"train": data}, ADULT_SCHEMA), ADULT_SCHEMA)
    assert report.structural == []
    assert report.failures["age"] == {"in_declared_range(minimum=17, maximum=90)": 1}
    assert report.examples["age"] == ["200"]
    assert report.failures["hours_per_week"] == {"in_declared_range(minimum=1, maximum=99)": 1}
    assert report.rejected_rows == 2
    assert report.reject_rate == pytest.approx(0.4)


def test_the_generated_model_is_a_strict_dataframe_model() -> None:
    import pandera.pandas as pa

    model = dataframe_model(ADULT_SCHEMA)
    assert issubclass(model, pa.DataFrameModel)
    schema = model.to_schema()
    assert schema.strict is True
    assert set(schema.columns) == {*ADULT_SCHEMA.column_names, "split"}
    assert schema.columns["workclass"].nullable is True
    assert schema.columns["sex"].nullable is False


def test_infinite_floats_are_type_failures() -> None:
    data = b"amount,term,region,approved\n1e999,12,N,yes\n-1e999,12,N,yes\n12.5,12,N,yes\n"
    batch = parse_fileset({"f": data}, LOANS)
    assert np.flatnonzero(batch.type_failures["amount"]).tolist() == [0, 1]
    assert batch.type_examples["amount"] == ["1e999", "-1e999"]
    assert np.isfinite(batch.frame["amount"].dropna()).all()
    report = validate_batch(batch, LOANS)
    assert report.rejected.tolist() == [True, True, False]
