"""``canary_analysis``: the blue-green release of the promoted challenger, as an asset.

Present when a serving deployment is configured (``SECURE_PIPELINE_SERVING_DIR``). Then
``promoted_model`` stops at the ``challenger`` alias, and this asset deploys the challenger to
the idle slot, gives it the canary share of traffic, judges it against the live slot and either
moves all traffic and the ``champion`` alias to it or rolls it back (the step fails, audited).
"""

from pathlib import Path
from typing import Any

import dagster as dg

from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.trust.identities import GATE

CANARY_ANALYSIS = "canary_analysis"


def serving_directory() -> Path | None:
    """The configured serving deployment, if any."""
    from secure_pipeline import environment as env

    value = env.read("SECURE_PIPELINE_SERVING_DIR")
    return Path(value) if value else None


def build_canary_asset(pipeline: SecurePipeline) -> dg.AssetsDefinition:
    """The ``canary_analysis`` asset of a pipeline."""
    from secure_pipeline.registry.assets import PROMOTED_MODEL

    policy = pipeline.canary

    @dg.asset(
        name=CANARY_ANALYSIS,
        deps=[dg.AssetKey(PROMOTED_MODEL)],
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
        tags={"secure_pipeline/stage": "promotion"},
        op_tags=pipeline.orchestration.registry.dagster_tags(GATE),
    )
    def canary_analysis(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.promotion.bluegreen import BlueGreen
        from secure_pipeline.promotion.decisions import CHALLENGER, decisions
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
            actor=f"asset:{CANARY_ANALYSIS}",
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
