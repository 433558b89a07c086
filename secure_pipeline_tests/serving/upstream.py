"""A stand-in model server for gateway tests: records every request it receives.

It answers ``/predict`` with JSON naming itself, ``/healthz`` always, ``/readyz`` and ``/predict``
with 503 while ``ready`` is false, and ``/metrics`` with a line of text. Like the real model
server behind the gateway it listens on 127.0.0.1 with HTTP/1.1 keep-alive over mutual TLS only:
the server context is the model server's own (`slot_ssl_context`: TLS 1.3 minimum, a client
certificate of the slot CA required), with the slot certificate of a test slot PKI. Each
request records the SPIFFE ID of the client certificate it came with.
"""

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from secure_pipeline.serving.certs import SlotPki
from secure_pipeline.serving.server import SlotTls, slot_ssl_context


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str | None


def _peer_identity(connection: socket.socket) -> str | None:
    """The URI SAN of the verified client certificate of ``connection``."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    certificate = connection.getpeercert() or {}
    uris = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI"]
    return uris[0] if len(uris) == 1 else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle's algorithm and delayed ACKs each
    # keep-alive request would wait 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        server: RecordingUpstream = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, dict(self.headers.items()), body,
                            _peer_identity(self.connection))  # fmt: skip
        with server.lock:
            server.received.append(received)
        path = self.path.split("?")[0]
        if path in ("/predict", "/readyz") and not server.ready:
            code, payload = 503, {"error": "not ready", "slot": server.name}
        elif path == "/predict":
            code, payload = 200, {"slot": server.name, "score": 0.5}
        elif path in ("/healthz", "/readyz", "/metrics"):
            code, payload = 200, {"slot": server.name, "path": path}
        else:
            code, payload = 404, {"error": "not found"}
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815 - http.server's hook names


class RecordingUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, pki: SlotPki, server_pki: SlotPki | None = None) -> None:
        """Accept client certificates of ``pki``'s slot CA; present ``server_pki``'s slot
        certificate (default: ``pki``'s)."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.ready = True
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.handshakes_refused = 0
        self.connections = 0  # TLS connections accepted (handshake completed)
        own = server_pki or pki
        self._context = slot_ssl_context(SlotTls(own.server_cert, own.server_key, pki.ca_cert))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = super().get_request()
        # The handshake happens in the request's own thread (finish_request), so a client that
        # never completes one does not hold up the accept loop.
        wrapped = self._context.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def finish_request(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's
        try:
            request.settimeout(10)
            request.do_handshake()
        except (ssl.SSLError, OSError):
            with self.lock:
                self.handshakes_refused += 1
            return
        request.settimeout(None)  # kept connections idle as long as the gateway keeps them
        with self.lock:
            self.connections += 1
        super().finish_request(request, client_address)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
        self.ready = True

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.received if path is None or r.path == path)

    def handle_error(self, request, client_address) -> None:
        pass  # the gateway closing idle keep-alive connections is expected


@contextmanager
def upstream(
    name: str, pki: SlotPki, server_pki: SlotPki | None = None
) -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(name, pki, server_pki)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
