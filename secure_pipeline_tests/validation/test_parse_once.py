"""validated_* reuses schema_conforms's parse in one process, only for the same fileset."""

import os
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.validation import assets as validation_assets
from secure_pipeline.validation import streaming
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.validation.test_validation_stage import GOOD, _source, loans_pipeline


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Counts the real parser's calls, one per chunk (it still does all the work)."""
    calls: list[int] = []
    real = streaming.parse_chunk

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "parse_chunk", counted)
    return calls


def _run(pipeline, instance) -> dg.ExecuteInProcessResult:
    return materialize(pipeline, instance, assets=["raw_loans", "validated_loans"])


def test_validated_reuses_the_check_parse_in_one_process(instance, tmp_path, parses) -> None:
    result = _run(loans_pipeline(_source(tmp_path, GOOD)), instance)
    assert result.success
    assert len(parses) == 1
    assert "loans" not in validation_assets._PARSED  # popped on use


def test_another_fileset_is_never_served_from_the_memo(instance, tmp_path, parses) -> None:
    pipeline = loans_pipeline(_source(tmp_path, GOOD))
    assert materialize(pipeline, instance, assets=["raw_loans"]).success
    parses.clear()
    # The check parsed another fileset (an insider swapped it between the two steps): what it
    # kept names that fileset's digest, not the one validated_* reads.
    forged = ([], streaming.StreamReport(rows=1, parsed_rows=1))
    validation_assets._PARSED["loans"] = ("0" * 64, pipeline.schema.version, *forged)
    result = materialize(pipeline, instance, assets=["validated_loans"])
    assert result.success
    assert len(parses) == 1  # parsed again, not served from the memo
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["loans", "validated_loans"])
    ).asset_materialization.metadata
    assert meta["rows_valid"].value > 0
    assert "loans" not in validation_assets._PARSED


def test_a_large_fileset_is_parsed_in_chunks_and_not_kept(instance, tmp_path, monkeypatch):
    # Above one chunk the parse is not kept (memory stays bounded by a chunk): each step parses
    # again, a chunk at a time, and both see the same rows.
    calls: list[int] = []
    real = streaming.parse_chunk
    monkeypatch.setattr(streaming, "parse_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    lines = GOOD.splitlines()
    data = b"\n".join(lines + lines[1:] * 14) + b"\n"
    pipeline = loans_pipeline(_source(tmp_path, data), chunk_bytes=64)
    result = _run(pipeline, instance)
    assert result.success
    assert len(calls) > 4  # several chunks, parsed by each step
    assert "loans" not in validation_assets._PARSED
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["loans", "validated_loans"])
    ).asset_materialization.metadata
    assert meta["rows_in"].value == 15 * (len(lines) - 1)


def _ingest_job() -> dg.JobDefinition:
    """The loans ingest job as a code location builds it (reconstructable: module level)."""
    from secure_pipeline.environment import Environment

    pipeline = loans_pipeline(os.environ["SECURE_PIPELINE_TEST_LOANS_SOURCE"])
    return pipeline.build_definitions(Environment.LOCAL).resolve_job_def("loans_ingest")


def test_a_failed_blocking_check_stops_the_stage_on_its_own_executor(
    instance, tmp_path, monkeypatch
) -> None:
    # The stage's own executor with no run configuration, as the UI, a schedule or a sensor runs
    # it: all steps in one process, and a failed blocking check still skips what follows.
    bad = GOOD.replace(b"region", b"area", 1)
    monkeypatch.setenv("SECURE_PIPELINE_TEST_LOANS_SOURCE", _source(tmp_path, bad))
    job = dg.reconstructable(_ingest_job)
    with dg.execute_job(job, instance=instance, raise_on_error=False) as result:
        assert not result.success
        failed = [
            e.asset_check_key.name
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]
        started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "schema_conforms" in failed
    assert "loans" not in validation_assets._PARSED  # nothing left holding the batch
    assert "loans__raw_loans_schema_conforms" in started
    assert not any("validated_loans" in key or "features" in key for key in started), started
    for asset in ("validated_loans", "features"):
        assert instance.get_latest_materialization_event(dg.AssetKey(["loans", asset])) is None
