"""The Great Expectations suite generated from the spec, and what it refuses."""

import decimal
import os
import tempfile

import numpy as np
import pytest

from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR
from secure_pipeline.validation.expectations import expectation_suite, run_expectations
from secure_pipeline.validation.parsing import parse_fileset


@pytest.fixture(scope="module")
def adult():
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    return parse_fileset(files, ADULT_SCHEMA).frame


def test_suite_covers_the_batch_rules() -> None:
    kinds = [
        (type(e).__name__, getattr(e, "column", None)) for e in expectation_suite(ADULT_SCHEMA)
    ]
    assert kinds[0] == ("ExpectTableRowCountToBeBetween", None)
    assert ("ExpectColumnValuesToNotBeNull", "workclass") in kinds
    assert ("ExpectColumnMeanToBeBetween", "age") in kinds
    assert ("ExpectColumnMaxToBeBetween", "hours_per_week") in kinds
    assert ("ExpectColumnDistinctValuesToEqualSet", "income") in kinds


def test_adult_meets_its_expectations_and_nothing_is_written(adult, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    report = run_expectations(adult, ADULT_SCHEMA)
    assert report.success
    assert list(workdir.iterdir()) == []
    mean = next(o for o in report.outcomes if o.expectation.endswith("mean_to_be_between")
                and o.column == "age")  # fmt: skip
    assert float(mean.observed) == pytest.approx(38.64, abs=0.01)


@pytest.mark.parametrize(
    ("change", "expectation"),
    [
        (lambda f: f.assign(age=f["age"] + 25).assign(age=lambda g: g["age"].clip(upper=90)),
         "expect_column_mean_to_be_between"),
        (lambda f: f[f["income"] == "<=50K"], "expect_column_distinct_values_to_equal_set"),
        (lambda f: f.assign(occupation=f["occupation"].where(np.arange(len(f)) % 4 != 0)),
         "expect_column_values_to_not_be_null"),
        (lambda f: f.head(1000), "expect_table_row_count_to_be_between"),
    ],
)  # fmt: skip
def test_batches_that_do_not_look_like_the_dataset_fail(adult, change, expectation) -> None:
    report = run_expectations(change(adult.copy()), ADULT_SCHEMA)
    assert not report.success
    assert expectation in {o.expectation for o in report.failed}


def test_speedups_target_what_gx_still_has_and_keep_its_answers() -> None:
    """If GX renames what `_speed_up_gx` replaces, fail here rather than silently slow down."""
    import great_expectations.execution_engine.pandas_execution_engine as engine
    import great_expectations.util as gx_util

    assert hasattr(engine, "HASH_THRESHOLD")
    run_expectations(
        parse_fileset({"t": (DATA_DIR / "adult.data").read_bytes()[:5000]}, ADULT_SCHEMA).frame,
        ADULT_SCHEMA,
    )
    assert engine.HASH_THRESHOLD == 0
    patched = gx_util.does_ndarray_contain_decimal_dtype
    assert getattr(patched, "_secure_pipeline", False)
    assert patched(data=np.array([decimal.Decimal("1.5"), 2], dtype=object)) is True
    assert patched(data=np.array([1.5, 2.0])) is False


def test_no_progress_bars_or_temp_sites(adult, capfd, tmp_path, monkeypatch) -> None:
    # A private temp directory: other processes on the machine may create their own in /tmp.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    run_expectations(adult, ADULT_SCHEMA)
    assert "Calculating Metrics" not in capfd.readouterr().err
    assert not os.listdir(private)


def _row_groups(frame, rows_per_group):
    """``frame`` as the row groups of a Parquet file, read back one at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink,
                   row_group_size=rows_per_group)  # fmt: skip
    file = pq.ParquetFile(pa.BufferReader(sink.getvalue()))
    assert file.num_row_groups > 1
    return file, (file.read_row_group(i) for i in range(file.num_row_groups))


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f,
        lambda f: f.assign(age=f["age"] + 25).assign(age=lambda g: g["age"].clip(upper=90)),
        lambda f: f[f["income"] == "<=50K"],
        lambda f: f.assign(occupation=f["occupation"].where(np.arange(len(f)) % 4 != 0)),
        lambda f: f.head(1000),
        # nulls only in the last row groups: counted wherever they fall
        lambda f: f.assign(workclass=f["workclass"].where(np.arange(len(f)) < len(f) - 9000)),
    ],
    ids=["clean", "mean", "label_set", "nulls", "rows", "late_nulls"],
)
def test_a_batch_streamed_by_row_group_gets_the_outcomes_gx_gives_it_whole(adult, change):
    from secure_pipeline.validation.expectations import STREAMED_ENGINE, stream_expectations

    frame = change(adult.copy()).reset_index(drop=True)
    file, groups = _row_groups(frame, 300 if len(frame) <= 1000 else 4000)
    streamed = stream_expectations(groups, ADULT_SCHEMA)
    whole = run_expectations(file.read().to_pandas(), ADULT_SCHEMA)
    assert streamed.outcomes == whole.outcomes
    assert streamed.success == whole.success
    assert streamed.document["meta"]["engine"] == STREAMED_ENGINE
    assert streamed.document["meta"]["row_groups"] == file.num_row_groups


def test_streamed_float_columns_count_nan_as_missing_and_an_all_null_column_fails() -> None:
    """Float NaN and means, unset bounds, a column null in whole row groups or in all of them,
    and integers whose int64 sum would wrap around."""
    import pandas as pd

    from secure_pipeline.spec import Column, DatasetSchema
    from secure_pipeline.validation.expectations import stream_expectations

    schema = DatasetSchema(
        name="floats",
        columns=(
            Column("x", "float", nullable=True, minimum=0, maximum=10, max_null_fraction=0.5,
                   mean_between=(2, 3)),
            Column("tenth", "float", mean_between=(0, 1)),  # no minimum or maximum
            Column("empty", "float", nullable=True, minimum=0, maximum=10, max_null_fraction=1.0,
                   mean_between=(0, 10)),
            Column("big", "int", mean_between=(0, 9e18)),
        ),
        min_rows=10,  # no max_rows
    )  # fmt: skip
    x = np.arange(40, dtype="float64") % 5  # mean 2.0
    x[:10] = np.nan  # the whole first row group, then 25 % missing
    frame = pd.DataFrame({"x": x, "tenth": np.full(40, 0.1), "empty": np.full(40, np.nan),
                          "big": np.full(40, 4 * 10**18, dtype="int64")})  # fmt: skip
    file, groups = _row_groups(frame, 10)
    streamed = stream_expectations(groups, schema)
    whole = run_expectations(file.read().to_pandas(), schema)
    for mine, theirs in zip(streamed.outcomes, whole.outcomes, strict=True):
        assert (mine.expectation, mine.column, mine.success, mine.expected) == (
            theirs.expectation, theirs.column, theirs.success, theirs.expected)  # fmt: skip
        try:  # a float mean: equal to the last bits (sums added in another order)
            assert float(mine.observed) == pytest.approx(float(theirs.observed), rel=1e-12)
        except ValueError:
            assert mine.observed == theirs.observed
    by = {(o.expectation, o.column): o for o in streamed.outcomes}
    assert by[("expect_column_values_to_not_be_null", "x")].success
    assert by[("expect_column_values_to_not_be_null", "x")].observed.startswith("25.00%")
    assert float(by[("expect_column_mean_to_be_between", "x")].observed) == pytest.approx(2.0)
    # 40 values of 4e18 sum past int64: exact here, the mean is in range
    assert float(by[("expect_column_mean_to_be_between", "big")].observed) == 4e18
    assert by[("expect_column_mean_to_be_between", "big")].success
    # no value at all: no mean, no extremes, and the expectations about them fail
    assert not by[("expect_column_mean_to_be_between", "empty")].success
    assert not by[("expect_column_min_to_be_between", "empty")].success
    assert not streamed.success
