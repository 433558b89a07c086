"""The scikit-learn model pipeline, its data splits and its metrics.

Every model is the same shape: a ``ColumnTransformer`` that standardises numeric features and
one-hot encodes categorical codes (with the categories fixed by the schema, so an unseen code
cannot shift columns), then the estimator the spec names. Splits and estimators are seeded:
the same features snapshot and spec give the same model bytes.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.features.engineering import LABEL_COLUMN, Feature, feature_catalog
from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, PipelineSpec

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
    preprocess = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(inputs.numeric)),
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
    estimator = _estimator(spec.estimator, spec.params, spec.seed)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def _estimator(name: str, params: Any, seed: int) -> Any:
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=seed, **params)
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=seed, **params)
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    if name == "decision_tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(random_state=seed, **params)
    raise ValueError(f"unknown estimator {name!r}")


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
