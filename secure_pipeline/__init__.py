"""secure_pipeline: a Dagster code location and asset library for secure ML pipelines.

The public API is deliberately small. Build a pipeline from a `SecurePipeline` spec and turn it
into Dagster definitions with `SecurePipeline.build_definitions()`; everything else lives in the
stage packages (`storage`, `ingestion`, ...).

Nothing heavy is imported here: the code location must load fast in every run worker.
"""

from secure_pipeline.errors import (
    AuditChainError,
    ConfigurationError,
    IntegrityError,
    PolicyViolation,
    SecurePipelineError,
    SignatureError,
    UntrustedSourceError,
)
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    FeatureSpec,
    IsolationSpec,
    ModelSpec,
    OrchestrationSpec,
    SecurePipeline,
    SecurityPolicy,
    SourceFile,
    SourceSpec,
)

__all__ = [
    "AuditChainError",
    "Column",
    "ConfigurationError",
    "DatasetSchema",
    "FeatureSpec",
    "IntegrityError",
    "IsolationSpec",
    "ModelSpec",
    "OrchestrationSpec",
    "PolicyViolation",
    "SecurePipeline",
    "SecurePipelineError",
    "SecurityPolicy",
    "SignatureError",
    "SourceFile",
    "SourceSpec",
    "UntrustedSourceError",
]
