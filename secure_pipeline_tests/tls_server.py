"""A test PKI and real HTTPS (and plain HTTP) file servers on 127.0.0.1.

Certificates: a test CA; a good leaf for localhost and 127.0.0.1; an expired one; one from
another CA; one for localhost only (a host-name mismatch when connecting to 127.0.0.1).
"""

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAVES = ("good", "expired", "otherca", "wronghost")


@dataclass(frozen=True)
class Pki:
    directory: Path
    fingerprints: dict[str, str]

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    key, now = ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _leaf(ca, ca_key, dns: tuple[str, ...], ips: tuple[str, ...], expired: bool = False):
    key, now = ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    )
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder().subject_name(_name((dns + ips)[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _write(path: Path, cert, key) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("secure_pipeline test CA")
    other, other_key = _ca("some other CA")
    _write(directory / "ca", ca, ca_key)
    local = (("localhost",), ("127.0.0.1",))
    specs = {
        "good": (ca, ca_key, *local, False),
        "expired": (ca, ca_key, *local, True),
        "otherca": (other, other_key, *local, False),
        "wronghost": (ca, ca_key, ("localhost",), (), False),
    }
    fingerprints = {}
    for name, (issuer, issuer_key, dns, ips, expired) in specs.items():
        cert, key = _leaf(issuer, issuer_key, dns, ips, expired)
        _write(directory / name, cert, key)
        der = cert.public_bytes(serialization.Encoding.DER)
        fingerprints[name] = hashlib.sha256(der).hexdigest()
    return Pki(directory, fingerprints)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, headers: dict[str, object], body: bytes = b"") -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        server: FileServer = self.server  # type: ignore[assignment]
        server.requests.append((self.path, self.headers.get("Authorization")))
        path = self.path.split("?")[0]
        scheme = "https" if server.tls else "http"
        base = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        if path.startswith("/data/") and server.drop_requests > 0:
            # A flaky network or a restarting server: the connection closes with no answer.
            server.drop_requests -= 1
            self.close_connection = True
            return None
        if path.startswith("/data/") and server.busy_requests > 0:
            server.busy_requests -= 1
            return self._send(503, {"Content-Length": 0, "Retry-After": 1})
        if path.startswith("/data/"):
            file = server.root / os.path.basename(path)
            if server.require_auth and self.headers.get("Authorization") != server.require_auth:
                return self._send(401, {"Content-Length": 0})
            if not file.is_file():
                return self._send(404, {"Content-Length": 0})
            size = file.stat().st_size
            self._send(200, {"Content-Length": size, "ETag": f'"{size:x}"'})
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    self.wfile.write(chunk)
        elif path.startswith("/moved/"):  # https redirect to /data/<name>
            self._send(302, {"Location": "/data/" + path.rsplit("/", 1)[1], "Content-Length": 0})
        elif path.startswith("/to-http/"):
            target = base.replace("https://", "http://") + "/data/" + path.rsplit("/", 1)[1]
            self._send(302, {"Location": target, "Content-Length": 0})
        elif path.startswith("/chunked/"):  # N bytes, chunked, no Content-Length
            remaining = int(path.rsplit("/", 1)[1])
            self._send(200, {"Transfer-Encoding": "chunked"})
            block = b"x" * 65536
            while remaining > 0:
                piece = block[:remaining]
                remaining -= len(piece)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/short":  # announces 1000 bytes, sends 10
            self._send(200, {"Content-Length": 1000}, b"0123456789")
            self.close_connection = True
        else:
            self._send(404, {"Content-Length": 0})


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.context, self.tls = root, context, context is not None
        self.requests: list[tuple[str, str | None]] = []
        self.require_auth: str | None = None
        self.drop_requests = 0  # close this many /data/ requests without answering
        self.busy_requests = 0  # answer this many /data/ requests with 503

    def finish_request(self, request, client_address) -> None:
        if self.context is None:
            return super().finish_request(request, client_address)
        request.settimeout(10)
        try:  # the handshake runs in the connection's thread; failures stay contained
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return None
        with tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request, client_address) -> None:
        pass  # clients that abort (refusals under test) are expected

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(
    root: Path, pki: Pki | None = None, cert: str = "good", tls12_only: bool = False
) -> Iterator[FileServer]:
    """Serve ``root`` over HTTPS with the named certificate (plain HTTP when ``pki`` is None)."""
    context = None
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.directory / f"{cert}.pem", pki.directory / f"{cert}.key")
        if tls12_only:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = FileServer(root, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
