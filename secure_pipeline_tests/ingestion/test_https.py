"""The HTTPS connector against real local TLS servers: TLS 1.3 only, verified, pinned, bounded."""

import base64
import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import UntrustedSourceError
from secure_pipeline.ingestion.https import HttpsConnector
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.tls_server import serve

PAYLOAD = os.urandom(300_000)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "blob.bin").write_bytes(PAYLOAD)
    for name in ("adult.data", "adult.test"):
        (root / name).write_bytes((DATA_DIR / name).read_bytes())
    return root


def fetch(connector: HttpsConnector, url: str, max_bytes: int = 10_000_000):
    with connector.open(url, max_bytes=max_bytes) as fetched:
        data = b"".join(fetched.chunks)
    return data, fetched.facts


def test_tls13_download_records_the_connection(pki, files) -> None:
    with serve(files, pki) as server:
        data, facts = fetch(HttpsConnector(ca_bundle=pki.ca), f"{server.url}/data/blob.bin")
    assert data == PAYLOAD
    assert facts["tls_version"] == "TLSv1.3"
    assert facts["cipher"].startswith("TLS_")
    assert facts["peer_cert_sha256"] == pki.fingerprints["good"]
    assert facts["content_length"] == len(PAYLOAD)
    assert facts["final_url"] == f"{server.url}/data/blob.bin"


@pytest.mark.parametrize(
    ("cert", "tls12_only", "message"),
    [
        ("good", True, "does not speak TLS 1.3"),
        ("otherca", False, "unable to get local issuer certificate"),
        ("expired", False, "certificate has expired"),
        ("wronghost", False, "certificate is not valid for '127.0.0.1'"),
    ],
)
def test_untrusted_servers_are_refused(pki, files, cert, tls12_only, message) -> None:
    with serve(files, pki, cert=cert, tls12_only=tls12_only) as server:
        with pytest.raises(UntrustedSourceError, match=message):
            fetch(HttpsConnector(ca_bundle=pki.ca), f"{server.url}/data/blob.bin")
        assert all(path != "/data/blob.bin" for path, _ in server.requests)


def test_system_roots_do_not_trust_the_test_ca(pki, files) -> None:
    with serve(files, pki) as server, pytest.raises(UntrustedSourceError, match="system trust"):
        fetch(HttpsConnector(), f"{server.url}/data/blob.bin")


def test_pins(pki, files) -> None:
    with serve(files, pki) as server:
        url = f"{server.url}/data/blob.bin"
        good = ":".join(pki.fingerprints["good"][i : i + 2] for i in range(0, 64, 2)).upper()
        data, facts = fetch(HttpsConnector(ca_bundle=pki.ca, pins=(good,)), url)
        assert data == PAYLOAD
        assert facts["pinned"] is True
        with pytest.raises(UntrustedSourceError, match="not pinned"):
            fetch(HttpsConnector(ca_bundle=pki.ca, pins=("ab" * 32,)), url)
        # refused before the request went out
        assert len(server.requests) == 1


def test_plain_http_and_redirects_to_http_are_refused(pki, files) -> None:
    with serve(files) as plain, pytest.raises(UntrustedSourceError, match="must be https"):
        fetch(HttpsConnector(ca_bundle=pki.ca), f"{plain.url}/data/blob.bin")
    with serve(files, pki) as server:
        connector = HttpsConnector(ca_bundle=pki.ca)
        with pytest.raises(UntrustedSourceError, match="redirects must stay on https"):
            fetch(connector, f"{server.url}/to-http/blob.bin")
        data, facts = fetch(connector, f"{server.url}/moved/blob.bin?token=s3cr3t")
        assert data == PAYLOAD
        assert facts["redirects"] == [{"status": 302, "from": f"{server.url}/moved/blob.bin"}]


def test_size_limits_and_short_bodies(pki, files) -> None:
    with serve(files, pki) as server:
        connector = HttpsConnector(ca_bundle=pki.ca)
        with pytest.raises(UntrustedSourceError, match="announces 300000 bytes, over the limit"):
            fetch(connector, f"{server.url}/data/blob.bin", max_bytes=1000)
        with pytest.raises(UntrustedSourceError, match="more than the limit of 100000"):
            fetch(connector, f"{server.url}/chunked/500000", max_bytes=100_000)
        with pytest.raises(UntrustedSourceError, match="announced 1000 bytes but sent 10"):
            fetch(connector, f"{server.url}/short")


def test_credentials_are_sent_but_never_recorded(pki, files) -> None:
    with serve(files, pki) as server:
        server.require_auth = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
        url = server.url.replace("https://", "https://alice:s3cr3t@") + "/data/blob.bin?sig=xyz"
        data, facts = fetch(HttpsConnector(ca_bundle=pki.ca), url)
    assert data == PAYLOAD
    assert "s3cr3t" not in json.dumps(facts)
    assert "xyz" not in json.dumps(facts)


# -- through the raw asset: what reaches the store -------------------------------------------


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _ingest(instance) -> dg.ExecuteInProcessResult:
    return materialize(adult_pipeline(), instance, raise_on_error=False)


def test_reference_ingests_over_tls13(pki, files, instance, isolated_env, monkeypatch) -> None:
    with serve(files, pki) as server:
        monkeypatch.setenv(
            "SECURE_PIPELINE_SOURCE_URI",
            server.url.replace("https://", "https://bob:hunter2@") + "/data/",
        )
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        assert _ingest(instance).success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey(["adult", "raw_adult"])
    ).asset_materialization.metadata
    provenance = meta["provenance"].value
    assert {p["facts"]["tls_version"] for p in provenance} == {"TLSv1.3"}
    assert {p["connector"] for p in provenance} == {"https"}
    train = next(p for p in provenance if p["member"] == "train")
    assert train["sha256"] == hashlib.sha256((DATA_DIR / "adult.data").read_bytes()).hexdigest()
    store = LocalSnapshotStore(isolated_env / "store")
    everything = json.dumps({k: str(v.value) for k, v in meta.items()})
    out = __import__("io").StringIO()
    AuditLog(store).export(out)
    for text in (everything, out.getvalue()):
        assert "hunter2" not in text
        assert "bob" not in text


@pytest.mark.parametrize(
    ("cert", "tls12_only", "pin", "message"),
    [
        ("good", True, None, "does not speak TLS 1.3"),
        ("otherca", False, None, "unable to get local issuer certificate"),
        ("expired", False, None, "certificate has expired"),
        ("wronghost", False, None, "not valid for '127.0.0.1'"),
        ("good", False, "ab" * 32, "not pinned"),
    ],
)
def test_refused_ingestion_stores_nothing(
    pki, files, instance, isolated_env, monkeypatch, cert, tls12_only, pin, message
) -> None:
    with serve(files, pki, cert=cert, tls12_only=tls12_only) as server:
        monkeypatch.setenv("SECURE_PIPELINE_SOURCE_URI", server.url + "/data/")
        monkeypatch.setenv("SECURE_PIPELINE_CA_BUNDLE", str(pki.ca))
        if pin:
            monkeypatch.setenv("SECURE_PIPELINE_SOURCE_TLS_PINS", pin)
        result = _ingest(instance)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure.cause.cls_name == "UntrustedSourceError"
    assert message in failure.cause.message
    store = isolated_env / "store"
    assert not store.exists() or not list(LocalSnapshotStore(store).list_keys("snapshots/"))
