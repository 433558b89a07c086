"""Training is reproducible; models load only from skops files of trusted types."""

import dataclasses
import io
import pickle
import zipfile

import dagster as dg
import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.features.engineering import build_features
from secure_pipeline.pipeline import ModelSpec
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.training.models import model_inputs, train
from secure_pipeline.training.serialization import (
    UntrustedModelError,
    dump_model,
    load_model,
)
from secure_pipeline.validation.parsing import parse_fileset

LOADED: list[str] = []


class Trojan(BaseEstimator, ClassifierMixin):
    """Stands for any type a model file should never bring along."""

    def __setstate__(self, state: dict) -> None:
        LOADED.append("trojan")  # would run on load if the type were trusted
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    pipeline = adult_pipeline()
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    return build_features(parse_fileset(files, pipeline.schema).frame, pipeline)


def test_reference_model_is_reproducible_to_the_byte(features) -> None:
    pipeline = adult_pipeline()
    first, second = train(features, pipeline), train(features, pipeline)
    data = dump_model(first.model)
    assert data == dump_model(second.model)
    assert first.metrics["test_roc_auc"] > 0.85
    assert first.metrics["test_rows"] == 16281
    assert len(first.splits.fit) + len(first.splits.holdout) == 32561
    columns = model_inputs(pipeline)[0].columns
    assert "sex" not in columns
    assert "race" not in columns
    loaded = load_model(data)
    sample = features[columns].head(500)
    assert np.array_equal(loaded.predict_proba(sample), first.model.predict_proba(sample))


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "random_forest", "decision_tree"])
def test_every_supported_estimator_round_trips_with_the_trusted_types(features, estimator):
    pipeline = adult_pipeline()
    params = {"random_forest": {"n_estimators": 5}}.get(estimator, {})
    spec = dataclasses.replace(pipeline.model, estimator=estimator, params=params)
    trained = train(
        features.sample(4000, random_state=0), dataclasses.replace(pipeline, model=spec)
    )
    data = dump_model(trained.model)
    assert type(load_model(data)).__name__ == "Pipeline"
    assert data == dump_model(trained.model)


def test_pickle_and_joblib_are_refused_even_for_a_real_model(features) -> None:
    model = train(features.sample(3000, random_state=0), adult_pipeline()).model
    for data in (pickle.dumps(model), _joblib(model, 0), _joblib(model, 3), b"garbage"):
        with pytest.raises(UntrustedModelError, match="only skops files are loaded"):
            load_model(data, source="upload")


def _joblib(model: object, compress: int) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=compress)
    return buffer.getvalue()


def test_a_skops_file_with_an_untrusted_type_is_refused_before_loading() -> None:
    data = sio.dumps(Trojan())
    with pytest.raises(UntrustedModelError, match=r"Trojan.*not loaded"):
        load_model(data)
    assert LOADED == []


def test_a_damaged_skops_archive_is_refused(features) -> None:
    data = bytearray(
        dump_model(train(features.sample(3000, random_state=0), adult_pipeline()).model)
    )
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    with pytest.raises((UntrustedModelError, zipfile.BadZipFile, ValueError, KeyError)):
        load_model(bytes(data))


def test_model_spec_is_checked() -> None:
    pipeline = adult_pipeline()
    with pytest.raises(ConfigurationError) as err:
        dataclasses.replace(
            pipeline,
            model=ModelSpec(exclude_features=("salary",), train_member="main", holdout_fraction=1),
        )
    message = str(err.value)
    assert "exclude_features names 'salary'" in message
    assert "train_member 'main' is not a source file member" in message
    assert "holdout_fraction must be between 0 and 1" in message


def test_isolation_is_declared_on_the_training_step() -> None:
    defs = adult_pipeline().build_definitions()
    tags = defs.resolve_assets_def(dg.AssetKey(["adult", "trained_model"])).op.tags
    assert tags["secure_pipeline/k8s_namespace"] == "sp-train"
    config = tags["dagster-k8s/config"]
    config = config if isinstance(config, dict) else __import__("json").loads(config)
    assert config["pod_spec_config"]["service_account_name"] == "sp-train"
    container = config["container_config"]
    assert container["security_context"]["read_only_root_filesystem"] is True
    assert container["security_context"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "4Gi"
