"""Retry a step on transient I/O failures only; never retry a refusal.

Dagster's retry policies retry on any exception, which would re-run a failed security control
until it happened to pass (or hammer a source that refused us). Steps here are wrapped instead:
an exception is retried only when it (or what caused it) is a network failure, a timeout, or a
service saying "try again" (HTTP 429/5xx, S3 SlowDown), and nothing in the chain is a refusal
raised by a control. Every write is create-only and content-addressed, so repeating a step
stores nothing twice.
"""

import functools
import inspect
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg

from secure_pipeline.errors import SecurePipelineError, TransientError

if TYPE_CHECKING:
    from secure_pipeline.spec import OrchestrationSpec

F = TypeVar("F", bound=Callable[..., Any])

# S3 / AWS error codes that mean "the service is busy or briefly failing".
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "500",
        "502",
        "503",
        "504",
    }
)
# MLflow REST error codes with the same meaning.
_TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, SecurePipelineError):
        return False
    import ssl

    if isinstance(exc, ssl.SSLError):
        return False  # a TLS failure is a refusal (wrong version, unknown CA), not a hiccup
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    module = type(exc).__module__
    if module.startswith("botocore"):
        from botocore import exceptions as boto

        if isinstance(
            exc,
            boto.ConnectionError
            | boto.HTTPClientError
            | boto.ResponseStreamingError
            | boto.IncompleteReadError,
        ):
            return True
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return error.get("Code") in _TRANSIENT_CODES or status in _TRANSIENT_CODES
        return False
    if module.startswith(("requests", "urllib3")):
        import requests

        return isinstance(exc, requests.ConnectionError | requests.Timeout)
    if module.startswith("mlflow"):
        return getattr(exc, "error_code", None) in _TRANSIENT_MLFLOW_CODES
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step that raised ``exc`` may succeed without changing anything.

    True when some exception in the cause chain is transient and none is a control's refusal
    (a `SecurePipelineError` that is not a `TransientError`).
    """
    chain = list(_chain(exc))
    if any(isinstance(e, SecurePipelineError) and not isinstance(e, TransientError) for e in chain):
        return False
    return any(_transient_one(e) for e in chain)


def _retry_number(args: tuple[Any, ...]) -> int:
    context = args[0] if args else None
    for candidate in (context, getattr(context, "op_execution_context", None)):
        number = getattr(candidate, "retry_number", None)
        if isinstance(number, int):
            return number
    return 0


def retry_transient_io(settings: "OrchestrationSpec") -> Callable[[F], F]:
    """Decorate a step function so transient I/O failures become Dagster retries.

    Put it under ``@dg.asset`` / ``@dg.asset_check``; the step's first argument must be its
    context. Waits grow exponentially with jitter (``retry_delay_seconds * 2**attempt``, at most
    60 s).

    Args:
        settings: The pipeline's orchestration settings (``transient_retries`` after the first
            attempt, 0 turning retrying off; ``retry_delay_seconds`` before the first retry).
    """
    max_retries, base_delay = settings.transient_retries, settings.retry_delay_seconds

    def decorate(fn: F) -> F:
        def retry_or_raise(args: tuple[Any, ...], exc: Exception) -> None:
            if max_retries > 0 and is_transient(exc):
                attempt = _retry_number(args)
                wait = min(60.0, base_delay * 2**attempt) * random.uniform(0.8, 1.2)
                raise dg.RetryRequested(max_retries=max_retries, seconds_to_wait=wait) from exc
            raise exc

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - re-raised unless transient
                    retry_or_raise(args, exc)

            return generator  # type: ignore[return-value]

        @functools.wraps(fn)
        def function(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - re-raised unless transient
                retry_or_raise(args, exc)

        return function  # type: ignore[return-value]

    return decorate
