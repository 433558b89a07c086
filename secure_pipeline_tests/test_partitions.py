"""Daily partitions: each day ingested, judged and stored on its own; a model learns a window.

The Adult rows are cut into days (``<day>/adult.data`` and ``<day>/adult.test``). Each day runs
the ingest job for its partition; training reads the declared window of days; the model's
signed lineage names every day's snapshots and verdicts. The insider's attacks: rewrite a day's
features after its checks passed, rewrite the stored training window, let a drifted day into
the window.
"""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import SecurePipeline, SourcePartitions
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.conftest import overwrite_raw

DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")
TRAIN_ROWS, TEST_ROWS = 8000, 4000


def _write_days(folder: Path, *, drifted: bool = True) -> str:
    """Three days of Adult rows; the third holds women only (its population drifted)."""
    train = (DATA_DIR / "adult.data").read_text().splitlines(keepends=True)
    test = (DATA_DIR / "adult.test").read_text().splitlines(keepends=True)
    header, test = test[0], test[1:]
    for i, day in enumerate(DAYS):
        rows = train[i * TRAIN_ROWS : (i + 1) * TRAIN_ROWS]
        held = test[i * TEST_ROWS : (i + 1) * TEST_ROWS]
        if drifted and day == DAYS[2]:
            rows = [r for r in train if ", Female," in r][:TRAIN_ROWS]
            held = [r for r in test if ", Female," in r][:TEST_ROWS]
        (folder / day).mkdir(parents=True)
        (folder / day / "adult.data").write_text("".join(rows))
        (folder / day / "adult.test").write_text(header + "".join(held))
    return folder.as_uri() + "/{date}/"


def daily(location: str, *, window: int = 2, name: str = "adult") -> SecurePipeline:
    """The reference pipeline over daily folders, trained on the last ``window`` days."""
    reference = adult_pipeline()
    return dataclasses.replace(
        reference,
        name=name,
        source=dataclasses.replace(
            reference.source, location=location, location_env_var=None,
            partitions=SourcePartitions(start=DAYS[0], window=window),
        ),
        schema=dataclasses.replace(reference.schema, min_rows=1000, max_rows=20_000),
        orchestration=dataclasses.replace(reference.orchestration, landing_env_var=None),
    )  # fmt: skip


def _run(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, partition=None):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )


def _failures(result) -> str:
    return " | ".join(
        str(e.event_specific_data.error.message) + str(e.event_specific_data.error.cause or "")
        for e in result.all_events
        if e.is_step_failure
    )


def _checks(result) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


@pytest.fixture(scope="module")
def days(tmp_path_factory, dev_keys):
    """Days 1 and 2 ingested; a model trained on them, registered and promoted."""
    from secure_pipeline_tests.conftest import pointed_at

    home = tmp_path_factory.mktemp("daily-home")
    location = _write_days(tmp_path_factory.mktemp("daily-data"))
    with pointed_at(home, dev_keys):
        pipeline = daily(location)
        defs = pipeline.build_definitions(Environment.LOCAL)
        with dg.DagsterInstance.get() as instance:
            ingested = {d: _run(defs, "adult_ingest", instance, d) for d in DAYS[:2]}
            trained = _run(defs, "adult_train", instance)
            released = _run(defs, "adult_release", instance)
            yield {
                "home": home, "location": location, "pipeline": pipeline, "defs": defs,
                "instance": instance, "ingested": ingested, "trained": trained,
                "released": released,
            }  # fmt: skip


@pytest.fixture
def at_home(days, monkeypatch):
    """The module's days, with this test's environment pointed at their home."""
    for name in ("SECURE_PIPELINE_HOME", "DAGSTER_HOME"):
        monkeypatch.setenv(name, str(days["home"]))
    return days


def test_a_partitioned_source_must_name_its_day() -> None:
    reference = adult_pipeline()
    quiet = dataclasses.replace(reference.orchestration, landing_env_var=None)
    with pytest.raises(ConfigurationError, match="must name the day with \\{date\\}"):
        dataclasses.replace(
            reference, orchestration=quiet,
            source=dataclasses.replace(reference.source, partitions=SourcePartitions("2026-01-01")),
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="has no partitions"):
        dataclasses.replace(
            reference, source=dataclasses.replace(reference.source, location="file:///d/{date}/")
        )
    dated = dataclasses.replace(reference.source, location="file:///d/{date}/")
    bad = [
        (SourcePartitions("2026-13-01"), "is not an ISO date"),
        (SourcePartitions("2026-01-02", end="2026-01-01"), "must be after start"),
        (SourcePartitions("2026-01-01", window=0), "window must be at least 1"),
    ]
    for partitions, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            dataclasses.replace(
                reference, orchestration=quiet,
                source=dataclasses.replace(dated, partitions=partitions),
            )  # fmt: skip
    files = reference.source.files
    in_paths = dataclasses.replace(
        reference.source,
        files=tuple(dataclasses.replace(f, path="{date}-" + f.path) for f in files),
        partitions=SourcePartitions("2026-01-01"),
    )
    with pytest.raises(ConfigurationError, match="with a landing zone, name the day with"):
        dataclasses.replace(reference, source=in_paths)


def test_each_day_is_ingested_judged_and_stored_on_its_own(at_home) -> None:
    days = at_home
    for day, result in days["ingested"].items():
        assert result.success, _failures(result)
        checks = _checks(result)
        assert set(checks) >= {"provenance_complete", "schema_conforms", "reject_rate_within_limit",
                               "expectations_met", "feature_drift", "poisoning_screen"}  # fmt: skip
        assert all(checks.values()), checks
        evaluations = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert {e.partition for e in evaluations} == {day}
    store = Path(days["home"]) / "store" / "snapshots" / "adult"
    for asset in ("raw_adult", "validated_adult", "features"):
        assert sorted(p.name for p in (store / asset).iterdir() if p.name.startswith("2026")) == [
            *DAYS[:2]
        ]
    instance = days["instance"]
    features = days["pipeline"].names.features
    assert instance.get_materialized_partitions(features) == set(DAYS[:2])


def test_the_model_learns_the_window_and_its_lineage_names_every_day(at_home) -> None:
    days = at_home
    from secure_pipeline.registry.evidence import champion_lineage
    from secure_pipeline.trust.policy import trust_policy

    assert days["trained"].success, _failures(days["trained"])
    assert all(_checks(days["trained"]).values()), _checks(days["trained"])
    assert days["released"].success, _failures(days["released"])
    record = days["instance"].get_latest_materialization_event(days["pipeline"].names.trained_model)
    metadata = record.asset_materialization.metadata
    assert metadata["training_window"].value == {"first": DAYS[0], "last": DAYS[1], "days": 2}
    assert metadata["rows"].value["fit"] + metadata["rows"].value["holdout"] > TRAIN_ROWS
    store = LocalSnapshotStore(Path(days["home"]) / "store")
    version, lineage = champion_lineage(days["pipeline"], store, trust_policy())
    assert lineage["lineage_version"] == 4
    assert sorted(lineage["data"]["partitions"]) == list(DAYS[:2])
    assert lineage["data"]["window"]["sha256"] == metadata["features_sha256"].value
    for day in DAYS[:2]:
        stages = lineage["data"]["partitions"][day]
        assert set(stages) == {"raw", "validated", "features"}
        assert all(f"/{day}/" in entry["key"] for entry in stages.values())
        judged = {c["check"] for c in lineage["checks"] if c.get("partition") == day}
        assert judged == {"provenance_complete", "schema_conforms", "reject_rate_within_limit",
                          "expectations_met", "feature_drift", "poisoning_screen"}  # fmt: skip


def test_the_train_sensor_starts_training_once_the_window_is_complete(at_home) -> None:
    days = at_home
    sensor = days["defs"].resolve_sensor_def("adult_train_on_new_features")
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=days["instance"]))
    [request] = tick.run_requests
    latest = (
        days["instance"]
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=days["pipeline"].names.features), limit=1
        )
        .records[0]
    )
    assert latest.partition_key == DAYS[1]
    assert request.run_key == f"train:{latest.asset_materialization.tags['dagster/data_version']}"


def test_status_shows_the_latest_day_and_its_checks(at_home, capsys) -> None:
    from secure_pipeline.cli.models import _pipeline_status

    days = at_home
    store = LocalSnapshotStore(Path(days["home"]) / "store")
    failed = _pipeline_status(days["instance"], days["pipeline"], store)
    shown = capsys.readouterr().out
    assert not failed
    for asset in ("adult/raw_adult", "adult/validated_adult", "adult/features"):
        [line] = [line for line in shown.splitlines() if line.strip().startswith(asset)]
        assert DAYS[1] in line, shown
    assert "feature_drift" in shown
    assert "not evaluated" not in shown.split("adult/trained_model")[0], shown


def test_a_window_with_a_missing_day_is_refused(tmp_path) -> None:
    from secure_pipeline.features.window import window_days

    pipeline = daily(_write_days(tmp_path / "data", drifted=False), window=3, name="gappy")
    defs = pipeline.build_definitions(Environment.LOCAL)
    with dg.DagsterInstance.get() as instance:
        for day in (DAYS[0], DAYS[2]):
            _run(defs, "gappy_ingest", instance, day)
        with pytest.raises(dg.Failure, match="lacks gappy/features for 2026-01-02: backfill"):
            window_days(pipeline, instance)
        trained = _run(defs, "gappy_train", instance)
        assert not trained.success
        assert "lacks gappy/features for 2026-01-02" in _failures(trained)
        # The sensor waits instead of starting a run that would be refused.
        sensor = defs.resolve_sensor_def("gappy_train_on_new_features")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert not tick.run_requests
        assert "lacks gappy/features for 2026-01-02" in tick.skip_message
    shorter = daily(pipeline.source.location, window=5, name="gappy")
    with (
        dg.DagsterInstance.get() as instance,
        pytest.raises(dg.Failure, match="window is 5 days, but 2026-01-03 is day 3"),
    ):
        window_days(shorter, instance)


def test_a_day_rewritten_after_its_checks_is_never_registered(at_home) -> None:
    """The insider swaps day 1's features for other valid Parquet once its checks passed."""
    days = at_home
    store = LocalSnapshotStore(Path(days["home"]) / "store")
    instance, pipeline = days["instance"], days["pipeline"]
    features = pipeline.names.features
    day1 = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=features, asset_partitions=[DAYS[0]]), limit=1
    ).records[0]
    key = day1.asset_materialization.metadata["snapshot_key"].value
    day2 = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=features, asset_partitions=[DAYS[1]]), limit=1
    ).records[0]
    other = store.read_object(day2.asset_materialization.metadata["snapshot_key"].value)
    original = store.read_object(key)
    try:
        overwrite_raw(store, key, other)
        released = _run(days["defs"], "adult_release", instance)
    finally:
        overwrite_raw(store, key, original)
    assert not released.success
    assert "is not registered" in _failures(released)
    assert "failed verification" in _failures(released)


def test_a_rewritten_training_window_is_never_registered(at_home) -> None:
    """The insider rewrites the stored window to name day 2 twice (the window's own key)."""
    days = at_home
    store = LocalSnapshotStore(Path(days["home"]) / "store")
    instance, pipeline = days["instance"], days["pipeline"]
    record = instance.get_latest_materialization_event(pipeline.names.trained_model)
    key = record.asset_materialization.metadata["features_key"].value
    original = store.read_object(key)
    document = json.loads(original)
    document["days"][0] = {**document["days"][1], "partition": DAYS[0]}
    try:
        overwrite_raw(store, key, json.dumps(document).encode())
        released = _run(days["defs"], "adult_release", instance)
    finally:
        overwrite_raw(store, key, original)
    assert not released.success
    assert "failed verification" in _failures(released)


def test_a_day_that_drifted_keeps_the_model_of_its_window_out(at_home) -> None:
    """Day 3 holds women only: its drift check fails, and no model trained on it registers."""
    days = at_home
    instance, defs = days["instance"], days["defs"]
    third = _run(defs, "adult_ingest", instance, DAYS[2])
    assert not third.success
    assert _checks(third)["feature_drift"] is False
    trained = _run(defs, "adult_train", instance)
    assert trained.success, _failures(trained)
    record = instance.get_latest_materialization_event(days["pipeline"].names.trained_model)
    window = record.asset_materialization.metadata["training_window"].value
    assert window == {"first": DAYS[1], "last": DAYS[2], "days": 2}
    released = _run(defs, "adult_release", instance)
    assert not released.success
    assert "feature_drift on adult/features failed" in _failures(released)


def test_on_kubernetes_each_day_runs_its_steps_as_ingest_pods(monkeypatch) -> None:
    """A backfill is a run per day; each run's every step is a pod of the ingest stage."""
    from secure_pipeline_tests.orchestration.test_jobs import render_steps
    from secure_pipeline_tests.test_environment import PRODUCTION

    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", "s3://landing/adult/{date}/")
    pipeline = daily("file:///unused/{date}/")
    pipeline = dataclasses.replace(
        pipeline,
        source=dataclasses.replace(pipeline.source, location_env_var="SECURE_PIPELINE_SOURCE_URI"),
    )
    defs = pipeline.build_definitions()
    job = defs.resolve_job_def("adult_ingest")
    assert isinstance(job.partitions_def, dg.DailyPartitionsDefinition)
    assert job.partitions_def.get_partition_keys()[:3] == list(DAYS)
    steps = list(render_steps(job))
    assert {key for key, _, _ in steps} >= {
        "adult__raw_adult", "adult__validated_adult", "adult__features",
        "adult__features_feature_drift", "adult__features_poisoning_screen",
    }  # fmt: skip
    for _key, namespace, pod_job in steps:
        assert namespace == "sp-ingest"
        assert pod_job.spec.template.spec.service_account_name == "sp-ingest"
    train = defs.resolve_job_def("adult_train")
    assert train.partitions_def is None
    assert {namespace for _, namespace, _ in render_steps(train)} == {"sp-train"}


def test_a_yaml_pipeline_declares_its_days(tmp_path, monkeypatch) -> None:
    import yaml

    from secure_pipeline.component import folder_pipelines
    from secure_pipeline_tests.test_component import REFERENCE_YAML, _project, _refusal, _tree

    document = yaml.safe_load(REFERENCE_YAML.read_text())
    attributes = document["attributes"]
    attributes["source"]["location"] = "file:///data/adult/{date}/"
    attributes["source"]["partitions"] = {"start": "2026-01-01", "window": 7}
    attributes["orchestration"].pop("landing_env_var", None)
    [pipeline] = folder_pipelines(
        _tree(*_project(tmp_path / "good", {"adult": yaml.safe_dump(document)}), monkeypatch)
    )
    assert pipeline.source.partitions == SourcePartitions(start="2026-01-01", window=7)
    defs = pipeline.build_definitions(Environment.LOCAL)
    assert defs.resolve_job_def("adult_ingest").partitions_def.start.date().isoformat() == DAYS[0]
    attributes["source"]["partitions"] = {"start": "2026-01-01", "window": 0, "every": "day"}
    message = _refusal({"adult": yaml.safe_dump(document)}, tmp_path / "bad", monkeypatch)
    assert "attributes.source.partitions.every: unknown key" in message
    attributes["source"]["partitions"] = {"start": "2026-01-01", "window": 0}
    message = _refusal({"adult": yaml.safe_dump(document)}, tmp_path / "zero", monkeypatch)
    assert "source partitions window must be at least 1, found 0" in message


@pytest.fixture
def daily_landing(s3_client, s3_bucket, moto_endpoint, monkeypatch, tmp_path):
    """The days delivered to an S3 landing zone, one batch folder per day."""
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    zone = f"s3://{s3_bucket}/landing/adult/"
    monkeypatch.setenv("SECURE_PIPELINE_LANDING_URI", zone)
    location = _write_days(tmp_path / "days", drifted=False)
    folder = Path(location.removeprefix("file://").removesuffix("{date}/"))
    for batch, day in (("2026-01-02T0200Z", DAYS[1]), ("not-a-day", DAYS[0])):
        for name in ("adult.data", "adult.test"):
            s3_client.put_object(
                Bucket=s3_bucket, Key=f"landing/adult/{batch}/{name}",
                Body=(folder / day / name).read_bytes(),
            )  # fmt: skip
    pipeline = daily(location)
    return dataclasses.replace(
        pipeline,
        orchestration=dataclasses.replace(
            pipeline.orchestration, landing_env_var="SECURE_PIPELINE_LANDING_URI"
        ),
    )


def _landing_ingest(defs, instance, config: dict, day: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("adult_ingest").execute_in_process(
        instance=instance,
        partition_key=day,
        run_config={"ops": {"adult__raw_adult": {"config": config}}},
        raise_on_error=False,
    )


def test_a_landing_batch_is_ingested_as_the_day_it_is_named_after(daily_landing) -> None:
    defs = daily_landing.build_definitions(Environment.LOCAL)
    sensor = defs.resolve_sensor_def("adult_landing_zone")
    with dg.DagsterInstance.get() as instance:
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        [request] = tick.run_requests  # "not-a-day/" names no day: not ingested
        assert request.partition_key == DAYS[1]
        config = request.run_config["ops"]["adult__raw_adult"]["config"]
        assert config["location"].endswith("/landing/adult/2026-01-02T0200Z/")
        result = _landing_ingest(defs, instance, config, DAYS[1])
        assert result.success, _failures(result)
        assert instance.get_materialized_partitions(daily_landing.names.raw) == {DAYS[1]}


def test_run_config_cannot_file_one_days_batch_as_another_day(daily_landing) -> None:
    """The insider launches the run of 2026-01-03 on the batch of 2026-01-02."""
    defs = daily_landing.build_definitions(Environment.LOCAL)
    sensor = defs.resolve_sensor_def("adult_landing_zone")
    with dg.DagsterInstance.get() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        [request] = sensor.evaluate_tick(context).run_requests
        config = request.run_config["ops"]["adult__raw_adult"]["config"]
        other = config["location"].replace("2026-01-02T0200Z", "not-a-day")
        for day, batch in ((DAYS[2], config["location"]), (DAYS[0], other)):
            result = _landing_ingest(defs, instance, {**config, "location": batch}, day)
            assert not result.success
            error = result.get_step_failure_events()[0].step_failure_data.error.cause
            assert error.cls_name == "UntrustedSourceError"
            assert f"is not a batch of {day}, the day this run ingests" in error.message
        assert not instance.get_materialized_partitions(daily_landing.names.raw)
