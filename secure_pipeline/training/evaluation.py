"""How the gates evaluate a model: stratified k-fold cross-validation, and sampling error.

A 20 % holdout of a 1,000-row training file leaves 200 rows to judge a model on: too few to
tell a real gap from noise, and too few for a fairness audit to find 50 positives and 50
negatives in each group. Cross-validation refits the same model pipeline (`build_model`: the
same preprocessing, estimator, parameters and seed) ``k`` times, each time on ``k - 1`` folds of
every training row, and scores the fold it left out. Every training row then has an
out-of-fold score from a model that never saw it, and the gates judge all of them: the
performance this training procedure reaches on data of this size. The shipped model is not
one of the fold models; it stays the one fitted on the fit split, and its digest is what every
verdict names.

The functions below also give the sampling error of the figures the gates judge (ROC AUC, a
proportion, a paired difference), so that every verdict states how far its figures could move.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secure_pipeline.features.engineering import LABEL_COLUMN
from secure_pipeline.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Confidence of the intervals that are stated but do not decide (performance, robustness).
STATED_CONFIDENCE = 0.95


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold predictions for every training row.

    Attributes:
        rows: Positions in the feature table of the training file's rows, ascending.
        scores: Out-of-fold probability of the positive label, one per row of ``rows``.
        predictions: Out-of-fold predicted label (0/1), one per row of ``rows``.
        fold: The fold (0 to ``folds - 1``) that held each row out.
        folds: Number of folds.
        seed: Seed of the fold assignment (the spec's seed).
    """

    rows: "np.ndarray"
    scores: "np.ndarray"
    predictions: "np.ndarray"
    fold: "np.ndarray"
    folds: int
    seed: int

    def describe(self) -> dict[str, Any]:
        """What was evaluated, for check metadata."""
        return {
            "method": "cross_validation",
            "folds": self.folds,
            "rows": int(len(self.rows)),
            "seed": self.seed,
            "models": (
                f"{self.folds} refits of the model pipeline, each scoring the fold it did not "
                "see; the shipped model is the one fitted on the fit split"
            ),
        }


def training_rows(features: "pd.DataFrame", pipeline: PipelineSpec) -> "np.ndarray":
    """Positions of the training file's rows in the feature table."""
    import numpy as np

    from secure_pipeline.spec import RESERVED_SPLIT_COLUMN

    member = features[RESERVED_SPLIT_COLUMN].to_numpy()
    return np.flatnonzero(member == pipeline.model.train_member)


def cross_validate(features: "pd.DataFrame", pipeline: PipelineSpec) -> CrossValidation:
    """Stratified k-fold cross-validation of the spec's model over every training row.

    Args:
        features: The feature table the shipped model was trained on (a verified snapshot).
        pipeline: The spec (its model's estimator, params, seed and ``folds``).

    Returns:
        The out-of-fold scores and predictions.

    Raises:
        ValueError: When a label has fewer training rows than there are folds (each fold
            needs rows of both labels to be scored).
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from secure_pipeline.training.models import build_model, model_inputs

    spec = pipeline.model
    rows = training_rows(features, pipeline)
    inputs, _ = model_inputs(pipeline)
    x = features[inputs.columns].iloc[rows]
    y = features[LABEL_COLUMN].to_numpy()[rows]
    counts = np.bincount(y, minlength=2)
    if counts.min() < spec.folds:
        raise ValueError(
            f"cannot cross-validate with {spec.folds} folds: the training file "
            f"{spec.train_member!r} has {counts[1]} positive and {counts[0]} negative rows, and "
            f"every fold needs at least one of each. Add rows of the rarer label, or lower "
            f"model.folds to at most {max(int(counts.min()), 2)}."
        )
    splitter = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
    scores = np.empty(len(rows), dtype="float64")
    predictions = np.empty(len(rows), dtype="int64")
    fold = np.empty(len(rows), dtype="int64")
    for k, (fit, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
        model = build_model(pipeline).fit(x.iloc[fit], y[fit])
        probabilities = model.predict_proba(x.iloc[held_out])
        scores[held_out] = probabilities[:, 1]
        # The gates read hard predictions as the shipped model gives them (its own predict).
        predictions[held_out] = np.asarray(model.predict(x.iloc[held_out]), dtype="int64")
        fold[held_out] = k
    return CrossValidation(rows, scores, predictions, fold, spec.folds, spec.seed)


def normal_quantile(confidence: float) -> float:
    """The one-sided standard-normal quantile of ``confidence`` (1.645 at 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(confidence)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's standard error of a ROC AUC from its two sample sizes.

    The error of an AUC estimated on ``positives`` and ``negatives`` records (exponential
    approximation of the score distributions; close to the exact error for AUCs in practice).

    Args:
        auc: The estimated AUC.
        positives: Records of the positive class (members, for an attack).
        negatives: Records of the negative class.

    Returns:
        The standard error (``inf`` when either class is empty).
    """
    import math

    if positives < 1 or negatives < 1 or math.isnan(auc):
        return math.inf
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def auc_interval(
    auc: float, positives: int, negatives: int, confidence: float = STATED_CONFIDENCE
) -> tuple[float, float]:
    """Two-sided interval of a ROC AUC at ``confidence`` (Hanley-McNeil), clipped to [0, 1]."""
    z = normal_quantile((1 + confidence) / 2)
    error = auc_standard_error(auc, positives, negatives)
    return max(0.0, auc - z * error), min(1.0, auc + z * error)


def balanced_accuracy_interval(
    y: "np.ndarray", predicted: "np.ndarray", confidence: float = STATED_CONFIDENCE
) -> tuple[float, float]:
    """Two-sided normal interval of balanced accuracy (the mean of TPR and TNR).

    TPR and TNR are proportions on independent samples (positives, negatives), so the
    variance of their mean is a quarter of the sum of their binomial variances.
    """
    import math

    import numpy as np

    y, predicted = np.asarray(y), np.asarray(predicted)
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        return 0.0, 1.0
    tpr = float((predicted[y == 1] == 1).mean())
    tnr = float((predicted[y == 0] == 0).mean())
    error = 0.5 * math.sqrt(tpr * (1 - tpr) / positives + tnr * (1 - tnr) / negatives)
    z = normal_quantile((1 + confidence) / 2)
    value = (tpr + tnr) / 2
    return max(0.0, value - z * error), min(1.0, value + z * error)


def paired_difference_interval(
    before: "np.ndarray", after: "np.ndarray", confidence: float = STATED_CONFIDENCE
) -> tuple[float, float]:
    """Two-sided normal interval of ``mean(before) - mean(after)`` on the same records.

    For 0/1 outcomes of one record before and after a change (correct clean, correct under
    attack): the records are the sampling unit, so the error is that of their differences.
    """
    import math

    import numpy as np

    difference = np.asarray(before, dtype="float64") - np.asarray(after, dtype="float64")
    if len(difference) < 2:
        return -1.0, 1.0
    value = float(difference.mean())
    error = float(difference.std(ddof=1)) / math.sqrt(len(difference))
    z = normal_quantile((1 + confidence) / 2)
    return max(-1.0, value - z * error), min(1.0, value + z * error)
