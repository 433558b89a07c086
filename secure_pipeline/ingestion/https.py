"""HTTPS connector: TLS 1.3 only, verified peer, optional certificate pin, bounded stream.

Built on the standard library (``ssl`` + ``http.client``) because it exposes the TLS socket after
the handshake and before the request: the pin is checked before any credential is sent. Every
refusal happens before a byte reaches the store, and each says what was expected and found.

Messages are built from what this module knows — the redacted URI, an exception's class and
error number, a status code — never from a library exception's text: ``http.client`` quotes the
request target (query included) in its errors, and a source URI may carry a password.
"""

import base64
import errno
import hashlib
import hmac
import http
import http.client
import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from secure_pipeline.errors import SourceUnavailableError, UntrustedSourceError
from secure_pipeline.ingestion.connectors import CHUNK_SIZE, Fetched
from secure_pipeline.redaction import redact_uri

_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
# Answers that mean "busy or briefly failing, try again": the step is retried, not refused.
_UNAVAILABLE = {429, 500, 502, 503, 504}


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A client context that accepts only TLS 1.3 and verifies chain and host name.

    Args:
        ca_bundle: PEM file of trusted CAs; the system roots when None.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    else:
        context.load_default_certs()  # a PROTOCOL_TLS_CLIENT context starts with no roots
    return context


def _https(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise UntrustedSourceError(
            f"refusing {redact_uri(url)!r}: sources must be https:// (TLS 1.3); plain http and "
            "other schemes are not accepted"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        # The "port" may be the start of a password holding an unencoded '/': not echoed.
        raise UntrustedSourceError(
            f"malformed URL {redact_uri(url)!r}: expected https://host[:port]/path with a port "
            "from 0 to 65535; percent-encode any '/', '?', '#' or '@' in the credentials"
        ) from None
    return parts


def _failure(exc: BaseException) -> str:
    """Describe a network failure by its class and error number, never by its text."""
    if isinstance(exc, socket.gaierror):
        return "socket.gaierror (the host name could not be resolved)"
    if isinstance(exc, http.client.InvalidURL):
        return "InvalidURL (the request target holds whitespace or control characters)"
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(number, int) and number > 0:
        code = errno.errorcode.get(number, str(number))
        return f"{type(exc).__name__} {code} ({os.strerror(number)})"
    return type(exc).__name__


def _status(code: int) -> str:
    """``HTTP 404 Not Found``: the phrase from the standard's table, not the server's."""
    try:
        return f"HTTP {code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


_STATUS_HINTS = {
    401: "check the credentials in the source URI",
    403: "check that these credentials may read the file",
    404: "check the source location and the file's path in the spec",
}


def _origin(parts: Any) -> tuple[str, str, int]:
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or 443


def _tls_refusal(exc: ssl.SSLError, url: str, trust: str) -> UntrustedSourceError:
    where = redact_uri(url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UntrustedSourceError(
            f"TLS certificate of {where} refused: {exc.verify_message} (code {exc.verify_code}); "
            f"expected a valid, unexpired certificate for this host issued by {trust}"
        )
    if exc.reason in (
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
    ):
        return UntrustedSourceError(
            f"{where} does not speak TLS 1.3 ({exc.reason}); TLS 1.3 is required for sources. "
            "Upgrade the server's TLS configuration."
        )
    return UntrustedSourceError(
        f"TLS handshake with {where} failed ({exc.reason or type(exc).__name__}); expected a "
        f"TLS 1.3 server with a certificate issued by {trust}"
    )


class HttpsConnector:
    """Downloads over HTTPS with TLS 1.3, verification, optional pins, limits and timeouts.

    Args:
        ca_bundle: PEM file of trusted CAs; the system roots when None.
        pins: SHA-256 fingerprints (hex, colons allowed) of acceptable leaf certificates; any
            other certificate is refused even if it verifies. Empty: no pinning.
        connect_timeout: Seconds for TCP connect plus TLS handshake.
        read_timeout: Seconds any single read may wait.
        total_timeout: Seconds the whole download may take.
    """

    name = "https"

    def __init__(
        self,
        ca_bundle: Path | None = None,
        pins: tuple[str, ...] = (),
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float = 3600.0,
    ) -> None:
        self.context = tls_context(ca_bundle)
        self.trust = f"a CA in {ca_bundle}" if ca_bundle else "a CA in the system trust store"
        self.pins = tuple(p.replace(":", "").lower() for p in pins)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout

    @contextmanager
    def open(self, uri: str, *, max_bytes: int) -> Iterator[Fetched]:
        """Connect, verify, follow https-only redirects and yield the bounded body stream.

        Raises:
            UntrustedSourceError: For any refusal: scheme, TLS version, certificate, pin,
                redirect, HTTP status, size, timeout or connection failure.
        """
        url = uri
        first = _https(url)
        authorization = None
        if first.username is not None:
            credentials = f"{unquote(first.username)}:{unquote(first.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        redirects: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.total_timeout
        for _hop in range(_MAX_REDIRECTS + 1):
            parts = _https(url)
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=self.connect_timeout,
                context=self.context,
            )  # fmt: skip
            try:
                try:
                    response, facts = self._request(connection, url, parts, first, authorization)
                except ssl.SSLError as exc:
                    raise _tls_refusal(exc, url, self.trust) from None
                except TimeoutError:
                    raise SourceUnavailableError(
                        f"{redact_uri(url)} timed out (connect {self.connect_timeout}s, read "
                        f"{self.read_timeout}s); nothing was stored"
                    ) from None
                except (OSError, http.client.HTTPException) as exc:
                    raise SourceUnavailableError(
                        f"cannot download {redact_uri(url)}: {_failure(exc)}; nothing was "
                        "stored. Check that the server is up and reachable from here."
                    ) from None
                if response.status in _REDIRECTS:
                    url = self._follow(response, url, redirects)
                    continue
                if response.status != 200:
                    refusal = (
                        SourceUnavailableError
                        if response.status in _UNAVAILABLE
                        else UntrustedSourceError
                    )
                    hint = _STATUS_HINTS.get(response.status, "nothing was stored")
                    raise refusal(
                        f"{redact_uri(url)} answered {_status(response.status)}; expected "
                        f"200 with the file; {hint}"
                    )
                length = self._content_length(response, url, max_bytes)
                facts.update(
                    {
                        "final_url": redact_uri(url),
                        "redirects": redirects,
                        "http_status": response.status,
                        "content_length": length,
                        "etag": response.getheader("ETag"),
                        "last_modified": response.getheader("Last-Modified"),
                    }
                )
                # Errors while streaming are mapped in _body; anything else raised by the
                # caller's block (the store, for one) passes through untouched.
                yield Fetched(self._body(response, url, length, max_bytes, deadline), facts)
                return
            finally:
                connection.close()
        raise UntrustedSourceError(
            f"more than {_MAX_REDIRECTS} redirects starting at {redact_uri(uri)}: "
            f"{[r['from'] for r in redirects]}"
        )

    @staticmethod
    def _follow(
        response: http.client.HTTPResponse, url: str, redirects: list[dict[str, Any]]
    ) -> str:
        location = response.getheader("Location")
        if not location:
            raise UntrustedSourceError(
                f"{redact_uri(url)} answered {response.status} without a Location"
            )
        target = urlsplit(urljoin(url, location))
        # User info in a Location header is dropped: credentials never follow a redirect.
        target = target._replace(netloc=target.netloc.rpartition("@")[2], fragment="")
        redirects.append({"status": response.status, "from": redact_uri(url)})
        next_url = urlunsplit(target)
        if target.scheme.lower() != "https":
            raise UntrustedSourceError(
                f"refusing redirect from {redact_uri(url)} to {redact_uri(next_url)}: redirects "
                "must stay on https"
            )
        return next_url

    def _request(
        self,
        connection: http.client.HTTPSConnection,
        url: str,
        parts: Any,
        first: Any,
        authorization: str | None,
    ) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
        connection.connect()  # TCP, TLS 1.3 handshake, chain and host name verification
        sock: ssl.SSLSocket = connection.sock  # type: ignore[assignment]
        sock.settimeout(self.read_timeout)
        version = sock.version()
        if version != "TLSv1.3":  # the context's minimum already enforces this
            raise UntrustedSourceError(f"{redact_uri(url)} negotiated {version}, not TLS 1.3")
        certificate = sock.getpeercert(binary_form=True) or b""
        fingerprint = hashlib.sha256(certificate).hexdigest()
        if self.pins and not any(hmac.compare_digest(fingerprint, p) for p in self.pins):
            raise UntrustedSourceError(
                f"certificate of {redact_uri(url)} has SHA-256 {fingerprint}, which is not "
                f"pinned (pinned: {', '.join(self.pins)}); refusing before sending a request"
            )
        headers = {"User-Agent": "secure-pipeline", "Accept-Encoding": "identity"}
        if authorization and _origin(parts) == _origin(first):  # never across origins
            headers["Authorization"] = authorization
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        cipher = sock.cipher()
        return response, {
            "tls_version": version,
            "cipher": cipher[0] if cipher else None,
            "peer_cert_sha256": fingerprint,
            "pinned": bool(self.pins),
        }

    @staticmethod
    def _content_length(response: http.client.HTTPResponse, url: str, max_bytes: int) -> int | None:
        header = response.getheader("Content-Length")
        if header is None:
            return None
        if not header.strip().isdigit():
            raise UntrustedSourceError(
                f"{redact_uri(url)} sent an invalid Content-Length {header!r}"
            )
        length = int(header)
        if length > max_bytes:
            raise UntrustedSourceError(
                f"{redact_uri(url)} announces {length} bytes, over the limit of {max_bytes}; "
                "nothing was stored. Raise the source's max_bytes if this size is expected."
            )
        return length

    def _body(
        self,
        response: http.client.HTTPResponse,
        url: str,
        length: int | None,
        max_bytes: int,
        deadline: float,
    ) -> Iterator[bytes]:
        total = 0
        try:
            # A fresh buffer per chunk: the store hashes and writes chunks on another thread,
            # so a chunk must stay intact after it is handed over.
            while n := response.readinto(buffer := bytearray(CHUNK_SIZE)):
                total += n
                if total > max_bytes:
                    raise UntrustedSourceError(
                        f"{redact_uri(url)} sent more than the limit of {max_bytes} bytes; "
                        "nothing was stored"
                    )
                if time.monotonic() > deadline:
                    raise UntrustedSourceError(
                        f"{redact_uri(url)} took longer than {self.total_timeout}s; nothing was "
                        "stored"
                    )
                yield memoryview(buffer)[:n]
        except ssl.SSLError as exc:
            # A TLS record that fails to decrypt mid-stream is not a hiccup to retry.
            raise UntrustedSourceError(
                f"TLS failure while downloading {redact_uri(url)} "
                f"({exc.reason or type(exc).__name__}); nothing was stored"
            ) from None
        except TimeoutError:
            raise SourceUnavailableError(
                f"{redact_uri(url)} stopped sending for {self.read_timeout}s; nothing was stored"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailableError(
                f"download from {redact_uri(url)} broke off: {_failure(exc)}; nothing was stored"
            ) from None
        # http.client does not notice a body shorter than its Content-Length.
        if length is not None and total != length:
            raise SourceUnavailableError(
                f"{redact_uri(url)} announced {length} bytes but sent {total}: the transfer was "
                "cut short; nothing was stored"
            )
