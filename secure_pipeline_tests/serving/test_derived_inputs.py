"""Derived features at serving: the inputs they read, dates in requests, the training encodings.

The model server derives the model's inputs from a request's raw columns with the same code as
`build_features`; these tests send the rows a source file holds and compare what the server
computes with what training computes from the validated rows (through the real CSV parser),
feature by feature and prediction by prediction.
"""

import dataclasses
import datetime as dt
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.engineering import LABEL_COLUMN, build_features, feature_catalog
from secure_pipeline.serving.server import (
    InputField,
    RequestError,
    ServingLimits,
    input_fields,
    rows_to_frame,
)
from secure_pipeline.spec import Column
from secure_pipeline.training.models import build_model, model_inputs
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.features.test_derived import (
    ROWS,
    STATUS,
    csv_bytes,
    derived_pipeline,
    validated_frame,
)

PIPELINE = derived_pipeline()
INPUTS = model_inputs(PIPELINE)[0].columns  # every feature but sex (excluded from the model)
FIELDS = input_fields(PIPELINE, INPUTS)


def _request(rows: list[dict[str, Any]], fields: list[InputField] = FIELDS) -> list[dict]:
    """The rows as a caller sends them: only the fields the model's inputs read."""
    return [{f.name: row[f.name] for f in fields} for row in rows]


def _served(rows: list[dict[str, Any]], inputs: list[str] = INPUTS) -> pd.DataFrame:
    fields = input_fields(PIPELINE, inputs)
    return rows_to_frame(_request(rows, fields), fields, PIPELINE, inputs, ServingLimits())


def _random_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rows within the schema, a sixth of each nullable value missing, edges often."""
    rng = random.Random(seed)

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    rows = []
    for i in range(count):
        applied = dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rng.randrange(10**9))
        dependents = rng.randrange(11)
        rows.append({
            "case_id": f"c{i}",
            "personal_status": maybe(rng.choice(STATUS)),
            "purpose": maybe(rng.choice(["new car", "used car", "education", "repairs"])),
            "dependents": maybe(dependents),
            "foreign_worker": maybe(rng.random() < 0.5),
            "duration": maybe(rng.choice([1, 11, 12, 24, 36, 120, rng.randrange(1, 121)])),
            "amount": maybe(rng.choice([0.0, 1000.0, 5000.0, round(rng.uniform(0, 9e3), 2)])),
            "dob": maybe((dt.date(1900, 1, 1) + dt.timedelta(rng.randrange(40000))).isoformat()),
            "screening_date": maybe(
                (dt.date(2000, 1, 1) + dt.timedelta(rng.randrange(11000))).strftime("%d/%m/%Y")
            ),
            "applied_at": maybe(applied.isoformat()),
            "decided_at": maybe(
                (applied + dt.timedelta(seconds=rng.randrange(10**7))).isoformat()
            ),
            "risk": "bad" if dependents > 6 or rng.random() < 0.2 else "good",
        })  # fmt: skip
    return rows


def test_inputs_are_every_column_the_features_read_in_schema_order() -> None:
    assert [f.name for f in FIELDS] == [
        "personal_status", "purpose", "dependents", "foreign_worker", "duration", "amount",
        "dob", "screening_date", "applied_at", "decided_at",
    ]  # fmt: skip
    # a date difference reads both of its dates; a map its source, a string column
    assert [f.name for f in input_fields(PIPELINE, ["age_years"])] == ["dob", "screening_date"]
    assert [f.name for f in input_fields(PIPELINE, ["purpose_group"])] == ["purpose"]
    purpose = input_fields(PIPELINE, ["purpose_group"])[0].column
    assert (purpose.min_length, purpose.max_length, purpose.pattern) == (2, 20, "[a-z ]+")
    # only what the model reads: without the derived sex and the code it is mapped from, the
    # request carries no personal status
    assert "personal_status" not in [f.name for f in input_fields(PIPELINE, ["wait_days"])]


def test_request_rows_encode_exactly_as_training_does() -> None:
    names = [f.name for f in feature_catalog(PIPELINE)]
    trained = build_features(validated_frame(ROWS), PIPELINE)
    pd.testing.assert_frame_equal(_served(ROWS, names), trained[names])
    rows = _random_rows(400, seed=3)
    parsed = parse_fileset({"train": csv_bytes(rows)}, PIPELINE.schema)
    assert not parsed.type_failures
    trained = build_features(parsed.frame, PIPELINE)
    pd.testing.assert_frame_equal(_served(rows, names), trained[names])
    assert (trained["household"] == -1).sum() > 100  # the unlisted and the missing
    assert trained["wait_days"].isna().sum() > 50


def test_predictions_are_the_training_ones() -> None:
    rows = _random_rows(600, seed=5)
    trained = build_features(validated_frame(rows), PIPELINE)
    # gradient boosting: it takes the missing numbers (a date difference of a missing date) as
    # they are
    boosted = dataclasses.replace(PIPELINE.model, estimator="hist_gradient_boosting")
    model = build_model(dataclasses.replace(PIPELINE, model=boosted))
    model.fit(trained[INPUTS], trained[LABEL_COLUMN])
    served = model.predict_proba(_served(rows))[:, 1]
    assert np.array_equal(served, model.predict_proba(trained[INPUTS])[:, 1])
    assert served.std() > 0.01  # a model that learned something, not a constant


def test_json_numbers_and_booleans_map_like_the_file() -> None:
    """An integer sent as 2.0 is the integer 2; a boolean map reads true and false."""
    row = {**ROWS[0], "dependents": 2.0, "foreign_worker": False}
    served = _served([row], ["household", "foreign"])
    assert served.to_dict("records") == [{"household": 2, "foreign": 1}]


def test_dates_with_offsets_are_read_as_validation_reads_them() -> None:
    """An offset is converted to UTC, a space may separate date and time, as in the file."""
    row = {**ROWS[0], "applied_at": "2020-01-01T08:00:00+01:00",
           "decided_at": "2020-01-03 20:00:00"}  # fmt: skip
    parsed = parse_fileset({"train": csv_bytes([row])}, PIPELINE.schema)
    assert not parsed.type_failures
    trained = build_features(parsed.frame, PIPELINE)
    served = _served([row])
    assert served["wait_days"][0] == pytest.approx(2.5 + 1 / 24)
    pd.testing.assert_frame_equal(served, trained[INPUTS])


def test_free_text_is_cleaned_as_validation_cleans_it() -> None:
    """Trimmed, aliases applied, the missing token missing: mapped as training maps the file."""
    rows = [{**ROWS[0], "purpose": purpose}
            for purpose in (" used car ", "car (new)", "NA", "education\t")]  # fmt: skip
    parsed = parse_fileset({"train": csv_bytes(rows)}, PIPELINE.schema)
    assert not parsed.type_failures
    trained = build_features(parsed.frame, PIPELINE)
    served = _served(rows)
    assert served["purpose_group"].tolist() == [0, 0, -1, 1]
    pd.testing.assert_frame_equal(served, trained[INPUTS])


def _problems(*changes: dict[str, Any]) -> dict[tuple[int, str], tuple[str, Any]]:
    """The 422 problems of one row per change: ``(row, field)`` to what was expected, found."""
    rows = [{**_request(ROWS[:1])[0], **change} for change in changes]
    with pytest.raises(RequestError) as refused:
        rows_to_frame(rows, FIELDS, PIPELINE, INPUTS, ServingLimits())
    assert refused.value.status == 422
    body = refused.value.body()
    assert body["error"] == "rows do not match the model's input schema"
    assert body["fields"]["dob"] == "date"
    return {(p["row"], p["field"]): (p["expected"], p.get("found")) for p in body["problems"]}


def test_malformed_and_out_of_range_dates_are_refused_naming_the_field() -> None:
    iso_date = "an ISO 8601 date string such as 2013-08-14"
    iso_datetime = "an ISO 8601 datetime string such as 2013-08-14T06:03:42"
    problems = _problems(
        {"dob": "1899-12-31"},
        {"dob": "2011-01-01"},
        {"dob": "1980-13-01"},
        {"dob": "1980-01-01T10:00:00"},  # a time of day is not a date
        {"dob": 19800101},
        {"screening_date": "2020-01-01"},  # ISO, but the column's format is day/month/year
        {"screening_date": "31/12/1999"},
        {"decided_at": "yesterday"},
        {"decided_at": "1999-12-31T23:59:59"},
        {"decided_at": "2000-01-01T01:00:00+02:00"},  # 1999-12-31 23:00 UTC
        {"decided_at": "9999-12-31T23:59:59-01:00"},  # in UTC, after the last representable
    )
    assert problems == {
        (0, "dob"): ("a date on or after 1900-01-01", "1899-12-31"),
        (1, "dob"): ("a date on or before 2010-12-31", "2011-01-01"),
        (2, "dob"): (iso_date, "1980-13-01"),
        (3, "dob"): (iso_date, "1980-01-01T10:00:00"),
        (4, "dob"): (iso_date, 19800101),
        (5, "screening_date"): ("a date string in the format %d/%m/%Y", "2020-01-01"),
        (6, "screening_date"): ("a date on or after 2000-01-01", "31/12/1999"),
        (7, "decided_at"): (iso_datetime, "yesterday"),
        (8, "decided_at"): ("a datetime on or after 2000-01-01T00:00:00", "1999-12-31T23:59:59"),
        (9, "decided_at"): (
            "a datetime on or after 2000-01-01T00:00:00", "2000-01-01T01:00:00+02:00"
        ),
        (10, "decided_at"): (iso_datetime, "9999-12-31T23:59:59-01:00"),
    }  # fmt: skip


def test_dates_on_their_bounds_and_missing_dates_are_accepted() -> None:
    rows = [
        {**ROWS[0], "dob": "1900-01-01", "screening_date": "01/01/2000"},
        {**ROWS[0], "dob": "2010-12-31", "screening_date": "31/12/2030"},
        {**ROWS[0], "dob": None, "decided_at": "2000-01-01T00:00:00"},
    ]
    served = _served(rows)
    assert served["age_days"][0] == (dt.date(2000, 1, 1) - dt.date(1900, 1, 1)).days
    assert served["age_days"][1] == (dt.date(2030, 12, 31) - dt.date(2010, 12, 31)).days
    assert np.isnan(served["age_years"][2])


def test_string_rules_apply_to_a_mapped_string_column() -> None:
    problems = _problems({"purpose": "x"}, {"purpose": "a" * 21}, {"purpose": "New Car"},
                         {"purpose": 5}, {"purpose": None})  # fmt: skip
    assert problems == {
        (0, "purpose"): ("a string of at least 2 characters", "x"),
        (1, "purpose"): ("a string of at most 20 characters", "a" * 21),
        (2, "purpose"): ("a string matching [a-z ]+", "New Car"),
        (3, "purpose"): ("a string", 5),
    }  # a missing purpose is allowed (nullable): the map gives it -1


def test_an_input_source_may_not_be_null_when_the_column_is_not_nullable() -> None:
    """A non-nullable date refuses null like any other field."""
    dob = next(c for c in PIPELINE.schema.columns if c.name == "dob")
    strict = InputField(Column("dob", "date", earliest=dob.earliest))
    assert strict.check(None) == "a value (this field may not be null)"
    assert strict.check("1899-12-31") == "a date on or after 1900-01-01"
    assert strict.check("1950-06-01") is None
