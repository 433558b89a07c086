"""The ML security gates on ``trained_model``, as blocking Dagster asset checks.

Each check loads the latest model snapshot itself — verified digest, skops with trusted types
only — and the exact features snapshot it was trained on (named in the model's
materialization), recomputes the seeded splits, and judges. Every verdict names the model
digest it judged (in its metadata and its audit record) and is added to the model's MLflow run
with a figure where one helps.

How the model is evaluated (``ModelSpec.evaluation``). With a holdout, performance and
fairness are judged on the evaluation rows (the external test file, else the holdout). When
the spec cross-validates (``auto`` below ``cross_validation_below`` training rows), they are
judged on the out-of-fold predictions of every training row instead
(`secure_pipeline.training.evaluation`), computed once per process and features snapshot: a
1,000-row file then gets a verdict from all its rows, not from 200. The external test file, if
any, is not pooled with them (another model scored it): performance also judges the shipped
model on it, separately; fairness judges the out-of-fold rows only. Robustness and membership
attack the shipped model on the rows they always did (those need the model itself) and state
their sampling error. Every verdict's metadata says which evaluation was used, on how many rows.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.metadata import table
from secure_pipeline.names import FAIRNESS, MEMBERSHIP, ONNX_EQUIVALENT, PERFORMANCE, ROBUSTNESS
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.io_manager import latest_record, recorded_snapshot
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import snapshot_key
from secure_pipeline.training.assets import experiment_name
from secure_pipeline.trust.identities import TRAIN
from secure_pipeline.verdicts import verdict

if TYPE_CHECKING:
    from secure_pipeline.training.evaluation import CrossValidation


@dataclass
class Judged:
    """What a check judges: one model snapshot and the data it was trained on.

    Attributes:
        model_sha256: Digest of the model snapshot.
        model: The loaded model.
        x: The model's inputs for every row of the features snapshot.
        y: The labels.
        features: The features snapshot.
        splits: The seeded row split.
        numeric_inputs: Count of numeric inputs (first in the transformed matrix).
        mlflow_run_id: The model's MLflow run.
        features_sha256: Digest of the features snapshot.
        training_rows: Rows of the training file (what decides whether the spec
            cross-validates).
        cross_validation: Out-of-fold predictions of every training row, when asked for and the
            spec cross-validates at this size; else None (judged on the evaluation rows).
    """

    model_sha256: str
    model: Any
    x: Any
    y: Any
    features: Any
    splits: Any
    numeric_inputs: int
    mlflow_run_id: str | None
    features_sha256: str = ""
    training_rows: int = 0
    cross_validation: "CrossValidation | None" = None


# Out-of-fold predictions by features digest and model spec: the checks of one run share them
# when they run in one process (a few entries: one per pipeline being judged).
_CROSS_VALIDATIONS: dict[tuple[str, str], "CrossValidation"] = {}
_CROSS_VALIDATIONS_KEPT = 4


def _cross_validation(
    features: Any, features_sha: str, pipeline: PipelineSpec
) -> "CrossValidation":
    """The spec's cross-validation of this features snapshot, computed once per process."""
    from secure_pipeline.training.evaluation import cross_validate

    # The spec's repr covers the estimator, its params, the seed, the folds and the inputs
    # excluded: any change to them gives other fold models.
    key = (features_sha, repr(pipeline.model))
    found = _CROSS_VALIDATIONS.get(key)
    if found is None:
        try:
            found = cross_validate(features, pipeline)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        while len(_CROSS_VALIDATIONS) >= _CROSS_VALIDATIONS_KEPT:
            _CROSS_VALIDATIONS.pop(next(iter(_CROSS_VALIDATIONS)))
        _CROSS_VALIDATIONS[key] = found
    return found


def judge(
    instance: dg.DagsterInstance,
    store: SnapshotStoreResource,
    pipeline: PipelineSpec,
    *,
    cross_validate: bool = False,
) -> Judged:
    """Load the latest model and its training data, verifying both.

    Args:
        instance: The Dagster instance (the model's latest materialization).
        store: The snapshot store.
        pipeline: The spec.
        cross_validate: Also compute the out-of-fold predictions of every training row when
            the spec cross-validates at this training file's size (the checks that judge
            predictions ask for them; the attacks need the shipped model only).

    Raises:
        IntegrityError: When a snapshot fails verification or the record points elsewhere.
        UntrustedModelError: When the model file is not a trusted skops file.
    """
    from secure_pipeline.errors import IntegrityError
    from secure_pipeline.features.engineering import LABEL_COLUMN
    from secure_pipeline.features.window import read_training_features
    from secure_pipeline.training.models import model_inputs, split_rows
    from secure_pipeline.training.serialization import load_model

    key = pipeline.names.trained_model
    record = latest_record(instance, key)
    model_key, model_sha, _ = recorded_snapshot(record, key)
    snapshots = store.get_store()
    # The spec's declared types (code), never a list from a record an insider could write.
    model = load_model(
        snapshots.read_bytes((model_key, model_sha)),
        source=model_key,
        trusted=pipeline.model.trusted_types,
    )
    meta = record.asset_materialization.metadata
    features_key, features_sha = meta["features_key"].value, meta["features_sha256"].value
    try:
        # One features snapshot, or a partitioned pipeline's window of days (each verified).
        features = read_training_features(snapshots, pipeline, features_key, features_sha)
    except IntegrityError as exc:
        raise IntegrityError(f"trained_model {model_sha[:12]}: {exc}") from None
    inputs, _ = model_inputs(pipeline)
    splits = split_rows(features, pipeline)
    recorded = meta.get("split")
    recorded = recorded.value if recorded is not None else {}
    if recorded.get("rows_sha256") != splits.fingerprint():
        # Judging on another split (another seed or holdout share than training used) could put
        # training rows among the "unseen" ones and flatter every check.
        raise IntegrityError(
            f"trained_model {model_sha[:12]} was trained with split {recorded or 'unknown'}; "
            f"today's spec gives a different split of its data (seed {pipeline.model.seed}, "
            f"holdout {pipeline.model.holdout_fraction}). Retrain before judging."
        )
    run = meta.get("mlflow_run_id")
    training_rows = len(splits.fit) + len(splits.holdout)
    cross_validation = None
    if cross_validate and pipeline.model.cross_validates(training_rows):
        cross_validation = _cross_validation(features, features_sha, pipeline)
    return Judged(
        model_sha256=model_sha,
        model=model,
        x=features[inputs.columns],
        y=features[LABEL_COLUMN].to_numpy(),
        features=features,
        splits=splits,
        numeric_inputs=len(inputs.numeric),
        mlflow_run_id=str(run.value) if run is not None else None,
        features_sha256=features_sha,
        training_rows=training_rows,
        cross_validation=cross_validation,
    )


def _evaluation(judged: Judged, pipeline: PipelineSpec) -> dict[str, Any]:
    """Which evaluation the verdict rests on, for check metadata."""
    if judged.cross_validation is not None:
        return judged.cross_validation.describe()
    splits = judged.splits
    method = "external_test_set" if len(splits.test) else "holdout"
    return {
        "method": method,
        "rows": int(len(splits.evaluation)),
        "training_rows": judged.training_rows,
        "why": (
            f"model.evaluation is {pipeline.model.evaluation!r}"
            + (
                f" and the training file has {judged.training_rows} rows, not fewer than "
                f"{pipeline.model.cross_validation_below}"
                if pipeline.model.evaluation == "auto"
                else ""
            )
        ),
    }


def _track(
    pipeline: PipelineSpec,
    judged: Judged,
    check: str,
    metrics: dict[str, float],
    result: dict[str, Any],
    figure: Any = None,
) -> None:
    from secure_pipeline.training.tracking import log_check, tracked_run

    try:
        if judged.mlflow_run_id is None:
            return
        with tracked_run(experiment_name(pipeline), run_id=judged.mlflow_run_id) as mlflow:
            log_check(mlflow, check, metrics, result)
            if figure is not None:
                mlflow.log_figure(figure, f"plots/{check}.png")
    finally:
        if figure is not None:
            # pyplot keeps every figure until closed: one process now runs a stage's checks
            # (and a test process many runs), so each is released once logged.
            import matplotlib.pyplot as plt

            plt.close(figure)


def _fairness_advice(pipeline: PipelineSpec, judged: Judged, result: Any) -> str | None:
    """What a fairness verdict that cannot be judged asks for, in this pipeline's terms."""
    need = [a.rows_needed_for_verdict for a in result.audits
            if a.gating and a.outcome == "cannot_be_judged"]  # fmt: skip
    if not need:
        return None
    known = [n for n in need if n is not None]
    most = max(known) if len(known) == len(need) else None
    spec = pipeline.model
    if judged.cross_validation is not None:
        return (
            "Every training row was evaluated (cross-validation): "
            + (
                f"the training file would need about {most} rows of the same mix"
                if most
                else "more rows of the same mix will not do"
            )
            + ", or merge small groups, or report the feature only (fairness_report_only)."
        )
    if len(judged.splits.test):
        where = f"the external test file would need about {most} rows" if most else None
    else:
        where = (
            f"the holdout ({spec.holdout_fraction:.0%} of the training file) would need about "
            f"{most} rows, i.e. a training file of about "
            f"{int(most / spec.holdout_fraction)} rows" if most else None
        )  # fmt: skip
    return (
        f"Judged on {len(judged.splits.evaluation)} evaluation rows: "
        + (f"{where}; or " if where else "")
        + f"cross-validate (model.evaluation: cross_validation) to evaluate all "
        f"{judged.training_rows} training rows, merge small groups, or report the feature "
        "only (fairness_report_only)."
    )


def _largest_gap(result: Any) -> float:
    """The fairness headline: the largest equalized-odds gap of a gating feature.

    Every audited feature's when none gates; NaN when no gap could be measured (a missing
    point on the UI's plot, not a zero that would read as perfectly fair).
    """
    import math

    audits = [a for a in result.audits if a.gating] or list(result.audits)
    gaps = [float(a.equalized_odds_difference) for a in audits]
    finite = [g for g in gaps if math.isfinite(g)]
    return round(max(finite), 6) if finite else math.nan


def _onnx_copies(pipeline: PipelineSpec) -> list[str]:
    """The store path of the ONNX copies of ``trained_model`` snapshots."""
    return [*pipeline.names.trained_model.path, "_onnx"]


def onnx_copy_key(pipeline: PipelineSpec, digest: str) -> str:
    """Where the ONNX copy with ``digest`` of a ``trained_model`` snapshot is stored."""
    return snapshot_key(_onnx_copies(pipeline), digest, "onnx")


def build_ml_checks(pipeline: PipelineSpec) -> list[dg.AssetChecksDefinition]:
    """Build the five blocking gates of ``trained_model``.

    Args:
        pipeline: The spec.

    Returns:
        The check definitions.
    """
    policy = pipeline.policy
    model_key = pipeline.names.trained_model
    seed = pipeline.model.seed

    def decide(
        context: dg.AssetCheckExecutionContext,
        store: SnapshotStoreResource,
        judged: Judged,
        name: str,
        passed: bool,
        summary: dict[str, Any],
        metadata: dict[str, Any],
        problem: str | None,
    ) -> dg.AssetCheckResult:
        return verdict(
            store,
            pipeline=pipeline,
            identity=TRAIN,
            run_id=context.run.run_id,
            asset_key=model_key,
            check_name=name,
            passed=passed,
            subject=judged.model_sha256,
            summary=summary,
            metadata={"model_sha256": judged.model_sha256, **metadata},
            description=None if passed else problem,
        )

    @dg.asset_check(
        asset=model_key,
        name=PERFORMANCE,
        blocking=True,
        description=(
            f"The model reaches ROC AUC >= {policy.min_roc_auc} and balanced accuracy >= "
            f"{policy.min_balanced_accuracy} (0.5 is chance for both; decisions at probability "
            "0.5). Judged on the out-of-fold predictions of every training row when the spec "
            "cross-validates (and, separately, on the external test file if there is one), "
            "else on the evaluation set. The threshold applies to the measured value; its "
            "95% interval is stated beside it. A weaker model is not worth the risk of "
            "deploying it."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def performance_meets_policy(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.training.evaluation import (
            STATED_CONFIDENCE,
            auc_interval,
            balanced_accuracy_interval,
        )
        from secure_pipeline.training.models import classification_metrics

        judged = judge(context.instance, snapshot_store, pipeline, cross_validate=True)
        splits, cv = judged.splits, judged.cross_validation
        judged_sets = []  # (name, labels, scores): every set must meet the policy
        if cv is not None:
            judged_sets.append(("cross-validation", judged.y[cv.rows], cv.scores))
        if cv is None or len(splits.test):
            rows = splits.evaluation
            name = "external test set" if len(splits.test) else "holdout"
            judged_sets.append(
                (name, judged.y[rows], judged.model.predict_proba(judged.x.iloc[rows])[:, 1])
            )
        failures, results = [], {}
        for name, labels, scores in judged_sets:
            metrics = classification_metrics(labels, scores)
            positives = int((labels == 1).sum())
            low, high = auc_interval(metrics["roc_auc"], positives, len(labels) - positives)
            bal_low, bal_high = balanced_accuracy_interval(labels, (scores >= 0.5).astype(int))
            metrics.update(
                roc_auc_lower=low,
                roc_auc_upper=high,
                balanced_accuracy_lower=bal_low,
                balanced_accuracy_upper=bal_high,
            )
            results[name] = metrics
            on = f" ({name})" if len(judged_sets) > 1 else ""
            if not metrics["roc_auc"] >= policy.min_roc_auc:
                failures.append(
                    f"ROC AUC {metrics['roc_auc']:.3f} < {policy.min_roc_auc}{on} "
                    f"({STATED_CONFIDENCE:.0%} interval {low:.3f}-{high:.3f})"
                )
            if metrics["balanced_accuracy"] < policy.min_balanced_accuracy:
                failures.append(
                    f"balanced accuracy {metrics['balanced_accuracy']:.3f} < "
                    f"{policy.min_balanced_accuracy}{on} ({STATED_CONFIDENCE:.0%} interval "
                    f"{bal_low:.3f}-{bal_high:.3f})"
                )
        evaluated, metrics = judged_sets[0][0], results[judged_sets[0][0]]
        evaluation = _evaluation(judged, pipeline)
        rounded = {k: round(v, 6) for k, v in metrics.items()}
        # Under cross-validation, the shipped model on the external test file, judged apart.
        others = {}
        if cv is not None and "external test set" in results:
            external = results["external test set"]
            others["external_test_set"] = {k: round(v, 6) for k, v in external.items()}
        _track(
            pipeline,
            judged,
            PERFORMANCE,
            metrics,
            {"evaluated_on": evaluated, "evaluation": evaluation, **metrics, **others},
        )
        return decide(
            context,
            snapshot_store,
            judged,
            PERFORMANCE,
            not failures,
            {**rounded, "evaluation": evaluation["method"], **others},
            {
                "evaluated_on": evaluated,
                "evaluation": dg.MetadataValue.json(evaluation),
                **rounded,
                **({k: dg.MetadataValue.json(v) for k, v in others.items()}),
                "interval_confidence": STATED_CONFIDENCE,
                "threshold_rule": (
                    f"the measured ROC AUC must reach {policy.min_roc_auc} and balanced "
                    f"accuracy {policy.min_balanced_accuracy} on every judged set; the "
                    f"{STATED_CONFIDENCE:.0%} intervals (Hanley-McNeil for the AUC, normal for "
                    "balanced accuracy) say how far another sample of the same size could "
                    "move them"
                ),
            },
            "; ".join(failures),
        )

    @dg.asset_check(
        asset=model_key,
        name=ROBUSTNESS,
        blocking=True,
        description=(
            f"An evasion attack (ART projected gradient descent, white-box for differentiable "
            f"models, transferred from a surrogate otherwise) that moves every numeric input by "
            f"up to {policy.robustness_epsilon} standard deviations costs at most "
            f"{policy.max_robustness_drop:.0%} accuracy on up to "
            f"{policy.robustness_sample_cap} evaluation records of the shipped model. More "
            "means small misreported numbers flip too many decisions. The threshold applies to "
            "the measured drop; its 95% interval (paired over the records attacked) is stated "
            "beside it."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def adversarial_robustness(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from dataclasses import asdict

        from secure_pipeline.mlsec.plots import robustness_figure
        from secure_pipeline.mlsec.robustness import evaluate_robustness

        judged = judge(context.instance, snapshot_store, pipeline)
        rows, fit = judged.splits.evaluation, judged.splits.fit
        result = evaluate_robustness(
            judged.model,
            judged.x.iloc[rows],
            judged.y[rows],
            judged.numeric_inputs,
            epsilon=policy.robustness_epsilon,
            cap=policy.robustness_sample_cap,
            seed=seed,
            surrogate_x=judged.x.iloc[fit],
            surrogate_y=judged.y[fit],
        )
        passed = result.drop <= policy.max_robustness_drop
        numbers = {
            "clean_accuracy": result.clean_accuracy,
            "adversarial_accuracy": result.adversarial_accuracy,
            "accuracy_drop": result.drop,
            "accuracy_drop_lower": result.drop_interval[0],
            "accuracy_drop_upper": result.drop_interval[1],
        }
        _track(pipeline, judged, ROBUSTNESS, numbers, asdict(result), robustness_figure(result))
        return decide(
            context,
            snapshot_store,
            judged,
            ROBUSTNESS,
            passed,
            {k: round(v, 6) for k, v in numbers.items()},
            {
                "attack": result.attack,
                "epsilon_sd": result.epsilon,
                "records": result.rows,
                "evaluated_on": "external test set" if len(judged.splits.test) else "holdout",
                **{k: round(v, 6) for k, v in numbers.items()},
                "interval_confidence": result.confidence,
                "max_drop": policy.max_robustness_drop,
                "flipped": result.flipped,
                "out_of_budget": result.out_of_budget,
                "threshold_rule": (
                    f"the measured drop must not exceed {policy.max_robustness_drop}; on "
                    f"{result.rows} records its {result.confidence:.0%} interval is "
                    f"{result.drop_interval[0]:.3f} to {result.drop_interval[1]:.3f}"
                ),
            },
            f"accuracy drops {result.drop:.3f} under attack (from {result.clean_accuracy:.3f} "
            f"to {result.adversarial_accuracy:.3f}; {result.confidence:.0%} interval of the "
            f"drop {result.drop_interval[0]:.3f}-{result.drop_interval[1]:.3f} on "
            f"{result.rows} records); the policy allows {policy.max_robustness_drop}",
        )

    @dg.asset_check(
        asset=model_key,
        name=MEMBERSHIP,
        blocking=True,
        description=(
            "A black-box membership-inference attack (ART) cannot tell the shipped model's "
            f"training records from others beyond sampling error: it fails when, at "
            f"{policy.membership_confidence:.0%} confidence, the attack's ROC AUC is above "
            f"{policy.max_membership_auc} or its advantage (max TPR - FPR) above "
            f"{policy.max_membership_advantage} (lower confidence bounds: Hanley-McNeil for the "
            "AUC, two-sample Dvoretzky-Kiefer-Wolfowitz for the advantage), on up to "
            f"{policy.privacy_sample_cap} records of each. More means the model leaks who was "
            "in its training data. Fewer than 50 records of each cannot be judged, and fail."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def membership_inference_risk(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from dataclasses import asdict

        import numpy as np

        from secure_pipeline.mlsec.privacy import MIN_ATTACK_RECORDS, evaluate_membership

        judged = judge(context.instance, snapshot_store, pipeline)
        members = judged.splits.fit
        others = np.concatenate([judged.splits.holdout, judged.splits.test])
        limits = {
            "max_auc": policy.max_membership_auc,
            "max_advantage": policy.max_membership_advantage,
            "confidence": policy.membership_confidence,
        }
        where = {
            "evaluated_on": (
                "the shipped model: members from its fit rows, others from its holdout"
                + (" and external test rows" if len(judged.splits.test) else " rows")
            ),
            "evaluation": dg.MetadataValue.json(_evaluation(judged, pipeline)),
        }
        if min(policy.privacy_sample_cap, len(members), len(others)) < MIN_ATTACK_RECORDS:
            # Too few records to train an attack and measure it: not a pass (fail closed).
            needed = int(np.ceil(MIN_ATTACK_RECORDS / pipeline.model.holdout_fraction))
            problem = (
                f"membership risk cannot be judged: the attack needs {MIN_ATTACK_RECORDS} "
                f"training records and {MIN_ATTACK_RECORDS} others, found {len(members)} and "
                f"{len(others)} (privacy_sample_cap {policy.privacy_sample_cap}). Give it more "
                f"records: a training file of at least {needed} rows at holdout "
                f"{pipeline.model.holdout_fraction}, a larger holdout_fraction, or an external "
                f"test file (and a privacy_sample_cap of at least {MIN_ATTACK_RECORDS})."
            )
            return decide(
                context,
                snapshot_store,
                judged,
                MEMBERSHIP,
                False,
                {"outcome": "cannot_be_judged", "members": len(members), "others": len(others)},
                {
                    "outcome": "cannot_be_judged",
                    "members": len(members),
                    "non_members": len(others),
                    "records_needed": MIN_ATTACK_RECORDS,
                    **where,
                    **limits,
                },
                problem,
            )
        result = evaluate_membership(
            judged.model,
            judged.x.iloc[members],
            judged.y[members],
            judged.x.iloc[others],
            judged.y[others],
            cap=policy.privacy_sample_cap,
            seed=seed,
            confidence=policy.membership_confidence,
        )
        failures = result.exceeds(policy.max_membership_auc, policy.max_membership_advantage)
        numbers = {
            "attack_auc": result.auc,
            "attack_auc_lower": result.auc_bounds[0],
            "attack_auc_upper": result.auc_bounds[1],
            "attack_advantage": result.advantage,
            "attack_advantage_lower": result.advantage_bounds[0],
            "attack_advantage_upper": result.advantage_bounds[1],
        }
        meaning = result.meaning(policy.max_membership_auc, policy.max_membership_advantage)
        _track(pipeline, judged, MEMBERSHIP, numbers, {**asdict(result), "meaning": meaning})
        outcome = "failed" if failures else "passed"
        return decide(
            context,
            snapshot_store,
            judged,
            MEMBERSHIP,
            not failures,
            {"outcome": outcome, **{k: round(v, 6) for k, v in numbers.items()}},
            {
                "outcome": outcome,
                "attack": result.attack,
                "members": result.members,
                "non_members": result.non_members,
                **{k: round(v, 6) for k, v in numbers.items()},
                **limits,
                "meaning": meaning,
                **where,
            },
            "; ".join(failures),
        )

    @dg.asset_check(
        asset=model_key,
        name=FAIRNESS,
        blocking=True,
        description=(
            "fairlearn audit per sensitive feature "
            f"({', '.join(pipeline.sensitive_features) or 'none declared'}): selection rate, "
            "TPR, FPR and accuracy per group, on the out-of-fold predictions of every training "
            "row when the spec cross-validates, else on the evaluation set. Fails when a "
            "gating feature's groups differ in TPR or FPR by more than "
            f"{policy.max_equalized_odds_difference} beyond sampling error (lower bound at "
            f"{policy.fairness_confidence:.0%} confidence), or when the model widens the "
            "labels' own selection-rate gap by more than "
            f"{policy.max_parity_amplification}. A feature with fewer than two groups of "
            f"{policy.fairness_min_group_size} positives and negatives cannot be judged: that "
            "fails too, and the verdict states the rows each group would need."
            + (
                f" Reported only: {', '.join(policy.fairness_report_only)}."
                if policy.fairness_report_only
                else ""
            )  # fmt: skip
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def fairness_audit(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.features.engineering import feature_catalog
        from secure_pipeline.mlsec.fairness import audit_fairness
        from secure_pipeline.mlsec.plots import fairness_figure

        judged = judge(context.instance, snapshot_store, pipeline, cross_validate=True)
        cv = judged.cross_validation
        rows = cv.rows if cv is not None else judged.splits.evaluation
        catalog = {f.name: f for f in feature_catalog(pipeline)}
        sensitive = {}
        for name in pipeline.sensitive_features:
            column = f"{name}_band" if name in pipeline.features.bands else name
            feature = catalog.get(column)
            if feature is None or feature.kind != "categorical":
                raise dg.Failure(
                    f"sensitive feature {name!r} has no categorical view to audit: give it "
                    "allowed categories, or bands in the feature spec"
                )
            codes = judged.features[column].to_numpy()[rows]
            sensitive[name] = (column, codes, feature.categories)
        # Out-of-fold predictions under cross-validation (the test file is not pooled with them:
        # another model scored it); the shipped model's on the evaluation set otherwise.
        predictions = (
            cv.predictions if cv is not None else judged.model.predict(judged.x.iloc[rows])
        )
        result = audit_fairness(
            judged.y[rows],
            predictions,
            sensitive,
            max_equalized_odds_difference=policy.max_equalized_odds_difference,
            max_parity_amplification=policy.max_parity_amplification,
            min_group_size=policy.fairness_min_group_size,
            confidence=policy.fairness_confidence,
            report_only=policy.fairness_report_only,
        )
        groups = [
            {
                "feature": a.feature,
                "group": g.group,
                "rows": g.rows,
                "positives": g.positives,
                "selection_rate": round(g.selection_rate, 4),
                "tpr": round(g.true_positive_rate, 4),
                "fpr": round(g.false_positive_rate, 4),
                "accuracy": round(g.accuracy, 4),
                "gated": g.gated,
            }
            for a in result.audits
            for g in a.groups
        ]
        summary = {
            a.feature: {
                "gating": a.gating,
                "equalized_odds_difference": round(a.equalized_odds_difference, 4),
                "gap_beyond_noise": round(a.gap_beyond_noise, 4),
                "demographic_parity_difference": round(a.demographic_parity_difference, 4),
                "label_parity_difference": round(a.label_parity_difference, 4),
                "outcome": a.outcome,
                "evaluated_rows": a.evaluated_rows,
                "rows_needed": a.rows_needed,
                "rows_needed_for_verdict": a.rows_needed_for_verdict,
                "problems": a.problems,
            }
            for a in result.audits
        }
        evaluation = _evaluation(judged, pipeline)
        advice = _fairness_advice(pipeline, judged, result)
        problems = [p for a in result.audits if a.gating for p in a.problems]
        metrics = {
            f"{a.feature}.{k}": v
            for a in result.audits
            for k, v in (
                ("equalized_odds_difference", a.equalized_odds_difference),
                ("demographic_parity_difference", a.demographic_parity_difference),
            )
        }
        _track(
            pipeline,
            judged,
            FAIRNESS,
            metrics,
            {"outcome": result.outcome, "evaluation": evaluation, "features": summary,
             "groups": groups},
            fairness_figure(result),
        )  # fmt: skip
        return decide(
            context,
            snapshot_store,
            judged,
            FAIRNESS,
            result.passed,
            {
                "outcome": result.outcome,
                "evaluation": evaluation["method"],
                "evaluated_rows": int(len(rows)),
                "features": {
                    k: {"outcome": v["outcome"], "problems": len(v["problems"])}
                    for k, v in summary.items()
                },
            },
            {
                "outcome": result.outcome,
                "max_equalized_odds_difference": _largest_gap(result),
                "evaluation": dg.MetadataValue.json(evaluation),
                "by_feature": dg.MetadataValue.json(summary),
                "by_group": table(
                    groups,
                    {
                        "feature": "string",
                        "group": "string",
                        "rows": "int",
                        "positives": "int",
                        "selection_rate": "float",
                        "tpr": "float",
                        "fpr": "float",
                        "accuracy": "float",
                        "gated": "bool",
                    },
                ),
                "reported_only": ", ".join(policy.fairness_report_only) or "none",
                **({"what_to_do": advice} if advice else {}),
            },
            "; ".join(problems + ([advice] if advice else [])),
        )

    @dg.asset_check(
        asset=model_key,
        name=ONNX_EQUIVALENT,
        blocking=True,
        description=(
            "The model's ONNX copy (skl2onnx, served through onnxruntime) scores every "
            "evaluation row like the skops model: no probability differs by more than the "
            "stated tolerance and no label at 0.5 differs. The copy is stored by digest and "
            "this signed verdict names it: registration signs exactly that file into the "
            "bundle, and a copy that disagrees fails here, so no model is registered with it. "
            "An estimator skl2onnx cannot convert passes with no copy and is served through "
            "skops."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def onnx_equivalent(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.training.onnx import TOLERANCE, convert, equivalence

        judged = judge(context.instance, snapshot_store, pipeline)
        data, reason = convert(judged.model, pipeline)
        if data is None:
            return decide(
                context, snapshot_store, judged, ONNX_EQUIVALENT, True,
                {"onnx_sha256": None, "reason": reason[:400], "tolerance": TOLERANCE},
                {"onnx": "none: served through skops", "reason": reason, "max_abs_diff": 0.0},
                None,
            )  # fmt: skip
        rows = judged.splits.evaluation
        compared = equivalence(judged.model, data, judged.x.iloc[rows].reset_index(drop=True))
        ref = snapshot_store.get_store().put_bytes(
            _onnx_copies(pipeline), data, ext="onnx", format="onnx",
            upstream={model_key.to_user_string(): judged.model_sha256},
            run_id=context.run.run_id, code_version=pipeline.code_version,
        )  # fmt: skip
        evaluated = "external test set" if len(judged.splits.test) else "holdout"
        summary = {
            "onnx_sha256": ref.sha256 if compared["agrees"] else None,
            "judged_onnx_sha256": ref.sha256,
            "rows": compared["rows"],
            "max_abs_diff": compared["max_abs_diff"],
            "label_disagreements": compared["label_disagreements"],
            "tolerance": compared["tolerance"],
            "evaluated_on": evaluated,
        }
        _track(pipeline, judged, ONNX_EQUIVALENT,
               {"max_abs_diff": compared["max_abs_diff"],
                "label_disagreements": float(compared["label_disagreements"])},
               summary)  # fmt: skip
        problem = (
            f"the ONNX copy {ref.sha256[:12]} does not score like the model on the "
            f"{compared['rows']} {evaluated} rows: largest probability difference "
            f"{compared['max_abs_diff']:.3g} (tolerance {compared['tolerance']:g}), "
            f"{compared['label_disagreements']} labels differ. A converter that computes "
            "otherwise than the judged model must not serve it: check the skl2onnx version "
            "and the estimator's options, or use an estimator it converts exactly."
        )
        return decide(
            context, snapshot_store, judged, ONNX_EQUIVALENT, bool(compared["agrees"]), summary,
            {**{k: v for k, v in summary.items() if v is not None},
             "onnx_key": ref.key, "onnx": "agrees" if compared["agrees"] else "disagrees"},
            problem,
        )  # fmt: skip

    return [performance_meets_policy, adversarial_robustness, membership_inference_risk,
            fairness_audit, onnx_equivalent]  # fmt: skip
