"""The registry client against a real registry: TLS 1.3 only, credentials, verified bytes."""

import base64
import json
import os
from pathlib import Path

import pytest

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.oci.client import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    ArtifactNotFoundError,
    RegistryClient,
    canonical_json,
    fallback_tag,
    sha256_digest,
)
from secure_pipeline.oci.reference import OciReference
from secure_pipeline_tests.oci.registry_server import Registry
from secure_pipeline_tests.tls_server import Pki, make_pki, serve

MISSING = "sha256:" + "0" * 64


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty docker config directory: the machine's ~/.docker never leaks into a test."""
    directory = tmp_path / "docker"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


def _manifest(client: RegistryClient, repository: str, **extra) -> bytes:
    config = client.put_blob(repository, b"{}")
    # Blobs are shared by every repository of a registry: content of its own per call, so
    # tampering with one test's storage never reaches another test.
    layer = client.put_blob(repository, b"layer bytes " + os.urandom(8).hex().encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": "application/vnd.example.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **config},
        "layers": [{"mediaType": "application/octet-stream", **layer}],
        **extra,
    }
    return canonical_json(manifest)


# --- TLS -----------------------------------------------------------------------------------


def test_a_tls12_only_server_is_refused(tmp_path: Path, pki: Pki) -> None:
    with serve(tmp_path, pki, tls12_only=True) as server:
        client = RegistryClient(f"127.0.0.1:{server.server_address[1]}", ca_bundle=pki.ca)
        with pytest.raises(ConfigurationError, match="does not offer TLS 1.3"):
            client.get_manifest("team/model", "v1")
    # The same server offering TLS 1.3 is reached (it answers 404: it is no registry).
    with serve(tmp_path, pki) as server:
        client = RegistryClient(f"127.0.0.1:{server.server_address[1]}", ca_bundle=pki.ca)
        with pytest.raises(ArtifactNotFoundError):
            client.get_manifest("team/model", "v1")


def test_a_certificate_for_another_host_is_refused(tmp_path: Path, pki: Pki) -> None:
    with serve(tmp_path, pki, cert="wronghost") as server:
        client = RegistryClient(f"127.0.0.1:{server.server_address[1]}", ca_bundle=pki.ca)
        with pytest.raises(ConfigurationError, match="not valid for '127.0.0.1'"):
            client.get_manifest("team/model", "v1")


def test_an_unknown_ca_is_refused(oci_registry: Registry, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other-pki")
    for bundle in (other.ca, None):  # another CA; the system CAs
        client = oci_registry.client(ca_bundle=bundle)
        with pytest.raises(ConfigurationError, match="TLS certificate was refused") as caught:
            client.blob_exists("team/model", MISSING)
        assert "SECURE_PIPELINE_OCI_CA_BUNDLE" in str(caught.value)
    assert oci_registry.client().blob_exists("team/model", MISSING) is False


def test_the_ca_bundle_and_credentials_come_from_the_environment(oci_env: Registry) -> None:
    client = RegistryClient(oci_env.host)
    assert client.blob_exists("team/model", MISSING) is False


def test_an_unreadable_ca_bundle_is_refused(oci_registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    for bundle in (tmp_path / "bad.pem", tmp_path / "missing.pem"):
        with pytest.raises(ConfigurationError, match="could not be loaded"):
            oci_registry.client(ca_bundle=bundle)


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        RegistryClient("registry.example.com", insecure=True)
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        RegistryClient("127.0.0.1.example.com:5000", insecure=True)


def test_plain_http_to_loopback_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, oci_registry_factory
) -> None:
    plain = oci_registry_factory(tls=False)
    # Locally, asked for explicitly, plain http to the loopback registry works ...
    client = plain.client()
    digest = client.put_blob("team/model", b"over plain http")["digest"]
    assert client.blob_exists("team/model", digest)
    # ... an https client never falls back to it ...
    with pytest.raises(ConfigurationError, match="Could not reach"):
        plain.client(insecure=False).blob_exists("team/model", digest)
    # ... and production refuses it outright.
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    with pytest.raises(ConfigurationError, match="production environment"):
        plain.client()


def test_a_stopped_registry_is_reported_unreachable(oci_registry_factory) -> None:
    registry = oci_registry_factory()
    client = registry.client()
    assert client.blob_exists("team/model", MISSING) is False
    registry.stop()
    with pytest.raises(ConfigurationError, match="connection was refused"):
        client.blob_exists("team/model", MISSING)
    registry.start()
    assert client.blob_exists("team/model", MISSING) is False


# --- credentials ---------------------------------------------------------------------------


def test_a_wrong_password_is_refused_without_showing_it(oci_registry: Registry) -> None:
    password = "wrong-" + oci_registry.password
    with pytest.raises(ConfigurationError, match="refused the credentials") as caught:
        oci_registry.client(password=password).put_blob("team/model", b"x")
    message = str(caught.value)
    assert password not in message
    assert oci_registry.password not in message
    assert base64.b64encode(f"{oci_registry.username}:{password}".encode()).decode() not in message
    assert repr(oci_registry.username) in message
    assert "username/password arguments" in message


def test_no_credentials_is_refused_with_where_they_were_looked_for(oci_registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="requires credentials") as caught:
        oci_registry.client(username=None, password=None).blob_exists("team/model", MISSING)
    assert "SECURE_PIPELINE_OCI_USERNAME" in str(caught.value)
    assert "no docker config at" in str(caught.value)


def test_half_credentials_are_refused(oci_registry: Registry, monkeypatch) -> None:
    with pytest.raises(ConfigurationError, match="both a user name and a password"):
        oci_registry.client(password=None)
    monkeypatch.setenv("SECURE_PIPELINE_OCI_USERNAME", "someone")
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_OCI_PASSWORD is not set"):
        RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle)


def _docker_config(
    directory: Path, registry: Registry, password: str, entry: dict | None = None
) -> None:
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    config = {"auths": {f"https://{registry.host}": entry or {"auth": auth}}}
    (directory / "config.json").write_text(json.dumps(config))


def test_docker_config_credentials_are_used(
    oci_registry: Registry, no_docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _docker_config(no_docker_config, oci_registry, oci_registry.password)
    client = RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle)
    digest = client.put_blob("team/model", b"with docker config credentials")["digest"]
    assert client.blob_exists("team/model", digest)
    # The environment's credentials come before the docker config's ...
    monkeypatch.setenv("SECURE_PIPELINE_OCI_USERNAME", oci_registry.username)
    monkeypatch.setenv("SECURE_PIPELINE_OCI_PASSWORD", "not-it")
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_OCI_USERNAME/"):
        RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle).blob_exists(
            "team/model", digest
        )
    # ... and explicit arguments before both.
    assert oci_registry.client().blob_exists("team/model", digest)


def test_docker_config_username_and_password_fields(
    oci_registry: Registry, no_docker_config: Path
) -> None:
    _docker_config(
        no_docker_config,
        oci_registry,
        "",
        {"username": oci_registry.username, "password": oci_registry.password},
    )
    client = RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle)
    assert client.blob_exists("team/model", MISSING) is False


def test_a_wrong_docker_config_password_names_the_file(
    oci_registry: Registry, no_docker_config: Path
) -> None:
    _docker_config(no_docker_config, oci_registry, "stale-password")
    client = RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle)
    with pytest.raises(ConfigurationError, match="docker config") as caught:
        client.blob_exists("team/model", MISSING)
    assert "stale-password" not in str(caught.value)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"auths": {}, "credsStore": "desktop"}, "credential store"),
        ({"credHelpers": {"HOST": "ecr-login"}}, "credential helper"),
        ({"auths": {"HOST": {"identitytoken": "t"}}}, "identity token"),
        ({"auths": {"HOST": {"auth": "bm8tY29sb24="}}}, "not base64 of 'user:password'"),
    ],
)
def test_unsupported_docker_config_entries_are_refused(
    oci_registry: Registry, no_docker_config: Path, config: dict, problem: str
) -> None:
    text = json.dumps(config).replace("HOST", oci_registry.host)
    (no_docker_config / "config.json").write_text(text)
    with pytest.raises(ConfigurationError, match=problem):
        RegistryClient(oci_registry.host, ca_bundle=oci_registry.ca_bundle)


# --- manifests and blobs -------------------------------------------------------------------


def test_manifests_round_trip_as_exact_bytes(oci_registry: Registry, oci_repository: str) -> None:
    client = oci_registry.client()
    data = _manifest(client, oci_repository)
    digest = client.put_manifest(oci_repository, data, IMAGE_MANIFEST, tag="v1")
    assert digest == sha256_digest(data)
    assert client.get_manifest(oci_repository, digest) == (data, IMAGE_MANIFEST)
    assert client.get_manifest(oci_repository, "v1") == (data, IMAGE_MANIFEST)
    ref = OciReference(oci_registry.host, oci_repository, tag="v1")
    assert client.resolve(ref) == digest
    assert client.resolve(ref.pinned(digest)) == digest
    # A tag moved away from the pinned digest is caught.
    moved = _manifest(client, oci_repository, annotations={"a": "b"})
    other = client.put_manifest(oci_repository, moved, IMAGE_MANIFEST, tag="v1")
    with pytest.raises(IntegrityError, match="now points at"):
        client.resolve(ref.pinned(digest))
    assert client.resolve(ref) == other
    with pytest.raises(ArtifactNotFoundError):
        client.resolve(OciReference(oci_registry.host, oci_repository, tag="nope"))
    with pytest.raises(ConfigurationError, match="neither a tag nor a digest"):
        client.resolve(OciReference(oci_registry.host, oci_repository))
    with pytest.raises(ConfigurationError, match="names the registry"):
        client.resolve(OciReference("other.example.com", oci_repository, tag="v1"))
    client.delete_manifest(oci_repository, digest)
    with pytest.raises(ArtifactNotFoundError):
        client.get_manifest(oci_repository, digest)


def test_a_tampered_manifest_in_storage_is_refused(
    oci_registry: Registry, oci_repository: str
) -> None:
    client = oci_registry.client()
    data = _manifest(client, oci_repository)
    digest = client.put_manifest(oci_repository, data, IMAGE_MANIFEST, tag="v1")
    stored = oci_registry.blob_path(digest)
    stored.write_bytes(data.replace(b'"layers"', b'"LAYERS"', 1))
    with pytest.raises(IntegrityError, match=f"expected {digest}"):
        client.get_manifest(oci_repository, digest)


def test_blobs_are_streamed_and_checked(
    oci_registry: Registry, oci_repository: str, tmp_path: Path
) -> None:
    client = oci_registry.client()
    out = tmp_path / "out"
    out.mkdir()
    data = os.urandom(10)
    descriptor = client.put_blob(oci_repository, data)
    assert descriptor == {"digest": sha256_digest(data), "size": 10}
    assert client.put_blob(oci_repository, data) == descriptor  # already there
    client.get_blob(oci_repository, descriptor["digest"], out / "ok", size=10)
    assert (out / "ok").read_bytes() == data
    with pytest.raises(IntegrityError, match="expected 9"):
        client.get_blob(oci_repository, descriptor["digest"], out / "short", size=9)
    assert not (out / "short").exists()
    # Replaced in storage behind the registry's back: the digest check catches it.
    oci_registry.blob_path(descriptor["digest"]).write_bytes(bytes(b ^ 1 for b in data))
    with pytest.raises(IntegrityError, match="has the digest"):
        client.get_blob(oci_repository, descriptor["digest"], out / "bad", size=10)
    assert not (out / "bad").exists()
    assert [p.name for p in out.iterdir()] == ["ok"]  # no partial file left
    with pytest.raises(ArtifactNotFoundError):
        client.get_blob(oci_repository, MISSING, out / "missing")


def test_large_blobs_are_uploaded_in_chunks(
    oci_registry: Registry, oci_repository: str, tmp_path: Path
) -> None:
    client = oci_registry.client()
    client._chunked_above = 1024  # exercise the chunked path with a small blob
    data = bytes(range(256)) * 800
    (tmp_path / "big").write_bytes(data)
    descriptor = client.put_blob(oci_repository, tmp_path / "big")
    client.get_blob(oci_repository, descriptor["digest"], tmp_path / "back", size=len(data))
    assert (tmp_path / "back").read_bytes() == data


# --- referrers (distribution 2.8: the fallback tag) -----------------------------------------


def test_referrers_use_the_fallback_tag(oci_registry: Registry, oci_repository: str) -> None:
    client = oci_registry.client()
    subject_data = _manifest(client, oci_repository)
    subject = client.put_manifest(oci_repository, subject_data, IMAGE_MANIFEST)
    assert client.referrers(oci_repository, subject) == []
    descriptors = []
    for kind in ("signature", "evidence"):
        data = _manifest(
            client,
            oci_repository,
            artifactType=f"application/vnd.example.{kind}",
            subject={"mediaType": IMAGE_MANIFEST, "digest": subject, "size": len(subject_data)},
        )
        digest = client.put_manifest(oci_repository, data, IMAGE_MANIFEST)
        descriptor = {
            "mediaType": IMAGE_MANIFEST,
            "digest": digest,
            "size": len(data),
            "artifactType": f"application/vnd.example.{kind}",
            "annotations": {"kind": kind},
        }
        client.add_referrer(oci_repository, descriptor, subject)
        client.add_referrer(oci_repository, descriptor, subject)  # idempotent
        descriptors.append(descriptor)
    assert client.referrers(oci_repository, subject) == descriptors
    index, media_type = client.get_manifest(oci_repository, fallback_tag(subject))
    assert media_type == IMAGE_INDEX
    assert json.loads(index)["manifests"] == descriptors


def test_a_malformed_fallback_index_is_refused(oci_registry: Registry, oci_repository: str) -> None:
    client = oci_registry.client()
    subject = client.put_manifest(oci_repository, _manifest(client, oci_repository), IMAGE_MANIFEST)
    # Someone put an image manifest (not an index) under the fallback tag.
    client.put_manifest(
        oci_repository, _manifest(client, oci_repository), IMAGE_MANIFEST, tag=fallback_tag(subject)
    )
    with pytest.raises(IntegrityError, match="to be an OCI image index"):
        client.referrers(oci_repository, subject)


# --- where requests go ---------------------------------------------------------------------


def test_an_upload_location_on_another_host_is_refused(oci_registry_factory) -> None:
    # The registry hands out upload URLs on another origin (http.host): no bytes or
    # credentials follow them.
    elsewhere = oci_registry_factory(public_url="https://elsewhere.example.com:8443")
    with pytest.raises(ConfigurationError, match="outside https://127.0.0.1:"):
        elsewhere.client().put_blob("team/model", b"not uploaded")
    # Control: the same upload to a registry handing out its own address works.
    plain = oci_registry_factory()
    assert plain.client().put_blob("team/model", b"uploaded")["size"] == 8


def test_every_request_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import secure_pipeline.oci.client as client_module

    monkeypatch.setattr(client_module, "TIMEOUT", (0.5, 0.5))
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        client = RegistryClient(f"127.0.0.1:{silent.getsockname()[1]}", username="u", password="p")
        with pytest.raises(ConfigurationError, match="did not answer within 0.5 s"):
            client.blob_exists("team/model", MISSING)
