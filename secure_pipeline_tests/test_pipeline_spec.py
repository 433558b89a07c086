"""The SecurePipeline spec refuses contradictions when it is built, with every problem listed."""

import dataclasses

import pytest

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import Column, DatasetSchema, SecurePipeline, SourceFile, SourceSpec
from secure_pipeline.reference.adult import ADULT_SCHEMA, adult_pipeline


def test_reference_spec_is_valid() -> None:
    pipeline = adult_pipeline()
    assert pipeline.raw_asset_name == "raw_adult"
    assert list(pipeline.source_variables()) == ["SECURE_PIPELINE_SOURCE_URI"]
    assert set(pipeline.sensitive_features) <= set(pipeline.schema.column_names)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigurationError) as err:
        SecurePipeline(
            name="Bad-Name",
            source=SourceSpec(
                name="src",
                files=(SourceFile("a", "../escape.csv"), SourceFile("a", "x.csv")),
                location="file:///data/",
            ),
            schema=DatasetSchema(
                name="s",
                columns=(Column("x", "int"), Column("x", "float", allowed=("1",))),
                label="y",
            ),
            sensitive_features=("gender",),
        )
    message = str(err.value)
    for expected in (
        "pipeline name 'Bad-Name' must be snake_case",
        "members must be unique",
        "must be relative to the location and stay inside it",
        "column names must be unique",
        "label 'y' is not a column",
        "sensitive feature 'gender' is not a column",
        "allowed values need dtype 'category'",
    ):
        assert expected in message


def test_schema_version_changes_with_the_schema() -> None:
    changed = dataclasses.replace(ADULT_SCHEMA, missing_values=("?", "NA"))
    assert changed.version != ADULT_SCHEMA.version
    assert ADULT_SCHEMA.version == dataclasses.replace(ADULT_SCHEMA).version


def test_the_readme_example_builds() -> None:
    """The library example in the README is real code: it must build its definitions."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\nimport dagster as dg\nfrom secure_pipeline import")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    defs = namespace["defs"]()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "loans/raw_loans",
        "loans/validated_loans",
        "loans/features",
        "loans/trained_model",
        "loans/registered_model",
        "loans/promoted_model",
        "loans/live_traffic",
    }


def test_a_band_without_cut_points_is_a_listed_problem_not_a_crash() -> None:
    from secure_pipeline.pipeline import FeatureSpec

    with pytest.raises(ConfigurationError, match="band cut points of 'age' must be strictly"):
        dataclasses.replace(adult_pipeline(), features=FeatureSpec(bands={"age": ()}))
