"""The pipeline spec: frozen dataclasses that describe a pipeline, at the bottom of the layers.

Nothing here imports a stage, Dagster or anything heavy: a spec is built and validated (every
problem listed at once) before any stage code is loaded. The stages read a `PipelineSpec`;
composition (`secure_pipeline.SecurePipeline`, the component) turns one into definitions.
"""

from secure_pipeline.spec.catalog import LABEL_COLUMN, Feature, feature_catalog
from secure_pipeline.spec.data import (
    DROPPED_AT_ENTRY,
    RESERVED_SPLIT_COLUMN,
    Column,
    ColumnRole,
    ColumnType,
    DatasetSchema,
    SourceFile,
    SourcePartitions,
    SourceSpec,
)
from secure_pipeline.spec.pipeline import PipelineSpec
from secure_pipeline.spec.policy import CanaryPolicy, MonitoringSpec, PrivacySpec, SecurityPolicy
from secure_pipeline.spec.stages import (
    BUILTIN_ESTIMATORS,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    DerivedColumn,
    Estimator,
    FeatureSpec,
    IsolationSpec,
    ModelSpec,
    OrchestrationSpec,
)

__all__ = [
    "BUILTIN_ESTIMATORS",
    "CONTAINER_SECURITY_CONTEXT",
    "DROPPED_AT_ENTRY",
    "LABEL_COLUMN",
    "POD_SECURITY_CONTEXT",
    "RESERVED_SPLIT_COLUMN",
    "CanaryPolicy",
    "Column",
    "ColumnRole",
    "ColumnType",
    "DatasetSchema",
    "DerivedColumn",
    "Estimator",
    "Feature",
    "FeatureSpec",
    "IsolationSpec",
    "ModelSpec",
    "MonitoringSpec",
    "OrchestrationSpec",
    "PipelineSpec",
    "PrivacySpec",
    "SecurityPolicy",
    "SourceFile",
    "SourcePartitions",
    "SourceSpec",
    "feature_catalog",
]
