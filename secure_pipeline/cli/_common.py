"""Helpers of the command groups: one-line failures, the store, trust policy and pipelines."""

import sys
from pathlib import Path
from typing import Any

import click

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SecurePipelineError


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _store() -> Any:
    """The configured store; a local store must already exist (commands only read it)."""
    from secure_pipeline.storage.resources import LocalSnapshotStoreResource, store_resource

    try:
        environment = env.validate()
        resource = store_resource(environment, resolve=True)
        if isinstance(resource, LocalSnapshotStoreResource) and not Path(resource.root).is_dir():
            raise ConfigurationError(
                f"no snapshot store at {resource.root}: run the pipeline first (`make demo`), or "
                "point SECURE_PIPELINE_HOME (or DAGSTER_HOME) at the pipeline's state"
            )
        return resource.get_store()
    except ConfigurationError as exc:
        _fail(str(exc), 2)


def _trust() -> Any:
    """The trust policy; a missing or refused one is a configuration error (exit 2)."""
    from secure_pipeline.trust.policy import trust_policy

    try:
        return trust_policy()
    except SecurePipelineError as exc:
        _fail(str(exc), 2)


def _location_pipelines() -> dict[str, Any]:
    """The pipelines of the code location (``SECURE_PIPELINE_CODE_LOCATION``), by name.

    The module's ``pipelines()`` when it has one (the project's own code location does), else
    its ``defs`` built here: every pipeline built into definitions is remembered by name.
    """
    import importlib

    from secure_pipeline.compose import pipelines_of

    module_name = env.read("SECURE_PIPELINE_CODE_LOCATION") or "secure_pipeline.definitions"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import the code location {module_name!r}: {exc}", 2)
    listing = getattr(module, "pipelines", None)
    if callable(listing):
        return {p.name: p for p in listing()}
    defs = getattr(module, "defs", None)
    try:
        if callable(defs):
            defs = defs()
        if defs is not None:
            defs.resolve_asset_graph()
    except Exception as exc:  # noqa: BLE001 - any load error is reported, not a traceback
        _fail(f"cannot load the code location {module_name!r}: {type(exc).__name__}: {exc}", 2)
    return dict(pipelines_of())


def _pipeline(spec: str | None) -> Any:
    """The pipeline a command works on: by name from the code location, or ``module:attr``."""
    import importlib

    if spec and ":" in spec:
        module, _, attribute = spec.partition(":")
        try:
            value = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            _fail(f"cannot load pipeline {spec!r}: {exc}", 2)
        return value() if callable(value) else value
    pipelines = _location_pipelines()
    names = ", ".join(sorted(pipelines)) or "none"
    if spec is None:
        if len(pipelines) == 1:
            return next(iter(pipelines.values()))
        _fail(
            f"the code location has {len(pipelines)} pipelines ({names}): choose one with "
            "--pipeline NAME",
            2,
        )
    if spec not in pipelines:
        _fail(f"no pipeline {spec!r} in the code location (its pipelines: {names})", 2)
    return pipelines[spec]


_PIPELINE_OPTION = click.option(
    "--pipeline",
    "pipeline_spec",
    default=None,
    help="The pipeline, by name, among those of the code location (SECURE_PIPELINE_CODE_LOCATION,"
    " default secure_pipeline.definitions); the only one when there is one. Or module:attribute "
    "of a SecurePipeline spec.",
)


def _user() -> str:
    import getpass

    return getpass.getuser()
