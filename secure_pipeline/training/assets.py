"""The training stage as Dagster definitions: ``trained_model``."""

from typing import Any

import dagster as dg

from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.io_manager import (
    EXTENSION_METADATA,
    latest_record,
    load_recorded,
    recorded_snapshot,
)
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import sha256_hex
from secure_pipeline.trust.identities import TRAIN


def experiment_name(pipeline: PipelineSpec) -> str:
    """The MLflow experiment of a pipeline's training runs."""
    return pipeline.names.experiment


def build_training_stage(pipeline: PipelineSpec) -> list[dg.AssetsDefinition]:
    """Build ``trained_model``.

    Args:
        pipeline: The spec.

    Returns:
        The asset definitions.
    """
    spec = pipeline.model
    features_key, model_key = pipeline.names.features, pipeline.names.trained_model
    policy = pipeline.policy

    @dg.asset(
        key=model_key,
        deps=[features_key],
        group_name="training",
        kinds={"scikitlearn", "mlflow"},
        owners=list(pipeline.owners) or None,
        code_version=pipeline.code_version,
        description=(
            f"A scikit-learn pipeline (standardised numbers, one-hot categories, "
            f"{spec.estimator.replace('_', ' ')}) trained with fixed seeds on the "
            f"`{spec.train_member}` rows of the features snapshot, "
            f"{spec.holdout_fraction:.0%} held out"
            + (
                f", scored on `{spec.test_member}` as the external test set"
                if spec.test_member
                else ""
            )  # fmt: skip
            + ". Saved with skops (no pickle) as an immutable snapshot; its digest is what every "
            "security check judges. Logged to MLflow."
        ),
        metadata={
            EXTENSION_METADATA: "skops",
            "estimator": spec.estimator,
            "estimator_path": spec.estimator_path,
            "params": dg.MetadataValue.json(dict(spec.params)),
            "trusted_types": dg.MetadataValue.json(_trusted_types(pipeline)),
            "excluded_inputs": ", ".join(spec.exclude_features) or "none",
            "policy": dg.MetadataValue.json(
                {k: v for k, v in vars(policy).items() if not k.startswith("_")}
            ),
            "k8s_namespace": pipeline.orchestration.train.namespace,
            "k8s_service_account": pipeline.orchestration.train.service_account,
        },
        tags=pipeline.names.asset_tags("training"),
        op_tags=pipeline.orchestration.train.dagster_tags(TRAIN),
    )
    @retry_transient_io(pipeline.orchestration)
    def trained_model(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.training.models import train
        from secure_pipeline.training.serialization import dump_model, require_declared_types
        from secure_pipeline.training.tracking import run_link, run_link_metadata, tracked_run

        store = snapshot_store.get_store()
        window: dict[str, Any] = {}
        training_days: list[str] = []
        if pipeline.source.partitions is not None:
            from secure_pipeline.features.window import (
                read_training_features,
                store_window,
                window_metadata,
            )

            # The declared window of days, named by one snapshot: the model's training data.
            ref, days = store_window(pipeline, store, context.instance, context.run.run_id)
            features_ref, features_sha = ref.key, ref.sha256
            features = read_training_features(store, pipeline, features_ref, features_sha)
            window = window_metadata(days)
            training_days = [d["sha256"] for d in days]
            context.log.info(
                f"training window {days[0]['partition']}..{days[-1]['partition']} "
                f"({len(days)} days, {len(features)} rows) stored as {ref.uri}"
            )
        else:
            record = latest_record(context.instance, features_key)
            features_ref, features_sha, _ = recorded_snapshot(record, features_key)
            features = load_recorded(store, record, features_key)
        trained = train(features, pipeline)
        data = dump_model(trained.model)
        # Fail here, naming the types to declare, rather than at the first check or server
        # that loads the model and refuses them.
        require_declared_types(data, spec.trusted_types, source=f"the trained {spec.estimator}")
        model_sha = sha256_hex(data)
        with tracked_run(
            experiment_name(pipeline), run_name=f"dagster {context.run.run_id[:8]}"
        ) as mlflow:
            run = mlflow.active_run()
            mlflow.log_params(
                {
                    "estimator": spec.estimator,
                    "estimator_path": spec.estimator_path,
                    **{f"param.{k}": v for k, v in spec.params.items()},
                    "seed": spec.seed,
                    "holdout_fraction": spec.holdout_fraction,
                    "inputs": ",".join(trained.inputs.columns),
                }
            )
            mlflow.log_metrics(trained.metrics)
            mlflow.set_tags(
                {
                    "secure_pipeline.model_sha256": model_sha,
                    "secure_pipeline.features_sha256": features_sha,
                    "secure_pipeline.dagster_run_id": context.run.run_id,
                    "secure_pipeline.pipeline": pipeline.name,
                }
            )
            mlflow.log_dict(
                {k: v for k, v in vars(policy).items() if not k.startswith("_")},
                "policy.json",
            )
            run_id, experiment_id = run.info.run_id, run.info.experiment_id
        from secure_pipeline.trust.signers import signer_for

        record_ = snapshot_store.get_audit_log().append(
            "model.trained",
            signer=signer_for(TRAIN),
            actor=f"asset:{model_key.to_user_string()}",
            run_id=context.run.run_id,
            subject=model_sha,
            details={
                "pipeline": pipeline.name,
                "estimator": spec.estimator,
                "estimator_path": spec.estimator_path,
                "features_sha256": features_sha,
                # Erasure and retention find the model through each day it learnt from.
                **({"training_features": training_days} if training_days else {}),
                "mlflow_run_id": run_id,
                "test_roc_auc": trained.metrics.get("test_roc_auc"),
                "holdout_roc_auc": trained.metrics.get("holdout_roc_auc"),
            },
        )
        context.log.info(
            f"model {model_sha[:12]} trained; MLflow {run_link(run_id, experiment_id)}"
        )
        return dg.MaterializeResult(
            value=data,
            metadata={
                "model_sha256": model_sha,
                "features_sha256": features_sha,
                "features_key": features_ref,
                **window,
                "estimator_path": spec.estimator_path,
                "params": dg.MetadataValue.json(dict(spec.params)),
                "trusted_types": dg.MetadataValue.json(_trusted_types(pipeline)),
                "inputs": dg.MetadataValue.json(trained.inputs.columns),
                "rows": dg.MetadataValue.json(
                    {
                        "fit": len(trained.splits.fit),
                        "holdout": len(trained.splits.holdout),
                        "test": len(trained.splits.test),
                    }
                ),
                # The checks must judge on exactly these roles; they refuse another split.
                "split": dg.MetadataValue.json(
                    {
                        "seed": spec.seed,
                        "holdout_fraction": spec.holdout_fraction,
                        "train_member": spec.train_member,
                        "test_member": spec.test_member,
                        "rows_sha256": trained.splits.fingerprint(),
                    }
                ),
                **{k: round(v, 6) for k, v in trained.metrics.items()},
                "mlflow_run_id": run_id,
                "mlflow_run": run_link_metadata(run_id, experiment_id),
                "training_audit_record": f"{record_.seq}:{record_.hash}",
            },
        )

    return [trained_model]


def _trusted_types(pipeline: PipelineSpec) -> dict[str, list[str]]:
    """The skops types loading the model accepts: the project's and the spec's declared ones."""
    from secure_pipeline.training.serialization import TRUSTED_TYPES

    return {"project": list(TRUSTED_TYPES), "declared": list(pipeline.model.trusted_types)}
