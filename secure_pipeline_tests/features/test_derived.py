"""Derived features: value maps, bands and date differences, as `build_features` computes them.

The spec is shaped like the public credit-scoring table (a combined "personal status and sex"
code) with the dates of a screening table; the validated frames are built with the types
validation gives them (categoricals, nullable integers and booleans, ``datetime64`` dates), and
once through the real CSV parser and a real Parquet round trip.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.assets import build_features_stage
from secure_pipeline.features.drift import population_stability
from secure_pipeline.features.engineering import (
    build_features,
    describe_derivation,
    feature_catalog,
    feature_column,
)
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    DerivedColumn,
    FeatureSpec,
    ModelSpec,
    SecurePipeline,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN
from secure_pipeline.storage.tables import parquet_to_table, table_to_parquet, to_arrow
from secure_pipeline.validation.parsing import parse_fileset

STATUS = ("A91", "A92", "A93", "A94", "A95")
COLUMNS = (
    Column("case_id", "string", role="identifier"),
    Column("personal_status", "category", nullable=True, allowed=STATUS),
    Column(
        "purpose",
        "string",
        nullable=True,
        min_length=2,
        max_length=20,
        pattern="[a-z ]+",
        aliases=(("car (new)", "new car"),),
    ),
    Column("dependents", "int", nullable=True, minimum=0, maximum=10),
    Column("foreign_worker", "bool", nullable=True),
    Column("duration", "int", nullable=True, minimum=1, maximum=120),
    Column("amount", "float", nullable=True, minimum=0),
    Column("dob", "date", nullable=True, earliest="1900-01-01", latest="2010-12-31"),
    Column(
        "screening_date",
        "date",
        nullable=True,
        format="%d/%m/%Y",
        earliest="2000-01-01",
        latest="2030-12-31",
    ),
    Column("applied_at", "datetime", nullable=True),
    Column("decided_at", "datetime", nullable=True, earliest="2000-01-01T00:00:00"),
    Column("risk", "category", allowed=("good", "bad"), role="label"),
)
DERIVED = (
    DerivedColumn(
        "sex",
        "map",
        "personal_status",
        sensitive=True,
        values=(
            ("A91", "male"),
            ("A92", "female"),
            ("A93", "male"),
            ("A94", "male"),
            ("A95", "female"),
        ),
    ),
    DerivedColumn(
        "purpose_group",
        "map",
        "purpose",
        default="other",
        values=(("new car", "car"), ("used car", "car"), ("education", "study")),
    ),
    DerivedColumn(
        "household", "map", "dependents", values=(("0", "alone"), ("1", "one"), ("2", "two"))
    ),
    DerivedColumn("foreign", "map", "foreign_worker", values=(("true", "yes"), ("false", "no"))),
    DerivedColumn("duration_band", "band", "duration", cuts=(12, 24, 36)),
    DerivedColumn("amount_band", "band", "amount", cuts=(1000, 5000)),
    DerivedColumn(
        "age_years",
        "date_difference",
        "dob",
        end="screening_date",
        unit="years",
        description="Age at screening",
    ),
    DerivedColumn("age_days", "date_difference", "dob", end="screening_date"),
    DerivedColumn("wait_days", "date_difference", "applied_at", end="decided_at"),
)


def derived_pipeline() -> SecurePipeline:
    """The spec: every kind of derived feature, over every source type a derivation reads."""
    return SecurePipeline(
        name="screening",
        source=SourceSpec("screening", (SourceFile("train", "train.csv"),
                                        SourceFile("test", "test.csv")), "file:///data/"),
        schema=DatasetSchema("screening", COLUMNS, positive_label="bad", has_header=True,
                             missing_values=("NA",)),
        features=FeatureSpec(derived=DERIVED),
        model=ModelSpec(exclude_features=("sex",)),
    )  # fmt: skip


# Rows as a caller writes them (and as the CSV holds them): dates in their column's format.
ROWS: list[dict[str, Any]] = [
    {"case_id": "c0", "personal_status": "A91", "purpose": "new car", "dependents": 0,
     "foreign_worker": True, "duration": 6, "amount": 500.0, "dob": "1980-01-01",
     "screening_date": "01/01/2020", "applied_at": "2020-01-01T08:00:00",
     "decided_at": "2020-01-03T20:00:00", "risk": "good"},
    {"case_id": "c1", "personal_status": "A92", "purpose": "used car", "dependents": 1,
     "foreign_worker": False, "duration": 12, "amount": 1000.0, "dob": "2000-02-29",
     "screening_date": "28/02/2001", "applied_at": "2020-03-01T00:00:00",
     "decided_at": "2020-03-01T06:00:00", "risk": "bad"},
    {"case_id": "c2", "personal_status": "A95", "purpose": "education", "dependents": 2,
     "foreign_worker": None, "duration": 24, "amount": 4999.5, "dob": None,
     "screening_date": "15/06/2021", "applied_at": None,
     "decided_at": "2021-06-15T10:00:00", "risk": "good"},
    {"case_id": "c3", "personal_status": None, "purpose": "holiday", "dependents": 3,
     "foreign_worker": True, "duration": 36, "amount": 5000.0, "dob": "1990-06-15",
     "screening_date": None, "applied_at": "2022-01-01T00:00:00", "decided_at": None,
     "risk": "bad"},
    {"case_id": "c4", "personal_status": "A93", "purpose": None, "dependents": None,
     "foreign_worker": None, "duration": None, "amount": None, "dob": "1975-12-31",
     "screening_date": "31/12/2025", "applied_at": "2025-12-31T23:59:59",
     "decided_at": "2026-01-01T00:00:01", "risk": "good"},
    {"case_id": "c5", "personal_status": "A94", "purpose": "new car", "dependents": 10,
     "foreign_worker": False, "duration": 120, "amount": 0.0, "dob": "2010-12-31",
     "screening_date": "01/01/2011", "applied_at": "2023-05-05T12:00:00",
     "decided_at": "2023-05-05T12:00:00", "risk": "bad"},
]  # fmt: skip


def validated_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rows`` typed as validation types them, plus the split column."""

    def column(name: str) -> list[Any]:
        return [row[name] for row in rows]

    def dates(name: str, fmt: str | None = None) -> pd.Series:
        parsed = pd.to_datetime(pd.Series(column(name), dtype=object), format=fmt)
        return parsed.astype("datetime64[us]")

    return pd.DataFrame({
        "case_id": pd.Series(column("case_id"), dtype="string"),
        "personal_status": pd.Categorical(column("personal_status"), categories=list(STATUS)),
        "purpose": pd.Series(column("purpose"), dtype="string"),
        "dependents": pd.Series(column("dependents"), dtype="Int64"),
        "foreign_worker": pd.Series(column("foreign_worker"), dtype="boolean"),
        "duration": pd.Series(column("duration"), dtype="Int64"),
        "amount": pd.Series(column("amount"), dtype="float64"),
        "dob": dates("dob", "%Y-%m-%d"),
        "screening_date": dates("screening_date", "%d/%m/%Y"),
        "applied_at": dates("applied_at", "ISO8601"),
        "decided_at": dates("decided_at", "ISO8601"),
        "risk": pd.Categorical(column("risk"), categories=["good", "bad"]),
        RESERVED_SPLIT_COLUMN: pd.Series(["train"] * len(rows), dtype="string"),
    })  # fmt: skip


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """``rows`` as the source file writes them: a header, ``NA`` for missing values."""
    names = [c.name for c in COLUMNS]

    def text(value: Any) -> str:
        if value is None:
            return "NA"
        return str(value).lower() if isinstance(value, bool) else str(value)

    lines = [",".join(names), *(",".join(text(row[n]) for n in names) for row in rows)]
    return ("\n".join(lines) + "\n").encode()


def test_maps_bands_and_date_differences() -> None:
    pipeline = derived_pipeline()
    table = build_features(validated_frame(ROWS), pipeline)
    # a combined status-and-sex code to sex, in the order the categories were first listed
    assert table["sex"].tolist() == [0, 1, 1, -1, 0, 0]
    # a string source: listed values, the default for any other, -1 for missing (not default)
    assert table["purpose_group"].tolist() == [0, 0, 1, 2, -1, 0]
    # an integer source keyed by its digits; no default, so 3 and 10 are -1 like missing
    assert table["household"].tolist() == [0, 1, 2, -1, -1, -1]
    # a boolean source keyed true/false
    assert table["foreign"].tolist() == [0, 1, -1, 0, -1, 1]
    # a value on a cut point opens the next band
    assert table["duration_band"].tolist() == [0, 1, 2, 3, -1, 3]
    assert table["amount_band"].tolist() == [0, 1, 1, 2, -1, 0]
    # 40 years with 10 leap days; 365 days across a leap day; missing when either is missing
    days = table["age_days"].to_numpy()
    np.testing.assert_array_equal(days[[0, 1, 4, 5]], [14610.0, 365.0, 18263.0, 1.0])
    assert np.isnan(days[[2, 3]]).all()
    np.testing.assert_allclose(table["age_years"].to_numpy(), days / 365.25)
    assert table["age_years"][0] == 40.0
    wait = table["wait_days"].to_numpy()
    np.testing.assert_allclose(wait[[0, 1, 4, 5]], [2.5, 0.25, 2 / 86400, 0.0])
    assert np.isnan(wait[[2, 3]]).all()
    for name in ("sex", "purpose_group", "household", "foreign", "duration_band"):
        assert table[name].dtype == np.int16
    for name in ("age_years", "age_days", "wait_days"):
        assert table[name].dtype == np.float64
    # strings and dates are not features by themselves; the identifier never is
    assert not {"purpose", "dob", "applied_at", "case_id"} & set(table.columns)


def test_feature_catalog_of_derived_features() -> None:
    catalog = {f.name: f for f in feature_catalog(derived_pipeline())}
    assert catalog["sex"].categories == ("male", "female")
    assert catalog["sex"].sensitive
    assert catalog["purpose_group"].categories == ("car", "study", "other")
    assert catalog["duration_band"].categories == ("<12", "12-24", "24-36", ">=36")
    assert catalog["age_years"].kind == "numeric"
    assert catalog["age_years"].sources == ("dob", "screening_date")


def test_one_feature_at_a_time_matches_the_table() -> None:
    pipeline = derived_pipeline()
    frame = validated_frame(ROWS)
    table = build_features(frame, pipeline)
    for feature in feature_catalog(pipeline):
        np.testing.assert_array_equal(feature_column(feature, frame, pipeline),
                                      table[feature.name].to_numpy())  # fmt: skip


def test_the_index_of_the_validated_rows_is_kept() -> None:
    """A filtered frame keeps its row labels: the label and split line up with the features."""
    pipeline = derived_pipeline()
    frame = validated_frame(ROWS).iloc[[5, 0, 3]]
    table = build_features(frame, pipeline)
    assert table.index.tolist() == [5, 0, 3]
    assert table["label"].tolist() == [1, 0, 1]
    assert table["duration_band"].tolist() == [3, 0, 3]


def test_after_the_real_parser_and_a_parquet_round_trip() -> None:
    """The CSV through validation's parser, then stored and read back as `validated_*` is."""
    pipeline = derived_pipeline()
    parsed = parse_fileset({"train": csv_bytes(ROWS)}, pipeline.schema)
    assert not parsed.problems
    assert not parsed.type_failures
    expected = build_features(validated_frame(ROWS), pipeline)
    pd.testing.assert_frame_equal(build_features(parsed.frame, pipeline), expected)
    stored = parquet_to_table(table_to_parquet(to_arrow(parsed.frame))).to_pandas()
    pd.testing.assert_frame_equal(build_features(stored, pipeline), expected)
    # Parquet dates may come back as date objects rather than datetime64: the same features
    as_objects = validated_frame(ROWS).assign(
        dob=lambda f: pd.Series(
            [d.date() if d is not pd.NaT else None for d in f["dob"]], dtype=object
        )
    )
    pd.testing.assert_frame_equal(build_features(as_objects, pipeline), expected)


def test_dates_that_were_not_validated_are_refused() -> None:
    """Text in a date column means validation did not run: no guessing of its format."""
    frame = validated_frame(ROWS).assign(dob=[row["dob"] for row in ROWS])
    with pytest.raises(TypeError, match="date column 'dob' holds .* expected dates"):
        build_features(frame, derived_pipeline())


def test_time_zones_become_utc() -> None:
    frame = validated_frame(ROWS)
    aware = frame.assign(applied_at=frame["applied_at"].dt.tz_localize("Europe/Paris"))
    table = build_features(aware, derived_pipeline())
    # 08:00 in Paris in winter is 07:00 UTC: one hour more of waiting than the naive value
    assert table["wait_days"][0] == pytest.approx(2.5 + 1 / 24)


def test_drift_of_derived_features() -> None:
    pipeline = derived_pipeline()
    catalog = [f for f in feature_catalog(pipeline) if f.derivation is not None]
    table = build_features(validated_frame(ROWS * 50), pipeline)
    same = population_stability(table, table, catalog, 5)
    assert max(d.psi for d in same) == pytest.approx(0.0, abs=1e-9)
    older = table.assign(age_years=table["age_years"] + 30, sex=0)
    drifted = {d.feature: d.psi for d in population_stability(table, older, catalog, 5)}
    assert drifted["age_years"] > 0.25
    assert drifted["sex"] > 0.25
    assert drifted["wait_days"] == pytest.approx(0.0, abs=1e-9)


def test_derivations_in_words_in_the_features_asset_metadata() -> None:
    pipeline = derived_pipeline()
    words = {f.name: describe_derivation(f, pipeline) for f in feature_catalog(pipeline)}
    assert words["sex"].startswith("map of personal_status (A91 -> male, A92 -> female")
    assert "any other" not in words["sex"]  # a category source maps every allowed value
    assert words["purpose_group"].endswith("education -> study, any other -> other)")
    assert words["household"].endswith("any other -> missing)")
    assert words["duration_band"] == "bands of duration cut at 12, 24, 36"
    assert words["age_years"] == "years from dob to screening_date: Age at screening"
    assert words["wait_days"] == "days from applied_at to decided_at"
    assert words["personal_status"] == "code of personal_status"
    assert words["amount"] == "amount as a number"

    (features,), _ = build_features_stage(pipeline, lambda *_: None)
    catalog = features.specs_by_key[pipeline.names.features].metadata["feature_catalog"]
    assert isinstance(catalog, dg.TableMetadataValue)
    rows = {r.data["feature"]: r.data for r in catalog.records}
    assert rows["wait_days"]["derivation"] == "days from applied_at to decided_at"
    assert rows["wait_days"]["from"] == "applied_at, decided_at"
    assert rows["sex"]["codes"] == "0=male, 1=female"
    assert rows["sex"]["sensitive"] is True
