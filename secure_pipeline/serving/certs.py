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

The *slot PKI* (`init_slot_pki`, `ensure_slot_pki`) is the internal one between the gateway and
the model-server slots of one serving deployment: a slot CA of its own (never the gateway's
client CA, so no caller's certificate opens a slot), the slots' server certificate and exactly
two client certificates, ``spiffe://secure-pipeline/gateway`` (nginx) and
``spiffe://secure-pipeline/controller`` (the release controller reading ``/readyz`` and
``/metrics``). Its layout::

    ca.pem                      the slot CA (its key is never written: see `init_slot_pki`)
    server.pem, server.key      the slots' certificate (127.0.0.1, localhost, SLOT_SERVER_NAME)
    clients/gateway.pem, .key   the gateway's client certificate
    clients/controller.pem, .key
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
SLOT_CA_COMMON_NAME = "secure_pipeline slot CA - one serving deployment's slots only"
# The name the gateway verifies in a slot's certificate (proxy_ssl_name): fixed, so a slot's
# certificate does not depend on the port or address it happens to listen on.
SLOT_SERVER_NAME = "slot.secure-pipeline.internal"
GATEWAY_IDENTITY = "gateway"
CONTROLLER_IDENTITY = "controller"
SLOT_CLIENTS = (GATEWAY_IDENTITY, CONTROLLER_IDENTITY)
_DEV_NOTE = "DEVELOPMENT-CA.txt"
_SLOT_NOTE = "SLOT-CA.txt"
_DEV_ORGANIZATION = "secure_pipeline development"
_SLOT_ORGANIZATION = "secure_pipeline serving slots"
_CA_DAYS = 365
_LEAF_DAYS = 90
# A slot PKI found in a deployment directory is reused only while every certificate stays valid
# at least this long: a release must not start on a certificate about to expire.
_SLOT_REUSE_MARGIN = dt.timedelta(days=7)


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


@dataclass(frozen=True)
class SlotPki:
    """Where the files of a deployment's slot PKI are (see the module docstring).

    Attributes:
        directory: The slot PKI directory, e.g. ``<deployment>/slot-pki``.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The slot CA: the slots' client CA and the clients' trust anchor for the slots."""
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        """The certificate every slot presents."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        """Its private key."""
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        """The client certificate of ``name`` (`GATEWAY_IDENTITY` or `CONTROLLER_IDENTITY`)."""
        return self.directory / "clients" / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        """The private key of client ``name``."""
        return self.directory / "clients" / f"{name}.key"

    def files(self) -> list[Path]:
        """Every file of the PKI."""
        clients = [f(name) for name in SLOT_CLIENTS for f in (self.client_cert, self.client_key)]
        return [self.ca_cert, self.server_cert, self.server_key, *clients]


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
    ca = _ca_certificate(ca_key, CA_COMMON_NAME, _DEV_ORGANIZATION)
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


def init_slot_pki(directory: Path, *, overwrite: bool = False) -> SlotPki:
    """Create the slot PKI of one serving deployment in ``directory``.

    The slot CA signs the slots' server certificate (IP 127.0.0.1, DNS ``localhost`` and
    `SLOT_SERVER_NAME`, serverAuth only) and the client certificates of `GATEWAY_IDENTITY` and
    `CONTROLLER_IDENTITY` (clientAuth only). Its private key exists only in memory while they
    are issued and is never written: no one, including whoever can read the deployment
    directory later, can issue another certificate the slots accept. A new PKI (`overwrite`)
    replaces the CA, so every certificate of the old one stops opening the slots.

    Args:
        directory: Where the files go (created with mode 0700 if missing).
        overwrite: Replace existing files; without it nothing is written when any exists.

    Returns:
        The PKI's file locations.

    Raises:
        ConfigurationError: When a file exists and ``overwrite`` is not set.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    pki = SlotPki(Path(directory))
    _refuse_existing(pki.files(), overwrite)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key, SLOT_CA_COMMON_NAME, _SLOT_ORGANIZATION)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _leaf_certificate(
        ca,
        ca_key,
        server_key,
        common_name=SLOT_SERVER_NAME,
        server_names=("localhost", SLOT_SERVER_NAME),
        server_ips=(ipaddress.ip_address("127.0.0.1"),),
        organization=_SLOT_ORGANIZATION,
    )
    clients = {}
    for name in SLOT_CLIENTS:
        key = ec.generate_private_key(ec.SECP256R1())
        clients[name] = key, _leaf_certificate(
            ca, ca_key, key, common_name=name, spiffe=spiffe_id(name),
            organization=_SLOT_ORGANIZATION,
        )  # fmt: skip
    for folder in (pki.directory, pki.directory / "clients"):
        _make_directory(folder)
        os.chmod(folder, 0o700)  # also when it existed: it holds the slots' keys
    _write_cert(pki.ca_cert, ca, overwrite)
    _write_key(pki.server_key, server_key, overwrite)
    _write_cert(pki.server_cert, server, overwrite)
    for name, (key, cert) in clients.items():
        _write_key(pki.client_key(name), key, overwrite)
        _write_cert(pki.client_cert(name), cert, overwrite)
    (pki.directory / _SLOT_NOTE).write_text(
        "The slot CA of this serving deployment, made when it started. The model-server slots\n"
        "accept mutual TLS only from certificates of this CA: clients/gateway (nginx) and\n"
        "clients/controller (the release controller). The CA's key was never written, so no\n"
        "other certificate can be issued; remove this directory while the deployment is down\n"
        "to have a new one made.\n"
    )
    return pki


def ensure_slot_pki(directory: Path) -> SlotPki:
    """The slot PKI in ``directory``: made if there is none, reused if complete and valid.

    Raises:
        ConfigurationError: When only part of a PKI is there, a file is unreadable, or a
            certificate expires within a week (the message says to remove the directory while
            the deployment is down); nothing is replaced.
    """
    from cryptography import x509

    pki = SlotPki(Path(directory))
    present = [path for path in pki.files() if path.exists()]
    if not present:
        return init_slot_pki(pki.directory)
    remedy = (
        f"stop the deployment (`secure-pipeline serving down`), remove {pki.directory} and "
        "start it again to have a new slot PKI made"
    )
    missing = sorted(str(p) for p in set(pki.files()) - set(present))
    if missing:
        raise ConfigurationError(
            f"the slot PKI in {pki.directory} is incomplete (missing {', '.join(missing)}): "
            + remedy
        )
    limit = dt.datetime.now(dt.UTC) + _SLOT_REUSE_MARGIN
    for path in pki.files():
        if not os.access(path, os.R_OK):
            raise ConfigurationError(f"{path} of the slot PKI is not readable: {remedy}")
        if path.suffix == ".pem":
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                raise ConfigurationError(
                    f"{path} of the slot PKI is not a PEM certificate: {remedy}"
                ) from None
            if cert.not_valid_after_utc < limit:
                raise ConfigurationError(
                    f"{path} of the slot PKI expires {cert.not_valid_after_utc:%Y-%m-%d}: " + remedy
                )
    return pki


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


def _name(common_name: str, organization: str = _DEV_ORGANIZATION) -> "x509.Name":
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _ca_certificate(
    key: "ec.EllipticCurvePrivateKey", common_name: str, organization: str
) -> "x509.Certificate":
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    name = _name(common_name, organization)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        # path_length=0: the CA signs leaves only, never another CA.
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
    organization: str = _DEV_ORGANIZATION,
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
        .subject_name(_name(common_name, organization))
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
