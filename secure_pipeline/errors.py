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


class ErasedError(IntegrityError):
    """A snapshot was crypto-shredded: its data key is destroyed, so its bytes can never be read.

    Attributes:
        provider: The keyring provider that held the key (``local``, ``kms``), if known.
        key_id: The destroyed key's id, if known.
        erased_at: When the key was destroyed (ISO-8601 UTC), if known.
        reason: Why it was destroyed, as recorded at the time, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        key_id: str | None = None,
        erased_at: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.key_id = key_id
        self.erased_at = erased_at
        self.reason = reason


class KeyUnavailableError(IntegrityError):
    """The key wrapping a snapshot's data key cannot be used here: wrong or missing keyring.

    Nothing is changed when this is raised; the stored bytes stay as they are and the right
    keyring still reads them.

    Attributes:
        provider: The keyring provider the snapshot names.
        key_id: The key id the snapshot names.
    """

    def __init__(
        self, message: str, *, provider: str | None = None, key_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.key_id = key_id
