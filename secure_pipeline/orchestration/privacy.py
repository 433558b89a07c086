"""The privacy job of a pipeline that holds personal data: erasures completed, retention applied.

One op, run daily by its schedule (and on demand from the UI or ``dagster job launch``): it
destroys the data keys of snapshots whose erasure is due (a newer ingestion without the erased
subjects exists) and of raw snapshots past the source's retention, flags the models trained on
them, and writes a receipt of each to the audit trail. On Kubernetes it runs in the privacy
stage's namespace as its service account: the only stage that may destroy data keys.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from secure_pipeline.names import PIPELINE_TAG, STAGE_TAG
from secure_pipeline.orchestration.jobs import job_executor, job_name
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.resources import STORE_RESOURCE_KEY, SnapshotStoreResource
from secure_pipeline.trust.identities import PRIVACY

PRIVACY_STAGE = "privacy"


def build_privacy_job(pipeline: PipelineSpec, executor: str) -> dg.JobDefinition:
    """The ``<pipeline>_privacy`` job.

    Args:
        pipeline: A pipeline whose schema holds personal data.
        executor: ``kubernetes`` or ``multiprocess``.
    """
    isolation = pipeline.orchestration.privacy

    @dg.op(
        name=f"{pipeline.name}_enforce_privacy",
        required_resource_keys={STORE_RESOURCE_KEY},
        # Nothing to store: the receipts are in the audit trail, the report in the metadata.
        out=dg.Out(dg.Nothing),
        tags=isolation.dagster_tags(PRIVACY),
        description=(
            "Completes pending erasures (destroys the data keys of the snapshots that held an "
            "erased subject once a newer ingestion without it exists) and applies the source's "
            "retention; each destruction is receipted in the audit trail, and models trained "
            "on the destroyed snapshots are flagged."
        ),
    )
    def enforce_privacy(context: dg.OpExecutionContext) -> dg.Output[None]:
        from secure_pipeline.privacy.erasure import enforce
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import signer_for

        resource: SnapshotStoreResource = getattr(context.resources, STORE_RESOURCE_KEY)
        report = enforce(
            resource.get_store(),
            pipeline,
            trust_policy(),
            today=datetime.now(UTC),
            signer=signer_for(PRIVACY),
        )
        summary = report.to_dict()
        context.log.info(f"privacy enforcement of {pipeline.name}: {summary}")
        if report.problems or report.plaintext:
            # What was destroyed is receipted already; what could not be done must be seen
            # (a failed run alerts), not left in a log line.
            raise dg.Failure(
                f"privacy enforcement of {pipeline.name} left work undone: "
                + "; ".join([*report.problems, *(f"{k} is not encrypted, so it cannot be "
                                                 "crypto-shredded" for k in report.plaintext)]),
                metadata={"report": dg.MetadataValue.json(summary)},
            )  # fmt: skip
        return dg.Output(None, metadata={"report": dg.MetadataValue.json(summary)})

    tags: dict[str, Any] = {STAGE_TAG: PRIVACY_STAGE, PIPELINE_TAG: pipeline.name}
    executor_def = job_executor(pipeline, PRIVACY_STAGE, PRIVACY_STAGE, isolation, executor, tags)

    @dg.job(
        name=job_name(pipeline, PRIVACY_STAGE),
        tags=tags,
        executor_def=executor_def,
        description=(
            "Complete pending erasures and apply retention by destroying data keys. On "
            f"Kubernetes: namespace {isolation.namespace}, service account "
            f"{isolation.service_account}."
        ),
    )
    def privacy_job() -> None:
        enforce_privacy()

    return privacy_job


def privacy_schedule(
    pipeline: PipelineSpec, job: dg.JobDefinition, production: bool
) -> dg.ScheduleDefinition | None:
    """The daily schedule of the privacy job (running by default in production)."""
    cron = pipeline.privacy.enforce_cron
    if cron is None:
        return None
    return dg.ScheduleDefinition(
        name=f"{pipeline.name}_privacy_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone=pipeline.orchestration.timezone,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING if production else dg.DefaultScheduleStatus.STOPPED
        ),
        description=(
            f"Completes pending erasures and applies retention for {pipeline.source.name}."
        ),
    )
