"""Composition: any number of pipeline specs as one code location's definitions.

Each pipeline contributes its own assets (keys prefixed with its name), checks, stage jobs,
schedule and sensors; the pipelines share the snapshot store, its IO manager and the executor
of ad-hoc runs. The pipelines a code location built are remembered by name, so the command line
can pick one (`pipelines_of`).
"""

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import dagster as dg

    from secure_pipeline.environment import Environment
    from secure_pipeline.spec import PipelineSpec

# Every pipeline built into definitions in this process, by name (the CLI's choice of pipeline).
_BUILT: dict[str, "PipelineSpec"] = {}


def build_definitions(
    pipelines: Sequence["PipelineSpec"], environment: "Environment | None" = None
) -> "dg.Definitions":
    """The definitions of several pipelines in one code location.

    Args:
        pipelines: The specs; their names must differ.
        environment: Build for this environment; the current one when None.

    Returns:
        Every pipeline's assets, checks, jobs, schedules and sensors, with shared resources.

    Raises:
        ConfigurationError: When two pipelines share a name, the environment is missing
            variables (all are listed), or the pipelines ask for different ad-hoc executors.
    """
    import dagster as dg

    from secure_pipeline import environment as env
    from secure_pipeline.privacy.pseudonyms import pseudonym_key
    from secure_pipeline.storage.resources import build_resources

    names = [p.name for p in pipelines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(
            f"pipeline names must be unique in a code location, found {', '.join(duplicates)} "
            "more than once: every asset key, job and registered model is named after it"
        )
    if not pipelines:
        raise ConfigurationError("a code location needs at least one pipeline")
    variables: dict[str, str] = {}
    for pipeline in pipelines:
        variables.update(pipeline.source_variables())
    checked = env.validate(environment, source_variables=variables)
    for pipeline in pipelines:
        # Checked when the code location loads, not first when validated_* runs: a missing or
        # malformed secret is refused here (locally the key is generated on first use). The
        # subject index of identifier columns is keyed from the same secret.
        if checked is env.Environment.PRODUCTION and (
            any(c.pseudonymise for c in pipeline.schema.columns)
            or pipeline.schema.identifier_columns
        ):
            pseudonym_key(pipeline.name, checked)
        if pipeline.holds_personal_data:
            # Its row-level snapshots are encrypted: a keyring setting production refuses
            # (local key files, an unknown provider, a plain-http KMS endpoint) fails the load.
            from secure_pipeline.storage.keyrings import keyring_from_environment

            keyring_from_environment(checked)
    mode = env.executor_mode(checked)
    parts = [_pipeline_parts(p, checked, mode) for p in pipelines]
    executors = {repr(part["executor_config"]) for part in parts}
    if len(executors) > 1:
        raise ConfigurationError(
            "the pipelines of one code location must send ad-hoc runs to the same place: their "
            "orchestration settings (control namespace, image) differ: " + ", ".join(names)
        )
    for pipeline in pipelines:
        _BUILT[pipeline.name] = pipeline
    return dg.Definitions(
        assets=[a for part in parts for a in part["assets"]],
        asset_checks=[c for part in parts for c in part["checks"]],
        jobs=[j for part in parts for j in part["jobs"]],
        schedules=[s for part in parts for s in part["schedules"]],
        sensors=[s for part in parts for s in part["sensors"]],
        executor=parts[0]["executor"],
        resources=build_resources(checked),
    )


def _pipeline_parts(pipeline: "PipelineSpec", environment: Any, mode: str) -> dict[str, Any]:
    import dagster as dg

    from secure_pipeline.features.assets import build_features_stage
    from secure_pipeline.ingestion.assets import build_raw_asset
    from secure_pipeline.mlsec.checks import build_ml_checks
    from secure_pipeline.mlsec.poisoning import build_poisoning_check
    from secure_pipeline.monitoring.assets import build_live_stage
    from secure_pipeline.orchestration.build import build_orchestration
    from secure_pipeline.orchestration.jobs import KUBERNETES, adhoc_executor_config
    from secure_pipeline.promotion.assets import build_promotion_stage
    from secure_pipeline.registry.assets import build_registry_stage
    from secure_pipeline.registry.evidence import champion_lineage, champion_verdict
    from secure_pipeline.training.assets import build_training_stage
    from secure_pipeline.validation.assets import build_validation_stage

    with warnings.catch_warnings():
        # Per-partition checks are a preview feature of this Dagster release (its API has held
        # since 1.10); the warning would repeat for every check of every partitioned pipeline.
        warnings.filterwarnings(
            "ignore", "Specifying a partitions_def on an AssetCheckSpec", dg.PreviewWarning
        )
        validated, validation_checks = build_validation_stage(pipeline)
        features, feature_checks = build_features_stage(pipeline, champion_lineage)
        poisoning = build_poisoning_check(pipeline, champion_verdict)
    registry, registry_checks = build_registry_stage(pipeline)
    live, live_checks = build_live_stage(pipeline, champion_lineage)
    assets = [
        build_raw_asset(pipeline),
        *validated,
        *features,
        *build_training_stage(pipeline),
        *registry,
        *build_promotion_stage(pipeline),
        live,
    ]
    checks = [
        *validation_checks,
        *feature_checks,
        poisoning,
        *build_ml_checks(pipeline),
        *registry_checks,
        *live_checks,
    ]
    orchestration = build_orchestration(pipeline, [*assets, *checks], environment, mode)
    return {
        "assets": assets,
        "checks": checks,
        "jobs": orchestration.jobs,
        "schedules": orchestration.schedules,
        "sensors": orchestration.sensors,
        "executor": orchestration.executor,
        "executor_config": (
            adhoc_executor_config(pipeline.orchestration) if mode == KUBERNETES else None
        ),
    }


def pipelines_of() -> Mapping[str, "PipelineSpec"]:
    """The pipelines built into definitions in this process, by name."""
    return dict(_BUILT)
