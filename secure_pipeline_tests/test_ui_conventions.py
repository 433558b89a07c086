"""What the MLflow and Dagster UIs show: signatures, examples, cards, schemas, headlines, links.

Most tests read the session's real reference run (trained, signed, registered, promoted into a
real SQLite MLflow store) read-only; the tamper test works on a private copy of its bundle.
"""

import dataclasses
import json
import shutil
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError, PolicyViolation
from secure_pipeline.features.engineering import LABEL_COLUMN, feature_catalog
from secure_pipeline.metadata import (
    COLUMN_SCHEMA,
    HEADLINE_METRICS,
    cron_period,
    ingest_freshness_policy,
    shortened_values,
)
from secure_pipeline.names import FEATURE_DRIFT
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import (
    CARD_FILE,
    _made_up_row,
    require_model_inputs_only,
    version_description,
)
from secure_pipeline.registry.mlflow_registry import card_artifact_path
from secure_pipeline.registry.signing import signed_digests
from secure_pipeline.registry.verification import resolve, verify_bundle_dir
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.training.models import model_inputs
from secure_pipeline.training.tracking import (
    model_version_link_metadata,
    run_link_metadata,
    tracking_uri,
    ui_base_url,
)
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.conftest import Registered

NEVER_SHOWN = ("identifier", "personal", "ignore")
EXAMPLE_FILES = ("input_example.json", "serving_input_example.json")


@pytest.fixture
def state(reference_run: Registered, monkeypatch: pytest.MonkeyPatch) -> Registered:
    """Point this test's environment at the session's run (read-only)."""
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    return reference_run


@pytest.fixture
def bundle(state: Registered, tmp_path: Path) -> Path:
    """A private copy of the registered bundle, as the registry serves it."""
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        return Path(shutil.copytree(resolved.directory, tmp_path / "bundle"))


def _forbidden_columns(pipeline) -> set[str]:
    schema = pipeline.schema
    never = {c.name for c in schema.columns if c.role in NEVER_SHOWN}
    return never | {schema.label, LABEL_COLUMN, RESERVED_SPLIT_COLUMN}


# -- MLflow: signature, input example, description, card --------------------------------------


def test_the_registered_version_has_a_signature_an_example_and_the_card(state, bundle) -> None:
    from mlflow import MlflowClient
    from mlflow.models import Model

    pipeline = adult_pipeline()
    inputs, _ = model_inputs(pipeline)
    signature = Model.load(str(bundle / "MLmodel")).signature
    assert signature is not None
    assert signature.inputs.input_names() == inputs.columns
    assert signature.outputs.to_dict()  # the predict_proba output is declared too
    for name in EXAMPLE_FILES:
        assert (bundle / name).is_file(), name
    example = json.loads((bundle / "input_example.json").read_text())
    assert example["columns"] == inputs.columns
    assert len(example["data"]) == 5
    assert not set(example["columns"]) & _forbidden_columns(pipeline)
    serving = json.loads((bundle / "serving_input_example.json").read_text())
    assert serving["dataframe_split"]["columns"] == inputs.columns

    # Inside the signed bundle, verified like every other file.
    assert set(EXAMPLE_FILES) <= set(signed_digests(bundle) or {})
    store = LocalSnapshotStore(state.home / "store")
    verification = verify_bundle_dir(bundle, trust=trust_policy(), pipeline=pipeline, store=store)
    assert verification.ok, verification.problems

    client = MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
    version = client.get_model_version(state.name, state.version)
    card = (bundle / CARD_FILE).read_text()
    assert version.description == version_description(pipeline, card)
    assert version.description.startswith(pipeline.description)
    assert card in version.description
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    logged = f"runs:/{version.run_id}/{card_artifact_path(state.version)}"
    assert mlflow.artifacts.load_text(logged) == card


def test_an_edited_input_example_fails_verification(state, bundle) -> None:
    """The example is signed: changing it (an insider showing other rows) is refused."""
    path = bundle / "input_example.json"
    example = json.loads(path.read_text())
    example["data"][0][0] = 999.0
    path.write_text(json.dumps(example))
    verification = verify_bundle_dir(
        bundle, trust=trust_policy(), pipeline=adult_pipeline(), store=None
    )
    assert not verification.ok
    assert verification.steps[0][0] == "signature"
    assert not verification.steps[0][1]


def test_a_long_card_is_cut_for_the_registry_field() -> None:
    pipeline = adult_pipeline()
    card = "# card\n" + "\n".join(f"line {i} " + "x" * 80 for i in range(200))
    text = version_description(pipeline, card)
    assert len(text) <= 5000
    assert text.startswith(pipeline.description)
    assert text.endswith(f"the whole card is {CARD_FILE} in the signed bundle and the run)")


def test_people_data_gets_a_made_up_example_of_model_inputs_only() -> None:
    from secure_pipeline_tests.validation.test_roles_and_types import cases_pipeline

    pipeline = cases_pipeline("file:///nowhere/")
    assert pipeline.holds_personal_data
    inputs, _ = model_inputs(pipeline)
    row = _made_up_row(pipeline, {"score_first": "double", "region": "int8"})
    assert list(row.columns) == inputs.columns
    assert not set(row.columns) & _forbidden_columns(pipeline)
    assert len(row) == 1
    assert row["score_first"].iloc[0] == 5.0  # the middle of its declared 0..10
    assert str(row["region"].dtype) == "int8"
    require_model_inputs_only(pipeline, list(row.columns))


@pytest.mark.parametrize("column", ["case_id", "full_name", "person_id", "notes", "outcome"])
def test_an_example_with_anything_but_model_inputs_is_refused(column) -> None:
    from secure_pipeline_tests.validation.test_roles_and_types import cases_pipeline

    pipeline = cases_pipeline("file:///nowhere/")
    inputs, _ = model_inputs(pipeline)
    with pytest.raises(PolicyViolation, match=column):
        require_model_inputs_only(pipeline, [*inputs.columns, column])


# -- Dagster: column schemas and freshness on the definitions ---------------------------------


def _specs(pipeline) -> dict[str, dg.AssetSpec]:
    defs = pipeline.build_definitions(Environment.LOCAL)
    return {s.key.path[-1]: s for s in defs.resolve_all_asset_specs()}


def test_raw_validated_and_features_declare_their_columns_and_roles() -> None:
    pipeline = adult_pipeline()
    specs = _specs(pipeline)
    raw = specs["raw_adult"].metadata[COLUMN_SCHEMA]
    roles = {c.name: c.tags["role"] for c in raw.columns}
    assert list(roles) == [c.name for c in pipeline.schema.columns]
    assert roles["income"] == "label"
    assert roles["sex"] == "sensitive"
    age = next(c for c in raw.columns if c.name == "age")
    assert age.description == "Age in years."
    assert age.constraints.other[:2] == ["role: sensitive", "range 17..90"]
    assert age.constraints.nullable is False

    validated = specs["validated_adult"].metadata[COLUMN_SCHEMA]
    names = [c.name for c in validated.columns]
    assert names == [*(c.name for c in pipeline.schema.kept_columns), RESERVED_SPLIT_COLUMN]

    features = specs["features"].metadata[COLUMN_SCHEMA]
    by_name = {c.name: c for c in features.columns}
    catalog = feature_catalog(pipeline)
    assert list(by_name) == [*(f.name for f in catalog), LABEL_COLUMN, RESERVED_SPLIT_COLUMN]
    assert by_name[LABEL_COLUMN].tags["role"] == "label"
    sex = by_name["sex"]
    assert sex.type == "int"
    assert sex.tags["role"] == "sensitive"
    assert any(o.startswith("values: 0=") for o in sex.constraints.other)
    assert not set(by_name) & {c.name for c in pipeline.schema.columns if c.role in NEVER_SHOWN}


def test_allowed_values_are_shortened() -> None:
    text = shortened_values([f"value-{i}" for i in range(40)])
    assert text.startswith("values: value-0, value-1")
    assert text.endswith("(+32 more)")
    assert shortened_values(["a", "b"]) == "values: a, b"


def test_ingested_assets_have_a_freshness_policy_of_two_ingest_periods() -> None:
    pipeline = adult_pipeline()
    assert pipeline.orchestration.ingest_cron == "0 2 * * *"
    specs = _specs(pipeline)
    for name in ("raw_adult", "validated_adult", "features"):
        policy = specs[name].freshness_policy
        assert policy is not None, name
        assert policy.fail_window.to_timedelta() == timedelta(days=2)
        assert policy.warn_window.to_timedelta() == timedelta(days=1)
    assert specs["trained_model"].freshness_policy is None

    unscheduled = dataclasses.replace(
        pipeline, orchestration=dataclasses.replace(pipeline.orchestration, ingest_cron=None)
    )
    assert ingest_freshness_policy(unscheduled) is None
    specs = _specs(unscheduled)
    assert all(
        specs[n].freshness_policy is None for n in ("raw_adult", "validated_adult", "features")
    )


def test_the_period_of_a_cron_schedule_is_its_longest_gap() -> None:
    assert cron_period("0 2 * * *") == timedelta(days=1)
    assert cron_period("0 2 * * 1-5") == timedelta(days=3)  # Friday to Monday
    assert cron_period("*/15 * * * *") == timedelta(minutes=15)
    with pytest.raises(ConfigurationError, match="not a cron schedule"):
        cron_period("every day")


# -- Dagster: what the reference run recorded --------------------------------------------------


def test_the_validated_materialization_shows_the_declared_schema(state) -> None:
    with dg.DagsterInstance.get() as instance:
        record = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "validated_adult"])
        )
    schema = record.asset_materialization.metadata[COLUMN_SCHEMA].schema
    assert {c.tags["role"] for c in schema.columns} >= {"feature", "sensitive", "label", "split"}


def test_every_check_reports_its_headline_number(state) -> None:
    pipeline = adult_pipeline()
    defs = pipeline.build_definitions(Environment.LOCAL)
    keys = list(defs.resolve_asset_graph().asset_check_keys)
    judged = [k for k in keys if k.name in HEADLINE_METRICS]
    assert len(judged) == len(HEADLINE_METRICS)
    with dg.DagsterInstance.get() as instance:
        for key in judged:
            record = instance.get_latest_asset_check_evaluation_record(key)
            assert record is not None, key
            assert record.evaluation is not None, key
            value = record.evaluation.metadata.get(HEADLINE_METRICS[key.name])
            assert isinstance(value, dg.FloatMetadataValue), (key.name, value)
        drift = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(["adult", "features"]), FEATURE_DRIFT)
        ).evaluation.metadata
    psi = drift["psi_by_feature"]
    assert isinstance(psi, dg.JsonMetadataValue)
    assert set(psi.value) == {f.name for f in feature_catalog(pipeline)}
    assert all(isinstance(v, float) for v in psi.value.values())
    assert drift["max_psi"].value == max(psi.value.values())


# -- links to the MLflow UI --------------------------------------------------------------------


def test_links_point_at_the_mlflow_ui_when_it_has_an_address(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_MLFLOW_UI_URL", "https://mlflow.example.internal/ui/")
    run = run_link_metadata("abc123", "7")
    assert isinstance(run, dg.UrlMetadataValue)
    assert run.url == "https://mlflow.example.internal/ui/#/experiments/7/runs/abc123"
    version = model_version_link_metadata("adult", "3")
    assert isinstance(version, dg.UrlMetadataValue)
    assert version.url == "https://mlflow.example.internal/ui/#/models/adult/versions/3"


def test_a_tracking_server_is_linked_without_its_credentials(monkeypatch) -> None:
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", "https://ops:s3cret@mlflow.example.internal:8443/?t=1"
    )
    assert ui_base_url() == "https://mlflow.example.internal:8443"
    run = run_link_metadata("abc123", "7")
    assert isinstance(run, dg.UrlMetadataValue)
    assert "s3cret" not in run.url


def test_a_local_store_keeps_the_plain_text(state) -> None:
    run = run_link_metadata("abc123", "7")
    assert isinstance(run, str)
    assert "mlflow ui --backend-store-uri sqlite:" in run
    assert isinstance(model_version_link_metadata("adult", "1"), str)
    with dg.DagsterInstance.get() as instance:
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "registered_model"])
        ).asset_materialization.metadata
    assert isinstance(meta["mlflow_model_version"], dg.TextMetadataValue)
    assert isinstance(meta["mlflow_run"], dg.TextMetadataValue)


def test_a_ui_url_that_is_not_http_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_MLFLOW_UI_URL", "mlflow.example.internal")
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_MLFLOW_UI_URL"):
        run_link_metadata("abc123", "7")
