"""The scikit-learn model pipeline, its data splits and its metrics.

Every model is the same shape: a ``ColumnTransformer`` that standardises numeric features and
one-hot encodes categorical codes (with the categories fixed by the schema, so an unseen code
cannot shift columns), then the estimator the spec names. Splits and estimators are seeded:
the same features snapshot and spec give the same model bytes.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.features.engineering import LABEL_COLUMN, Feature, feature_catalog
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, ModelSpec, PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@dataclass(frozen=True)
class ModelInputs:
    """What the model sees.

    Attributes:
        numeric: Numeric feature names, in the order of the transformed matrix.
        categorical: Categorical feature names, after the numeric ones.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        """All input columns, numeric first."""
        return [*self.numeric, *self.categorical]


def model_inputs(pipeline: PipelineSpec) -> tuple[ModelInputs, dict[str, Feature]]:
    """The model's input features and the catalog they come from."""
    catalog = {f.name: f for f in feature_catalog(pipeline)}
    names = [n for n in catalog if n not in pipeline.model.exclude_features]
    return (
        ModelInputs(
            tuple(n for n in names if catalog[n].kind == "numeric"),
            tuple(n for n in names if catalog[n].kind == "categorical"),
        ),
        catalog,
    )


def build_model(pipeline: PipelineSpec) -> Any:
    """An unfitted model pipeline for the spec."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    inputs, catalog = model_inputs(pipeline)
    spec = pipeline.model
    numeric: Any = StandardScaler()
    nullable = {c.name for c in pipeline.schema.columns if c.nullable}
    # A number may be missing when a column it is computed from may be.
    if any(nullable.intersection(catalog[n].sources) for n in inputs.numeric):
        from sklearn.impute import SimpleImputer

        # Only then: most estimators refuse NaN, and a spec whose numbers are never missing
        # keeps the model (and its recorded bytes) it always had. The indicator keeps
        # "missing" as information instead of passing it off as the median.
        numeric = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                ("scale", StandardScaler()),
            ]  # fmt: skip
        )
    preprocess = ColumnTransformer(
        [
            ("numeric", numeric, list(inputs.numeric)),
            (
                "categorical",
                OneHotEncoder(
                    categories=[
                        list(range(-1, len(catalog[n].categories))) for n in inputs.categorical
                    ],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                list(inputs.categorical),
            ),
        ]
    )
    estimator = _estimator(spec)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


# Estimators whose ``n_jobs`` no longer does anything (scikit-learn 1.8 deprecated it and warns
# when it is set): leaving it unset keeps a recorded model's bytes reproducible.
_IGNORED_N_JOBS = frozenset({"sklearn.linear_model.LogisticRegression"})


def _estimator(spec: ModelSpec) -> Any:
    """The spec's unfitted classifier: its class imported by path, its params, seeded.

    ``random_state`` is set from the spec's seed and ``n_jobs`` to 1 whenever the estimator has
    them and the params do not set them: the same snapshot must give the same model bytes, and
    the training pods are small.

    Raises:
        ConfigurationError: When the class cannot be imported, is not a classifier, has no
            ``predict_proba``, or does not accept a parameter the spec gives it.
    """
    path, params = spec.estimator_path, dict(spec.params)
    where = f"model estimator {spec.estimator!r}" + (f" ({path})" if path != spec.estimator else "")
    cls = _import_class(path, where)
    try:
        estimator = cls(**params)
    except TypeError as exc:
        # An unknown keyword is the usual cause; name it against what the class accepts.
        accepted = _accepted_params(cls)
        unknown = sorted(set(params) - accepted) if accepted else []
        if unknown:
            raise _unknown_params(where, unknown, accepted) from None
        raise ConfigurationError(
            f"{where} could not be created with params {params}: {exc}. Correct model.params."
        ) from None
    if not (hasattr(estimator, "get_params") and hasattr(estimator, "set_params")):
        raise ConfigurationError(
            f"{where}: expected a scikit-learn-compatible estimator (with get_params and "
            f"set_params), found {type(estimator).__name__} without them. Use a classifier "
            "that follows the scikit-learn estimator API."
        )
    accepted = set(estimator.get_params(deep=False))
    unknown = sorted(set(params) - accepted)
    if unknown:  # an estimator taking **kwargs may accept a name it would then ignore
        raise _unknown_params(where, unknown, accepted)
    _require_classifier(estimator, where)
    defaults = {"random_state": spec.seed}
    if path not in _IGNORED_N_JOBS:
        defaults["n_jobs"] = 1
    estimator.set_params(**{k: v for k, v in defaults.items() if k in accepted and k not in params})
    return estimator


def _import_class(path: str, where: str) -> type:
    import importlib

    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise ConfigurationError(
            f"{where}: expected an importable class {path!r}, but importing it failed "
            f"({type(exc).__name__}: {exc}). Install the package that provides it in the "
            "training and serving images, or correct the path."
        ) from None
    if not isinstance(found, type):
        raise ConfigurationError(
            f"{where}: expected a classifier class, found {type(found).__name__} {path!r}. "
            "Name the class itself (module.Class)."
        )
    return found


def _accepted_params(cls: type) -> set[str]:
    """Parameter names the class's constructor takes (what its ``get_params`` would list)."""
    import inspect

    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return set()
    return {
        name
        for name, parameter in signature.parameters.items()
        if name != "self"
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def _unknown_params(where: str, unknown: list[str], accepted: set[str]) -> ConfigurationError:
    return ConfigurationError(
        f"{where} does not accept the parameter(s) {', '.join(unknown)} given in model.params. "
        f"It accepts: {', '.join(sorted(accepted))}. Correct or remove them."
    )


def _require_classifier(estimator: Any, where: str) -> None:
    from sklearn.base import is_classifier

    if not is_classifier(estimator):
        raise ConfigurationError(
            f"{where}: expected a classifier (the pipeline predicts the probability of the "
            f"positive label), found {type(estimator).__name__}, which scikit-learn does not "
            "tag as a classifier. Use a classifier class (e.g. "
            "sklearn.ensemble.HistGradientBoostingClassifier), not a regressor or transformer."
        )
    if not hasattr(estimator, "predict_proba"):
        raise ConfigurationError(
            f"{where}: expected a classifier with predict_proba (every security check and the "
            f"server score probabilities), found {type(estimator).__name__} without it with "
            "these params. Use a probabilistic classifier, or the params that enable "
            "probabilities (e.g. probability=True for sklearn.svm.SVC)."
        )


@dataclass
class Splits:
    """Row positions of the feature table, by role.

    Attributes:
        fit: Rows the model is fitted on (the training members of a membership attack).
        holdout: Rows of the training file held out.
        test: Rows of the external test file (empty when there is none).
    """

    fit: "np.ndarray"
    holdout: "np.ndarray"
    test: "np.ndarray"

    def fingerprint(self) -> str:
        """SHA-256 of the fit, holdout and test row positions: which rows played which role."""
        import hashlib

        import numpy as np

        digest = hashlib.sha256()
        for rows in (self.fit, self.holdout, self.test):
            digest.update(np.asarray(rows, dtype="<i8").tobytes() + b"|")
        return digest.hexdigest()

    @property
    def evaluation(self) -> "np.ndarray":
        """The rows models are judged on: the external test set, else the holdout."""
        return self.test if len(self.test) else self.holdout


def split_rows(features: "pd.DataFrame", pipeline: PipelineSpec) -> Splits:
    """Deterministic, stratified split of the feature table."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    spec = pipeline.model
    member = features[RESERVED_SPLIT_COLUMN].to_numpy()
    train = np.flatnonzero(member == spec.train_member)
    test = np.flatnonzero(member == spec.test_member) if spec.test_member else np.array([], int)
    labels = features[LABEL_COLUMN].to_numpy()[train]
    stratify = labels if min(np.bincount(labels, minlength=2)) >= 2 else None
    fit, holdout = train_test_split(
        train, test_size=spec.holdout_fraction, random_state=spec.seed, stratify=stratify
    )
    return Splits(np.sort(fit), np.sort(holdout), test)


@dataclass
class TrainedModel:
    """A fitted model with what it was fitted on and how it scored.

    Attributes:
        model: The fitted scikit-learn pipeline.
        inputs: Its input columns.
        splits: The row split of the feature table.
        metrics: Metric name to value, prefixed ``holdout_`` and ``test_``.
    """

    model: Any
    inputs: ModelInputs
    splits: Splits
    metrics: dict[str, float] = field(default_factory=dict)


def classification_metrics(y: "np.ndarray", scores: "np.ndarray") -> dict[str, float]:
    """ROC AUC, balanced accuracy, accuracy, precision, recall and F1 at threshold 0.5."""
    from sklearn import metrics

    predicted = (scores >= 0.5).astype(int)
    both = len(set(y.tolist())) == 2
    return {
        "roc_auc": float(metrics.roc_auc_score(y, scores)) if both else float("nan"),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y, predicted)),
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "precision": float(metrics.precision_score(y, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(y, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(y, predicted, zero_division=0)),
        "rows": float(len(y)),
    }


def train(features: "pd.DataFrame", pipeline: PipelineSpec) -> TrainedModel:
    """Fit the spec's model on the training rows and score it on the held-out rows.

    Args:
        features: The feature table (a verified snapshot).
        pipeline: The spec.

    Returns:
        The fitted model, its splits and metrics.
    """
    model = build_model(pipeline)
    inputs, _ = model_inputs(pipeline)
    splits = split_rows(features, pipeline)
    x = features[inputs.columns]
    y = features[LABEL_COLUMN].to_numpy()
    model.fit(x.iloc[splits.fit], y[splits.fit])
    result = TrainedModel(model, inputs, splits)
    for name, rows in (("holdout", splits.holdout), ("test", splits.test)):
        if len(rows):
            scores = model.predict_proba(x.iloc[rows])[:, 1]
            for metric, value in classification_metrics(y[rows], scores).items():
                result.metrics[f"{name}_{metric}"] = value
    return result
