"""A real OCI registry for tests: Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1.

Each `Registry` is a separate ``docker-registry serve`` process on a free port of 127.0.0.1
with TLS 1.3 only (a leaf from the test CA for 127.0.0.1 and localhost), htpasswd (bcrypt)
Basic auth, filesystem storage in its own directory and deletes enabled. Distribution 2.8 has
no referrers API, so clients fall back to the ``sha256-<hex>`` tag scheme.

Use the fixtures of ``secure_pipeline_tests/oci/conftest.py`` (``oci_registry``,
``oci_registry_factory``, ``oci_env``), or this module directly::

    with running_registry(tmp_path, pki) as registry:
        client = registry.client()             # a RegistryClient with its CA and credentials
        registry.stop()                        # the registry is gone (connection refused)
        registry.start()                       # back, same port, same storage

`Registry.use_env(monkeypatch)` points ``SECURE_PIPELINE_OCI_CA_BUNDLE``/``USERNAME``/
``PASSWORD`` at it, for code that builds its own client from the environment.
"""

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secure_pipeline.oci.client import RegistryClient
from secure_pipeline_tests.services import free_port, wait_for_port
from secure_pipeline_tests.tls_server import Pki

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = Path("/usr/bin/htpasswd")
_MISSING = (
    "the OCI registry tests need Debian's docker-registry package (CNCF distribution 2.8, "
    "/usr/bin/docker-registry) and apache2-utils (/usr/bin/htpasswd): "
    "apt-get install docker-registry apache2-utils"
)


@dataclass
class Registry:
    """One running (or stopped) distribution registry.

    Attributes:
        host: ``127.0.0.1:<port>``, the ``registry`` of a `RegistryClient` and of references.
        ca_bundle: PEM of the CA its certificate chains to.
        username: The htpasswd user.
        password: That user's password.
        root: Storage root directory (blobs under ``docker/registry/v2/blobs``).
        process: The server process while it runs, else None.
        directory: Where its configuration, htpasswd file and log live.
        tls: Whether it serves https (else plain http, for the insecure-loopback case).
        public_url: ``http.host``: the base of the URLs it hands out (upload locations); None
            means its own address.
    """

    host: str
    ca_bundle: Path
    username: str
    password: str
    root: Path
    process: subprocess.Popen | None = None
    directory: Path = field(default_factory=Path)
    tls: bool = True
    public_url: str | None = None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def reference(self, repository: str, tag: str | None = None, digest: str | None = None) -> str:
        """``oci://host/repository[:tag][@digest]`` as text."""
        text = f"oci://{self.host}/{repository}"
        return text + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    def blob_path(self, digest: str) -> Path:
        """The file holding a blob in the registry's storage (for tamper tests)."""
        algorithm, hexdigest = digest.split(":", 1)
        return (
            self.root / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"
        )

    def client(self, **overrides: object) -> "RegistryClient":
        """A `RegistryClient` for this registry with its CA and credentials (overridable)."""
        options = {
            "ca_bundle": self.ca_bundle if self.tls else None,
            "username": self.username,
            "password": self.password,
            "insecure": not self.tls,
        }
        options.update(overrides)
        return RegistryClient(self.host, **options)

    def use_env(self, monkeypatch: pytest.MonkeyPatch) -> "Registry":
        """Set SECURE_PIPELINE_OCI_CA_BUNDLE/USERNAME/PASSWORD for this registry."""
        monkeypatch.setenv("SECURE_PIPELINE_OCI_CA_BUNDLE", str(self.ca_bundle))
        monkeypatch.setenv("SECURE_PIPELINE_OCI_USERNAME", self.username)
        monkeypatch.setenv("SECURE_PIPELINE_OCI_PASSWORD", self.password)
        return self

    def start(self) -> None:
        """Start the server (again) on the same port with the same storage."""
        if self.process is not None and self.process.poll() is None:
            return
        # Distribution reads REGISTRY_* variables as configuration overrides: pass none.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(self.directory / "config.yml")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, self.process, self.log, timeout=30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server: connections to it are refused until `start`."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _config(registry: Registry, pki: Pki) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {registry.root}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {registry.host}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if registry.public_url:
        lines.append(f"  host: {registry.public_url}")
    if registry.tls:
        lines += [
            "  tls:",
            f"    certificate: {pki.directory / 'good.pem'}",
            f"    key: {pki.directory / 'good.key'}",
            "    minimumtls: tls1.3",  # distribution 2.8 accepts it: TLS 1.3 only
        ]
    lines += [
        "auth:",
        "  htpasswd:",
        "    realm: secure-pipeline-test",
        f"    path: {registry.directory / 'htpasswd'}",
    ]
    return "\n".join(lines) + "\n"


def new_registry(
    directory: Path, pki: Pki, *, tls: bool = True, public_url: str | None = None
) -> Registry:
    """Configure (not start) a registry in ``directory`` with a fresh user and password."""
    if not REGISTRY_BINARY.is_file() or not HTPASSWD_BINARY.is_file():
        pytest.fail(_MISSING, pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    registry = Registry(
        host=f"127.0.0.1:{free_port()}",
        ca_bundle=pki.ca,
        username="pipeline",
        password="pw-" + secrets.token_hex(12),
        root=directory / "storage",
        directory=directory,
        tls=tls,
        public_url=public_url,
    )
    registry.root.mkdir(exist_ok=True)
    entry = subprocess.run(
        [str(HTPASSWD_BINARY), "-Bbn", registry.username, registry.password],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (directory / "htpasswd").write_text(entry + "\n")
    (directory / "config.yml").write_text(_config(registry, pki))
    return registry


@contextmanager
def running_registry(
    directory: Path, pki: Pki, *, tls: bool = True, public_url: str | None = None
) -> Iterator[Registry]:
    """A started registry in ``directory``; stopped and its storage removed at the end.

    Args:
        directory: Holds its configuration, htpasswd file, log and storage.
        pki: The test PKI (its ``good`` leaf is served).
        tls: https with TLS 1.3 only (default), or plain http.
        public_url: ``http.host``, the base URL it hands out; None: its own address.
    """
    registry = new_registry(directory, pki, tls=tls, public_url=public_url)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(registry.root, ignore_errors=True)
