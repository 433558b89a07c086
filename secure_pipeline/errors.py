"""Typed errors raised when a control refuses something.

Every control fails closed by raising one of these. Messages follow one pattern: what was
expected, what was found, and what the user can do about it, so an operator reading a failed
run in the Dagster UI does not need to open the code.
"""


class SecurePipelineError(Exception):
    """Base class of every error a secure_pipeline control raises."""


class ConfigurationError(SecurePipelineError):
    """The environment or a pipeline spec is missing, half-configured or contradictory."""


class IntegrityError(SecurePipelineError):
    """Stored bytes do not match the digest they were recorded with, or a write would overwrite."""


class AuditChainError(IntegrityError):
    """The audit trail's hash chain is broken: a record was edited, removed or reordered."""


class UntrustedSourceError(SecurePipelineError):
    """A data source was refused: wrong scheme, outside the allowed root, or over the limits."""


class SignatureError(SecurePipelineError):
    """A signature is missing or invalid, from an untrusted signer, or its files changed."""


class PolicyViolation(SecurePipelineError):  # noqa: N818 - the name DESIGN.md gives it
    """A model may not be promoted, rolled back or served: a gate or verification failed."""


class TransientError(SecurePipelineError):
    """A dependency was unavailable for a moment; the same step may succeed when retried.

    Only errors of this kind (and the network errors `secure_pipeline.retries`
    recognises) are retried. Every other error of this module is a refusal, and a refusal is
    never retried.
    """


class SourceUnavailableError(UntrustedSourceError, TransientError):
    """A source could not be reached or broke off mid-transfer; nothing was stored."""
