"""A local development PKI for the inference gateway: a CA, a server and client certificates.

Everything here is for development and tests. The CA is labelled as such in its subject, and
a ``DEVELOPMENT-CA.txt`` note beside it says so again; production takes the gateway's
certificate, key, client CA and identities from the environment (see
`secure_pipeline.serving.gateway.GatewayConfig.from_environment`) and never uses these files.

Layout of a PKI directory::

    ca.pem, ca.key              the development CA (key mode 0600)
    server.pem, server.key      the gateway's certificate (localhost, 127.0.0.1 by default)
    clients/<name>.pem, .key    one client certificate per identity

A client certificate carries its identity twice: as the SPIFFE-style URI SAN
``spiffe://secure-pipeline/<name>``, which is what the gateway authorises, and as the subject
CN, for people reading it. Keys are EC P-256. Existing files are never replaced unless asked.
"""

import datetime as dt
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secure_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

TRUST_DOMAIN = "secure-pipeline"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
# Identity names end up in nginx configuration, HTTP headers and log lines: a conservative
# alphabet keeps every one of those safe without quoting rules of its own.
IDENTITY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
CA_COMMON_NAME = "secure_pipeline DEVELOPMENT CA - not for production"
_DEV_NOTE = "DEVELOPMENT-CA.txt"
_CA_DAYS = 365
_LEAF_DAYS = 90


@dataclass(frozen=True)
class DevPki:
    """Where the files of a development PKI are.

    Attributes:
        directory: The PKI directory.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (the gateway's client CA and the clients' trust anchor)."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's private key."""
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The gateway's certificate."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        """The gateway's private key."""
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        """The certificate of client ``name``."""
        return self.directory / "clients" / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        """The private key of client ``name``."""
        return self.directory / "clients" / f"{name}.key"


def spiffe_id(name: str) -> str:
    """The SPIFFE-style identity of a client name, e.g. ``spiffe://secure-pipeline/alice``.

    Raises:
        ConfigurationError: When ``name`` is not a valid identity name.
    """
    check_identity_name(name)
    return SPIFFE_PREFIX + name


def check_identity_name(name: str) -> str:
    """Return ``name`` when it is a valid identity name, else raise.

    Raises:
        ConfigurationError: Naming the allowed alphabet.
    """
    if not isinstance(name, str) or not IDENTITY_NAME.fullmatch(name):
        raise ConfigurationError(
            f"identity name {name!r} is invalid: use 1-64 characters of a-z, 0-9, '.', '_' and "
            "'-', starting and ending with a letter or digit"
        )
    return name


def init_dev_pki(
    directory: Path,
    *,
    server_names: tuple[str, ...] = ("localhost",),
    server_ips: tuple[str, ...] = ("127.0.0.1",),
    overwrite: bool = False,
) -> DevPki:
    """Create a development CA and a server certificate signed by it.

    Args:
        directory: Where the files go (created with mode 0700 if missing).
        server_names: DNS names of the server certificate.
        server_ips: IP addresses of the server certificate.
        overwrite: Replace existing files; without it nothing is written when any exists.

    Returns:
        The PKI's file locations.

    Raises:
        ConfigurationError: When a file exists and ``overwrite`` is not set, or a name or
            address is invalid.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    pki = DevPki(Path(directory))
    addresses = [_ip(value) for value in server_ips]
    for name in server_names:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name):
            raise ConfigurationError(f"server name {name!r} is not a DNS name")
    if not server_names and not server_ips:
        raise ConfigurationError("the server certificate needs at least one name or address")
    targets = [pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key]
    _refuse_existing(targets, overwrite)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _leaf_certificate(
        ca,
        ca_key,
        server_key,
        common_name=(server_names or server_ips)[0],
        server_names=server_names,
        server_ips=tuple(addresses),
    )
    _make_directory(pki.directory)
    _write_key(pki.ca_key, ca_key, overwrite)
    _write_cert(pki.ca_cert, ca, overwrite)
    _write_key(pki.server_key, server_key, overwrite)
    _write_cert(pki.server_cert, server, overwrite)
    (pki.directory / _DEV_NOTE).write_text(
        "This CA was generated by `secure-pipeline certs init` for development and tests.\n"
        "Never trust it in production: there the gateway's certificates come from the "
        "environment (SECURE_PIPELINE_GATEWAY_*).\n"
    )
    return pki


def issue_client_cert(directory: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Issue a client certificate for identity ``name`` from the development CA in ``directory``.

    The certificate has the URI SAN ``spiffe://secure-pipeline/<name>``, CN ``<name>`` and the
    clientAuth extended key usage only, so it cannot serve as a server certificate.

    Args:
        directory: A PKI directory made by `init_dev_pki`.
        name: The identity name.
        overwrite: Replace an existing certificate of that name.

    Returns:
        The certificate's and the key's paths.

    Raises:
        ConfigurationError: When the CA is missing, the name is invalid, or the files exist
            and ``overwrite`` is not set.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    check_identity_name(name)
    pki = DevPki(Path(directory))
    if not pki.ca_cert.is_file() or not pki.ca_key.is_file():
        raise ConfigurationError(
            f"no development CA in {pki.directory}: run `secure-pipeline certs init "
            f"{pki.directory}` first"
        )
    cert_path, key_path = pki.client_cert(name), pki.client_key(name)
    _refuse_existing([cert_path, key_path], overwrite)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{pki.ca_key} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_certificate(ca, ca_key, key, common_name=name, spiffe=spiffe_id(name))
    _make_directory(cert_path.parent)
    _write_key(key_path, key, overwrite)
    _write_cert(cert_path, cert, overwrite)
    return cert_path, key_path


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigurationError(f"server address {value!r} is not an IP address") from None


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    # Checked before anything is written, so a refusal leaves no half-made PKI behind.
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigurationError(
            f"refusing to replace existing certificate files: {', '.join(existing)} "
            "(pass --force / overwrite=True to replace them)"
        )


def _make_directory(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)


def _name(common_name: str, development: bool = True) -> "x509.Name":
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if development:
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secure_pipeline development")
        )
    return x509.Name(attributes)


def _ca_certificate(key: "ec.EllipticCurvePrivateKey") -> "x509.Certificate":
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    name = _name(CA_COMMON_NAME)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        # path_length=0: the development CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    ca: "x509.Certificate",
    ca_key: "ec.EllipticCurvePrivateKey",
    key: "ec.EllipticCurvePrivateKey",
    *,
    common_name: str,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (),
    spiffe: str | None = None,
) -> "x509.Certificate":
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
    names += [x509.IPAddress(ip) for ip in server_ips]
    if spiffe is not None:
        names.append(x509.UniformResourceIdentifier(spiffe))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if spiffe else ExtendedKeyUsageOID.SERVER_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: "ec.EllipticCurvePrivateKey", overwrite: bool) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600, overwrite)


def _write_cert(path: Path, cert: "x509.Certificate", overwrite: bool) -> None:
    from cryptography.hazmat.primitives import serialization

    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` with ``mode`` from the first byte on (a key is never briefly readable)."""
    if not overwrite:
        # O_EXCL: a file that appeared since the check is still not replaced.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
