"""Turn a pipeline spec's orchestration settings into jobs, a schedule and sensors."""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from secure_pipeline.environment import Environment
from secure_pipeline.orchestration.jobs import (
    KUBERNETES,
    adhoc_executor_config,
    build_jobs,
    local_executor,
)
from secure_pipeline.spec import OrchestrationSpec, PipelineSpec


@dataclass
class Orchestration:
    """What `build_orchestration` adds to a code location.

    Attributes:
        jobs: The stage jobs.
        schedules: The ingest schedule, and the privacy schedule of a pipeline that holds
            personal data, when the spec has them; the live monitoring schedule.
        sensors: Landing zone, stage chaining, approval and run-failure sensors; automatic
            rollback on a failed live check when the monitoring spec asks for it.
        executor: Executor of runs outside the stage jobs.
    """

    jobs: list[Any]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]
    executor: dg.ExecutorDefinition


def blocking_checks(definitions: Sequence[Any], key: dg.AssetKey) -> list[str]:
    """Names of the blocking checks defined for asset ``key`` among the given definitions."""
    names = []
    for definition in definitions:
        for spec in getattr(definition, "check_specs", ()):
            if spec.asset_key == key and spec.blocking:
                names.append(spec.name)
    return sorted(names)


def build_orchestration(
    pipeline: PipelineSpec,
    definitions: Sequence[Any],
    environment: Environment,
    executor: str,
) -> Orchestration:
    """Jobs, schedule and sensors of a pipeline.

    Args:
        pipeline: The spec.
        definitions: Its assets and asset checks (the sensors wait on their blocking checks).
        environment: The environment being built for (sensors run by default in production).
        executor: ``kubernetes`` or ``multiprocess``.

    Raises:
        ConfigurationError: When the landing zone variable is set to something other than an
            S3 folder.
    """
    from secure_pipeline.ingestion.assets import landing_location
    from secure_pipeline.ingestion.landing import parse_landing_uri
    from secure_pipeline.orchestration.sensors import (
        approval_sensor,
        chain_sensor,
        failure_sensor,
        landing_sensor,
    )

    names = pipeline.names
    spec = pipeline.orchestration
    production = environment is Environment.PRODUCTION
    jobs = build_jobs(pipeline, executor)
    zone = landing_location(pipeline)
    if zone is not None:
        parse_landing_uri(zone)  # refuse a malformed zone when the code location loads
    schedules = []
    if spec.ingest_cron:
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{pipeline.name}_daily_ingest",
                job=jobs["ingest"],
                cron_schedule=spec.ingest_cron,
                execution_timezone=spec.timezone,
                default_status=(
                    dg.DefaultScheduleStatus.RUNNING
                    if production
                    else dg.DefaultScheduleStatus.STOPPED
                ),
                description=f"Ingests {pipeline.source.name} from its configured location.",
            )
        )
    register_only = [names.registered_model] if pipeline.policy.approvals_required > 0 else None
    sensors = [
        chain_sensor(
            name=f"{pipeline.name}_train_on_new_features",
            upstream=names.features,
            blocking_checks=blocking_checks(definitions, names.features),
            job=jobs["train"],
            run_key_prefix="train",
            interval=spec.chain_interval_seconds,
            production=production,
            ready=_window_ready(pipeline) if pipeline.source.partitions is not None else None,
        ),
        chain_sensor(
            name=f"{pipeline.name}_release_on_passed_model",
            upstream=names.trained_model,
            blocking_checks=blocking_checks(definitions, names.trained_model),
            job=jobs["release"],
            run_key_prefix="release",
            interval=spec.chain_interval_seconds,
            production=production,
            asset_selection=register_only,
        ),
        approval_sensor(pipeline, jobs["release"], production),
        failure_sensor(pipeline, production),
    ]
    from secure_pipeline.orchestration.recovery import (
        build_rollback_job,
        live_schedule,
        rollback_sensor,
    )

    schedules.append(live_schedule(pipeline, jobs["monitor"], production))
    if pipeline.monitoring.auto_rollback:
        jobs["rollback"] = build_rollback_job(pipeline, executor)
        sensors.append(
            rollback_sensor(
                pipeline,
                jobs["rollback"],
                blocking_checks(definitions, names.live_traffic),
                production,
            )
        )
    if spec.landing_env_var:
        sensors.insert(0, landing_sensor(pipeline, jobs["ingest"], production))
    if pipeline.holds_personal_data:
        from secure_pipeline.orchestration.privacy import build_privacy_job, privacy_schedule

        jobs["privacy"] = build_privacy_job(pipeline, executor)
        schedule = privacy_schedule(pipeline, jobs["privacy"], production)
        if schedule is not None:
            schedules.append(schedule)
    executor_def = adhoc_k8s_executor(spec) if executor == KUBERNETES else local_executor()
    return Orchestration(list(jobs.values()), schedules, sensors, executor_def)


# The ad-hoc executors built in this process, by configuration.
_ADHOC_EXECUTORS: dict[str, dg.ExecutorDefinition] = {}


def adhoc_k8s_executor(spec: OrchestrationSpec) -> dg.ExecutorDefinition:
    """The Kubernetes executor of ad-hoc runs: one object per configuration.

    Dagster merges the definitions of several components (one per pipeline of a defs folder)
    only when they share the very same executor object, so pipelines that send ad-hoc runs to
    the same place get the same executor, named for no pipeline in particular.
    """
    config = adhoc_executor_config(spec)
    key = json.dumps(config, sort_keys=True)
    if key not in _ADHOC_EXECUTORS:
        from dagster_k8s import k8s_job_executor

        _ADHOC_EXECUTORS[key] = k8s_job_executor.configured(
            config, name="secure_pipeline_adhoc_k8s"
        )
    return _ADHOC_EXECUTORS[key]


def _window_ready(pipeline: PipelineSpec) -> Callable[[dg.DagsterInstance], str | None]:
    """Why training must wait for more days (a missing day, too few yet), or None."""

    def ready(instance: dg.DagsterInstance) -> str | None:
        from secure_pipeline.features.window import window_days

        try:
            window_days(pipeline, instance)
        except dg.Failure as exc:
            return str(exc.description)
        return None

    return ready
