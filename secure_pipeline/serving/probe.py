"""A health probe of a model-server slot over its mutual TLS, for exec probes.

A slot accepts only clients with a certificate of its slot CA, so an HTTP(S) probe of the
kubelet (which presents no client certificate) cannot reach it, and a plain health port beside
the TLS one would be a way around the gateway. Instead the probe runs inside the slot's own
container (a Kubernetes ``exec`` probe) and asks ``/healthz`` or ``/readyz`` like any client:
TLS 1.3, a client certificate of the slot CA (a probe certificate mounted into the pod only),
the slot's certificate verified against that CA and the slot name::

    python -m secure_pipeline.serving.probe /readyz --port 8443
        --cert /etc/secure-pipeline/probe/tls.crt --key /etc/secure-pipeline/probe/tls.key
        --ca /etc/secure-pipeline/tls/ca.crt

Exit status 0 when the slot answers 200, 1 otherwise (with one line saying why on stderr). It
imports little beyond the standard library, so a probe costs a fraction of a second.
"""

import argparse
import http.client
import socket
import ssl
import sys
from collections.abc import Sequence

from secure_pipeline.serving.certs import SLOT_SERVER_NAME

PATHS = ("/healthz", "/readyz")


def probe(
    path: str,
    *,
    host: str,
    port: int,
    cert: str,
    key: str,
    ca: str,
    server_name: str = SLOT_SERVER_NAME,
    timeout: float = 2.0,
) -> tuple[int, str]:
    """GET ``path`` from the slot at ``host:port`` as a client of its slot CA.

    Returns:
        The HTTP status and a short reason (``"ok"``, or what failed).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cafile=ca)
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return 0, f"cannot load the probe's TLS files: {type(exc).__name__}: {exc}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            tls = context.wrap_socket(raw, server_hostname=server_name)
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
            connection.sock = tls
            connection.request("GET", path)
            response = connection.getresponse()
            response.read(64 * 1024)
            return response.status, "ok" if response.status == 200 else response.reason
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe from the command line; the exit status is the probe's verdict."""
    parser = argparse.ArgumentParser(
        prog="python -m secure_pipeline.serving.probe",
        description="Probe a model-server slot over mutual TLS (exit 0 when it answers 200).",
    )
    parser.add_argument("path", choices=PATHS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="the probe's client certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key")
    parser.add_argument("--ca", required=True, help="the slot CA")
    parser.add_argument("--server-name", default=SLOT_SERVER_NAME)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    status, reason = probe(
        args.path,
        host=args.host,
        port=args.port,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        server_name=args.server_name,
        timeout=args.timeout,
    )
    if status == 200:
        return 0
    sys.stderr.write(f"{args.path}: {status or 'no answer'} {reason}\n"[:500])
    return 1


if __name__ == "__main__":
    sys.exit(main())
