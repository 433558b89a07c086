"""Several pipelines in one code location: the reference, a header CSV, a single-file source.

Each keeps its own asset keys, jobs, sensors, registered model, snapshots and audit events, and
each runs through its own stage jobs in the same Dagster instance.
"""

import dataclasses
import random
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.compose import build_definitions, pipelines_of
from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import SecurePipeline, SourceFile
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.registry.decisions import champion, decisions
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.validation.test_validation_stage import loans_pipeline


def _census(location: str) -> SecurePipeline:
    """The Adult data as a single-file source: one file, judged on its held-out rows."""
    reference = adult_pipeline()
    return dataclasses.replace(
        reference,
        name="census",
        source=dataclasses.replace(
            reference.source, name="census", files=(SourceFile("train", "adult.data"),),
            location=location, location_env_var=None,
        ),
        schema=dataclasses.replace(reference.schema, min_rows=30_000, max_rows=40_000),
        model=dataclasses.replace(reference.model, test_member=None),
    )  # fmt: skip


def _loans_csv(folder: Path) -> str:
    folder.mkdir()
    rows = ["applicant,amount,term,region,approved"]
    generator = random.Random(7)
    for i in range(100):
        amount = generator.uniform(200, 9000)
        rows.append(f"a{i},{amount:.2f},{generator.choice([12, 24, 36])},"
                    f"{generator.choice('NS')},{'yes' if amount < 4000 else 'no'}")  # fmt: skip
    (folder / "loans.csv").write_text("\n".join(rows) + "\n")
    return folder.as_uri() + "/"


@pytest.fixture(scope="module")
def location(tmp_path_factory, dev_keys):
    """The three pipelines in one code location, each run through its stage jobs."""
    from secure_pipeline_tests.conftest import pointed_at

    home = tmp_path_factory.mktemp("many-home")
    work = tmp_path_factory.mktemp("many-data")
    with pointed_at(home, dev_keys):
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
        census = shutil_copy_data(work / "census")
        pipelines = [adult_pipeline(), loans_pipeline(_loans_csv(work / "loans")), _census(census)]
        defs = build_definitions(pipelines, Environment.LOCAL)
        results = {}
        with dg.DagsterInstance.get() as instance:
            for pipeline in pipelines:
                stages = ["ingest"] if pipeline.name == "loans" else ["ingest", "train", "release"]
                for stage in stages:
                    job = defs.resolve_job_def(f"{pipeline.name}_{stage}")
                    result = job.execute_in_process(
                        instance=instance, raise_on_error=False, tags={"test": "many"}
                    )
                    results[(pipeline.name, stage)] = result.success
        yield home, defs, pipelines, results


def shutil_copy_data(folder: Path) -> str:
    import shutil

    folder.mkdir()
    shutil.copy(DATA_DIR / "adult.data", folder / "adult.data")
    return folder.as_uri() + "/"


def test_each_pipeline_has_its_own_keys_jobs_and_sensors(location) -> None:
    _home, defs, pipelines, _results = location
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for pipeline in pipelines:
        own = {k for k in keys if k.startswith(f"{pipeline.name}/")}
        assert {f"{pipeline.name}/{pipeline.raw_asset_name}", f"{pipeline.name}/features",
                f"{pipeline.name}/trained_model", f"{pipeline.name}/registered_model",
                f"{pipeline.name}/promoted_model"} <= own  # fmt: skip
        for job in ("ingest", "train", "release"):
            assert defs.resolve_job_def(f"{pipeline.name}_{job}") is not None
        for sensor in ("train_on_new_features", "release_on_passed_model", "audit_run_failures"):
            assert defs.resolve_sensor_def(f"{pipeline.name}_{sensor}") is not None
    assert len(keys) == sum(
        1 for k in keys for p in pipelines if k.startswith(f"{p.name}/")
    )  # every key belongs to exactly one pipeline
    assert set(pipelines_of()) >= {"adult", "loans", "census"}


def test_each_pipeline_runs_through_its_own_stage_jobs(location) -> None:
    _home, _defs, _pipelines, results = location
    assert results[("adult", "ingest")]
    assert results[("census", "ingest")]
    assert results[("loans", "ingest")]
    for name in ("adult", "census"):
        assert results[(name, "train")], name
        assert results[(name, "release")], name


def test_each_pipeline_has_its_own_registered_model_snapshots_and_audit_events(location) -> None:
    home, _defs, _pipelines, _results = location
    store = LocalSnapshotStore(home / "store")
    trust = trust_policy()
    for name in ("adult", "census"):
        current = champion(decisions(store, trust, name)[0])
        assert current is not None, name
        assert current.name == name
    assert {k.split("/")[1] for k in store.list_keys("snapshots/")} >= {"adult", "loans", "census"}
    actors = {r.actor for r in AuditLog(store).verified_records()}
    for name in ("adult", "loans", "census"):
        assert any(actor.startswith(f"asset:{name}/") for actor in actors), name


def test_two_pipelines_with_one_name_are_refused(location) -> None:
    with pytest.raises(ConfigurationError, match="adult more than once"):
        build_definitions([adult_pipeline(), adult_pipeline()], Environment.LOCAL)
