"""The live checks' arithmetic (`secure_pipeline.monitoring.live`), on frames built here.

Fast and without Dagster: the reference pipeline's spec, a synthetic "training" feature table,
and windows of live rows built the way the slots record them (model inputs as features are
encoded, raw sensitive values a request carried, score, predicted label, prediction id;
feedback rows of id and true label).
"""

import dataclasses
import uuid

import numpy as np
import pandas as pd
import pytest

from secure_pipeline.monitoring import live
from secure_pipeline.names import (
    LIVE_ERROR_RATE,
    LIVE_FAIRNESS,
    LIVE_INPUT_DRIFT,
    LIVE_PERFORMANCE,
    LIVE_SCORE_DRIFT,
)
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.spec import feature_catalog
from secure_pipeline.training.models import model_inputs

PIPELINE = adult_pipeline()
CATALOG = {f.name: f for f in feature_catalog(PIPELINE)}


def _inputs() -> list[str]:
    found = model_inputs(PIPELINE)[0]
    return [*found.numeric, *found.categorical]


def _reference(rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A training feature table: every catalog feature, skewed category shares."""
    rng = np.random.default_rng(seed)
    columns = {}
    for feature in CATALOG.values():
        if feature.kind == "numeric":
            columns[feature.name] = rng.normal(40, 10, rows).round()
        else:
            weights = np.arange(len(feature.categories), 0, -1, dtype="float64") ** 2
            columns[feature.name] = rng.choice(
                len(feature.categories), rows, p=weights / weights.sum()
            ).astype("int16")
    return pd.DataFrame(columns)


REFERENCE = _reference()


def _traffic(
    rows: int, *, seed: int = 1, source: pd.DataFrame = REFERENCE, labels: np.ndarray | None = None
) -> pd.DataFrame:
    """Live rows sampled from ``source``: model inputs, raw sex and race, score, label, id."""
    rng = np.random.default_rng(seed)
    picked = source.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    frame = picked[_inputs()].copy()
    truth = labels if labels is not None else rng.integers(0, 2, rows)
    # A useful model: positives score high, negatives low, with overlap.
    frame["score"] = np.clip(rng.normal(0.3 + 0.4 * truth, 0.15), 0, 1)
    frame["label"] = np.where(frame["score"] >= 0.5, ">50K", "<=50K")
    frame["sex"] = np.array(["Female", "Male"])[rng.integers(0, 2, rows)]
    frame["race"] = np.array(["White", "Black"])[rng.integers(0, 2, rows)]
    frame["id"] = [uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex for i in range(rows)]
    frame.attrs["truth"] = truth
    return frame


def _feedback(traffic: pd.DataFrame, *, invert: bool = False, share: float = 1.0) -> pd.DataFrame:
    truth = np.asarray(traffic.attrs["truth"])
    if invert:
        truth = 1 - truth
    count = int(len(traffic) * share)
    return pd.DataFrame(
        {"id": traffic["id"][:count], "label": np.where(truth[:count] == 1, ">50K", "<=50K")}
    )


# -- input drift ---------------------------------------------------------------------------


def test_rows_sampled_from_the_training_features_pass() -> None:
    outcome = live.input_drift(PIPELINE, _traffic(2000), REFERENCE)
    assert outcome.check == LIVE_INPUT_DRIFT
    assert outcome.passed, outcome
    assert outcome.figures["max_psi"] < PIPELINE.policy.drift_warn_psi
    assert set(outcome.details["psi_by_feature"]) == set(_inputs())
    # Raw text under a feature's name (the sex a request carried) is not a feature encoding.
    assert "sex" not in outcome.details["psi_by_feature"]


def test_a_shifted_number_fails_with_error() -> None:
    traffic = _traffic(2000)
    traffic["age"] = traffic["age"] + 25
    outcome = live.input_drift(PIPELINE, traffic, REFERENCE)
    assert not outcome.passed
    assert outcome.severity == live.ERROR
    assert not outcome.inconclusive
    assert outcome.details["most_drifted"] == "age"
    assert outcome.figures["max_psi"] >= PIPELINE.policy.drift_fail_psi
    assert "age" in str(outcome.problem)


def test_flipped_categories_fail_with_error() -> None:
    traffic = _traffic(2000)
    size = len(CATALOG["relationship"].categories)
    traffic["relationship"] = (size - 1) - traffic["relationship"]
    outcome = live.input_drift(PIPELINE, traffic, REFERENCE)
    assert not outcome.passed
    assert outcome.severity == live.ERROR
    assert outcome.details["most_drifted"] == "relationship"


def test_too_few_rows_is_a_warning_not_an_error() -> None:
    traffic = _traffic(50)
    traffic["age"] = traffic["age"] + 25  # drifted, but 50 rows cannot say so
    outcome = live.input_drift(PIPELINE, traffic, REFERENCE)
    assert not outcome.passed
    assert outcome.severity == live.WARN
    assert outcome.inconclusive
    assert "min_rows" in str(outcome.problem)
    empty = live.input_drift(PIPELINE, _traffic(1).iloc[0:0], REFERENCE)
    assert empty.severity == live.WARN
    assert empty.figures["rows"] == 0


def test_out_of_range_codes_count_as_missing() -> None:
    traffic = _traffic(2000)
    traffic.loc[:, "workclass"] = 99
    outcome = live.input_drift(PIPELINE, traffic, REFERENCE)
    assert outcome.details["most_drifted"] == "workclass"
    assert outcome.severity == live.ERROR


# -- score drift and error rate -------------------------------------------------------------


def test_score_drift() -> None:
    rng = np.random.default_rng(3)
    reference = rng.beta(2, 5, 5000)
    same = live.score_drift(PIPELINE, rng.beta(2, 5, 1000), reference)
    assert same.check == LIVE_SCORE_DRIFT
    assert same.passed, same
    shifted = live.score_drift(PIPELINE, rng.beta(5, 2, 1000), reference)
    assert not shifted.passed
    assert shifted.severity == live.ERROR
    assert shifted.figures["score_psi"] >= PIPELINE.monitoring.score_fail_psi
    few = live.score_drift(PIPELINE, rng.beta(5, 2, 20), reference)
    assert few.severity == live.WARN
    assert few.inconclusive


def test_error_rate() -> None:
    failed = live.error_rate(PIPELINE, 100, 5, 3)
    assert failed.check == LIVE_ERROR_RATE
    assert not failed.passed
    assert failed.severity == live.ERROR
    assert failed.figures == {"error_rate": 0.05, "requests": 100, "errors": 5, "refusals": 3,
                              "max_error_rate": PIPELINE.monitoring.max_error_rate}  # fmt: skip
    # Refusals (4xx) are the callers' errors: not judged.
    assert live.error_rate(PIPELINE, 100, 1, 50).passed
    idle = live.error_rate(PIPELINE, 0, 0)
    assert idle.severity == live.WARN
    assert idle.inconclusive
    assert not idle.passed


# -- labels, performance, fairness ----------------------------------------------------------


def test_labelled_rows_join_on_id() -> None:
    traffic = _traffic(10)
    feedback = _feedback(traffic)
    extra = pd.DataFrame(
        {
            "id": [traffic["id"][0].upper(), traffic["id"][1], "f" * 32],
            "label": [feedback["label"][0], "<=50K" if feedback["label"][1] == ">50K" else ">50K",
                      ">50K"],
        }
    )  # fmt: skip
    labelled = live.labelled_rows(PIPELINE, traffic, pd.concat([feedback, extra]))
    # id 0 labelled twice the same way (once in capitals): counted once; id 1 contradicted.
    assert len(labelled.y_true) == 9
    assert labelled.conflicting == 1
    assert labelled.unmatched == 1
    assert traffic["id"][1] not in set(labelled.rows["id"])
    truth = np.asarray(traffic.attrs["truth"])
    assert labelled.y_true.tolist() == [int(t) for i, t in enumerate(truth) if i != 1]


def test_performance_judges_only_with_enough_labels() -> None:
    traffic = _traffic(600)
    good = live.performance(PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic)))
    assert good.check == LIVE_PERFORMANCE
    assert good.passed, good
    assert good.figures["roc_auc"] > 0.8
    assert good.figures["labelled_rows"] == 600
    # Inverted labels: the model is now wrong on every row it was right on.
    bad = live.performance(
        PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic, invert=True))
    )
    assert not bad.passed
    assert bad.severity == live.ERROR
    assert "ROC AUC" in str(bad.problem)
    few = live.performance(
        PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic, share=0.1))
    )
    assert few.severity == live.WARN
    assert few.inconclusive
    assert few.figures["labelled_rows"] == 60


def test_fairness_judges_gated_features_and_reports_the_others() -> None:
    traffic = _traffic(2000)
    fair = live.fairness(PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic)))
    assert fair.check == LIVE_FAIRNESS
    assert fair.passed, fair
    assert fair.figures["features_judged"] == 2  # sex and race; age is reported only
    assert set(fair.details["gaps"]) == {"sex", "race", "age"}
    assert fair.details["gaps"]["age"]["gating"] is False

    # The model denies women who qualify: their TPR collapses.
    unfair = traffic.copy()
    unfair.attrs = traffic.attrs
    women = (unfair["sex"] == "Female").to_numpy()
    unfair.loc[women, "score"] = unfair.loc[women, "score"] * 0.5
    result = live.fairness(PIPELINE, live.labelled_rows(PIPELINE, unfair, _feedback(unfair)))
    assert not result.passed
    assert result.severity == live.ERROR
    assert "sex" in str(result.problem)
    assert result.figures["max_equalized_odds_difference"] > 0.1


def test_fairness_on_a_report_only_feature_never_fails() -> None:
    traffic = _traffic(2000)
    old = (traffic["age"] >= 45).to_numpy()
    traffic.loc[old, "score"] = traffic.loc[old, "score"] * 0.5
    policy = dataclasses.replace(PIPELINE.policy, fairness_report_only=("age", "sex", "race"))
    spec = dataclasses.replace(PIPELINE, policy=policy)
    outcome = live.fairness(spec, live.labelled_rows(spec, traffic, _feedback(traffic)))
    assert outcome.passed, outcome
    assert outcome.details["gaps"]["age"]["equalized_odds_difference"] > 0.1


def test_fairness_without_the_sensitive_columns_or_labels_is_inconclusive() -> None:
    traffic = _traffic(600).drop(columns=["sex", "race"])
    outcome = live.fairness(PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic)))
    assert not outcome.passed
    assert outcome.severity == live.WARN
    assert outcome.inconclusive
    assert outcome.details["not_recorded"] == ["sex", "race"]
    few = live.fairness(
        PIPELINE, live.labelled_rows(PIPELINE, traffic, _feedback(traffic, share=0.1))
    )
    assert few.severity == live.WARN
    assert few.inconclusive


def test_sensitive_codes_from_raw_values_bands_and_codes() -> None:
    traffic = _traffic(5)
    traffic["age"] = [17.0, 25.0, 44.0, 70.0, np.nan]
    found, missing = live.sensitive_codes(PIPELINE, traffic)
    assert missing == []
    assert found["age"][0] == "age_band"
    assert found["age"][1].tolist() == [0, 1, 2, 5, -1]
    assert found["sex"][1].tolist() == [CATALOG["sex"].categories.index(v) for v in traffic["sex"]]
    coded = traffic.assign(sex=[0, 1, 1, 0, 7])
    assert live.sensitive_codes(PIPELINE, coded)[0]["sex"][1].tolist() == [0, 1, 1, 0, -1]


def test_judge_window_gives_every_check() -> None:
    traffic = _traffic(600)
    judgement = live.judge_window(
        PIPELINE, traffic=traffic, feedback=_feedback(traffic), requests=600, errors=0,
        refusals=0, reference_features=REFERENCE,
        reference_scores=np.clip(np.random.default_rng(5).normal(0.5, 0.25, 4000), 0, 1),
    )  # fmt: skip
    outcomes = judgement.by_check()
    assert set(outcomes) == {LIVE_INPUT_DRIFT, LIVE_SCORE_DRIFT, LIVE_ERROR_RATE,
                             LIVE_PERFORMANCE, LIVE_FAIRNESS}  # fmt: skip
    assert outcomes[LIVE_ERROR_RATE].passed
    assert outcomes[LIVE_PERFORMANCE].passed
    for outcome in outcomes.values():
        assert all(isinstance(v, int | float) for v in outcome.figures.values())


def test_outcomes_are_frozen() -> None:
    outcome = live.error_rate(PIPELINE, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.passed = False  # type: ignore[misc]
