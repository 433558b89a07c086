"""Erasure follows a partitioned model's window of days.

The credit table delivered daily (``<day>/credit.txt``, the same 1,000 applicants each day), a
model trained on two days, promoted. One applicant asks to be erased: both days' raw files and
every row-level snapshot derived from them are found and shredded, the model trained on the
window is found through each day it learnt from, and the model server refuses it.
"""

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ErasedError
from secure_pipeline.names import CHAMPION
from secure_pipeline.pipeline import SourcePartitions
from secure_pipeline.privacy.erasure import erase, hash_identifiers, locate
from secure_pipeline.serving.server import ModelService
from secure_pipeline.storage.resources import store_resource
from secure_pipeline.trust.identities import PRIVACY
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import pointed_at
from secure_pipeline_tests.privacy.erasure_helpers import small_pipeline
from secure_pipeline_tests.test_real_tables import _credit_file

DAYS = ("2026-02-01", "2026-02-02")
ERASED = "C00421"


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> dict:
    home = tmp_path_factory.mktemp("daily-credit-home")
    landing = tmp_path_factory.mktemp("daily-credit-landing")
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    for seed, day in enumerate(DAYS):
        (landing / day).mkdir()
        _credit_file(landing / day / "credit.txt", seed)
    base = small_pipeline()
    daily = SourcePartitions(DAYS[0], window=2)
    pipeline = dataclasses.replace(
        base,
        source=dataclasses.replace(
            base.source, location=landing.as_uri() + "/{date}/", partitions=daily
        ),
    )
    seen: dict = {"pipeline": pipeline}
    with pointed_at(home, dev_keys):
        defs = pipeline.build_definitions(Environment.LOCAL)
        with dg.DagsterInstance.get() as instance:
            for day in DAYS:
                result = defs.resolve_job_def("credit_ingest").execute_in_process(
                    instance=instance, partition_key=day, raise_on_error=False
                )
                assert result.success, [e.message for e in result.all_events if e.is_failure]
            for stage in ("train", "release"):
                result = defs.resolve_job_def(f"credit_{stage}").execute_in_process(
                    instance=instance, raise_on_error=False
                )
                assert result.success, [e.message for e in result.all_events if e.is_failure]
            record = instance.get_latest_materialization_event(pipeline.names.trained_model)
            seen["model"] = record.asset_materialization.metadata["model_sha256"].value
        served = ModelService(pipeline, f"models:/credit@{CHAMPION}", "blue")
        served.load()
        seen["before"] = served.state
        store, trust = store_resource(Environment.LOCAL, resolve=True).get_store(), trust_policy()
        (subject,) = hash_identifiers(pipeline, [ERASED])
        seen["located"] = locate(store, pipeline, trust, subject)
        seen["receipt"] = erase(
            store, pipeline, trust, [ERASED], now=True, signer=signer_for(PRIVACY)
        )
        refused = ModelService(pipeline, f"models:/credit@{CHAMPION}", "blue")
        refused.load()
        seen["after"] = (refused.state, refused.reason)
        seen["store"] = store
    return seen


def test_every_day_holding_the_subject_is_found_with_the_model_of_the_window(erased) -> None:
    located = erased["located"]
    assert not located.problems, located.problems
    assert sorted(f"/{d}/" in h.raw_key for h in located.ingestions for d in DAYS).count(True) == 2
    assert {h.latest for h in located.ingestions} == {True}  # each day's current data
    for day in DAYS:
        held = [d.asset for d in located.derived if f"/{day}/" in d.key]
        assert {"credit/validated_credit", "credit/features"} <= set(held), held
    assert erased["model"] in {m.model_sha256 for m in located.models}


def test_both_days_are_shredded_and_the_window_model_is_refused(erased) -> None:
    assert erased["before"] == "ready"
    store = erased["store"]
    keys = erased["receipt"].located[0].snapshot_keys()
    assert sum(f"/{DAYS[0]}/" in k for k in keys) >= 3
    assert sum(f"/{DAYS[1]}/" in k for k in keys) >= 3
    for key in keys:
        with pytest.raises(ErasedError):
            store.read_bytes((key, key.rsplit("/", 1)[-1].split(".")[0]))
    assert erased["model"] in {m["sha256"] for m in erased["receipt"].models}
    state, reason = erased["after"]
    assert state == "refused"
    assert "trained on data since erased" in reason


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> dict:
    """Three days past their retention; the champion was trained on the first two."""
    home = tmp_path_factory.mktemp("daily-retention-home")
    landing = tmp_path_factory.mktemp("daily-retention-landing")
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    days = (*DAYS, "2026-02-03")
    for seed, day in enumerate(days):
        (landing / day).mkdir()
        _credit_file(landing / day / "credit.txt", seed)
    base = small_pipeline(retention_days=30)
    pipeline = dataclasses.replace(
        base,
        source=dataclasses.replace(
            base.source, location=landing.as_uri() + "/{date}/",
            partitions=SourcePartitions(DAYS[0], window=2),
        ),
    )  # fmt: skip
    with pointed_at(home, dev_keys):
        defs = pipeline.build_definitions(Environment.LOCAL)
        with dg.DagsterInstance.get() as instance:

            def run(job: str, day: str | None = None) -> None:
                result = defs.resolve_job_def(job).execute_in_process(
                    instance=instance, partition_key=day, raise_on_error=False
                )
                assert result.success, [e.message for e in result.all_events if e.is_failure]

            for day in DAYS:
                run("credit_ingest", day)
            run("credit_train")
            run("credit_release")
            run("credit_ingest", days[2])
        store = store_resource(Environment.LOCAL, resolve=True).get_store()
        from datetime import UTC, datetime, timedelta

        from secure_pipeline.privacy.erasure import enforce, ingestion_snapshots

        snapshots = ingestion_snapshots(store, pipeline, trust_policy())
        report = enforce(
            store, pipeline, trust_policy(), today=datetime.now(UTC) + timedelta(days=40),
            signer=signer_for(PRIVACY),
        )  # fmt: skip
        return {"store": store, "snapshots": snapshots, "report": report, "days": days}


def test_retention_spares_every_day_the_champion_was_trained_on(expiring) -> None:
    store, report = expiring["store"], expiring["report"]
    assert not report.problems, report.problems
    by_day = {
        day: [k for keys in expiring["snapshots"].values() for k in keys if f"/{day}/" in k]
        for day in expiring["days"]
    }
    assert all(by_day.values()), by_day
    for day in DAYS:  # the champion's window: kept readable
        for key in by_day[day]:
            assert not store.shredded(key), key
    later = expiring["days"][2]
    assert {s["key"] for s in report.shredded} >= set(by_day[later])
    for key in by_day[later]:
        assert store.shredded(key)
