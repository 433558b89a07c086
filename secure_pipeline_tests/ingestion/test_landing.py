"""The S3 landing zone: each complete batch launches exactly one ingestion, pinned."""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.ingestion.landing import LandingCursor, LandingZone
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.storage.local import LocalSnapshotStore

PIPELINE = adult_pipeline()
FILES = PIPELINE.source.files  # adult.data (train), adult.test (test)


def _zone(s3_client, bucket: str) -> LandingZone:
    return LandingZone(s3_client, f"s3://{bucket}/landing/adult/", FILES)


def _deliver(s3_client, bucket: str, folder: str, *names: str, body: bytes = b"x") -> None:
    for name in names or ("adult.data", "adult.test"):
        s3_client.put_object(Bucket=bucket, Key=f"landing/adult/{folder}/{name}", Body=body)


def _scan(zone: LandingZone, cursor: LandingCursor, **kwargs):
    options = {"max_runs": 25, "time_budget": 60.0, "stale_after": 3600.0, "now": 1000.0}
    return zone.scan(cursor, **{**options, **kwargs})


def test_complete_batches_are_found_once_and_pinned(s3_client, s3_bucket) -> None:
    _deliver(s3_client, s3_bucket, "2026-11-01")
    _deliver(s3_client, s3_bucket, "2026-11-02")
    s3_client.put_object(Bucket=s3_bucket, Key="landing/adult/README.txt", Body=b"notes")
    zone = _zone(s3_client, s3_bucket)
    first = _scan(zone, LandingCursor())
    assert [b.folder for b in first.batches] == ["2026-11-01/", "2026-11-02/"]
    assert first.ignored == 1
    batch = first.batches[0]
    assert batch.location == f"s3://{s3_bucket}/landing/adult/2026-11-01/"
    assert {o.member for o in batch.objects} == {"train", "test"}
    assert all(o.version_id for o in batch.objects)  # a versioned bucket: exact versions
    # the saved cursor sees nothing new; a new batch is found alone
    again = _scan(zone, first.cursor)
    assert again.batches == []
    assert again.listed == 1  # only README.txt, which sorts last and so is read again
    _deliver(s3_client, s3_bucket, "2026-11-03")
    third = _scan(zone, again.cursor)
    assert [b.folder for b in third.batches] == ["2026-11-03/"]


def test_a_replay_after_a_crash_yields_the_same_run_keys(s3_client, s3_bucket) -> None:
    """The cursor is saved with the run requests; a crash loses both, and the replay repeats
    the same keys, which Dagster launches once."""
    _deliver(s3_client, s3_bucket, "a")
    _deliver(s3_client, s3_bucket, "b")
    zone = _zone(s3_client, s3_bucket)
    before = LandingCursor()
    first = [b.run_key for b in _scan(zone, before).batches]
    replay = [b.run_key for b in _scan(zone, before).batches]
    assert first == replay
    assert len(set(first)) == 2
    # the same folder re-uploaded is new content: a new key
    _deliver(s3_client, s3_bucket, "a", body=b"y")
    assert _scan(zone, before).batches[0].run_key != first[0]


def test_an_incomplete_batch_waits_then_launches_once(s3_client, s3_bucket) -> None:
    zone = _zone(s3_client, s3_bucket)
    _deliver(s3_client, s3_bucket, "b1", "adult.data")
    first = _scan(zone, LandingCursor())
    assert first.batches == []
    assert first.cursor.pending == {"b1/": 1000.0}
    _deliver(s3_client, s3_bucket, "b2")  # a later batch is not held up by it
    second = _scan(zone, first.cursor, now=1100.0)
    assert [b.folder for b in second.batches] == ["b2/"]
    _deliver(s3_client, s3_bucket, "b1", "adult.test")
    third = _scan(zone, second.cursor, now=1200.0)
    assert [b.folder for b in third.batches] == ["b1/"]
    assert third.cursor.pending == {}
    assert _scan(zone, third.cursor).batches == []


def test_a_batch_that_never_completes_is_given_up(s3_client, s3_bucket) -> None:
    zone = _zone(s3_client, s3_bucket)
    _deliver(s3_client, s3_bucket, "half", "adult.test")
    first = _scan(zone, LandingCursor(), now=0.0)
    later = _scan(zone, first.cursor, now=7200.0, stale_after=3600.0)
    assert later.stale == ["half/"]
    assert later.cursor.pending == {}


def test_a_tick_stops_at_its_run_budget_and_the_next_continues(s3_client, s3_bucket) -> None:
    zone = _zone(s3_client, s3_bucket)
    for i in range(7):
        _deliver(s3_client, s3_bucket, f"batch-{i}")
    cursor, seen = LandingCursor(), []
    for _ in range(4):
        result = _scan(zone, cursor, max_runs=3)
        seen += [b.folder for b in result.batches]
        cursor = result.cursor
    assert seen == [f"batch-{i}/" for i in range(7)]  # each once, in order


def test_a_tick_stops_at_its_time_budget(s3_client, s3_bucket, monkeypatch) -> None:
    import secure_pipeline.ingestion.landing as landing

    monkeypatch.setattr(landing, "_PAGE", 2)  # two keys (one batch) per page
    zone = _zone(s3_client, s3_bucket)
    for i in range(4):
        _deliver(s3_client, s3_bucket, f"t{i}")
    ticks = iter(range(0, 1000, 10))  # every clock reading is 10 s later
    result = _scan(zone, LandingCursor(), time_budget=15.0, clock=lambda: next(ticks))
    assert result.stopped_early
    assert 1 <= len(result.batches) < 4
    rest = _scan(zone, result.cursor)
    assert [b.folder for b in result.batches + rest.batches] == [f"t{i}/" for i in range(4)]


def test_a_cursor_it_did_not_write_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="reset it in the UI"):
        LandingCursor.from_json("{not json")


def test_an_unversioned_zone_pins_by_etag(s3_client) -> None:
    s3_client.create_bucket(Bucket="sp-landing-plain")
    _deliver(s3_client, "sp-landing-plain", "x")
    batch = _scan(_zone(s3_client, "sp-landing-plain"), LandingCursor()).batches[0]
    assert all(o.version_id is None and o.etag for o in batch.objects)
    assert batch.run_config_objects()["train"] == {"etag": batch.objects[0].etag}


# -- the sensor and the runs it starts ----------------------------------------------------------


@pytest.fixture
def landing_env(s3_client, s3_bucket, moto_endpoint, monkeypatch) -> str:
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    zone = f"s3://{s3_bucket}/landing/adult/"
    monkeypatch.setenv("SECURE_PIPELINE_LANDING_URI", zone)
    return zone


def _sensor_tick(instance, cursor=None):
    defs = adult_pipeline().build_definitions()
    sensor = defs.resolve_sensor_def("adult_landing_zone")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_the_sensor_pins_each_batch_in_its_run_config(s3_client, s3_bucket, landing_env) -> None:
    for name in ("adult.data", "adult.test"):
        s3_client.put_object(
            Bucket=s3_bucket, Key=f"landing/adult/d1/{name}", Body=(DATA_DIR / name).read_bytes()
        )
    with dg.instance_for_test() as instance:
        tick = _sensor_tick(instance)
        assert len(tick.run_requests) == 1
        request = tick.run_requests[0]
        config = request.run_config["ops"]["adult__raw_adult"]["config"]
        assert config["location"] == landing_env + "d1/"
        assert set(config["objects"]) == {"train", "test"}
        assert request.run_key.startswith("landing:d1/:")
        assert json.loads(tick.cursor)["after"] == "landing/adult/d1/adult.test"
        again = _sensor_tick(instance, tick.cursor)
        assert not again.run_requests


def test_the_sensor_skips_without_a_landing_zone(monkeypatch) -> None:
    monkeypatch.delenv("SECURE_PIPELINE_LANDING_URI", raising=False)
    with dg.instance_for_test() as instance:
        tick = _sensor_tick(instance)
    assert not tick.run_requests
    assert "SECURE_PIPELINE_LANDING_URI is not set" in tick.skip_message


def _ingest(instance, config: dict) -> dg.ExecuteInProcessResult:
    defs = adult_pipeline().build_definitions()
    return defs.resolve_job_def("adult_ingest").execute_in_process(
        instance=instance,
        run_config={"ops": {"adult__raw_adult": {"config": config}}},
        raise_on_error=False,
        op_selection=["adult__raw_adult"],
    )


def test_the_run_ingests_exactly_the_pinned_versions(
    s3_client, s3_bucket, landing_env, isolated_env: Path
) -> None:
    real = {n: (DATA_DIR / n).read_bytes() for n in ("adult.data", "adult.test")}
    for name, body in real.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"landing/adult/d1/{name}", Body=body)
    with dg.instance_for_test(temp_dir=str(isolated_env)) as instance:
        request = _sensor_tick(instance).run_requests[0]
        # after the sensor saw it, someone overwrites a file of the batch
        s3_client.put_object(Bucket=s3_bucket, Key="landing/adult/d1/adult.data", Body=b"forged")
        result = _ingest(instance, request.run_config["ops"]["adult__raw_adult"]["config"])
        assert result.success
        meta = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "raw_adult"])
        ).asset_materialization.metadata
    train = next(p for p in meta["provenance"].value if p["member"] == "train")
    assert train["sha256"] == __import__("hashlib").sha256(real["adult.data"]).hexdigest()
    assert train["facts"]["version_id"] == next(
        o["version_id"] for m, o in request.run_config["ops"]["adult__raw_adult"]["config"][
            "objects"].items() if m == "train"
    )  # fmt: skip


def test_an_etag_pin_refuses_changed_content(s3_client, landing_env, monkeypatch) -> None:
    s3_client.create_bucket(Bucket="sp-landing-etag")
    monkeypatch.setenv("SECURE_PIPELINE_LANDING_URI", "s3://sp-landing-etag/landing/adult/")
    for name in ("adult.data", "adult.test"):
        s3_client.put_object(Bucket="sp-landing-etag", Key=f"landing/adult/e/{name}", Body=b"first")
    with dg.instance_for_test() as instance:
        config = (
            _sensor_tick(instance).run_requests[0].run_config["ops"]["adult__raw_adult"]["config"]
        )
        s3_client.put_object(Bucket="sp-landing-etag", Key="landing/adult/e/adult.data", Body=b"2")
        result = _ingest(instance, config)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.cause
    assert error.cls_name == "UntrustedSourceError"
    assert "PreconditionFailed" in error.message


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"location": "s3://other-bucket/landing/adult/d1/"}, "is not a batch folder"),
        ({"location": "s3://{bucket}/elsewhere/d1/"}, "is not a batch folder"),
        ({"location": "s3://{bucket}/landing/adult/"}, "is not a batch folder"),
        ({"location": "s3://{bucket}/landing/adult/../x/"}, "must not contain '..'"),
        ({"location": "https://evil.example/adult/"}, "must be an s3://bucket/prefix/"),
        ({"objects": {"train": {"version_id": "v"}}}, "names no batch location"),
        (
            {"location": "s3://{bucket}/landing/adult/d1/", "objects": {"model": {"etag": "e"}}},
            "not files of source",
        ),
        (
            {"location": "s3://{bucket}/landing/adult/d1/", "objects": {"train": {"x": "y"}}},
            "must hold a non-empty version_id",
        ),
    ],
)
def test_run_config_cannot_ingest_from_outside_the_landing_zone(
    s3_bucket, landing_env, isolated_env: Path, config, message
) -> None:
    config = json.loads(json.dumps(config).replace("{bucket}", s3_bucket))
    with dg.instance_for_test(temp_dir=str(isolated_env)) as instance:
        result = _ingest(instance, config)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.cause
    assert error.cls_name == "UntrustedSourceError"
    assert message in error.message
    store = isolated_env / "store"
    assert not store.exists() or not list(LocalSnapshotStore(store).list_keys("snapshots/"))


def test_without_a_landing_zone_run_config_may_not_choose_a_location(isolated_env) -> None:
    with dg.instance_for_test(temp_dir=str(isolated_env)) as instance:
        result = _ingest(instance, {"location": "s3://b/landing/adult/d1/"})
    error = result.get_step_failure_events()[0].step_failure_data.error.cause
    assert "no landing zone is configured" in error.message


def test_spec_settings_are_checked() -> None:
    bad = dataclasses.replace(PIPELINE.orchestration, landing_env_var="lower", ingest_cron="daily")
    with pytest.raises(ConfigurationError) as err:
        dataclasses.replace(PIPELINE, orchestration=bad)
    assert "landing_env_var 'lower' is not a valid name" in str(err.value)
    assert "ingest_cron 'daily' must have five fields" in str(err.value)
