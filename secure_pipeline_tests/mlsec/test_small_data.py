"""Small data judged right: cross-validation, confidence bounds, and "cannot be judged".

A 1,000-row credit table runs through the real pipeline (landing file, validation, features,
training, the four blocking gates). Judged by cross-validation, a sound model gets a verdict
from all its rows, and a chance-level membership attack passes although its measured advantage
is above the limit (sampling noise at 200 vs 200 records); a memorising model (an unpruned tree)
still fails. With a holdout only, the fairness audit cannot be judged and says how many rows it
would need.
"""

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.engineering import LABEL_COLUMN, build_features
from secure_pipeline.mlsec.fairness import CANNOT_BE_JUDGED, audit_fairness
from secure_pipeline.mlsec.privacy import PrivacyResult, advantage_margin
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.training.evaluation import cross_validate, training_rows
from secure_pipeline.training.models import build_model
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.validation.test_validation_stage import loans_pipeline

POLICY = loans_pipeline("file:///unused/").policy
GATES = {
    "performance_meets_policy",
    "adversarial_robustness",
    "membership_inference_risk",
    "fairness_audit",
    "onnx_equivalent",
}


def _credit(n: int, seed: int, signal: float) -> pd.DataFrame:
    """Applicants: ~30 % approved, ~30 % from region N; approval depends on the amount only."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(7, 1, n)
    term = rng.integers(6, 360, n)
    region = np.where(rng.random(n) < 0.3, "N", "S")
    logit = -1.2 + signal * (np.log(amount) - 7) + 0.2 * signal * (term - 180) / 100
    approved = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "applicant": [f"a{i}" for i in range(n)],
            "amount": amount,
            "term": term,
            "region": region,
            "approved": np.where(approved, "yes", "no"),
        }
    )


def _pipeline(location: str, **model: object) -> SecurePipeline:
    pipeline = loans_pipeline(location)
    return dataclasses.replace(
        pipeline,
        source=dataclasses.replace(pipeline.source, max_bytes=1 << 20),
        schema=dataclasses.replace(pipeline.schema, max_rows=10_000, min_rows=100),
        # Noisy labels are the point here, not a poisoning attempt: the screen is tested apart.
        policy=dataclasses.replace(pipeline.policy, poisoning_screen=False),
        model=dataclasses.replace(pipeline.model, **model),  # type: ignore[arg-type]
    )


def _run(tmp_path: Path, instance, table: pd.DataFrame, **model: object):
    """Land the table as a CSV, run it to the model's gates; the gates' evaluations by name."""
    folder = tmp_path / "landing"
    folder.mkdir(exist_ok=True)
    table.to_csv(folder / "loans.csv", index=False, float_format="%.3f")
    pipeline = _pipeline(folder.as_uri() + "/", **model)
    assets = [pipeline.raw_asset_name, "validated_loans", "features", "trained_model"]
    result = materialize(pipeline, instance, assets=assets, raise_on_error=False)
    key = dg.AssetKey(["loans", "trained_model"])
    evaluations = {
        e.asset_check_key.name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == key
    }
    assert set(evaluations) == GATES, [e.message for e in result.all_events if e.is_failure]
    return evaluations


def _meta(evaluation, name: str):
    return evaluation.metadata[name].value


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def test_a_sound_small_model_is_judged_by_cross_validation_and_passes(instance, tmp_path):
    evaluations = _run(tmp_path, instance, _credit(1000, seed=0, signal=2.0))
    assert {n: e.passed for n, e in evaluations.items()} == dict.fromkeys(GATES, True), {
        n: e.description for n, e in evaluations.items()
    }
    performance = evaluations["performance_meets_policy"]
    evaluation = _meta(performance, "evaluation")
    assert evaluation["method"] == "cross_validation"
    assert (evaluation["folds"], evaluation["rows"]) == (5, 1000)  # every training row judged
    assert _meta(performance, "rows") == 1000
    low, high = _meta(performance, "roc_auc_lower"), _meta(performance, "roc_auc_upper")
    assert low < _meta(performance, "roc_auc") < high

    membership = evaluations["membership_inference_risk"]
    assert _meta(membership, "outcome") == "passed"
    assert (_meta(membership, "members"), _meta(membership, "non_members")) == (200, 200)
    # The measured advantage is above the limit: at 200 vs 200 records that is noise, and the
    # gate judges the lower confidence bound (without it, this sound model would fail).
    assert _meta(membership, "attack_advantage") > POLICY.max_membership_advantage
    assert _meta(membership, "attack_advantage_lower") <= POLICY.max_membership_advantage
    assert _meta(membership, "attack_auc_lower") <= POLICY.max_membership_auc
    assert "beyond sampling error" in _meta(membership, "meaning")

    fairness = evaluations["fairness_audit"]
    assert _meta(fairness, "outcome") == "passed"
    assert _meta(fairness, "evaluation")["rows"] == 1000
    region = _meta(fairness, "by_feature")["region"]
    assert region["outcome"] == "passed"
    assert region["evaluated_rows"] == 1000

    robustness = evaluations["adversarial_robustness"]
    low, high = _meta(robustness, "accuracy_drop_lower"), _meta(robustness, "accuracy_drop_upper")
    assert low <= _meta(robustness, "accuracy_drop") <= high
    assert _meta(robustness, "records") == 200  # the shipped model's holdout


def test_a_memorising_model_on_small_data_fails_membership(instance, tmp_path):
    # An unpruned tree fits every training row exactly; on noisy labels its answers on other
    # rows are often wrong, and confidently so: the attack tells members apart.
    evaluations = _run(
        tmp_path, instance, _credit(1000, seed=3, signal=1.0), estimator="decision_tree"
    )
    membership = evaluations["membership_inference_risk"]
    assert not membership.passed
    assert _meta(membership, "outcome") == "failed"
    assert _meta(membership, "attack_advantage_lower") > POLICY.max_membership_advantage
    assert "attack advantage" in membership.description
    assert "beyond sampling error" in membership.description


def test_fairness_on_a_holdout_of_small_data_cannot_be_judged(instance, tmp_path):
    evaluations = _run(tmp_path, instance, _credit(1000, seed=0, signal=2.0), evaluation="holdout")
    fairness = evaluations["fairness_audit"]
    assert not fairness.passed  # fails closed...
    assert _meta(fairness, "outcome") == CANNOT_BE_JUDGED  # ...as a distinct outcome
    assert _meta(fairness, "evaluation")["method"] == "holdout"
    region = _meta(fairness, "by_feature")["region"]
    assert region["evaluated_rows"] == 200
    assert region["outcome"] == CANNOT_BE_JUDGED
    assert region["rows_needed"]["N"] > 200  # too few of its positives in 200 rows
    assert region["rows_needed_for_verdict"] == region["rows_needed"]["N"]
    for remedy in ("cross_validation", "merge small groups", "fairness_report_only"):
        assert remedy in fairness.description
    assert "1000 training rows" in fairness.description
    performance = evaluations["performance_meets_policy"]
    assert _meta(performance, "evaluation")["method"] == "holdout"
    assert _meta(performance, "rows") == 200


def _audit(y_true, y_pred, codes):
    return audit_fairness(
        np.asarray(y_true), np.asarray(y_pred), {"group": ("group", np.asarray(codes), ("A", "B"))},
        max_equalized_odds_difference=0.1, max_parity_amplification=0.1, min_group_size=30,
        confidence=0.95,
    )  # fmt: skip


def test_a_group_too_small_to_gate_states_the_rows_it_would_need() -> None:
    # A: 500 rows, 250 positive; B: 60 rows, 18 positive (too few to gate at 30)
    y = [1, 0] * 250 + [1] * 18 + [0] * 42
    result = _audit(y, y, [0] * 500 + [1] * 60)
    audit = result.audits[0]
    assert result.outcome == audit.outcome == CANNOT_BE_JUDGED
    # 30 positives at B's share of the 560 rows (18): 30 * 560 / 18 = 933.3
    assert audit.rows_needed == {"B": 934}
    assert audit.rows_needed_for_verdict == 934
    assert "'B' has 18 positives and 42 negatives (about 934 evaluated rows" in audit.problems[0]
    # A group with no positives at all is never gated by more rows of the same mix.
    none = _audit([1, 0] * 250 + [0] * 60, [1, 0] * 250 + [0] * 60, [0] * 500 + [1] * 60)
    assert none.audits[0].rows_needed == {"B": None}
    assert "no positives: merge it" in none.audits[0].problems[0]


def test_a_real_gap_is_failed_not_cannot_be_judged() -> None:
    y_true = [1, 0] * 250 + [1, 0] * 250
    y_pred = [1, 0] * 250 + [0, 0] * 250  # B's positives are never recognised
    result = _audit(y_true, y_pred, [0] * 500 + [1] * 500)
    assert result.outcome == "failed"


def test_the_advantage_bound_allows_for_sampling_noise_only() -> None:
    # A chance-level advantage at 100 vs 100 records is often 0.15 (the case)...
    noisy = PrivacyResult("attack", 100, 100, 0.518, 0.15, 0.95, (0.45, 0.58), (0.0, 0.32))
    margin = advantage_margin(100, 100, 0.95)
    assert margin == pytest.approx(np.sqrt(np.log(20) * 200 / 20_000))
    assert noisy.advantage - margin < POLICY.max_membership_advantage
    # ...while the margin shrinks with the records attacked.
    assert advantage_margin(2000, 2000, 0.95) < margin / 4


def test_cross_validation_scores_every_training_row_with_a_model_that_never_saw_it() -> None:
    pipeline = _pipeline("file:///unused/", estimator="sklearn.neighbors.KNeighborsClassifier",
                         params={"n_neighbors": 1})  # fmt: skip
    validated = _credit(600, seed=1, signal=1.0).assign(split="main")
    features = build_features(validated, pipeline)
    cv = cross_validate(features, pipeline)
    assert list(cv.rows) == list(training_rows(features, pipeline)) == list(range(600))
    labels = features[LABEL_COLUMN].to_numpy()
    # Stratified: each fold has its share of positives (within one row).
    shares = [labels[cv.fold == k].sum() for k in range(cv.folds)]
    assert max(shares) - min(shares) <= 1
    # A 1-NN model is perfect on the rows it was fitted on; out of fold it is not, so no row
    # was scored by a model that had seen it.
    inputs = [c for c in features.columns if c not in (LABEL_COLUMN, "split")]
    in_sample = build_model(pipeline).fit(features[inputs], labels).predict(features[inputs])
    assert (in_sample == labels).mean() == 1.0
    assert (cv.predictions == labels).mean() < 0.9
    # Seeded: the same spec and data give the same folds and scores.
    again = cross_validate(features, pipeline)
    assert np.array_equal(again.fold, cv.fold)
    assert np.array_equal(again.scores, cv.scores)


def test_gaps_read_from_the_group_rates_equal_fairlearns_own() -> None:
    """The audit reads the parity and equalized-odds differences from its MetricFrame's group
    rates; they must be exactly what fairlearn's functions compute on the same rows."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    rng = np.random.default_rng(1)
    for _ in range(10):
        codes = rng.integers(-1, 4, 3000)
        y = (rng.random(3000) < 0.3 + 0.05 * codes).astype(int)
        predicted = (rng.random(3000) < 0.3 + 0.08 * codes).astype(int)
        (audit,) = audit_fairness(
            y, predicted, {"g": ("g", codes, ("a", "b", "c", "d"))},
            max_equalized_odds_difference=0.1, max_parity_amplification=0.02,
            min_group_size=50, confidence=0.95, report_only=(),
        ).audits  # fmt: skip
        labels = np.asarray(["a", "b", "c", "d", "missing"], dtype=object)[codes]
        sizable = np.isin(labels, [g.group for g in audit.groups if g.rows >= 50])
        gated = np.isin(labels, [g.group for g in audit.groups if g.gated])
        assert audit.demographic_parity_difference == pytest.approx(
            demographic_parity_difference(
                y[sizable], predicted[sizable], sensitive_features=labels[sizable]
            ), abs=1e-12,
        )  # fmt: skip
        assert audit.label_parity_difference == pytest.approx(
            demographic_parity_difference(
                y[sizable], y[sizable], sensitive_features=labels[sizable]
            ), abs=1e-12,
        )  # fmt: skip
        assert audit.equalized_odds_difference == pytest.approx(
            equalized_odds_difference(
                y[gated], predicted[gated], sensitive_features=labels[gated]
            ), abs=1e-12,
        )  # fmt: skip
