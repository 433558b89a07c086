"""Credentials and signed queries never reach provenance, messages or logs — real connectors.

The HTTPS cases run against the local TLS test server with two additions: a password holding an
unencoded ``@`` (the regex redaction used to leave what followed it), and redirects to a signed
URL whose query holds whitespace (``http.client`` quotes that URL in its error, and the regex
redaction stopped at the space).
"""

import base64
import dataclasses
import io
import json
import logging
import secrets
import ssl
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import SourceUnavailableError, UntrustedSourceError
from secure_pipeline.ingestion.assets import SourceBatch, batch_location
from secure_pipeline.ingestion.connectors import S3Connector, connector_for
from secure_pipeline.ingestion.https import HttpsConnector
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.tls_server import FileServer, Pki, _Handler

# Both halves of each secret are distinctive, so a half left behind is found too.
PASSWORD_HEAD, PASSWORD_TAIL = f"pwh{secrets.token_hex(6)}", f"pwt{secrets.token_hex(6)}"
PASSWORD = f"{PASSWORD_HEAD}@{PASSWORD_TAIL}"
SIGNATURE_HEAD, SIGNATURE_TAIL = f"sgh{secrets.token_hex(6)}", f"sgt{secrets.token_hex(6)}"
SECRETS = (PASSWORD_HEAD, PASSWORD_TAIL, SIGNATURE_HEAD, SIGNATURE_TAIL)


class _SignedRedirects(_Handler):
    """The test server's handler, plus redirects to signed URLs.

    ``/signed-space/<name>`` redirects to ``/data/<name>?X-Amz-Signature=<head> <tail>`` (a
    query with whitespace); ``/signed/<name>`` to the same without the space.
    """

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        path = self.path.split("?")[0]
        for prefix, gap in (("/signed-space/", " "), ("/signed/", "")):
            if path.startswith(prefix):
                self.server.requests.append((self.path, self.headers.get("Authorization")))
                name = path.rsplit("/", 1)[1]
                query = f"X-Amz-Signature={SIGNATURE_HEAD}{gap}{SIGNATURE_TAIL}"
                return self._send(302, {"Location": f"/data/{name}?{query}", "Content-Length": 0})
        return super().do_GET()


@contextmanager
def serve_signed(root: Path, pki: Pki) -> Iterator[FileServer]:
    """The local HTTPS test server (good certificate) with `_SignedRedirects`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.directory / "good.pem", pki.directory / "good.key")
    server = FileServer(root, context)
    server.RequestHandlerClass = _SignedRedirects
    # Only requests sent with the '@' password are answered.
    server.require_auth = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def with_password(server: FileServer, path: str) -> str:
    return server.url.replace("https://", f"https://bob:{PASSWORD}@") + path


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into: {text}"


def refusal(connector, uri: str, kind: type[Exception] = UntrustedSourceError) -> Exception:
    """The exception ``connector`` raises when opening ``uri``."""
    with pytest.raises(kind) as raised, connector.open(uri, max_bytes=10**8):
        pytest.fail(f"{uri} was opened")
    return raised.value


def exception_texts(exc: BaseException) -> tuple[str, ...]:
    """What an operator can see of an exception: message, repr and the printed traceback."""
    return str(exc), repr(exc), "".join(traceback.format_exception(exc))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    for name in ("adult.data", "adult.test"):
        (root / name).write_bytes((DATA_DIR / name).read_bytes())
    return root


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# -- the HTTPS connector on its own -------------------------------------------------------


def test_password_with_at_sign_is_sent_but_never_recorded(pki, files, logs) -> None:
    with serve_signed(files, pki) as server:
        connector = HttpsConnector(ca_bundle=pki.ca)
        with connector.open(with_password(server, "/signed/adult.test"), max_bytes=10**8) as f:
            data = b"".join(f.chunks)
        # The whole password reached the server: it was parsed after the last '@'.
        assert server.requests[-1][1] == server.require_auth
    assert data == (DATA_DIR / "adult.test").read_bytes()
    assert f.facts["redirects"] == [{"status": 302, "from": f"{server.url}/signed/adult.test"}]
    assert f.facts["final_url"] == f"{server.url}/data/adult.test"
    assert_no_secret(json.dumps(f.facts), logs.text)


def test_redirect_with_whitespace_in_its_query_leaks_nothing(pki, files, logs) -> None:
    with serve_signed(files, pki) as server:
        # http.client refuses to send a request target holding a space, quoting it.
        error = refusal(
            HttpsConnector(ca_bundle=pki.ca),
            with_password(server, "/signed-space/adult.test"),
            SourceUnavailableError,
        )
    message = str(error)
    # Still actionable: where, what went wrong, what to do.
    assert f"{server.url}/data/adult.test" in message
    assert "InvalidURL" in message
    assert "nothing was stored" in message
    assert_no_secret(*exception_texts(error), logs.text)


def test_refusals_name_the_status_not_the_secrets(pki, files, logs) -> None:
    with serve_signed(files, pki) as server:
        connector = HttpsConnector(ca_bundle=pki.ca)
        url = with_password(server, f"/data/missing.csv?X-Amz-Signature={SIGNATURE_HEAD}")
        missing = refusal(connector, url)
        wrong = server.url.replace("https://", f"https://bob:{PASSWORD_HEAD}@") + "/data/a"
        denied = refusal(connector, wrong)
    assert not isinstance(missing, SourceUnavailableError)  # a refusal, not retried
    assert f"{server.url}/data/missing.csv answered HTTP 404 Not Found" in str(missing)
    assert "HTTP 401 Unauthorized" in str(denied)
    assert "check the credentials" in str(denied)
    assert_no_secret(*exception_texts(missing), *exception_texts(denied), logs.text)


def test_an_unreadable_port_is_not_echoed(pki, logs) -> None:
    # An unencoded '/' in the password makes its start read as the port.
    url = f"https://bob:{PASSWORD_HEAD}/{PASSWORD_TAIL}@127.0.0.1:1/data/a"
    error = refusal(HttpsConnector(ca_bundle=pki.ca), url)
    assert "malformed URL" in str(error)
    assert_no_secret(*exception_texts(error), logs.text)


# -- through the raw asset: what reaches the store, the event log and the logs -------------


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _no_retries():
    pipeline = adult_pipeline()
    return dataclasses.replace(
        pipeline, orchestration=dataclasses.replace(pipeline.orchestration, transient_retries=0)
    )


def _everything_recorded(instance, run_id: str, home: Path) -> list[str]:
    """Event log entries (metadata, messages, errors), the audit trail, every stored object."""
    texts = [dg.serialize_value(entry) for entry in instance.all_logs(run_id)]
    root = home / "store"
    if root.exists():
        out = io.StringIO()
        AuditLog(LocalSnapshotStore(root)).export(out)
        texts.append(out.getvalue())
        texts += [p.read_text("utf-8", "replace") for p in root.rglob("*") if p.is_file()]
    return texts


def test_ingestion_records_no_secret(pki, files, instance, isolated_env, monkeypatch, logs, capfd):
    with serve_signed(files, pki) as server:
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", with_password(server, "/signed/"))
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        result = materialize(_no_retries(), instance, raise_on_error=False)
    assert result.success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["adult", "raw_adult"])
    ).asset_materialization.metadata
    assert meta["source"].value == f"{server.url}/signed/"
    assert {p["facts"]["final_url"] for p in meta["provenance"].value} == {
        f"{server.url}/data/adult.data",
        f"{server.url}/data/adult.test",
    }
    recorded = _everything_recorded(instance, result.run_id, isolated_env)
    assert any('"provenance"' in text for text in recorded)  # the provenance snapshot is there
    assert_no_secret(*recorded, logs.text, *capfd.readouterr())


def test_failed_ingestion_reports_no_secret(
    pki, files, instance, isolated_env, monkeypatch, logs, capfd
) -> None:
    with serve_signed(files, pki) as server:
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", with_password(server, "/signed-space/"))
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        result = materialize(_no_retries(), instance, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure.cause.cls_name == "SourceUnavailableError"  # transient, as before
    assert f"{server.url}/data/adult.data" in failure.cause.message
    recorded = _everything_recorded(instance, result.run_id, isolated_env)
    assert_no_secret(dg.serialize_value(failure), *recorded, logs.text, *capfd.readouterr())


# -- S3 and the landing zone ----------------------------------------------------------------


def test_s3_uri_with_credentials_is_refused_without_echoing_them(s3_client, s3_bucket) -> None:
    # An AWS secret key holds '/': the URI's "bucket" would be "AKIA...:<head>".
    uri = f"s3://AKIAEXAMPLE:{PASSWORD_HEAD}/{PASSWORD_TAIL}@{s3_bucket}/adult.data"
    error = refusal(S3Connector(s3_client), uri)
    assert "no credentials" in str(error)
    assert not isinstance(error, SourceUnavailableError)
    assert_no_secret(*exception_texts(error))


def test_s3_read_failure_names_code_and_status(s3_client, s3_bucket) -> None:
    error = refusal(S3Connector(s3_client), f"s3://{s3_bucket}/missing.csv")
    assert not isinstance(error, SourceUnavailableError)
    message = str(error)
    assert f"cannot read s3://{s3_bucket}/missing.csv: NoSuchKey, HTTP 404" in message
    assert "An error occurred" not in message  # not the library's text


def test_a_refused_s3_endpoint_is_named_without_credentials(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_S3_ENDPOINT", f"http://ak:{PASSWORD}@s3.example:9000")
    with pytest.raises(UntrustedSourceError, match="S3 endpoint must use https") as raised:
        connector_for("s3://bucket/a.csv", location="s3://bucket/")
    assert "http://s3.example:9000" in str(raised.value)
    assert_no_secret(*exception_texts(raised.value))


def test_a_refused_batch_location_is_named_without_its_query(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_LANDING_URI", "s3://landing/adult/")
    batch = SourceBatch(location=f"s3://landing/adult/b1/?X-Amz-Signature={SIGNATURE_HEAD}")
    with pytest.raises(UntrustedSourceError, match="s3://bucket/prefix/ URI") as raised:
        batch_location(adult_pipeline(), batch)
    assert_no_secret(*exception_texts(raised.value))
