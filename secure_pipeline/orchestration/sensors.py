"""Schedules and sensors: the pipeline runs by itself, and stops where a gate fails.

* ``<name>_daily_ingest``: the ingest job on a cron schedule.
* ``<name>_landing_zone``: the ingest job once per complete batch in the S3 landing zone.
* ``<name>_train_on_new_features``: the train job when a features snapshot lands whose
  blocking checks passed; its run key is the snapshot digest, so the same data never trains
  twice.
* ``<name>_release_on_passed_model``: the release job when a model passed every blocking ML
  check. When the policy requires approvals it only registers; promotion waits for them.
* ``<name>_promote_on_approval``: promotion of the newest registered version once enough valid
  approvals (signed by approver keys of the trust policy, for this model and bundle) exist.
* ``<name>_audit_run_failures``: every failed run of the code location, as an audit event.

Sensors start stopped locally (nothing runs behind a developer's back) and running in
production.
"""

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.resources import SnapshotStoreResource


@dataclass(frozen=True)
class GateState:
    """Whether the newest materialization of an asset passed its blocking checks.

    Attributes:
        storage_id: Event-log id of the materialization (the sensors' cursor).
        data_version: Its data version (the snapshot digest).
        state: ``passed``, ``failed`` (a blocking check failed or never judged it) or
            ``waiting`` (its run is still going).
        detail: What decided the state.
    """

    storage_id: int
    data_version: str | None
    state: str
    detail: str


def gate_state(
    instance: dg.DagsterInstance, key: dg.AssetKey, blocking_checks: Sequence[str]
) -> GateState | None:
    """The newest materialization of ``key`` and the verdict of its blocking checks.

    A check counts only if its evaluation targeted this very materialization; one that failed
    with ERROR severity blocks (WARN does not, as in Dagster's own blocking semantics).
    """
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1)
    if not records.records:
        return None
    record = records.records[0]
    materialization = record.asset_materialization
    version = materialization.tags.get("dagster/data_version") if materialization else None
    run = instance.get_run_by_id(record.run_id)
    finished = run is None or run.is_finished
    for name in blocking_checks:
        evaluation_record = latest_evaluation(
            instance, dg.AssetCheckKey(key, name), record.partition_key
        )
        evaluation = evaluation_record.evaluation if evaluation_record else None
        # A planned check that never ran leaves a record without a verdict: not judged.
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            evaluation = None
        target = evaluation.target_materialization_data if evaluation else None
        if evaluation is None or target is None or target.storage_id != record.storage_id:
            if finished:
                return GateState(record.storage_id, version, "failed", f"{name} never judged it")
            return GateState(record.storage_id, version, "waiting", f"{name} not judged yet")
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            return GateState(record.storage_id, version, "failed", f"{name} failed")
    return GateState(record.storage_id, version, "passed", "every blocking check passed")


def latest_evaluation(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str | None
) -> Any:
    """The latest evaluation record of a check (of one partition's, for a partitioned asset).

    Days of a backfill are judged in parallel: the check's latest evaluation overall may be
    another day's, which says nothing about this one.
    """
    if partition is None:
        return instance.get_latest_asset_check_evaluation_record(check)
    from dagster._core.event_api import PartitionKeyFilter

    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return history[0] if history else None


def _default_status(production: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if production else dg.DefaultSensorStatus.STOPPED


def _event_cursor(cursor: str | None, sensor: str) -> int:
    """The event id a chaining sensor's cursor holds (0 before its first judgement)."""
    if not cursor:
        return 0
    if not cursor.isdigit():
        raise ConfigurationError(
            f"the cursor of sensor {sensor} is {cursor[:80]!r}, which is not an event id: this "
            "sensor writes the event-log id of the last snapshot it judged; clear the cursor "
            "(UI: sensor page, 'Reset cursor') or set it to such an id"
        )
    return int(cursor)


def chain_sensor(
    *,
    name: str,
    upstream: dg.AssetKey,
    blocking_checks: Sequence[str],
    job: Any,
    run_key_prefix: str,
    interval: int,
    production: bool,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    ready: Callable[[dg.DagsterInstance], str | None] | None = None,
) -> dg.SensorDefinition:
    """A sensor starting ``job`` when ``upstream`` materializes and its blocking checks pass.

    Args:
        name: Sensor name.
        upstream: The asset watched.
        blocking_checks: Its checks that must have passed for this materialization.
        job: The job to start.
        run_key_prefix: Run keys are this prefix and the upstream data version.
        interval: Seconds between ticks.
        production: Whether the sensor starts running.
        asset_selection: Assets of ``job`` to materialize (all when None).
        ready: Says why ``job`` must wait although the gate passed (a partitioned pipeline's
            training window is not complete yet), or None; the sensor asks again next tick.
    """

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=interval,
        default_status=_default_status(production),
        description=f"Starts {job.name} when {upstream.to_user_string()} materializes and "
        f"{', '.join(blocking_checks)} passed for it.",
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = gate_state(context.instance, upstream, blocking_checks)
        label = upstream.to_user_string()
        if state is None:
            return dg.SkipReason(f"{label} has not been materialized yet")
        handled = _event_cursor(context.cursor, name)
        if state.storage_id <= handled:
            return dg.SkipReason(f"no new {label} since event {handled}")
        if state.state == "waiting":
            return dg.SkipReason(f"{label} event {state.storage_id}: {state.detail}")
        if state.state == "failed":
            context.log.warning(
                f"not starting {job.name}: {label} {state.data_version}: {state.detail}"
            )
            return dg.SensorResult(skip_reason=state.detail, cursor=str(state.storage_id))
        waiting = ready(context.instance) if ready is not None else None
        if waiting is not None:
            return dg.SkipReason(f"{label} {state.data_version}: {waiting}")
        request = dg.RunRequest(
            run_key=f"{run_key_prefix}:{state.data_version or state.storage_id}",
            asset_selection=list(asset_selection) if asset_selection else None,
            tags={"secure_pipeline/trigger": f"{label}:{state.data_version}"},
        )
        return dg.SensorResult(run_requests=[request], cursor=str(state.storage_id))

    return sensor


def landing_sensor(pipeline: PipelineSpec, job: Any, production: bool) -> dg.SensorDefinition:
    """The ingest job once per complete batch arriving in the S3 landing zone."""
    from secure_pipeline.ingestion.assets import landing_location
    from secure_pipeline.ingestion.landing import batch_day
    from secure_pipeline.metadata import daily_partitions

    spec = pipeline.orchestration
    # The op of a prefixed asset key (adult/raw_adult) is named adult__raw_adult.
    raw = pipeline.names.raw.to_python_identifier()
    partitions = daily_partitions(pipeline)

    @dg.sensor(
        name=f"{pipeline.name}_landing_zone",
        job=job,
        minimum_interval_seconds=spec.landing_interval_seconds,
        default_status=_default_status(production),
        description=f"Starts {job.name} once for each complete batch of "
        f"{', '.join(f.path for f in pipeline.source.files)} arriving under the landing zone "
        f"({spec.landing_env_var}).",
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        from secure_pipeline import environment as env
        from secure_pipeline.ingestion.landing import LandingCursor, LandingZone
        from secure_pipeline.storage.s3 import make_s3_client

        zone_uri = landing_location(pipeline)
        if zone_uri is None:
            return dg.SkipReason(f"{spec.landing_env_var} is not set: no landing zone to watch")
        client = make_s3_client(env.read("SECURE_PIPELINE_S3_ENDPOINT"), env.read("AWS_REGION"))
        zone = LandingZone(client, zone_uri, pipeline.source.files)
        result = zone.scan(
            LandingCursor.from_json(context.cursor),
            max_runs=spec.landing_max_runs_per_tick,
            time_budget=spec.landing_tick_seconds,
            stale_after=spec.landing_stale_hours * 3600,
            now=time.time(),
        )
        for folder in result.stale:
            context.log.warning(
                f"gave up waiting for batch {folder!r}: it never held every source file"
            )
        batches, days = list(result.batches), {}
        if partitions is not None:
            # A partitioned pipeline ingests each batch as the day its folder is named after.
            keys = set(partitions.get_partition_keys())
            for batch in list(batches):
                day = batch_day(batch.folder)
                if day in keys:
                    days[batch.folder] = day
                    continue
                batches.remove(batch)
                context.log.warning(
                    f"batch {batch.folder!r} is not named after a day of {pipeline.name}'s "
                    f"partitions (from {pipeline.source.partitions.start}, YYYY-MM-DD/ or "
                    "YYYY-MM-DDT.../): not ingested"
                )
        requests = [
            dg.RunRequest(
                run_key=batch.run_key,
                partition_key=days.get(batch.folder),
                run_config={
                    "ops": {
                        raw: {
                            "config": {
                                "location": batch.location,
                                "objects": batch.run_config_objects(),
                            }
                        }
                    }
                },
                tags={"secure_pipeline/landing_batch": batch.folder},
            )
            for batch in batches
        ]
        skip = None
        if not requests:
            skip = (
                f"listed {result.listed} keys, no complete new batch"
                f" ({len(result.cursor.pending)} waiting)"
            )
        return dg.SensorResult(
            run_requests=requests, cursor=result.cursor.to_json(), skip_reason=skip
        )

    return sensor


def approval_sensor(pipeline: PipelineSpec, job: Any, production: bool) -> dg.SensorDefinition:
    """Promotion of the newest registered version once its approvals are enough."""
    from secure_pipeline.promotion.assets import serving_directory

    needed = pipeline.policy.approvals_required
    # With a serving deployment, promotion stops at challenger and the canary crowns it.
    names = pipeline.names
    release = [
        names.promoted_model,
        *([names.canary_analysis] if serving_directory() is not None else []),
    ]

    @dg.sensor(
        name=f"{pipeline.name}_promote_on_approval",
        job=job,
        minimum_interval_seconds=pipeline.orchestration.chain_interval_seconds,
        default_status=_default_status(production),
        description=f"Promotes the newest registered version of {pipeline.name} once it has "
        f"{needed} valid signed approval(s).",
    )
    def sensor(
        context: dg.SensorEvaluationContext, snapshot_store: SnapshotStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        from secure_pipeline.registry.approvals import verified_approvals
        from secure_pipeline.registry.decisions import champion, decisions
        from secure_pipeline.trust.policy import trust_policy

        if needed == 0:
            return dg.SkipReason("the policy requires no approvals: releases promote directly")
        record = context.instance.get_latest_materialization_event(names.registered_model)
        if record is None or record.asset_materialization is None:
            return dg.SkipReason("no model has been registered yet")
        meta = record.asset_materialization.metadata
        version = str(meta["model_version"].value)
        model_sha = str(meta["model_sha256"].value)
        bundle = str(meta["bundle_digest"].value)
        store, trust = snapshot_store.get_store(), trust_policy()
        current = champion(decisions(store, trust, pipeline.name)[0])
        if current is not None and current.version == version:
            return dg.SkipReason(f"version {version} is already the champion")
        approvals, problems = verified_approvals(store, model_sha, trust, bundle)
        for problem in problems:
            context.log.warning(f"approval of version {version} not counted: {problem}")
        if len(approvals) < needed:
            return dg.SkipReason(
                f"version {version} has {len(approvals)} of {needed} valid approval(s)"
            )
        approvers = ",".join(sorted(a.key_fingerprint for a in approvals))
        digest = hashlib.sha256(approvers.encode()).hexdigest()[:16]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"promote:{version}:{digest}",
                    asset_selection=release,
                    tags={"secure_pipeline/approved_version": version},
                )
            ]
        )

    return sensor


def _runs_for(run: Any, pipeline: PipelineSpec) -> bool:
    """Whether a run belongs to ``pipeline``: one of its jobs, or ad hoc over its assets."""
    if str(run.job_name).startswith(f"{pipeline.name}_"):
        return True
    selection = run.asset_selection or set()
    if any(key.path[:1] == [pipeline.name] for key in selection):
        return True
    checks = run.asset_check_selection or set()
    return any(key.asset_key.path[:1] == [pipeline.name] for key in checks)


def failure_sensor(pipeline: PipelineSpec, production: bool) -> dg.SensorDefinition:
    """An audit event for every failed run of this code location.

    Only the job, run, failed step keys and error class names are recorded: error messages
    can quote data values, and the audit trail holds no personal data.
    """

    @dg.run_failure_sensor(
        name=f"{pipeline.name}_audit_run_failures",
        default_status=_default_status(production),
        description="Appends a run.failed event to the audit trail for every failed run.",
    )
    def sensor(context: dg.RunFailureSensorContext, snapshot_store: SnapshotStoreResource) -> None:
        # Every pipeline of the code location has this sensor; each records its own runs only
        # (its stage jobs, or an ad-hoc run of its assets), so a failure is recorded once.
        if not _runs_for(context.dagster_run, pipeline):
            return
        failures = context.get_step_failure_events()
        errors = set()
        for event in failures:
            error = event.step_failure_data.error if event.step_failure_data else None
            while error is not None:  # the user code's exceptions, under Dagster's wrapper
                if error.cls_name and not error.cls_name.startswith("Dagster"):
                    errors.add(error.cls_name)
                error = error.cause
        from secure_pipeline.trust.identities import MONITOR
        from secure_pipeline.trust.signers import signer_for

        snapshot_store.get_audit_log().append(
            "run.failed",
            signer=signer_for(MONITOR),
            actor=f"sensor:{pipeline.name}_audit_run_failures",
            run_id=context.dagster_run.run_id,
            details={
                "job": context.dagster_run.job_name,
                "failed_steps": sorted({e.step_key for e in failures if e.step_key}),
                "errors": sorted(errors),
                "trigger": context.dagster_run.tags.get("secure_pipeline/trigger"),
            },
        )

    return sensor
