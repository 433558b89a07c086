"""Steps retry transient I/O failures, and never a refusal."""

import dataclasses
import shutil
import ssl
from pathlib import Path

import dagster as dg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from secure_pipeline.errors import IntegrityError, SourceUnavailableError, UntrustedSourceError
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.retries import is_transient
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.tls_server import serve


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


def _raised(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as raised:  # noqa: BLE001 - building a chained exception
        return raised


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (SourceUnavailableError("503"), True),
        (EndpointConnectionError(endpoint_url="https://s3.example"), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("PreconditionFailed", 412), False),
        (UntrustedSourceError("not TLS 1.3"), False),
        (ssl.SSLError("wrong version number"), False),
        (ValueError("bad value"), False),
        # a control's refusal stays a refusal even when a network error is in its history
        (_raised(IntegrityError("digest mismatch"), ConnectionResetError()), False),
        # a library error caused by a network failure is retried
        (_raised(RuntimeError("upload failed"), ConnectionResetError()), True),
    ],
)
def test_what_counts_as_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    for name in ("adult.data", "adult.test"):
        shutil.copy(DATA_DIR / name, root / name)
    return root


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _pipeline(retries: int):
    pipeline = adult_pipeline()
    return dataclasses.replace(
        pipeline,
        orchestration=dataclasses.replace(
            pipeline.orchestration, transient_retries=retries, retry_delay_seconds=0.01
        ),
    )


def _events(result: dg.ExecuteInProcessResult, step: str) -> list[str]:
    return [e.event_type_value for e in result.events_for_node(step)]


@pytest.mark.parametrize("mode", ["drop_requests", "busy_requests"])
def test_a_dropped_connection_or_busy_source_is_retried(
    pki, files, instance, monkeypatch, mode
) -> None:
    with serve(files, pki) as server:
        setattr(server, mode, 1)
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", server.url + "/data/")
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        result = materialize(_pipeline(retries=2), instance, raise_on_error=False)
    assert result.success
    events = _events(result, "adult__raw_adult")
    assert events.count("STEP_UP_FOR_RETRY") == 1
    assert events.count("ASSET_MATERIALIZATION") == 1


def test_without_retries_the_same_failure_fails_the_step(pki, files, instance, monkeypatch):
    with serve(files, pki) as server:
        server.drop_requests = 1
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", server.url + "/data/")
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        result = materialize(_pipeline(retries=0), instance, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure.cause.cls_name == "SourceUnavailableError"


def test_a_refused_source_is_not_retried(pki, files, instance, monkeypatch) -> None:
    with serve(files, pki, tls12_only=True) as server:
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", server.url + "/data/")
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        result = materialize(_pipeline(retries=3), instance, raise_on_error=False)
        attempts = len(server.requests)
    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in _events(result, "adult__raw_adult")
    assert attempts == 0  # refused at the TLS handshake, once, before any request
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure.cause.cls_name == "UntrustedSourceError"
    assert "TLS 1.3" in failure.cause.message
