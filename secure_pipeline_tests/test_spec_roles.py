"""Column roles, types, derived columns and estimators: every mistake is refused at build time."""

import dataclasses
import subprocess
import sys

import pytest

from secure_pipeline.errors import ConfigurationError
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
from secure_pipeline.spec import feature_catalog

_STATUS = ("A91", "A92", "A93", "A94")


def _credit(**changes: object) -> SecurePipeline:
    """A credit-scoring spec shaped like the public 1,000-row table: coded categories."""
    columns = (
        Column("case_id", "string", role="identifier", source="Case ID"),
        Column("full_name", "string", role="personal", source="name"),
        Column("name_again", "string", role="ignore", source="name", occurrence=2),
        Column("checking", "category", allowed=("A11", "A12", "A13", "A14")),
        Column("duration", "int", minimum=1, maximum=120),
        Column("personal_status", "category", allowed=_STATUS),
        Column("birth", "date", role="personal", earliest="1900-01-01"),
        Column("applied", "date", format="%d/%m/%Y", earliest="2000-01-01", latest="2030-12-31"),
        Column("risk", "category", allowed=("good", "bad"), role="label"),
    )
    fields: dict[str, object] = {
        "name": "credit",
        "source": SourceSpec("credit", (SourceFile("train", "credit.csv"),), "file:///data/"),
        "schema": DatasetSchema(
            "credit", columns, positive_label="bad", has_header=True, delimiter=" "
        ),
        "features": FeatureSpec(
            derived=(
                DerivedColumn(
                    "sex",
                    "map",
                    "personal_status",
                    values=(("A91", "male"), ("A92", "female"), ("A93", "male"), ("A94", "male")),
                    sensitive=True,
                ),
            ),
            bands={"duration": (12, 24, 36)},
        ),
        "model": ModelSpec(
            estimator="sklearn.ensemble.HistGradientBoostingClassifier",
            exclude_features=("sex",),
            test_member=None,
        ),
    }
    fields.update(changes)
    return SecurePipeline(**fields)  # type: ignore[arg-type]


def _problems(**changes: object) -> str:
    with pytest.raises(ConfigurationError) as err:
        _credit(**changes)
    return str(err.value)


def _columns(*replaced: Column) -> DatasetSchema:
    schema = _credit().schema
    by_name = {c.name: c for c in replaced}
    columns = tuple(by_name.pop(c.name, c) for c in schema.columns) + tuple(by_name.values())
    return dataclasses.replace(schema, columns=columns)


def test_a_credit_table_with_roles_and_derivations_builds() -> None:
    pipeline = _credit()
    assert pipeline.schema.label == "risk"  # named by the column's role
    assert pipeline.sensitive_features == ("sex",)  # marked on the derived column
    assert pipeline.schema.kept_names == (
        "case_id", "checking", "duration", "personal_status", "applied", "risk",
    )  # fmt: skip
    names = [f.name for f in feature_catalog(pipeline)]
    # identifiers, personal, ignored and date columns are never model inputs
    assert names == ["checking", "duration", "personal_status", "duration_band", "sex"]
    assert pipeline.model.estimator_path == "sklearn.ensemble.HistGradientBoostingClassifier"


def test_an_estimator_typo_is_refused_when_the_spec_is_built() -> None:
    message = _problems(model=ModelSpec(estimator="sklearn.ensemble.HistGradientBoostingClasifier"))
    assert "has no 'HistGradientBoostingClasifier'" in message
    assert "logistic_regression" in message  # the built-in names are offered
    assert "is not installed" in _problems(model=ModelSpec(estimator="lightgbmx.LGBMClassifier"))
    assert "not an import path" in _problems(model=ModelSpec(estimator="gradient_boosting"))


def test_resolving_an_estimator_path_imports_nothing_heavy() -> None:
    """Building a spec stays light: the estimator is found on disk, not imported."""
    code = (
        "import sys\n"
        "from secure_pipeline.spec._imports import import_path_problem as p\n"
        "assert p('sklearn.ensemble.HistGradientBoostingClassifier') is None\n"
        "assert p('sklearn.ensemble.NoSuchClassifier') is not None\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_string_column_cannot_be_a_sensitive_feature() -> None:
    schema = _columns(Column("nationality", "string"))
    message = _problems(schema=schema, sensitive_features=("nationality",))
    assert "sensitive feature 'nationality' is a string column" in message


def test_a_numeric_sensitive_feature_needs_bands() -> None:
    message = _problems(sensitive_features=("duration",), features=FeatureSpec())
    assert "sensitive feature 'duration' is numeric: give it bands" in message


def test_a_sensitive_feature_excluded_from_the_features_is_refused() -> None:
    schema = _columns(Column("foreign", "category", allowed=("yes", "no"), role="sensitive"))
    features = dataclasses.replace(_credit().features, exclude=("foreign",))
    message = _problems(schema=schema, features=features)
    assert "sensitive feature 'foreign' is excluded from the feature table" in message
    assert "model.exclude_features" in message  # what to do instead


def test_personal_and_identifier_columns_are_not_audited_or_derived_from() -> None:
    message = _problems(sensitive_features=("full_name",))
    assert "sensitive feature 'full_name' has role 'personal'" in message
    derived = DerivedColumn("age", "date_difference", "birth", end="applied", unit="years")
    message = _problems(features=FeatureSpec(derived=(derived,)))
    assert (
        "reads 'birth', a column with role 'personal', which never reaches the feature" in message
    )
    message = _problems(features=FeatureSpec(log1p=("name_again",)))
    assert "'name_again', a column with role 'ignore'" in message


def test_a_multiclass_label_is_refused_not_treated_one_vs_rest() -> None:
    schema = _columns(Column("risk", "category", allowed=("good", "medium", "bad"), role="label"))
    message = _problems(schema=schema)
    assert "label 'risk' has 3 allowed values" in message
    assert "aliases" in message
    # mapping the third class onto one of two is the supported way
    _credit(
        schema=_columns(
            Column(
                "risk",
                "category",
                allowed=("good", "bad"),
                role="label",
                aliases=(("medium", "bad"),),
            )  # fmt: skip
        )
    )


def test_duplicate_names_are_named() -> None:
    schema = _columns()
    schema = dataclasses.replace(schema, columns=(*schema.columns, Column("duration", "int")))
    message = _problems(schema=schema)
    assert "duplicated: duration" in message
    assert "source and occurrence" in message


def test_every_occurrence_of_a_repeated_header_name_is_declared() -> None:
    # "name" occurs twice in the header; declaring occurrences 1 and 3 leaves a gap
    schema = _columns(Column("name_again", "string", role="ignore", source="name", occurrence=3))
    message = _problems(schema=schema)
    assert "header name 'name' is declared for occurrences [1, 3]" in message
    schema = _columns(Column("name_again", "string", role="ignore", source="name"))
    assert "both read header name 'name' occurrence 1" in _problems(schema=schema)
    headerless = dataclasses.replace(_credit().schema, has_header=False)
    assert "source names a header column, but has_header is False" in _problems(schema=headerless)


def test_date_and_string_rules_need_their_types_and_valid_values() -> None:
    message = _problems(
        schema=_columns(
            Column("applied", "date", earliest="01/01/2000"),
            Column("checking", "category", allowed=("A11",), format="%Y"),
            Column("code", "string", pattern="([a-z", min_length=5, max_length=2),
            Column("duration", "int", pattern="[0-9]+"),
            Column("seen", "datetime", earliest="2020-01-02", latest="2020-01-01"),
        )
    )
    for expected in (
        "'applied': earliest '01/01/2000' is not an ISO 8601 date",
        "'checking': format, earliest and latest need a date type",
        "'code': pattern '([a-z' is invalid",
        "'code': min_length is above max_length",
        "'duration': lengths and patterns need dtype 'string'",
        "'seen': earliest is after latest",
    ):
        assert expected in message


def test_derived_columns_are_checked_against_their_sources() -> None:
    typo = DerivedColumn("sex", "map", "personal_status", values=(("A91", "male"), ("A9", "f")))
    message = _problems(features=FeatureSpec(derived=(typo,)))
    assert "maps ['A9'], not allowed values of 'personal_status'" in message
    assert "leaves ['A92', 'A93', 'A94'] of 'personal_status' unmapped" in message
    flags = _columns(Column("flag", "bool"))
    never = (
        DerivedColumn("flag_word", "map", "flag", values=(("True", "yes"),), default="no"),
        DerivedColumn("months", "map", "duration", values=(("01", "one"),), default="many"),
    )
    message = _problems(schema=flags, features=FeatureSpec(derived=never))
    assert "maps ['True'], which no bool value of 'flag' is written as" in message
    assert "maps ['01'], which no int value of 'duration' is written as" in message
    defaulted = DerivedColumn(
        "single", "map", "personal_status", values=(("A93", "yes"),), default="no"
    )
    _credit(features=FeatureSpec(derived=(defaulted,)), model=ModelSpec(test_member=None))
    wrong = (
        DerivedColumn("days", "date_difference", "duration", end="applied"),
        DerivedColumn("duration_band", "band", "duration", cuts=(3, 1)),
        DerivedColumn("checking", "band", "checking", cuts=(1,)),
    )
    message = _problems(features=FeatureSpec(bands={"duration": (12,)}, derived=wrong))
    for expected in (
        "date difference 'days' reads 'duration', a int column (expected date or datetime)",
        "derived feature 'duration_band' clashes with a column or feature name",
        "derived band 'duration_band': cut points must be strictly ascending",
        "derived feature 'checking' clashes",
        "derived band 'checking' needs a numeric source",
    ):
        assert expected in message


def test_roles_and_the_schema_label_must_agree() -> None:
    schema = dataclasses.replace(_credit().schema, label="checking")
    message = _problems(schema=schema)
    assert "column 'risk' has role 'label' but the schema's label is 'checking'" in message
    schema = _columns(Column("full_name", "string", role="identifier", pseudonymise=True))
    assert "pseudonymise applies to personal columns" in _problems(schema=schema)


def test_the_readme_real_tables_example_builds() -> None:
    """The README's credit example is real code: it builds, with the roles it shows."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index(
        "```python\nfrom secure_pipeline import (\n    Column,\n    DatasetSchema,\n"
        "    DerivedColumn,"
    )
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    credit = namespace["credit"]
    assert credit.sensitive_features == ("sex",)
    assert "full_name" not in credit.schema.kept_names
    assert [f.name for f in feature_catalog(credit)] == [
        "personal_status", "duration", "duration_band", "sex",
    ]  # fmt: skip
