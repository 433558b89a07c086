"""The promotion stage as Dagster definitions: ``promoted_model`` and ``canary_analysis``.

``promoted_model`` is the gate (`secure_pipeline.promotion.gate`): it re-verifies the registered
version and its evidence, counts approvals and signs its decision. With a serving deployment
(``SECURE_PIPELINE_SERVING_DIR``) the decision is only ``challenger``, and ``canary_analysis``
deploys the challenger to the idle slot, gives it the canary share of traffic, judges it against
the live slot and either makes it champion (a signed decision) and moves all traffic to it, or
rolls it back (the step fails, audited).
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.trust.identities import GATE


def serving_directory() -> Path | None:
    """The configured serving deployment, if any."""
    from secure_pipeline import environment as env

    value = env.read("SECURE_PIPELINE_SERVING_DIR")
    return Path(value) if value else None


def build_promotion_stage(pipeline: PipelineSpec) -> list[dg.AssetsDefinition]:
    """``promoted_model``, and ``canary_analysis`` when a serving deployment is configured."""
    promoted_key = pipeline.names.promoted_model
    owners = list(pipeline.owners) or None

    @dg.asset(
        key=promoted_key,
        deps=[pipeline.names.registered_model],
        group_name="promotion",
        kinds={"mlflow"},
        owners=owners,
        code_version=pipeline.code_version,
        description=(
            "The promotion gate. Downloads the registered version back from the registry and "
            "re-verifies signature, digests, lineage and today's policy from those bytes "
            "(never trusting earlier steps) and the release identity's signed registration, "
            "requires the policy's signed approvals "
            f"({pipeline.policy.approvals_required} for this pipeline), then the gate signs its "
            "decision (a SLSA verification summary: challenger, or champion with the previous "
            "champion recorded for `secure-pipeline rollback`); the MLflow aliases mirror it. "
            "Every step is a signed audit event."
        ),
        tags=pipeline.names.asset_tags("promotion"),
        op_tags=pipeline.orchestration.registry.dagster_tags(GATE),
    )
    @retry_transient_io(pipeline.orchestration)
    def promoted_model(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.promotion.gate import promote
        from secure_pipeline.registry.assets import registered

        value = registered(context.instance, snapshot_store, pipeline)
        # With a serving deployment the champion is crowned by the canary, not here.
        outcome = promote(
            pipeline,
            value["name"],
            value["version"],
            store=snapshot_store.get_store(),
            audit=snapshot_store.get_audit_log(),
            actor=f"asset:{promoted_key.to_user_string()}",
            run_id=context.run.run_id,
            crown=serving_directory() is None,
        )
        return dg.MaterializeResult(
            value=outcome,
            metadata={
                "champion": f"models:/{value['name']}/{outcome['champion']}",
                "model_sha256": outcome["model_sha256"],
                "previous_champion": str(outcome["previous_champion"]),
                "approvals": dg.MetadataValue.json(outcome["approvals"]),
                "outcome": dg.MetadataValue.json(json.loads(json.dumps(outcome, default=str))),
            },
        )

    assets = [promoted_model]
    if serving_directory() is not None:
        assets.append(build_canary_asset(pipeline))
    return assets


def build_canary_asset(pipeline: PipelineSpec) -> dg.AssetsDefinition:
    """The ``canary_analysis`` asset of a pipeline."""
    canary_key = pipeline.names.canary_analysis
    policy = pipeline.canary

    @dg.asset(
        key=canary_key,
        deps=[pipeline.names.promoted_model],
        group_name="promotion",
        kinds={"nginx"},
        owners=list(pipeline.owners) or None,
        code_version=pipeline.code_version,
        description=(
            "Blue-green release of the challenger: deployed to the idle slot (which verifies "
            "the model before it is ready), given "
            f"{policy.canary_weight} % of the traffic until it answered {policy.min_requests} "
            "requests, then judged against the live slot (error rate, p95 latency, prediction "
            "distribution). Pass: all traffic and the champion alias move to it. Fail: traffic "
            "back to the live slot, champion unchanged, audited."
        ),
        tags=pipeline.names.asset_tags("promotion"),
        op_tags=pipeline.orchestration.registry.dagster_tags(GATE),
    )
    def canary_analysis(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.names import CHALLENGER
        from secure_pipeline.promotion.bluegreen import BlueGreen
        from secure_pipeline.registry.decisions import decisions
        from secure_pipeline.trust.policy import trust_policy

        directory = serving_directory()
        if directory is None:
            raise dg.Failure("SECURE_PIPELINE_SERVING_DIR is not set: no deployment to release to")
        # The challenger is the gate's latest signed decision, not the alias (a mirror anyone
        # with registry access could move to an older version).
        history = decisions(snapshot_store.get_store(), trust_policy(), pipeline.name)[0]
        if not history or history[-1].decision != CHALLENGER:
            raise dg.Failure(
                f"{pipeline.name} has no challenger waiting: materialize promoted_model first"
            )
        version = history[-1].version
        outcome = BlueGreen(directory, pipeline, policy).release(
            version,
            audit=snapshot_store.get_audit_log(),
            actor=f"asset:{canary_key.to_user_string()}",
            run_id=context.run.run_id,
        )
        figures = outcome.verdict.figures if outcome.verdict else {}
        return dg.MaterializeResult(
            value={"version": version, "slot": outcome.slot, **figures},
            metadata={
                "champion": f"models:/{pipeline.name}/{version}",
                "slot": outcome.slot,
                "weights": dg.MetadataValue.json(outcome.weights),
                **{k: v for k, v in figures.items() if v is not None},
            },
        )

    return canary_analysis
