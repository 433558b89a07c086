"""`SecurePipeline`: a pipeline spec that builds its own Dagster definitions.

A library user describes *their* pipeline — data source, schema, sensitive features — and calls
`SecurePipeline.build_definitions()` to get Dagster definitions carrying every control. The
reference Adult pipeline (`secure_pipeline/defs/adult/defs.yaml`) is just one instance.

The spec itself (`secure_pipeline.spec.PipelineSpec` and its parts, re-exported here) sits at
the bottom of the layers and imports no stage; this subclass adds the one method that needs
composition, which sits on top. Building a spec stays light: the stage builders are imported
only when definitions are built.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from secure_pipeline.spec import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    RESERVED_SPLIT_COLUMN,
    CanaryPolicy,
    Column,
    ColumnRole,
    ColumnType,
    DatasetSchema,
    DerivedColumn,
    Estimator,
    FeatureSpec,
    IsolationSpec,
    ModelSpec,
    MonitoringSpec,
    OrchestrationSpec,
    PipelineSpec,
    PrivacySpec,
    SecurityPolicy,
    SourceFile,
    SourcePartitions,
    SourceSpec,
)

if TYPE_CHECKING:
    import dagster as dg

    from secure_pipeline.environment import Environment

__all__ = [
    "CONTAINER_SECURITY_CONTEXT",
    "POD_SECURITY_CONTEXT",
    "RESERVED_SPLIT_COLUMN",
    "CanaryPolicy",
    "Column",
    "ColumnRole",
    "ColumnType",
    "DatasetSchema",
    "DerivedColumn",
    "Estimator",
    "FeatureSpec",
    "IsolationSpec",
    "ModelSpec",
    "MonitoringSpec",
    "OrchestrationSpec",
    "PrivacySpec",
    "SecurePipeline",
    "SecurityPolicy",
    "SourceFile",
    "SourcePartitions",
    "SourceSpec",
]


@dataclass(frozen=True)
class SecurePipeline(PipelineSpec):
    """A secure ML pipeline, declared once and turned into Dagster definitions.

    Every field, and its validation, is `PipelineSpec`'s.
    """

    def build_definitions(self, environment: "Environment | None" = None) -> "dg.Definitions":
        """Build the Dagster definitions of this pipeline.

        Args:
            environment: Build for this environment; the current one (``SECURE_PIPELINE_ENV``)
                when None.

        Returns:
            Assets, checks, stage jobs, schedule, sensors and resources, ready for a code
            location.

        Raises:
            ConfigurationError: When the environment is missing variables (all are listed).
        """
        from secure_pipeline.compose import build_definitions

        return build_definitions([self], environment)
