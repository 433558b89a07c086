"""Environment selection: local by default, production refuses until fully configured."""

import os

import pytest

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.resources import LocalSnapshotStoreResource, S3SnapshotStoreResource

PRODUCTION = {
    "SECURE_PIPELINE_ENV": "production",
    "SECURE_PIPELINE_SOURCE_URI": "https://data.example.com/adult/",
    "SECURE_PIPELINE_S3_BUCKET": "sp-prod",
    "AWS_REGION": "eu-west-1",
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "x",
    "DAGSTER_PG_DB": "dagster",
    "MLFLOW_TRACKING_URI": "https://mlflow.internal",
    "SECURE_PIPELINE_SIGNING_MODE": "key",
    "SECURE_PIPELINE_TRUST_POLICY": "/etc/secure-pipeline/trust.json",
    "SECURE_PIPELINE_TRUST_ROOT": "ab" * 32,
}


def test_local_is_the_default() -> None:
    assert env.current_environment() is env.Environment.LOCAL
    defs = adult_pipeline().build_definitions()
    assert isinstance(defs.resources["snapshot_store"], LocalSnapshotStoreResource)


def test_production_refuses_an_unpinned_trust_policy(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        if name != "SECURE_PIPELINE_TRUST_ROOT":
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_TRUST_ROOT is not set"):
        env.validate(source_variables=adult_pipeline().source_variables())


def test_unknown_environment_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "prod")
    with pytest.raises(ConfigurationError, match="must be 'local' or 'production', found 'prod'"):
        env.current_environment()


def test_production_with_nothing_set_lists_every_missing_variable(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    with pytest.raises(ConfigurationError) as err:
        adult_pipeline().build_definitions()
    message = str(err.value)
    missing = [name for name in PRODUCTION if name != "SECURE_PIPELINE_ENV"]
    for name in missing:
        assert f"{name} is not set" in message
    assert f"{len(missing)} problem(s)" in message


def test_production_half_configured_names_only_what_is_missing(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        if name not in ("DAGSTER_PG_PASSWORD", "AWS_REGION"):
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        env.validate(source_variables=adult_pipeline().source_variables())
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "DAGSTER_PG_PASSWORD is not set" in message
    assert "AWS_REGION is not set" in message


def test_production_refuses_plain_http_s3_and_file_sources(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", "file:///data/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    with pytest.raises(ConfigurationError) as err:
        adult_pipeline().build_definitions()
    assert "must use https in production" in str(err.value)
    assert "must be https:// or s3:// in production" in str(err.value)
    assert "MLFLOW_TRACKING_URI must be an https:// tracking server in production" in str(err.value)


def test_production_uses_s3_through_env_vars(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SECURE_PIPELINE_S3_KMS_KEY_ID", "alias/sp")
    defs = adult_pipeline().build_definitions()
    store = defs.resources["snapshot_store"]
    assert isinstance(store, S3SnapshotStoreResource)
    # Values are resolved by Dagster at run time and never shown in the UI.
    assert store.bucket == "SECURE_PIPELINE_S3_BUCKET"  # an EnvVar is a str of its name
    assert type(store.bucket).__name__ == "EnvVar"
    assert type(store.kms_key_id).__name__ == "EnvVar"
    assert store.allow_loopback_http is False


def test_local_http_endpoint_only_on_loopback(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_S3_BUCKET", "b")
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", "http://10.0.0.5:9000")
    with pytest.raises(ConfigurationError, match="must use https"):
        env.validate()
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", "http://127.0.0.1:9000")
    assert env.validate() is env.Environment.LOCAL


def test_home_defaults(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SECURE_PIPELINE_HOME")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert env.secure_pipeline_home() == tmp_path / "dh"
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(tmp_path)
    assert env.secure_pipeline_home() == tmp_path / ".secure_pipeline"


def test_only_registered_settings_are_read() -> None:
    with pytest.raises(KeyError):
        env.read("SECURE_PIPELINE_TYPO")


def test_the_model_server_needs_only_what_it_uses_in_production(monkeypatch) -> None:
    from secure_pipeline.serving.server import SERVING_REQUIRED

    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    with pytest.raises(ConfigurationError) as err:
        env.validate(required=SERVING_REQUIRED)
    message = str(err.value)
    for name in (*SERVING_REQUIRED, "SECURE_PIPELINE_TRUST_ROOT"):
        assert f"{name} is not set" in message
    assert "DAGSTER_PG_HOST" not in message
    assert "SECURE_PIPELINE_SIGNING_MODE" not in message
    for name in (*SERVING_REQUIRED, "SECURE_PIPELINE_TRUST_ROOT"):
        monkeypatch.setenv(name, PRODUCTION[name])
    assert env.validate(required=SERVING_REQUIRED) is env.Environment.PRODUCTION


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_pickle_deserialization_is_forced_off(monkeypatch, caplog, value) -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", value)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    with caplog.at_level("WARNING", logger="secure_pipeline.environment"):
        env.configure_mlflow()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in caplog.text
    assert "forces it to 'false'" in caplog.text
    # A cosmetic choice of the user's stays theirs.
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


@pytest.mark.parametrize("value", [None, "false", "0", "FALSE"])
def test_pickle_deserialization_off_without_a_warning(monkeypatch, caplog, value) -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "placeholder")
    if value is None:
        monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", value)
    with caplog.at_level("WARNING", logger="secure_pipeline.environment"):
        env.configure_mlflow()
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    assert caplog.text == ""


def test_production_needs_the_pseudonym_key_when_a_pipeline_pseudonymises(monkeypatch) -> None:
    """Refused when the code location loads, not first when validated_* runs."""
    import dataclasses

    from secure_pipeline.pipeline import Column

    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    reference = adult_pipeline()
    columns = (
        *reference.schema.columns,
        Column("applicant", "string", role="personal", pseudonymise=True),
    )
    pipeline = dataclasses.replace(
        reference, schema=dataclasses.replace(reference.schema, columns=columns)
    )
    monkeypatch.delenv("SECURE_PIPELINE_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_PSEUDONYM_KEY is not set"):
        pipeline.build_definitions()
    monkeypatch.setenv("SECURE_PIPELINE_PSEUDONYM_KEY", "ab" * 8)
    with pytest.raises(ConfigurationError, match="holds 8 bytes"):
        pipeline.build_definitions()
    monkeypatch.setenv("SECURE_PIPELINE_PSEUDONYM_KEY", "ab" * 32)
    pipeline.build_definitions()
    adult_pipeline().build_definitions()  # a pipeline without pseudonyms needs no key
