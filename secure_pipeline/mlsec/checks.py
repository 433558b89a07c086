"""The ML security gates on ``trained_model``, as blocking Dagster asset checks.

Each check loads the latest model snapshot itself — verified digest, skops with trusted types
only — and the exact features snapshot it was trained on (named in the model's
materialization), recomputes the seeded splits, and judges. Every verdict names the model
digest it judged (in its metadata and its audit record) and is added to the model's MLflow run
with a figure where one helps.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from secure_pipeline.metadata import table
from secure_pipeline.names import FAIRNESS, MEMBERSHIP, PERFORMANCE, ROBUSTNESS
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.io_manager import recorded_snapshot
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import snapshot_key
from secure_pipeline.training.assets import experiment_name
from secure_pipeline.trust.identities import TRAIN
from secure_pipeline.verdicts import verdict


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
    """

    model_sha256: str
    model: Any
    x: Any
    y: Any
    features: Any
    splits: Any
    numeric_inputs: int
    mlflow_run_id: str | None


def judge(
    instance: dg.DagsterInstance, store: SnapshotStoreResource, pipeline: PipelineSpec
) -> Judged:
    """Load the latest model and its training data, verifying both.

    Raises:
        IntegrityError: When a snapshot fails verification or the record points elsewhere.
        UntrustedModelError: When the model file is not a trusted skops file.
    """
    from secure_pipeline.errors import IntegrityError
    from secure_pipeline.features.engineering import LABEL_COLUMN
    from secure_pipeline.storage.tables import parquet_to_table
    from secure_pipeline.training.models import model_inputs, split_rows
    from secure_pipeline.training.serialization import load_model

    key = pipeline.names.trained_model
    record = instance.get_latest_materialization_event(key)
    if record is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized yet")
    model_key, model_sha, _ = recorded_snapshot(record, key)
    snapshots = store.get_store()
    model = load_model(snapshots.read_bytes((model_key, model_sha)), source=model_key)
    meta = record.asset_materialization.metadata
    features_key, features_sha = meta["features_key"].value, meta["features_sha256"].value
    if features_key != snapshot_key(pipeline.names.features.path, features_sha, "parquet"):
        raise IntegrityError(
            f"trained_model {model_sha[:12]} names training data {features_key}, which is not "
            f"the features snapshot {features_sha}"
        )
    features = parquet_to_table(snapshots.read_bytes((features_key, features_sha))).to_pandas()
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
    return Judged(
        model_sha256=model_sha,
        model=model,
        x=features[inputs.columns],
        y=features[LABEL_COLUMN].to_numpy(),
        features=features,
        splits=splits,
        numeric_inputs=len(inputs.numeric),
        mlflow_run_id=str(run.value) if run is not None else None,
    )


def _track(
    pipeline: PipelineSpec,
    judged: Judged,
    check: str,
    metrics: dict[str, float],
    result: dict[str, Any],
    figure: Any = None,
) -> None:
    from secure_pipeline.training.tracking import log_check, tracked_run

    if judged.mlflow_run_id is None:
        return
    with tracked_run(experiment_name(pipeline), run_id=judged.mlflow_run_id) as mlflow:
        log_check(mlflow, check, metrics, result)
        if figure is not None:
            mlflow.log_figure(figure, f"plots/{check}.png")


def build_ml_checks(pipeline: PipelineSpec) -> list[dg.AssetChecksDefinition]:
    """Build the four blocking gates of ``trained_model``.

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
            f"On the evaluation set the model reaches ROC AUC >= {policy.min_roc_auc} and "
            f"balanced accuracy >= {policy.min_balanced_accuracy} (0.5 is chance for both). "
            "A weaker model is not worth the risk of deploying it."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def performance_meets_policy(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.training.models import classification_metrics

        judged = judge(context.instance, snapshot_store, pipeline)
        rows = judged.splits.evaluation
        scores = judged.model.predict_proba(judged.x.iloc[rows])[:, 1]
        metrics = classification_metrics(judged.y[rows], scores)
        failures = []
        if not metrics["roc_auc"] >= policy.min_roc_auc:
            failures.append(f"ROC AUC {metrics['roc_auc']:.3f} < {policy.min_roc_auc}")
        if metrics["balanced_accuracy"] < policy.min_balanced_accuracy:
            failures.append(
                f"balanced accuracy {metrics['balanced_accuracy']:.3f} < "
                f"{policy.min_balanced_accuracy}"
            )
        evaluated = "external test set" if len(judged.splits.test) else "holdout"
        _track(pipeline, judged, PERFORMANCE, metrics, {"evaluated_on": evaluated, **metrics})
        return decide(
            context,
            snapshot_store,
            judged,
            PERFORMANCE,
            not failures,
            {k: round(v, 6) for k, v in metrics.items()},
            {"evaluated_on": evaluated, **{k: round(v, 6) for k, v in metrics.items()}},
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
            f"{policy.robustness_sample_cap} evaluation records. More means small "
            "misreported numbers flip too many decisions."
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
                **{k: round(v, 6) for k, v in numbers.items()},
                "max_drop": policy.max_robustness_drop,
                "flipped": result.flipped,
                "out_of_budget": result.out_of_budget,
            },
            f"accuracy drops {result.drop:.3f} under attack (from {result.clean_accuracy:.3f} "
            f"to {result.adversarial_accuracy:.3f}); the policy allows "
            f"{policy.max_robustness_drop}",
        )

    @dg.asset_check(
        asset=model_key,
        name=MEMBERSHIP,
        blocking=True,
        description=(
            "A black-box membership-inference attack (ART) cannot tell training records from "
            f"others: attack ROC AUC <= {policy.max_membership_auc} and advantage <= "
            f"{policy.max_membership_advantage} on up to {policy.privacy_sample_cap} records of "
            "each. More means the model leaks who was in its training data."
        ),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def membership_inference_risk(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from dataclasses import asdict

        import numpy as np

        from secure_pipeline.mlsec.privacy import evaluate_membership

        judged = judge(context.instance, snapshot_store, pipeline)
        members = judged.splits.fit
        others = np.concatenate([judged.splits.holdout, judged.splits.test])
        result = evaluate_membership(
            judged.model,
            judged.x.iloc[members],
            judged.y[members],
            judged.x.iloc[others],
            judged.y[others],
            cap=policy.privacy_sample_cap,
            seed=seed,
        )
        failures = []
        if result.auc > policy.max_membership_auc:
            failures.append(f"attack AUC {result.auc:.3f} > {policy.max_membership_auc}")
        if result.advantage > policy.max_membership_advantage:
            failures.append(
                f"attack advantage {result.advantage:.3f} > {policy.max_membership_advantage}"
            )
        numbers = {"attack_auc": result.auc, "attack_advantage": result.advantage}
        _track(pipeline, judged, MEMBERSHIP, numbers, asdict(result))
        return decide(
            context,
            snapshot_store,
            judged,
            MEMBERSHIP,
            not failures,
            {k: round(v, 6) for k, v in numbers.items()},
            {
                "attack": result.attack,
                "members": result.members,
                "non_members": result.non_members,
                **{k: round(v, 6) for k, v in numbers.items()},
                "max_auc": policy.max_membership_auc,
                "max_advantage": policy.max_membership_advantage,
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
            "TPR, FPR and accuracy per group on the evaluation set. Fails when a gating "
            "feature's groups differ in TPR or FPR by more than "
            f"{policy.max_equalized_odds_difference} beyond sampling error, or when the model "
            f"widens the labels' own selection-rate gap by more than "
            f"{policy.max_parity_amplification}."
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

        judged = judge(context.instance, snapshot_store, pipeline)
        rows = judged.splits.evaluation
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
        predictions = judged.model.predict(judged.x.iloc[rows])
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
                "problems": a.problems,
            }
            for a in result.audits
        }
        problems = [p for a in result.audits if a.gating for p in a.problems]
        metrics = {
            f"{a.feature}.{k}": v
            for a in result.audits
            for k, v in (
                ("equalized_odds_difference", a.equalized_odds_difference),
                ("demographic_parity_difference", a.demographic_parity_difference),
            )
        }
        _track(pipeline, judged, FAIRNESS, metrics, {"features": summary, "groups": groups},
               fairness_figure(result))  # fmt: skip
        return decide(
            context,
            snapshot_store,
            judged,
            FAIRNESS,
            result.passed,
            {"features": {k: {"problems": len(v["problems"])} for k, v in summary.items()}},
            {
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
            },
            "; ".join(problems),
        )

    return [performance_meets_policy, adversarial_robustness, membership_inference_risk,
            fairness_audit]  # fmt: skip
