"""Chaining sensors stop at failing gates; failed runs are audited; the schedule ingests."""

import datetime
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.orchestration.sensors import chain_sensor, gate_state
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.test_environment import PRODUCTION

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning")

# What the toy upstream's checks answer next; the tests set it before each materialization.
VERDICT: dict[str, bool | None] = {"gate": True, "advice": True}


@dg.asset(
    check_specs=[
        dg.AssetCheckSpec("gate", asset="upstream", blocking=True),
        dg.AssetCheckSpec("advice", asset="upstream"),
    ]
)
def upstream(context: dg.AssetExecutionContext):
    """Stands for ``features``: a snapshot judged by a blocking check and a warning."""
    version = context.run.run_id[:8]
    yield dg.Output(1, data_version=dg.DataVersion(version))
    if VERDICT["gate"] is not None:
        yield dg.AssetCheckResult(check_name="gate", passed=VERDICT["gate"])
    yield dg.AssetCheckResult(
        check_name="advice", passed=bool(VERDICT["advice"]), severity=dg.AssetCheckSeverity.WARN
    )


@dg.asset(deps=[upstream])
def downstream() -> None:
    """Stands for the trained model."""


DOWNSTREAM_JOB = dg.define_asset_job("downstream_job", selection=[downstream])
SENSOR = chain_sensor(
    name="downstream_on_upstream",
    upstream=dg.AssetKey("upstream"),
    blocking_checks=["gate"],
    job=DOWNSTREAM_JOB,
    run_key_prefix="train",
    interval=30,
    production=False,
)
DEFS = dg.Definitions(assets=[upstream, downstream], jobs=[DOWNSTREAM_JOB], sensors=[SENSOR])


def _materialize(instance: dg.DagsterInstance, gate: bool | None, advice: bool = True) -> str:
    VERDICT.update(gate=gate, advice=advice)
    job = DEFS.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("upstream")], raise_on_error=False
    )
    return result.run_id[:8]


def _tick(instance: dg.DagsterInstance, cursor: str | None = None):
    return SENSOR.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_a_passed_gate_starts_the_next_stage_once_per_snapshot() -> None:
    with dg.instance_for_test() as instance:
        assert "has not been materialized" in _tick(instance).skip_message
        version = _materialize(instance, gate=True)
        tick = _tick(instance)
        [request] = tick.run_requests
        assert request.run_key == f"train:{version}"
        assert request.tags["secure_pipeline/trigger"] == f"upstream:{version}"
        # the saved cursor: nothing new, nothing started
        again = _tick(instance, tick.cursor)
        assert not again.run_requests
        # a crash before the cursor was saved repeats the same run key (Dagster starts it once)
        assert _tick(instance).run_requests[0].run_key == request.run_key


def test_a_failed_gate_stops_the_chain_and_moves_on() -> None:
    with dg.instance_for_test() as instance:
        _materialize(instance, gate=False)
        tick = _tick(instance)
        assert not tick.run_requests
        assert tick.skip_message == "gate failed"
        assert tick.cursor  # judged: the same snapshot is not looked at again
        # the next snapshot that passes goes on
        version = _materialize(instance, gate=True)
        assert _tick(instance, tick.cursor).run_requests[0].run_key == f"train:{version}"


def test_a_snapshot_its_gate_never_judged_stops_the_chain() -> None:
    with dg.instance_for_test() as instance:
        _materialize(instance, gate=True)
        _materialize(instance, gate=None)  # newest snapshot: the gate did not run for it
        state = gate_state(instance, dg.AssetKey("upstream"), ["gate"])
        assert state is not None
        assert state.state == "failed"
        assert state.detail == "gate never judged it"  # the older pass does not count
        assert not _tick(instance).run_requests


def test_a_failed_warning_does_not_stop_the_chain() -> None:
    with dg.instance_for_test() as instance:
        _materialize(instance, gate=True, advice=False)
        assert len(_tick(instance).run_requests) == 1


def test_the_reference_sensors_wait_on_the_real_blocking_checks() -> None:
    defs = adult_pipeline().build_definitions(Environment.LOCAL)
    names = {s.name for s in defs.sensors}
    assert names == {
        "adult_train_on_new_features",
        "adult_release_on_passed_model",
        "adult_promote_on_approval",
        "adult_audit_run_failures",
        "adult_landing_zone",  # skips while SECURE_PIPELINE_LANDING_URI is unset
        "adult_rollback_on_live_failure",  # the reference rolls back on a failed live check
    }
    train = defs.resolve_sensor_def("adult_train_on_new_features")
    assert "feature_drift" in train.description
    release = defs.resolve_sensor_def("adult_release_on_passed_model")
    for check in (
        "adversarial_robustness",
        "fairness_audit",
        "membership_inference_risk",
        "performance_meets_policy",
    ):
        assert check in release.description
    # nothing runs behind a developer's back
    assert all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in defs.sensors)


def test_production_sensors_and_schedule_run_by_default(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    defs = adult_pipeline().build_definitions()
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    schedule = defs.resolve_schedule_def("adult_daily_ingest")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_the_daily_schedule_starts_the_ingest_job() -> None:
    defs = adult_pipeline().build_definitions(Environment.LOCAL)
    schedule = defs.resolve_schedule_def("adult_daily_ingest")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.job_name == "adult_ingest"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.datetime(2026, 11, 26, 2, tzinfo=datetime.UTC),
        )
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.run_config == {}  # the configured source, no location chosen by config


def test_a_failed_run_is_written_to_the_audit_trail(isolated_env: Path) -> None:
    """A refused run config fails the ingest run; the audit event names the error class only."""
    defs = adult_pipeline().build_definitions(Environment.LOCAL)
    secret = "s3://attacker-bucket/landing/adult/d1/"
    with dg.instance_for_test(temp_dir=str(isolated_env)) as instance:
        result = defs.resolve_job_def("adult_ingest").execute_in_process(
            instance=instance,
            run_config={"ops": {"adult__raw_adult": {"config": {"location": secret}}}},
            raise_on_error=False,
            op_selection=["adult__raw_adult"],
        )
        assert not result.success
        sensor = defs.resolve_sensor_def("adult_audit_run_failures")
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"snapshot_store": defs.resources["snapshot_store"]},
        ).for_run_failure()
        sensor(context)
    store = LocalSnapshotStore(isolated_env / "store")
    records = [r for r in AuditLog(store).verified_records() if r.event == "run.failed"]
    assert len(records) == 1
    record = records[0]
    assert record.run_id == result.run_id
    assert record.details["job"] == "adult_ingest"
    assert record.details["failed_steps"] == ["adult__raw_adult"]
    assert record.details["errors"] == ["UntrustedSourceError"]
    assert "attacker-bucket" not in record.to_json().decode()  # messages are not copied


@pytest.mark.parametrize("cursor", ["not-a-number", "-1", "{}"])
def test_a_cursor_it_did_not_write_is_an_error(cursor: str) -> None:
    with dg.instance_for_test() as instance:
        _materialize(instance, gate=True)
        with pytest.raises(ConfigurationError, match="is not an event id"):
            _tick(instance, cursor)
