"""The monitor job's schedule, and automatic recovery when a live check fails.

* ``<name>_live_monitoring``: the monitor job (``live_traffic`` and its live checks) on the
  monitoring spec's cron schedule.
* ``<name>_rollback_on_live_failure`` (when ``monitoring.auto_rollback``): once a
  ``live_traffic`` materialization has a blocking live check that failed, launches the rollback
  job for that live window, once (the run key is the window's digest).
* ``<name>_rollback``: one op, in the release stage's namespace with the gate's key, running
  `secure_pipeline.promotion.recovery.recover`: it acts only on the monitor identity's signed
  failed verdict about the current champion, rolls back through the verified rollback and moves
  the traffic of the serving deployment, if there is one.
"""

from typing import Any

import dagster as dg

from secure_pipeline.names import PIPELINE_TAG, STAGE_TAG
from secure_pipeline.orchestration.jobs import job_executor
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.resources import STORE_RESOURCE_KEY, SnapshotStoreResource
from secure_pipeline.trust.identities import GATE

ROLLBACK_STAGE = "rollback"
TRIGGER_TAG = "secure_pipeline/trigger"


def build_rollback_job(pipeline: PipelineSpec, executor: str) -> dg.JobDefinition:
    """The ``<pipeline>_rollback`` job: recovery from a failed live check of the champion.

    Args:
        pipeline: The pipeline spec.
        executor: ``kubernetes`` or ``multiprocess``.
    """
    isolation = pipeline.orchestration.registry

    @dg.op(
        name=f"{pipeline.name}_roll_back_champion",
        required_resource_keys={STORE_RESOURCE_KEY},
        config_schema={"window_sha256": dg.Field(str, description="The failed live window.")},
        out=dg.Out(dg.Nothing),
        tags=isolation.dagster_tags(GATE),
        description=(
            "Rolls the champion back to the previous one after a blocking live check failed on "
            "it: only on the monitor identity's signed failed verdict about the current "
            "champion, through the verified rollback (the previous champion verified again, a "
            "new signed champion decision), then all traffic to the slot serving it."
        ),
    )
    def roll_back_champion(context: dg.OpExecutionContext) -> dg.Output[None]:
        from secure_pipeline.promotion.assets import serving_directory
        from secure_pipeline.promotion.recovery import recover
        from secure_pipeline.trust.policy import trust_policy

        resource: SnapshotStoreResource = getattr(context.resources, STORE_RESOURCE_KEY)
        outcome = recover(
            pipeline,
            store=resource.get_store(),
            audit=resource.get_audit_log(),
            trust=trust_policy(),
            window_sha256=context.op_config["window_sha256"],
            actor=f"op:{pipeline.name}_roll_back_champion",
            run_id=context.run_id,
            serving_dir=serving_directory(),
        )
        summary = outcome.to_dict()
        context.log.info(
            f"{pipeline.name}: champion {outcome.rolled_back_from} -> {outcome.restored} after "
            f"{', '.join(summary['failed_checks'])} failed ({outcome.seconds:.1f} s)"
        )
        return dg.Output(
            None,
            metadata={
                "restored": f"models:/{pipeline.name}/{outcome.restored}",
                "rolled_back_from": f"models:/{pipeline.name}/{outcome.rolled_back_from}",
                "recovery_seconds": float(outcome.seconds),
                "outcome": dg.MetadataValue.json(summary),
            },
        )

    tags: dict[str, Any] = {STAGE_TAG: "registry", PIPELINE_TAG: pipeline.name}
    executor_def = job_executor(pipeline, ROLLBACK_STAGE, "release", isolation, executor, tags)

    @dg.job(
        name=pipeline.names.rollback_job,
        tags=tags,
        executor_def=executor_def,
        description=(
            "Roll the champion back after a failed live check (verified, signed, audited; the "
            "serving traffic follows). On Kubernetes: namespace "
            f"{isolation.namespace}, service account {isolation.service_account}."
        ),
    )
    def rollback_job() -> None:
        roll_back_champion()

    return rollback_job


def live_schedule(
    pipeline: PipelineSpec, job: dg.JobDefinition, production: bool
) -> dg.ScheduleDefinition:
    """The monitor job on the monitoring spec's cron (running by default in production)."""
    return dg.ScheduleDefinition(
        name=pipeline.names.prefixed("live_monitoring"),
        job=job,
        cron_schedule=pipeline.monitoring.schedule_cron,
        execution_timezone=pipeline.orchestration.timezone,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING if production else dg.DefaultScheduleStatus.STOPPED
        ),
        description=(
            f"Judges the live traffic the {pipeline.name} champion scored in the last "
            f"{pipeline.monitoring.window_hours} h (input and score drift, error rate, live "
            "performance and fairness when labels arrived)."
        ),
    )


def rollback_sensor(
    pipeline: PipelineSpec,
    job: dg.JobDefinition,
    blocking_checks: list[str],
    production: bool,
) -> dg.SensorDefinition:
    """Launch the rollback job once for each live window whose blocking checks failed."""
    from secure_pipeline.orchestration.sensors import _default_status, _event_cursor, gate_state

    name = pipeline.names.prefixed("rollback_on_live_failure")
    key = pipeline.names.live_traffic

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=pipeline.orchestration.chain_interval_seconds,
        default_status=_default_status(production),
        description=(
            "Rolls the champion back automatically when a blocking live check of "
            f"{key.to_user_string()} failed (the policy's auto_rollback)."
        ),
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = gate_state(context.instance, key, blocking_checks)
        if state is None:
            return dg.SkipReason(f"{key.to_user_string()} has not been materialized")
        if state.storage_id <= _event_cursor(context.cursor, name) or state.state == "waiting":
            return dg.SkipReason(f"nothing new: {state.detail}")
        cursor = str(state.storage_id)
        if state.state != "failed" or not state.data_version:
            return dg.SensorResult(skip_reason=f"live checks: {state.detail}", cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"rollback-{state.data_version}",
                    run_config={
                        "ops": {
                            f"{pipeline.name}_roll_back_champion": {
                                "config": {"window_sha256": state.data_version}
                            }
                        }
                    },
                    tags={TRIGGER_TAG: f"live:{state.detail}"[:200]},
                )
            ],
            cursor=cursor,
        )

    return sensor
