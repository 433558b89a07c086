"""Real servers started by the tests: PostgreSQL, an S3 API over TLS, an MLflow tracking server.

Each is a separate process bound to 127.0.0.1 on a free port, speaking TLS with a certificate
from the test CA, and is stopped (with its data removed) when its context ends.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from secure_pipeline_tests.tls_server import Pki

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on ``port``; fail with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listened on port {port} after {timeout} s:\n{log.read_text()}")


@contextmanager
def _process(args: list[str], port: int, log: Path, env: dict[str, str] | None = None):
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server accepting only TLS connections with a password."""

    host: str
    port: int
    user: str
    password: str
    database: str


def postgres_bin() -> Path:
    """Directory of Debian's PostgreSQL server programs (``apt-get install postgresql``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: the production end-to-end test needs Debian's "
            "postgresql package (`.ci/run` installs it; locally: apt-get install postgresql)"
        )
    return Path(found[-1]).parent


@contextmanager
def postgres_server(pki: Pki, database: str = "dagster") -> Iterator[Postgres]:
    """Start a throwaway PostgreSQL cluster with TLS 1.3 only and scram passwords only.

    The server refuses to run as root, so under root the cluster belongs to the ``postgres``
    user the Debian package creates.
    """
    bindir = postgres_bin()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="sp-postgres-"))
    data = base / "data"
    password = "pw-" + os.urandom(12).hex()
    (base / "pwfile").write_text(password + "\n")
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(base / "pwfile", "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "dagster",
             f"--pwfile={base / 'pwfile'}", "--auth=scram-sha-256", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        for name in ("good.pem", "good.key"):
            shutil.copy(pki.directory / name, data / name)
            os.chmod(data / name, 0o600)
            if as_root:
                shutil.chown(data / name, "postgres", "postgres")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{base}'\n"
                "ssl = on\nssl_cert_file = 'good.pem'\nssl_key_file = 'good.key'\n"
                "ssl_min_protocol_version = 'TLSv1.3'\nfsync = off\n"
            )
        # TLS with a password, from this machine only; no unencrypted TCP at all.
        (data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        log = base / "server.log"
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            import psycopg2

            admin = psycopg2.connect(
                host="127.0.0.1", port=port, user="dagster", password=password,
                dbname="postgres", sslmode="require",
            )  # fmt: skip
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{database}"')
            admin.close()
            yield Postgres("127.0.0.1", port, "dagster", password, database)
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
            )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def s3_server(pki: Pki, workdir: Path) -> Iterator[str]:
    """A moto S3 (and KMS) API server over TLS; yields its https endpoint."""
    port = free_port()
    cert, key = pki.directory / "good.pem", pki.directory / "good.key"
    args = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port), "-c", str(cert),
            "-k", str(key)]  # fmt: skip
    with _process(args, port, workdir / "moto.log"):
        yield f"https://127.0.0.1:{port}"


@contextmanager
def mlflow_server(pki: Pki, workdir: Path) -> Iterator[str]:
    """An MLflow tracking server (SQLite backend, proxied artifacts) over TLS."""
    port = free_port()
    store = workdir / "mlflow"
    store.mkdir()
    args = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
        "--uvicorn-opts",
        f"--ssl-certfile {pki.directory / 'good.pem'} --ssl-keyfile {pki.directory / 'good.key'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SECURE_"))}
    with _process(args, port, workdir / "mlflow.log", env=env):
        yield f"https://127.0.0.1:{port}"
