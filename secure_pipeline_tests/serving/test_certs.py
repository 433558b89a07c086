"""The gateway's development PKI (`secure-pipeline certs`, as a developer runs it) and slot PKI.

The slot PKI is the one a serving deployment makes for its model-server slots.

That these certificates work against a real gateway is shown by test_gateway.py, whose PKI is
made with the same commands; the slot PKI against real slots by test_model_server.py.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.serving.certs import (
    CA_COMMON_NAME,
    SLOT_CA_COMMON_NAME,
    SLOT_CLIENTS,
    SLOT_SERVER_NAME,
    DevPki,
    ensure_slot_pki,
    init_slot_pki,
)

CLI = str(Path(sys.executable).parent / "secure-pipeline")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=dict(os.environ))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_a_labelled_development_ca_and_server_certificate(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "pki")
    result = run("certs", "init", str(pki.directory))
    assert result.returncode == 0, result.stderr
    assert _mode(pki.ca_key) == 0o600
    assert _mode(pki.server_key) == 0o600
    assert _mode(pki.directory) == 0o700
    ca = _cert(pki.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CA_COMMON_NAME
    assert "DEVELOPMENT" in CA_COMMON_NAME
    assert "development" in (pki.directory / "DEVELOPMENT-CA.txt").read_text()
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    server = _cert(pki.server_cert)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp256r1"


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    assert run("certs", "init", str(directory)).returncode == 0
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    result = run("certs", "init", str(directory))
    assert result.returncode == 2
    assert "refusing to replace" in result.stderr
    assert "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before
    assert run("certs", "init", str(directory), "--force").returncode == 0
    assert (directory / "ca.key").read_bytes() != before["ca.key"]
    assert _mode(directory / "ca.key") == 0o600


def test_client_certificate_carries_the_spiffe_identity(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "pki")
    assert run("certs", "init", str(pki.directory)).returncode == 0
    result = run("certs", "client", str(pki.directory), "scoring-api")
    assert result.returncode == 0, result.stderr
    assert "spiffe://secure-pipeline/scoring-api" in result.stdout
    assert _mode(pki.client_key("scoring-api")) == 0o600
    cert = _cert(pki.client_cert("scoring-api"))
    cert.verify_directly_issued_by(_cert(pki.ca_cert))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://secure-pipeline/scoring-api"
    ]
    assert len(list(names)) == 1
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "scoring-api"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key().curve.name == "secp256r1"


def test_client_refuses_overwrite_bad_names_and_a_missing_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    result = run("certs", "client", str(directory), "alice")
    assert result.returncode == 2
    assert "certs init" in result.stderr
    assert run("certs", "init", str(directory)).returncode == 0
    assert run("certs", "client", str(directory), "alice").returncode == 0
    first = (directory / "clients" / "alice.pem").read_bytes()
    again = run("certs", "client", str(directory), "alice")
    assert again.returncode == 2
    assert "refusing to replace" in again.stderr
    assert (directory / "clients" / "alice.pem").read_bytes() == first
    assert run("certs", "client", str(directory), "alice", "--force").returncode == 0
    assert (directory / "clients" / "alice.pem").read_bytes() != first
    for bad in ("Alice", "../alice", "a b", "-alice", 'x"y', "x" * 65):
        result = run("certs", "client", str(directory), "--", bad)
        assert result.returncode == 2, bad
        assert "identity name" in result.stderr
    assert sorted(p.name for p in (directory / "clients").iterdir()) == ["alice.key", "alice.pem"]


def test_init_is_refused_in_production(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    result = run("certs", "init", str(tmp_path / "pki"))
    assert result.returncode == 2
    assert "SECURE_PIPELINE_GATEWAY_CERT" in result.stderr
    assert not (tmp_path / "pki").exists()


# --- the slot PKI of a serving deployment --------------------------------------------------


def test_slot_pki_has_a_ca_of_its_own_and_exactly_two_clients(tmp_path: Path) -> None:
    pki = init_slot_pki(tmp_path / "deployment" / "slot-pki")
    assert _mode(pki.directory) == 0o700
    assert _mode(pki.directory / "clients") == 0o700
    for key in (pki.server_key, *(pki.client_key(name) for name in SLOT_CLIENTS)):
        assert _mode(key) == 0o600
    # The CA key is never written: nobody can issue another certificate the slots accept.
    assert sorted(p.name for p in pki.directory.rglob("*.key")) == [
        "controller.key", "gateway.key", "server.key",
    ]  # fmt: skip
    ca = _cert(pki.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SLOT_CA_COMMON_NAME
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    server = _cert(pki.server_cert)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", SLOT_SERVER_NAME]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for name in SLOT_CLIENTS:
        client = _cert(pki.client_cert(name))
        client.verify_directly_issued_by(ca)
        uris = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://secure-pipeline/{name}"
        ]
        usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert SLOT_CLIENTS == ("gateway", "controller")


def test_slot_pki_is_never_replaced_silently(tmp_path: Path) -> None:
    directory = tmp_path / "slot-pki"
    first = ensure_slot_pki(directory)  # made
    before = {p: p.read_bytes() for p in first.files()}
    assert ensure_slot_pki(directory) == first  # reused as it is
    assert {p: p.read_bytes() for p in first.files()} == before
    with pytest.raises(ConfigurationError, match="refusing to replace"):
        init_slot_pki(directory)
    assert {p: p.read_bytes() for p in first.files()} == before
    first.client_key("controller").unlink()
    with pytest.raises(ConfigurationError, match=r"incomplete .*controller\.key.*serving down"):
        ensure_slot_pki(directory)
    assert not first.client_key("controller").exists()  # nothing made behind the user's back
    renewed = init_slot_pki(directory, overwrite=True)
    assert renewed.ca_cert.read_bytes() != before[first.ca_cert]
