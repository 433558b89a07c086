"""A stand-in model server for gateway tests: records every request it receives.

It answers ``/predict`` with JSON naming itself, ``/healthz`` always, ``/readyz`` and ``/predict``
with 503 while ``ready`` is false, and ``/metrics`` with a line of text. Plain HTTP/1.1 with
keep-alive on 127.0.0.1, like the real model server behind the gateway.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


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
        with server.lock:
            server.received.append(
                Received(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
            )
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

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.ready = True
        self.lock = threading.Lock()
        self.received: list[Received] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

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
def upstream(name: str) -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(name)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
