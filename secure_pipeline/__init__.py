"""secure_pipeline: a Dagster code location and asset library for secure ML pipelines.

The public API is deliberately small. Build a pipeline from a `SecurePipeline` spec and turn it
into Dagster definitions with `SecurePipeline.build_definitions()`, or declare it in YAML as a
`SecurePipelineComponent` (``type: secure_pipeline.SecurePipelineComponent``); everything else
lives in the stage packages (`storage`, `ingestion`, ...).

Nothing heavy is imported here: the code location must load fast in every run worker.
"""

from typing import Any

from secure_pipeline.errors import (
    AuditChainError,
    ConfigurationError,
    ErasedError,
    IntegrityError,
    PolicyViolation,
    SecurePipelineError,
    SignatureError,
    UntrustedSourceError,
)
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    DerivedColumn,
    FeatureSpec,
    IsolationSpec,
    ModelSpec,
    OrchestrationSpec,
    PrivacySpec,
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
    "ErasedError",
    "DerivedColumn",
    "FeatureSpec",
    "IntegrityError",
    "IsolationSpec",
    "ModelSpec",
    "OrchestrationSpec",
    "PrivacySpec",
    "PolicyViolation",
    "SecurePipeline",
    "SecurePipelineComponent",
    "SecurePipelineError",
    "SecurityPolicy",
    "SignatureError",
    "SourceFile",
    "SourceSpec",
    "UntrustedSourceError",
]


def __getattr__(name: str) -> Any:
    # The component imports dagster: it is loaded when first asked for (by a defs.yaml's
    # `type:`, or dg listing this registry module), not by every `import secure_pipeline`.
    if name == "SecurePipelineComponent":
        from secure_pipeline.component import SecurePipelineComponent

        return SecurePipelineComponent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # dg finds registry objects with dir(): list the lazy one too.
    return sorted({*globals(), "SecurePipelineComponent"})
