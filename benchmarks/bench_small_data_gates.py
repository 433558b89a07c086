"""The four ML gates on a 1,000-row dataset judged by cross-validation, relative to training.

Goal: all four gates together <= 10x the training time of the same model. Each side does what
its Dagster step does with the data in hand: training fits and serialises the model; the gates
load it from its skops bytes, recompute the seeded splits, cross-validate (5 refits, shared by
performance and fairness as the per-process cache shares them) and judge: performance and
fairness on the out-of-fold predictions of all 1,000 rows, robustness and membership on the
shipped model with their confidence bounds. (Process start, imports and MLflow logging are the
same fixed costs for every step and are left out.)
"""

import dataclasses
import io

import numpy as np
import pandas as pd
from _common import interleaved, report

from secure_pipeline.features.engineering import LABEL_COLUMN, build_features
from secure_pipeline.mlsec.fairness import audit_fairness
from secure_pipeline.mlsec.privacy import evaluate_membership
from secure_pipeline.mlsec.robustness import evaluate_robustness
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.training.evaluation import auc_interval, cross_validate
from secure_pipeline.training.models import classification_metrics, model_inputs, split_rows, train
from secure_pipeline.training.serialization import dump_model, load_model
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.validation.test_validation_stage import loans_pipeline

ROWS = 1000
ESTIMATORS = {
    "logistic_regression": {},
    "hist_gradient_boosting": {"max_iter": 100},
    "random_forest": {"n_estimators": 100},
}


def _table(n: int, seed: int = 0) -> bytes:
    """A credit table: ~30 % approved, ~30 % from region N, approval driven by the amount."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(7, 1, n)
    term = rng.integers(6, 360, n)
    logit = -1.2 + 2.0 * (np.log(amount) - 7) + 0.4 * (term - 180) / 100
    approved = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(
        {
            "applicant": [f"a{i}" for i in range(n)],
            "amount": amount,
            "term": term,
            "region": np.where(rng.random(n) < 0.3, "N", "S"),
            "approved": np.where(approved, "yes", "no"),
        }
    )
    out = io.StringIO()
    frame.to_csv(out, index=False, float_format="%.3f")
    return out.getvalue().encode()


def _pipeline(estimator: str, params: dict) -> SecurePipeline:
    pipeline = loans_pipeline("file:///unused/")
    return dataclasses.replace(
        pipeline,
        schema=dataclasses.replace(pipeline.schema, max_rows=10_000, min_rows=100),
        model=dataclasses.replace(
            pipeline.model, estimator=estimator, params=params, evaluation="cross_validation"
        ),
    )


def bench(estimator: str, params: dict) -> float:
    """Time training and the gates for one estimator; return the worst ratio."""
    pipeline = _pipeline(estimator, params)
    policy = pipeline.policy
    features = build_features(
        parse_fileset({"main": _table(ROWS)}, pipeline.schema).frame, pipeline
    )
    model_bytes = dump_model(train(features, pipeline).model)
    inputs, catalog = model_inputs(pipeline)
    x, y = features[inputs.columns], features[LABEL_COLUMN].to_numpy()

    def training() -> None:
        dump_model(train(features, pipeline).model)

    def judged():
        return load_model(model_bytes), split_rows(features, pipeline)

    def performance(cv) -> None:
        labels = y[cv.rows]
        metrics = classification_metrics(labels, cv.scores)
        auc_interval(metrics["roc_auc"], int(labels.sum()), int(len(labels) - labels.sum()))

    def fairness(cv) -> None:
        column = "region"
        sensitive = {column: (column, features[column].to_numpy()[cv.rows],
                              catalog[column].categories)}  # fmt: skip
        audit_fairness(y[cv.rows], cv.predictions, sensitive,
                       max_equalized_odds_difference=policy.max_equalized_odds_difference,
                       max_parity_amplification=policy.max_parity_amplification,
                       min_group_size=policy.fairness_min_group_size,
                       confidence=policy.fairness_confidence,
                       report_only=policy.fairness_report_only)  # fmt: skip

    def robustness() -> None:
        model, splits = judged()
        rows, fit = splits.evaluation, splits.fit
        evaluate_robustness(model, x.iloc[rows], y[rows], len(inputs.numeric),
                            epsilon=policy.robustness_epsilon, cap=policy.robustness_sample_cap,
                            seed=0, surrogate_x=x.iloc[fit], surrogate_y=y[fit])  # fmt: skip

    def membership() -> None:
        model, splits = judged()
        others = np.concatenate([splits.holdout, splits.test])
        evaluate_membership(model, x.iloc[splits.fit], y[splits.fit], x.iloc[others],
                            y[others], cap=policy.privacy_sample_cap, seed=0,
                            confidence=policy.membership_confidence)  # fmt: skip

    def cross_validation() -> None:
        judged()
        cross_validate(features, pipeline)

    def all_gates() -> None:
        judged()
        cv = cross_validate(features, pipeline)  # once: the checks' per-process cache
        performance(cv)
        fairness(cv)
        robustness()
        membership()

    times = interleaved(
        {
            "training": training,
            "all four gates (cross-validated)": all_gates,
            "  of which cross-validation (5 refits)": cross_validation,
            "  of which adversarial_robustness": robustness,
            "  of which membership_inference_risk": membership,
        },
        5,
    )
    # Only the full set of gates is held to the goal; the parts show where the time goes.
    parts = {k: v for k, v in times.items() if not k.startswith("  ")}
    worst = report(f"{estimator}, {ROWS} rows: gates vs training", parts, "training", goal=10.0)
    report(f"{estimator}: the parts", times, "training", goal=None)
    return worst


def main() -> None:
    for estimator, params in ESTIMATORS.items():
        bench(estimator, params)


if __name__ == "__main__":
    main()
