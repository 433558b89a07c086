"""Running a pipeline's assets in-process against a test instance."""

from collections.abc import Sequence

import dagster as dg

from secure_pipeline.environment import Environment
from secure_pipeline.pipeline import SecurePipeline


def materialize(
    pipeline: SecurePipeline,
    instance: dg.DagsterInstance,
    assets: Sequence[str] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize ``assets`` (default: the raw asset) with their checks, in this process."""
    defs = pipeline.build_definitions(Environment.LOCAL)
    job = defs.resolve_implicit_global_asset_job_def()
    selection = [pipeline.names.key(a) for a in (assets or [pipeline.raw_asset_name])]
    return job.execute_in_process(
        instance=instance, asset_selection=selection, raise_on_error=raise_on_error
    )


def materialize_all(
    pipeline: SecurePipeline, instance: dg.DagsterInstance, raise_on_error: bool = False
) -> dg.ExecuteInProcessResult:
    """Materialize the whole graph, as `make demo` does, in this process."""
    defs = pipeline.build_definitions(Environment.LOCAL)
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, raise_on_error=raise_on_error)
