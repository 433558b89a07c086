"""Any scikit-learn classifier by import path; the skops types it needs declared in the spec.

A gradient-boosting classifier named by import path runs through the whole reference pipeline
(trained, judged by every model check, signed, registered, promoted and served); a classifier
whose saved model holds a type the spec does not declare fails at training, naming the type;
loading refuses every type that is neither the project's nor declared; estimators that are not
probabilistic classifiers, or are given parameters they do not take, are refused clearly.
"""

import dataclasses
import time
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.features.engineering import build_features
from secure_pipeline.mlsec.checks import judge
from secure_pipeline.pipeline import RESERVED_SPLIT_COLUMN, SecurePipeline
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.registry.bundle import CARD_FILE, LINEAGE_FILE
from secure_pipeline.registry.verification import resolve
from secure_pipeline.serving.loader import load_verified
from secure_pipeline.serving.server import ModelService, create_app
from secure_pipeline.storage.resources import LocalSnapshotStoreResource
from secure_pipeline.training.models import build_model, train
from secure_pipeline.training.serialization import (
    TRUSTED_TYPES,
    UntrustedModelError,
    dump_model,
    load_model,
)
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.conftest import pointed_at
from secure_pipeline_tests.helpers import materialize, materialize_all

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the test client's notice about another HTTP client
    from starlette.testclient import TestClient

HGB = "sklearn.ensemble.HistGradientBoostingClassifier"
HGB_PARAMS = {"max_iter": 100, "max_depth": 3}  # shallow trees: within the robustness limit
ADAM = "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"
KD_TREE = "sklearn.neighbors._kd_tree.KDTree"
EUCLIDEAN = "sklearn.metrics._dist_metrics.EuclideanDistance64"
# A small network: saved, it holds its optimizer, a type neither skops nor the project trusts.
MLP = "sklearn.neural_network.MLPClassifier"
MLP_PARAMS = {"hidden_layer_sizes": [16], "max_iter": 30, "early_stopping": True}

LOADED: list[str] = []


class Stowaway(BaseEstimator, ClassifierMixin):
    """Stands for any type a model file should never bring along."""

    def __setstate__(self, state: dict) -> None:
        LOADED.append("stowaway")  # would run on load if the type were trusted
        self.__dict__.update(state)


def _with_model(pipeline: SecurePipeline, **changes: object) -> SecurePipeline:
    return dataclasses.replace(pipeline, model=dataclasses.replace(pipeline.model, **changes))


def _hgb_pipeline() -> SecurePipeline:
    return _with_model(adult_pipeline(), estimator=HGB, params=HGB_PARAMS)


@pytest.fixture(scope="module")
def hgb_run(tmp_path_factory, dev_keys):
    """One real run of the reference pipeline with the estimator given by import path."""
    home = tmp_path_factory.mktemp("estimator-home")
    with pointed_at(home, dev_keys):
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
        started = time.monotonic()
        with dg.DagsterInstance.get() as instance:
            result = materialize_all(_hgb_pipeline(), instance)
            failures = [e.message for e in result.all_events if e.is_failure]
            checks = {
                e.asset_check_key.name: (e.passed, e.description)
                for e in result.get_asset_check_evaluations()
                if e.asset_key == dg.AssetKey(["adult", "trained_model"])
            }
            trained = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "trained_model"])
            ).asset_materialization.metadata
            registered = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "registered_model"])
            )
        seconds = time.monotonic() - started
    return {
        "home": home,
        "success": result.success,
        "failures": failures,
        "checks": checks,
        "trained": {k: v.value for k, v in trained.items()},
        "version": (
            str(registered.asset_materialization.metadata["model_version"].value)
            if registered is not None
            else None
        ),
        "seconds": seconds,
    }


@pytest.fixture
def at_hgb_run(hgb_run, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(hgb_run["home"]))
    monkeypatch.setenv("DAGSTER_HOME", str(hgb_run["home"]))
    return hgb_run


def test_an_estimator_by_import_path_trains_is_judged_and_is_registered(at_hgb_run) -> None:
    run = at_hgb_run
    assert run["success"], run["failures"]
    assert set(run["checks"]) >= {
        "performance_meets_policy",
        "adversarial_robustness",
        "membership_inference_risk",
        "fairness_audit",
    }
    assert all(passed for passed, _ in run["checks"].values()), run["checks"]
    trained = run["trained"]
    assert trained["estimator_path"] == HGB
    assert trained["params"] == HGB_PARAMS
    assert trained["trusted_types"] == {"project": list(TRUSTED_TYPES), "declared": []}
    with resolve(f"models:/adult/{run['version']}") as resolved:
        lineage = (resolved.directory / LINEAGE_FILE).read_text()
        card = (resolved.directory / CARD_FILE).read_text()
    assert f'"estimator_path": "{HGB}"' in lineage
    assert f"Estimator `{HGB}`" in card
    assert "`max_depth=3`, `max_iter=100`" in card
    assert "`sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor`" in card


def _served(pipeline: SecurePipeline, reference: str) -> tuple[ModelService, TestClient]:
    """A blue slot for ``reference``, once it has verified and loaded (or refused)."""
    service = ModelService(pipeline, reference, "blue")
    client = TestClient(create_app(service))
    client.__enter__()  # the lifespan verifies and loads in the background
    deadline = time.monotonic() + 120
    while service.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    return service, client


def _payload(frame: pd.DataFrame, fields: list[str]) -> list[dict]:
    """Rows as a caller sends them: JSON numbers, strings and nulls."""
    return [
        {
            k: None
            if v is None or v is pd.NA or v != v
            else v.item()
            if isinstance(v, np.generic)
            else v
            for k, v in r.items()
        }
        for r in frame[fields].astype(object).to_dict(orient="records")
    ]


def test_the_registered_model_is_served(at_hgb_run) -> None:
    run = at_hgb_run
    pipeline = _hgb_pipeline()
    service, client = _served(pipeline, f"models:/adult/{run['version']}")
    try:
        assert service.state == "ready", service.reason
        frame = parse_fileset(
            {"test": (DATA_DIR / "adult.test").read_bytes()}, ADULT_SCHEMA
        ).frame.head(20)
        fields = [f.name for f in service.fields]
        answer = client.post("/predict", json={"rows": _payload(frame, fields)})
        assert answer.status_code == 200, answer.text
        got = np.array([p["score"] for p in answer.json()["predictions"]])
    finally:
        client.__exit__(None, None, None)
    assert type(service.model.named_steps["model"]).__name__ == "HistGradientBoostingClassifier"
    with resolve(f"models:/adult/{run['version']}") as resolved:
        verified = load_verified(resolved.directory, trust=trust_policy(), pipeline=pipeline)
    features = build_features(frame.assign(**{RESERVED_SPLIT_COLUMN: "test"}), pipeline)
    expected = verified.model.predict_proba(features[verified.inputs])[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_type_the_spec_does_not_declare_fails_training_and_is_served_once_declared(
    at_hgb_run,
) -> None:
    undeclared = _with_model(_hgb_pipeline(), estimator=MLP, params=MLP_PARAMS)
    with dg.DagsterInstance.get() as instance:
        result = materialize(undeclared, instance, ["trained_model"], raise_on_error=False)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        error = failure.step_failure_data.error.cause
        assert error.cls_name == "ConfigurationError"
        assert ADAM in error.message
        assert f"model.trusted_types: [{ADAM}]" in error.message
        latest = instance.get_latest_materialization_event(dg.AssetKey(["adult", "trained_model"]))
        # Nothing was recorded: the latest model is still the one trained before.
        assert (
            latest.asset_materialization.metadata["model_sha256"].value
            == at_hgb_run["trained"]["model_sha256"]
        )

        declared = _with_model(undeclared, trusted_types=(ADAM,))
        assets = ["trained_model", "registered_model", "promoted_model"]
        result = materialize(declared, instance, assets, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        evaluations = {
            e.asset_check_key.name: e.passed
            for e in result.get_asset_check_evaluations()
            if e.asset_key == dg.AssetKey(["adult", "trained_model"])
        }
        # Every check loaded it with the declared type and judged it.
        assert evaluations == {
            "performance_meets_policy": True,
            "adversarial_robustness": True,
            "membership_inference_risk": True,
            "fairness_audit": True,
            "onnx_equivalent": True,
        }
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "trained_model"])
        ).asset_materialization.metadata
        assert metadata["trusted_types"].value["declared"] == [ADAM]
        assert metadata["estimator_path"].value == MLP
        version = (
            instance.get_latest_materialization_event(dg.AssetKey(["adult", "registered_model"]))
            .asset_materialization.metadata["model_version"]
            .value
        )

        # The checks load with today's spec's list: without the declaration they refuse it.
        store = LocalSnapshotStoreResource(root=str(at_hgb_run["home"] / "store"))
        assert judge(instance, store, declared).model_sha256 == metadata["model_sha256"].value
        with pytest.raises(UntrustedModelError, match=r"AdamOptimizer.*not loaded"):
            judge(instance, store, undeclared)

    reference = f"models:/adult/{version}"
    with resolve(reference) as resolved:
        card = (resolved.directory / CARD_FILE).read_text()
        assert f"`{ADAM}` (declared by the pipeline spec's model.trusted_types)" in card
        # The bundle verifies either way; only the spec's list decides what loads.
        assert load_verified(resolved.directory, trust=trust_policy(), pipeline=declared).model
        with pytest.raises(UntrustedModelError, match=r"AdamOptimizer.*not loaded"):
            load_verified(resolved.directory, trust=trust_policy(), pipeline=undeclared)

    service, client = _served(declared, reference)
    try:
        assert service.state == "ready", service.reason
        frame = parse_fileset(
            {"test": (DATA_DIR / "adult.test").read_bytes()}, ADULT_SCHEMA
        ).frame.head(5)
        fields = [f.name for f in service.fields]
        answer = client.post("/predict", json={"rows": _payload(frame, fields)})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 5
    finally:
        client.__exit__(None, None, None)
    service, client = _served(undeclared, reference)
    try:
        assert service.state == "refused"
        assert "UntrustedModelError" in service.reason
        assert ADAM in service.reason
    finally:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    pipeline = adult_pipeline()
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    return build_features(parse_fileset(files, pipeline.schema).frame, pipeline).sample(
        3000, random_state=0
    )


def test_loading_refuses_a_type_outside_the_declared_list(sample) -> None:
    knn = _with_model(
        adult_pipeline(),
        estimator="sklearn.neighbors.KNeighborsClassifier",
        params={"algorithm": "kd_tree"},
    )
    data = dump_model(train(sample, knn).model)
    assert set(sio.get_untrusted_types(data=data)) == {KD_TREE, EUCLIDEAN}
    with pytest.raises(UntrustedModelError) as refused:
        load_model(data, source="knn", trusted=[KD_TREE])
    message = str(refused.value)
    assert EUCLIDEAN in message
    assert KD_TREE not in message  # declared: not what was refused
    assert "not loaded" in message
    assert "model.trusted_types only if this project's trainer produced" in message
    assert hasattr(load_model(data, trusted=[KD_TREE, EUCLIDEAN]), "predict_proba")

    # A declared type does not let a file bring along anything else.
    mlp = train(sample, _with_model(adult_pipeline(), estimator=MLP, params=MLP_PARAMS)).model
    smuggled = sio.dumps([mlp, Stowaway()])
    with pytest.raises(UntrustedModelError, match=r"Stowaway.*not loaded") as refused:
        load_model(smuggled, trusted=[ADAM])
    assert ADAM not in str(refused.value)
    assert LOADED == []


def test_a_built_in_name_and_its_import_path_give_the_same_bytes(sample) -> None:
    for name, params in (("random_forest", {"n_estimators": 5}), ("logistic_regression", {})):
        path = {"random_forest": "sklearn.ensemble.RandomForestClassifier",
                "logistic_regression": "sklearn.linear_model.LogisticRegression"}[name]  # fmt: skip
        by_name = _with_model(adult_pipeline(), estimator=name, params=params, seed=4)
        by_path = _with_model(by_name, estimator=path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # n_jobs on LogisticRegression warns
            first, second = train(sample, by_name), train(sample, by_path)
        assert dump_model(first.model) == dump_model(second.model)


def test_the_seed_and_a_single_job_are_set_unless_the_params_set_them() -> None:
    pipeline = _with_model(
        adult_pipeline(), estimator="sklearn.ensemble.ExtraTreesClassifier", params={}, seed=7
    )
    estimator = build_model(pipeline).named_steps["model"]
    assert (estimator.random_state, estimator.n_jobs) == (7, 1)
    chosen = _with_model(pipeline, params={"random_state": 3, "n_jobs": 2})
    estimator = build_model(chosen).named_steps["model"]
    assert (estimator.random_state, estimator.n_jobs) == (3, 2)
    plain = _with_model(pipeline, estimator="sklearn.naive_bayes.GaussianNB")
    assert "random_state" not in build_model(plain).named_steps["model"].get_params()
    logistic = _with_model(pipeline, estimator="sklearn.linear_model.LogisticRegression")
    assert build_model(logistic).named_steps["model"].n_jobs is None


@pytest.mark.parametrize(
    ("estimator", "params", "expected"),
    [
        (
            "sklearn.linear_model.LinearRegression",
            {},
            r"expected a classifier .* found LinearRegression, which scikit-learn does not tag "
            r"as a classifier\. Use a classifier class",
        ),
        (
            "sklearn.linear_model.RidgeClassifier",
            {},
            r"expected a classifier with predict_proba .* found RidgeClassifier without it",
        ),
        (
            "sklearn.svm.SVC",
            {},
            r"found SVC without it .* probability=True for sklearn\.svm\.SVC",
        ),
        (
            "sklearn.ensemble.HistGradientBoostingClassifier",
            {"max_iters": 10},
            r"does not accept the parameter\(s\) max_iters given in model\.params\. "
            r"It accepts: .*max_iter,.* Correct or remove them",
        ),
        (
            "random_forest",
            {"n_estimator": 10, "depth": 3},
            r"'random_forest' \(sklearn\.ensemble\.RandomForestClassifier\) does not accept "
            r"the parameter\(s\) depth, n_estimator",
        ),
    ],
)
def test_what_is_not_a_probabilistic_classifier_or_not_its_params_is_refused(
    estimator: str, params: dict, expected: str
) -> None:
    pipeline = _with_model(adult_pipeline(), estimator=estimator, params=params)
    with pytest.raises(ConfigurationError, match=expected):
        build_model(pipeline)


def test_an_estimator_whose_import_fails_is_refused(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "broken_estimators.py").write_text(
        "import a_package_that_is_not_installed\n\n\nclass Classifier:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # The spec resolves the path without importing it, so only training finds out.
    pipeline = _with_model(adult_pipeline(), estimator="broken_estimators.Classifier")
    with pytest.raises(ConfigurationError) as refused:
        build_model(pipeline)
    message = str(refused.value)
    assert "expected an importable class 'broken_estimators.Classifier'" in message
    assert "ModuleNotFoundError" in message
    assert "a_package_that_is_not_installed" in message
    assert "Install the package that provides it" in message


def test_numbers_that_may_be_missing_are_imputed_for_any_estimator() -> None:
    """A nullable number (or a date difference with a missing date) reaches every estimator
    as a value plus a missing-indicator, never as NaN that a linear model refuses."""
    import numpy as np
    import pandas as pd

    from secure_pipeline.pipeline import (
        Column,
        DatasetSchema,
        ModelSpec,
        SecurePipeline,
        SourceFile,
        SourceSpec,
    )
    from secure_pipeline.training.models import build_model
    from secure_pipeline.training.serialization import dump_model, load_model

    def spec(nullable: bool) -> SecurePipeline:
        columns = (
            Column("a", "float", nullable=nullable),
            Column("b", "float"),
            Column("y", "category", allowed=("n", "p")),
        )
        return SecurePipeline(
            name="t",
            source=SourceSpec("t", (SourceFile("train", "t.csv"),), "file:///data/"),
            schema=DatasetSchema("t", columns, label="y", positive_label="p"),
            model=ModelSpec(test_member=None),
        )

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    x.loc[rng.random(300) < 0.2, "a"] = np.nan
    y = (x["b"] > 0).astype(int)
    model = build_model(spec(nullable=True)).fit(x, y)
    data = dump_model(model)
    assert data == dump_model(build_model(spec(nullable=True)).fit(x, y))  # reproducible
    scores = load_model(data).predict_proba(x)[:, 1]
    assert np.isfinite(scores).all()
    # a spec whose numbers are never missing keeps the plain scaler (and its model bytes)
    steps = build_model(spec(nullable=False)).named_steps["preprocess"].transformers
    assert type(steps[0][1]).__name__ == "StandardScaler"
