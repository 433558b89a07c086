"""A client for one OCI registry host: TLS 1.3 only, verified bytes, typed errors.

Built on ``oras.provider.Registry``: its requests session (with a TLS 1.3 adapter mounted),
its token auth backend and its blob calls (``upload_blob``, ``get_blob``). Its request method is
replaced because the original retries every failure with sleeps of up to 83 s, sends no
timeouts and cannot answer the ``Basic`` challenge of an htpasswd-protected registry. Manifests
are read and written here as raw bytes, since a digest is computed over exact bytes and oras
re-serialises manifests as JSON.

Controls:

* TLS 1.3 only, with the certificate chain and host name verified against
  ``SECURE_PIPELINE_OCI_CA_BUNDLE`` (or the ``ca_bundle`` argument; else the system CAs).
* https only; plain http only when the caller asks (``insecure=True``), the host is a loopback
  address and the environment is ``local``. Every request (and every upload location the
  registry hands out) must stay on the registry's own scheme, host and port.
* Manifests fetched by digest are hashed and compared; blobs are streamed to disk, hashed and
  size-checked, and nothing unverified is left at the destination.
* Credentials: explicit arguments, else ``SECURE_PIPELINE_OCI_USERNAME``/``PASSWORD``, else the
  docker config. The password never appears in a message or a log line.
* Referrers: the OCI 1.1 referrers API when the registry has it, else the referrers fallback tag
  ``sha256-<hex>`` holding an image index (distribution 2.8 has no referrers API).
"""

import base64
import binascii
import errno
import functools
import hashlib
import json
import logging
import os
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from secure_pipeline import environment as env
from secure_pipeline.errors import (
    ConfigurationError,
    IntegrityError,
    SecurePipelineError,
    TransientError,
)
from secure_pipeline.oci.reference import OciReference, _check_registry, check_digest
from secure_pipeline.redaction import redact_uri

if TYPE_CHECKING:
    import requests

_log = logging.getLogger(__name__)

IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Distribution answers an OCI manifest only to a client that accepts OCI media types.
_ACCEPT = ", ".join((IMAGE_MANIFEST, IMAGE_INDEX, _DOCKER_MANIFEST, _DOCKER_LIST))

# Registries must accept manifests up to 4 MiB (OCI distribution spec); anything larger is not
# read into memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# (connect, read) seconds for every request, oras' own included.
TIMEOUT = (10.0, 60.0)
# Blobs above this are uploaded in chunks, so a large model is never read into memory whole.
_CHUNKED_ABOVE = 64 * 1024 * 1024
_CHUNK_SIZE = 16 * 1024 * 1024
_STREAM_CHUNK = 1024 * 1024

_USERNAME_VAR = "SECURE_PIPELINE_OCI_USERNAME"
_PASSWORD_VAR = "SECURE_PIPELINE_OCI_PASSWORD"
_CA_VAR = "SECURE_PIPELINE_OCI_CA_BUNDLE"
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class ArtifactNotFoundError(SecurePipelineError):
    """The registry has no such repository, tag, manifest or blob."""


@dataclass(frozen=True)
class _Credentials:
    """Who the client authenticates as, and where that came from (for messages)."""

    username: str | None
    password: str | None = field(repr=False)
    source: str


def sha256_digest(data: bytes) -> str:
    """The OCI digest (``sha256:<hex>``) of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fallback_tag(digest: str) -> str:
    """The referrers fallback tag of a manifest digest: ``sha256-<hex>``."""
    return check_digest(digest, "subject digest").replace(":", "-", 1)


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): the same content, the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- credentials ---------------------------------------------------------------------------


def _docker_config_path() -> Path:
    directory = env.read("DOCKER_CONFIG")
    if directory:
        return Path(directory).expanduser() / "config.json"
    return Path.home() / ".docker" / "config.json"


def _config_key_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``: docker config keys come in many spellings."""
    for scheme in ("https://", "http://"):
        if key.lower().startswith(scheme):
            key = key[len(scheme) :]
    return key.split("/", 1)[0].lower()


def _docker_config_credentials(registry: str) -> _Credentials:
    path = _docker_config_path()
    none = _Credentials(None, None, f"no entry for {registry} in the docker config {path}")
    if not path.is_file():
        return _Credentials(None, None, f"no docker config at {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(
            f"The docker config {path} could not be read as JSON ({type(exc).__name__}). Fix "
            f"or remove it, or set {_USERNAME_VAR} and {_PASSWORD_VAR}."
        ) from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"The docker config {path} is not a JSON object. Fix it.")
    names = _DOCKER_HUB if registry in _DOCKER_HUB else {registry}
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    for key in helpers:
        if _config_key_host(str(key)) in names:
            raise ConfigurationError(
                f"The docker config {path} names a credential helper for {registry}; credential "
                f"helpers are not supported. Set {_USERNAME_VAR} and {_PASSWORD_VAR} instead, "
                "or store the credentials inline (`auths.<host>.auth`)."
            )
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    entry = next(
        (v for k, v in auths.items() if _config_key_host(str(k)) in names and isinstance(v, dict)),
        None,
    )
    source = f"the docker config {path}"
    if entry is not None and entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            decoded = ""
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise ConfigurationError(
                f"The docker config {path} holds an `auth` for {registry} that is not base64 of "
                "'user:password'. Log in again or fix the entry."
            )
        return _Credentials(username, password, source)
    if entry is not None and entry.get("username") and entry.get("password"):
        return _Credentials(str(entry["username"]), str(entry["password"]), source)
    if entry is not None and entry.get("identitytoken"):
        raise ConfigurationError(
            f"The docker config {path} holds only an identity token for {registry}; identity "
            f"tokens are not supported. Set {_USERNAME_VAR} and {_PASSWORD_VAR} instead."
        )
    if config.get("credsStore"):
        raise ConfigurationError(
            f"The docker config {path} keeps credentials in a credential store "
            f"({str(config['credsStore'])[:40]!r}), which is not supported. Set "
            f"{_USERNAME_VAR} and {_PASSWORD_VAR}, or store the credentials inline "
            "(`auths.<host>.auth`)."
        )
    return none


def _credentials(registry: str, username: str | None, password: str | None) -> _Credentials:
    if username is not None or password is not None:
        if not username or password is None:
            raise ConfigurationError(
                f"Credentials for {registry} need both a user name and a password; only "
                f"{'a password' if password is not None else 'a user name'} was given."
            )
        return _Credentials(username, password, "the username/password arguments")
    username, password = env.read(_USERNAME_VAR), env.read(_PASSWORD_VAR)
    if username is not None or password is not None:
        if username is None or password is None:
            missing = _USERNAME_VAR if username is None else _PASSWORD_VAR
            raise ConfigurationError(
                f"{_USERNAME_VAR} and {_PASSWORD_VAR} go together; {missing} is not set. Set "
                "both, or neither to use the docker config."
            )
        return _Credentials(username, password, f"{_USERNAME_VAR}/{_PASSWORD_VAR}")
    return _docker_config_credentials(registry)


# --- TLS and the transport -------------------------------------------------------------------


def _ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """TLS 1.3 only, chain and host name verified, against ``ca_bundle`` or the system CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_bundle is None:
        context.load_default_certs()
        return context
    try:
        context.load_verify_locations(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"The registry CA bundle {ca_bundle} could not be loaded ({type(exc).__name__}): "
            f"expected a readable PEM file of CA certificates. Fix {_CA_VAR} or the ca_bundle "
            "argument."
        ) from None
    return context


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """Every exception inside ``exc``: causes, contexts, urllib3 reasons, wrapped arguments."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += [a for a in current.args if isinstance(a, BaseException)]
        stack.extend(e for e in nested if isinstance(e, BaseException))


_TLS_VERSION_REASONS = (
    "PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_VERSION_NUMBER",
    "VERSION_TOO_LOW",
)


@functools.cache
def _transport_class() -> type:
    """The oras-based transport, defined on first use (oras and requests import slowly)."""
    import oras.provider
    import requests
    from requests.adapters import HTTPAdapter

    class TlsAdapter(HTTPAdapter):
        """Every https connection through one TLS 1.3 context; a default timeout."""

        def __init__(self, context: ssl.SSLContext) -> None:
            self._context = context
            super().__init__(max_retries=0)

        def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
            pool_kwargs["ssl_context"] = self._context
            super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            proxy_kwargs["ssl_context"] = self._context
            return super().proxy_manager_for(proxy, **proxy_kwargs)

        def build_connection_pool_key_attributes(self, request, verify, cert=None):
            # Whatever `verify` a caller passes (oras passes its own, REQUESTS_CA_BUNDLE may set
            # one): the context decides. requests would otherwise load certifi's CAs into it.
            host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
            return host_params, {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED"}

        def cert_verify(self, conn, url, verify, cert) -> None:
            conn.cert_reqs = "CERT_REQUIRED"
            conn.ca_certs = None
            conn.ca_cert_dir = None

        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            return super().send(
                request, stream=stream, timeout=timeout or TIMEOUT, verify=True, cert=None,
                proxies=proxies,
            )  # fmt: skip

    class PlainAdapter(HTTPAdapter):
        """Plain http to the one loopback registry the caller explicitly allowed."""

        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            return super().send(
                request, stream=stream, timeout=timeout or TIMEOUT, verify=verify, cert=cert,
                proxies=proxies,
            )  # fmt: skip

    class RefuseHttp(HTTPAdapter):
        """Plain http anywhere else (a redirect, a token realm) is refused before connecting."""

        def send(self, request, **kwargs):
            raise ConfigurationError(
                f"Refused plain http to {redact_uri(request.url)}: OCI registries are reached "
                "over https (TLS 1.3) only."
            )

    class Transport(oras.provider.Registry):
        """oras' registry provider with a safe request method (see the module docstring)."""

        def __init__(
            self, registry: str, *, insecure: bool, context: ssl.SSLContext, creds: _Credentials
        ) -> None:
            super().__init__(hostname=registry, insecure=insecure, tls_verify=True)
            self._registry = registry
            self._base = f"{self.prefix}://{registry}"
            self._creds = creds
            self._basic = False  # the registry asked for Basic auth: send it from now on
            if creds.username is not None:
                self.auth.set_basic_auth(creds.username, creds.password)
            self.session.mount("https://", TlsAdapter(context))
            self.session.mount("http://", RefuseHttp())
            if insecure:
                self.session.mount(f"http://{registry}/", PlainAdapter(max_retries=0))

        def _auth_header(self) -> str | None:
            if self._basic:
                return f"Basic {self.auth._basic_auth}"
            if self.auth.token:
                return f"Bearer {self.auth.token}"
            return None

        def _answer(self, response: requests.Response, headers: dict) -> dict | None:
            """Headers that answer a 401 challenge, or None when it cannot be answered."""
            challenge = response.headers.get("WWW-Authenticate", "")
            scheme = challenge.split(" ", 1)[0].lower()
            if scheme == "basic":
                # oras' token backend would look for a token realm at "https://<realm name>".
                if self._creds.username is None or self._basic:
                    return None
                self._basic = True
                return {**headers, "Authorization": f"Basic {self.auth._basic_auth}"}
            if scheme == "bearer":
                try:
                    answered, changed = self.auth.authenticate_request(
                        response, dict(headers), refresh=self.auth.token is not None
                    )
                except (ValueError, AttributeError, TypeError, KeyError):
                    return None  # a token endpoint oras could not use: report the 401
                return answered if changed else None
            return None

        def _send(self, method: str, url: str, headers: dict, **kwargs: Any) -> requests.Response:
            return self.session.request(method, url, headers=headers, **kwargs)

        def do_request(
            self,
            url: str,
            method: str = "GET",
            data: dict | bytes | None = None,
            headers: dict | None = None,
            json: dict | None = None,
            stream: bool = False,
        ) -> requests.Response:
            """One request to the registry, answering one auth challenge; no blind retries."""
            if _origin(url) != _origin(self._base):
                raise ConfigurationError(
                    f"The registry {self._registry} sent the client to {redact_uri(url)}, "
                    f"outside {self._base}; refusing to send data or credentials there."
                )
            headers = dict(headers or {})
            if auth := self._auth_header():
                headers["Authorization"] = auth
            kwargs = {"data": data, "json": json, "stream": stream}
            try:
                response = self._send(method, url, headers, **kwargs)
                if response.status_code == 401:
                    answered = self._answer(response, headers)
                    if answered is not None:
                        response.close()
                        response = self._send(method, url, answered, **kwargs)
            except requests.exceptions.RequestException as exc:
                raise _unreachable(self._registry, self._base, exc) from exc
            if response.status_code in (401, 403):
                response.close()
                raise _denied(self._registry, self._creds, response.status_code, method, url)
            return response

    return Transport


def _origin(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) in lower case, without the scheme's default port."""
    parts = urlsplit(url)
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    default = {"https": ":443", "http": ":80"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return scheme, netloc


def _unreachable(registry: str, base: str, exc: BaseException) -> ConfigurationError:
    """The message for a request that got no HTTP answer. Built from facts, not exc's text."""
    import requests

    causes = list(_causes(exc))
    verify = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    fix = f"Check the address, that the registry runs, and {_CA_VAR}."
    if verify is not None:
        why = (
            f"its TLS certificate was refused ({str(verify.verify_message).rstrip('.')}): it "
            "must chain to a CA "
            f"in {_CA_VAR} (or the ca_bundle argument; the system CAs when neither is set) and "
            "name the host"
        )
        fix = f"Point {_CA_VAR} at the PEM of the registry's CA, or fix its certificate."
    elif tls is not None and any(r in str(tls.reason or tls) for r in _TLS_VERSION_REASONS):
        why = "it does not offer TLS 1.3 (older TLS versions are refused)"
        fix = "Enable TLS 1.3 on the registry (distribution: http.tls.minimumtls: tls1.3)."
    elif tls is not None:
        why = f"the TLS handshake failed ({tls.reason or type(tls).__name__})"
        fix = "The registry must speak TLS 1.3 with a certificate from a trusted CA."
    elif isinstance(exc, requests.exceptions.Timeout):
        why = f"it did not answer within {TIMEOUT[0]:g} s (connect) / {TIMEOUT[1]:g} s (read)"
    elif any(isinstance(c, ConnectionRefusedError) for c in causes) or any(
        isinstance(c, OSError) and c.errno == errno.ECONNREFUSED for c in causes
    ):
        why = "the connection was refused (nothing listens there)"
    else:
        why = f"the connection failed ({type(exc).__name__})"
    return ConfigurationError(f"Could not reach the OCI registry {base}: {why}. {fix}")


def _denied(
    registry: str, creds: _Credentials, status: int, method: str, url: str
) -> ConfigurationError:
    action = "pull from" if method in ("GET", "HEAD") else "push to"
    path = urlsplit(url).path
    if creds.username is None:
        return ConfigurationError(
            f"The OCI registry {registry} requires credentials ({status} for {method} {path}) "
            f"and none were found (no username/password arguments, no {_USERNAME_VAR}/"
            f"{_PASSWORD_VAR}, {creds.source}). Set "
            f"{_USERNAME_VAR} and {_PASSWORD_VAR}, or add the registry to the docker config."
        )
    if status == 401:
        return ConfigurationError(
            f"The OCI registry {registry} refused the credentials of user {creds.username!r} "
            f"(401 for {method} {path}); they were read from {creds.source}. Expected a valid "
            "user name and password or token: fix them there."
        )
    return ConfigurationError(
        f"The OCI registry {registry} does not allow user {creds.username!r} to {action} "
        f"{path} (403); credentials were read from {creds.source}. Ask the registry's "
        "administrator for access, or use an account that has it."
    )


# --- the client ------------------------------------------------------------------------------


def _is_loopback_host(registry: str) -> bool:
    return env.is_loopback_url(f"http://{registry}/")


def _registry_codes(response: "requests.Response") -> str:
    """The OCI error codes of a failed answer (codes only: messages may echo request data)."""
    try:
        body = json.loads(next(response.iter_content(65536), b""))
        codes = [str(e.get("code"))[:40] for e in body.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError):
        codes = []
    return ", ".join(codes) or "no error code"


class RegistryClient:
    """One registry host: TLS 1.3 only, verified chain and host, typed errors.

    CAs come from the ``ca_bundle`` argument, else ``SECURE_PIPELINE_OCI_CA_BUNDLE``, else the
    system CAs. Plain http is used only when ``insecure=True`` is asked for, the host is a
    loopback address and the environment is ``local``; otherwise ``insecure=True`` is refused.
    Credentials: explicit arguments > ``SECURE_PIPELINE_OCI_USERNAME``/``PASSWORD`` > the docker
    config (``DOCKER_CONFIG``/config.json, else ``~/.docker/config.json``).

    Attributes:
        registry: ``host[:port]`` this client talks to.
        insecure: Whether it speaks plain http (a loopback test registry).
    """

    def __init__(
        self,
        registry: str,
        *,
        ca_bundle: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
    ) -> None:
        if problem := _check_registry(registry):
            raise ConfigurationError(
                f"Expected an OCI registry as HOST[:PORT], found {str(registry)[:100]!r}: "
                f"{problem}."
            )
        self.registry = registry.lower()
        if insecure:
            environment = env.current_environment()
            if environment is not env.Environment.LOCAL or not _is_loopback_host(self.registry):
                where = (
                    f"in the {environment.value} environment"
                    if environment is not env.Environment.LOCAL
                    else f"to {self.registry}, which is not a loopback address"
                )
                raise ConfigurationError(
                    f"Plain http to an OCI registry was asked for {where}: expected https (TLS "
                    "1.3). Plain http is accepted only for a loopback test registry in the local "
                    "environment; drop the insecure option."
                )
        self.insecure = bool(insecure)
        if ca_bundle is None and (configured := env.read(_CA_VAR)):
            ca_bundle = Path(configured).expanduser()
        self._ca_bundle = ca_bundle
        context = _ssl_context(ca_bundle)
        self._credentials = _credentials(self.registry, username, password)
        self._transport = _transport_class()(
            self.registry, insecure=self.insecure, context=context, creds=self._credentials
        )
        self._base = f"{'http' if self.insecure else 'https'}://{self.registry}"
        self._chunked_above = _CHUNKED_ABOVE
        self._referrers_api: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, user={self._credentials.username!r})"

    # -- helpers ----------------------------------------------------------------------------

    def _repository(self, repository: str) -> str:
        return OciReference(self.registry, repository).repository

    def _container(self, repository: str) -> Any:  # an oras.container.Container
        import oras.container

        container = oras.container.Container("placeholder", registry=self.registry)
        # oras' name parser mistakes a first component with a '.' for a host: set it directly.
        container.namespace, container.repository = None, repository
        container.tag, container.digest = None, None
        return container

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200,),
        headers: dict | None = None,
        data: bytes | None = None,
        stream: bool = False,
    ) -> "requests.Response":
        response = self._transport.do_request(
            f"{self._base}{path}", method, data=data, headers=headers, stream=stream
        )
        if response.status_code not in ok:
            raise self._status_error(response, what)
        return response

    def _status_error(self, response: "requests.Response", what: str) -> SecurePipelineError:
        status = response.status_code
        try:
            codes = _registry_codes(response)
        except Exception:  # noqa: BLE001 - a body that cannot be read has no codes to report
            codes = "no error code"
        response.close()
        if status == 404:
            detail = "" if codes == "no error code" else f", {codes}"
            return ArtifactNotFoundError(
                f"{what[:1].upper()}{what[1:]} was not found in the OCI registry {self.registry} "
                f"(404{detail}). Check the repository, tag or digest, and that it was pushed to "
                "this registry."
            )
        if status == 429 or (status >= 500 and status not in (501, 505)):
            return TransientError(
                f"The OCI registry {self.registry} could not serve {what} right now ({status}, "
                f"{codes}). Nothing was changed; try again later."
            )
        return ConfigurationError(
            f"The OCI registry {self.registry} refused {what} ({status}, {codes}). Expected it "
            "to accept OCI image manifests and blobs; check the registry's limits and logs."
        )

    def _read_limited(self, response: "requests.Response", limit: int, what: str) -> bytes:
        import requests

        announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            response.close()
            raise IntegrityError(
                f"{what} from {self.registry} is {announced} bytes, over the {limit}-byte limit "
                "for a manifest; refusing to read it. It is not an artifact pushed by this tool."
            )
        chunks, total = [], 0
        try:
            with response:
                for chunk in response.iter_content(65536):
                    total += len(chunk)
                    if total > limit:
                        raise IntegrityError(
                            f"{what} from {self.registry} is over the {limit}-byte limit for a "
                            "manifest; refusing to read more. It is not an artifact pushed by "
                            "this tool."
                        )
                    chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            raise TransientError(
                f"The connection to {self.registry} broke off while reading {what}; nothing was "
                "stored. Try again."
            ) from exc
        return b"".join(chunks)

    def _check_reference(self, ref: OciReference) -> None:
        if ref.registry != self.registry:
            raise ConfigurationError(
                f"The reference {ref} names the registry {ref.registry}, but this client talks "
                f"to {self.registry}. Use a client for {ref.registry}."
            )

    def _tag_digest(self, repository: str, tag: str) -> str:
        what = f"The tag {tag!r} of {repository}"
        response = self._request(
            "HEAD", f"/v2/{repository}/manifests/{tag}", what=what, headers={"Accept": _ACCEPT}
        )
        response.close()
        digest = response.headers.get("Docker-Content-Digest", "")
        try:
            return check_digest(digest)
        except ConfigurationError:
            # Not every registry reports the digest on HEAD: hash what a GET returns.
            data, _ = self.get_manifest(repository, tag)
            return sha256_digest(data)

    # -- the API ----------------------------------------------------------------------------

    def resolve(self, ref: OciReference) -> str:
        """The manifest digest ``ref`` names.

        By digest the manifest is checked to exist (and a tag given too must point at it); by
        tag, the digest the registry reports for the tag.

        Raises:
            ArtifactNotFoundError: When there is no such manifest or tag.
            IntegrityError: When the tag points at another digest than the one pinned.
            ConfigurationError: When ``ref`` has neither tag nor digest, or another registry.
        """
        self._check_reference(ref)
        if ref.digest:
            what = f"The manifest {ref.digest} of {ref.repository}"
            self._request(
                "HEAD",
                f"/v2/{ref.repository}/manifests/{ref.digest}",
                what=what,
                headers={"Accept": _ACCEPT},
            ).close()
            if ref.tag:
                tagged = self._tag_digest(ref.repository, ref.tag)
                if tagged != ref.digest:
                    raise IntegrityError(
                        f"{ref} pins {ref.digest}, but the tag {ref.tag!r} now points at "
                        f"{tagged}. Expected both to name the same manifest: the tag was moved "
                        "after the digest was recorded; use the digest alone or re-check which "
                        "one is meant."
                    )
            return ref.digest
        if ref.tag:
            return self._tag_digest(ref.repository, ref.tag)
        raise ConfigurationError(
            f"The reference {ref} names neither a tag nor a digest; expected "
            f"{ref}:TAG or {ref}@sha256:<hex>."
        )

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The raw bytes and media type of a manifest, by digest or tag.

        By digest, the bytes' sha256 must equal it. By tag, the caller computes the digest.

        Raises:
            IntegrityError: When the bytes do not have the digest asked for, or are too large.
            ArtifactNotFoundError: When there is no such manifest.
        """
        repository = self._repository(repository)
        is_digest = reference.startswith("sha256:")
        if is_digest:
            check_digest(reference, "manifest digest")
        else:
            OciReference(self.registry, repository, tag=reference)
        what = f"The manifest {reference} of {repository}"
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            what=what,
            headers={"Accept": _ACCEPT},
            stream=True,
        )
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        data = self._read_limited(response, MAX_MANIFEST_BYTES, what)
        if is_digest and (actual := sha256_digest(data)) != reference:
            raise IntegrityError(
                f"{what} from {self.registry} has the digest {actual}, expected {reference}: "
                "the registry served other bytes than were pushed. Do not use this artifact; "
                "re-push it from a trusted copy."
            )
        return data, media_type

    def put_manifest(
        self, repository: str, data: bytes, media_type: str, *, tag: str | None = None
    ) -> str:
        """Push manifest bytes as they are (under ``tag``, else by digest); returns the digest.

        Raises:
            IntegrityError: When the registry reports another digest for the bytes.
        """
        repository = self._repository(repository)
        if tag is not None:
            OciReference(self.registry, repository, tag=tag)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ConfigurationError(
                f"A manifest of {len(data)} bytes is over the {MAX_MANIFEST_BYTES}-byte limit "
                "registries must accept; split the artifact."
            )
        digest = sha256_digest(data)
        reference = tag or digest
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            what=f"the manifest {digest} for {repository}:{reference}",
            ok=(200, 201),
            headers={"Content-Type": media_type},
            data=data,
        )
        response.close()
        reported = response.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise IntegrityError(
                f"The OCI registry {self.registry} stored the manifest for {repository} under "
                f"{reported}, expected {digest} (the sha256 of the bytes sent). It altered the "
                "manifest; do not use this registry for signed artifacts."
            )
        return digest

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Whether the repository has the blob."""
        repository = self._repository(repository)
        check_digest(digest, "blob digest")
        response = self._transport.do_request(
            f"{self._base}/v2/{repository}/blobs/{digest}", "HEAD"
        )
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._status_error(response, f"the blob {digest} of {repository}")

    def put_blob(self, repository: str, path_or_bytes: Path | bytes) -> dict:
        """Upload a blob unless the repository has it; returns ``{"digest", "size"}``."""
        repository = self._repository(repository)
        if isinstance(path_or_bytes, bytes | bytearray):
            with tempfile.TemporaryDirectory(prefix="sp-oci-") as tmp:
                path = Path(tmp) / "blob"
                path.write_bytes(bytes(path_or_bytes))
                return self.put_blob(repository, path)
        path = Path(path_or_bytes)
        hasher, size = hashlib.sha256(), 0
        with path.open("rb") as handle:
            while chunk := handle.read(_STREAM_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        digest = "sha256:" + hasher.hexdigest()
        layer = {"mediaType": "application/octet-stream", "digest": digest, "size": size}
        try:
            response = self._transport.upload_blob(
                str(path),
                self._container(repository),
                layer,
                do_chunked=size > self._chunked_above,
                chunk_size=_CHUNK_SIZE,
            )
        except ValueError:  # oras: no upload location, or a chunk refused
            raise ConfigurationError(
                f"The OCI registry {self.registry} did not accept the upload of the blob "
                f"{digest} ({size} bytes) to {repository}: it gave no upload location or refused "
                "a chunk. Check the registry's logs and limits."
            ) from None
        if response.status_code not in (200, 201, 202):
            raise self._status_error(response, f"the upload of the blob {digest} to {repository}")
        return {"digest": digest, "size": size}

    def get_blob(
        self, repository: str, digest: str, dest: Path, *, size: int | None = None
    ) -> None:
        """Stream a blob to ``dest``, checking its sha256 (and size when given).

        The bytes go to a temporary file beside ``dest`` and are moved there only once verified.

        Raises:
            IntegrityError: When the bytes have another digest or size (``dest`` is removed).
            ArtifactNotFoundError: When the repository has no such blob.
            TransientError: When the connection broke off mid-transfer (nothing is kept).
        """
        import requests

        repository = self._repository(repository)
        check_digest(digest, "blob digest")
        dest = Path(dest)
        what = f"The blob {digest} of {repository}"
        response = self._transport.get_blob(self._container(repository), digest, stream=True)
        if response.status_code != 200:
            raise self._status_error(response, what)

        def mismatch(found: str) -> IntegrityError:
            dest.unlink(missing_ok=True)
            return IntegrityError(
                f"{what} from {self.registry} {found}. The registry served other bytes than "
                "were pushed (tampered storage or a broken proxy); nothing was kept. Do not use "
                "this artifact; re-push it from a trusted copy."
            )

        announced = response.headers.get("Content-Length")
        if (
            size is not None
            and announced is not None
            and announced.isdigit()
            and int(announced) != size
        ):
            response.close()
            raise mismatch(f"is announced as {announced} bytes, expected {size}")
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
        hasher, total = hashlib.sha256(), 0
        try:
            with response, partial.open("xb") as out:
                for chunk in response.iter_content(_STREAM_CHUNK):
                    total += len(chunk)
                    if size is not None and total > size:
                        raise mismatch(f"is longer than the expected {size} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
            if size is not None and total != size:
                raise mismatch(f"is {total} bytes, expected {size}")
            if (actual := "sha256:" + hasher.hexdigest()) != digest:
                raise mismatch(f"has the digest {actual}")
            os.replace(partial, dest)
        except requests.exceptions.RequestException as exc:
            raise TransientError(
                f"The connection to {self.registry} broke off after {total} bytes of {what}; "
                "nothing was kept. Try again."
            ) from exc
        finally:
            partial.unlink(missing_ok=True)

    # -- referrers --------------------------------------------------------------------------

    def _api_referrers(self, repository: str, digest: str) -> list[dict] | None:
        """The referrers from the OCI 1.1 API, or None when the registry does not have it."""
        if self._referrers_api.get(repository) is False:
            return None
        url = f"{self._base}/v2/{repository}/referrers/{digest}"
        found: list[dict] = []
        for _page in range(100):
            response = self._transport.do_request(
                url, "GET", headers={"Accept": IMAGE_INDEX}, stream=True
            )
            media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
            if response.status_code != 200 or media_type != IMAGE_INDEX:
                if found:  # a later page failed: a partial list is not the list
                    raise self._status_error(response, f"the referrers of {digest}")
                response.close()
                self._referrers_api[repository] = False
                return None
            data = self._read_limited(response, MAX_MANIFEST_BYTES, f"the referrers of {digest}")
            found += _index_descriptors(data, f"the referrers API answer for {digest}")
            link = response.links.get("next", {}).get("url")
            if not link:
                self._referrers_api[repository] = True
                return found
            url = urljoin(url, link)
        raise ConfigurationError(
            f"The OCI registry {self.registry} returned more than 100 pages of referrers for "
            f"{digest}; refusing to follow more."
        )

    def _fallback_descriptors(self, repository: str, digest: str) -> list[dict]:
        tag = fallback_tag(digest)
        try:
            data, media_type = self.get_manifest(repository, tag)
        except ArtifactNotFoundError:
            return []
        return _index_descriptors(
            data, f"the referrers index at the tag {tag!r} of {repository}", media_type
        )

    def referrers(self, repository: str, digest: str) -> list[dict]:
        """Descriptors of the manifests whose ``subject`` is ``digest`` ([] when none).

        The OCI 1.1 referrers API when the registry answers it with an image index, else the
        referrers fallback tag ``sha256-<hex>``.

        Raises:
            IntegrityError: When the index found is malformed.
        """
        repository = self._repository(repository)
        check_digest(digest, "subject digest")
        api = self._api_referrers(repository, digest)
        if api is not None:
            return api
        return self._fallback_descriptors(repository, digest)

    def add_referrer(self, repository: str, descriptor: dict, subject_digest: str) -> None:
        """Register a pushed referrer manifest under its subject.

        A registry with the referrers API indexes ``subject`` itself (nothing to do); otherwise
        the image index at the fallback tag is read, the descriptor appended if absent, and the
        index pushed back under the tag (then read again, in case a concurrent writer won).

        Raises:
            TransientError: When concurrent writers kept replacing the index.
        """
        repository = self._repository(repository)
        check_digest(subject_digest, "subject digest")
        entry = _check_descriptor(descriptor, "the referrer descriptor")
        if self._api_referrers(repository, subject_digest) is not None:
            return
        tag = fallback_tag(subject_digest)
        for _attempt in range(3):
            existing = self._fallback_descriptors(repository, subject_digest)
            if any(d["digest"] == entry["digest"] for d in existing):
                return
            index = {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": [*existing, entry]}
            self.put_manifest(repository, canonical_json(index), IMAGE_INDEX, tag=tag)
            if any(
                d["digest"] == entry["digest"]
                for d in self._fallback_descriptors(repository, subject_digest)
            ):
                _log.info("Registered referrer %s of %s in %s", entry["digest"], tag, repository)
                return
        raise TransientError(
            f"The referrers index {repository}:{tag} kept changing while {entry['digest']} was "
            "added (concurrent writers); nothing was lost. Try again."
        )

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (the registry must allow deletes)."""
        repository = self._repository(repository)
        check_digest(digest, "manifest digest")
        self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            what=f"The manifest {digest} of {repository}",
            ok=(202, 200),
        ).close()


def _check_descriptor(value: Any, what: str) -> dict:
    """A descriptor with a media type, a sha256 digest and a size; IntegrityError otherwise."""
    if not isinstance(value, dict):
        raise IntegrityError(f"Expected {what} to be a JSON object, found {type(value).__name__}.")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise IntegrityError(f"Expected {what} to have a mediaType, found {media_type!r}.")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise IntegrityError(f"Expected {what} to have a sha256 digest, found {digest!r:.80}.")
    try:
        check_digest(digest)
    except ConfigurationError:
        raise IntegrityError(
            f"Expected {what} to have a sha256 digest, found {digest!r:.80}."
        ) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"Expected {what} to have a size in bytes, found {size!r:.40}.")
    annotations = value.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        raise IntegrityError(f"Expected the annotations of {what} to map strings to strings.")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise IntegrityError(f"Expected the artifactType of {what} to be a string.")
    return value


def _index_descriptors(data: bytes, what: str, media_type: str | None = None) -> list[dict]:
    try:
        index = json.loads(data)
    except ValueError:
        raise IntegrityError(f"Expected {what} to be JSON, found something else.") from None
    if not isinstance(index, dict) or index.get("mediaType", media_type) != IMAGE_INDEX:
        found = index.get("mediaType") if isinstance(index, dict) else type(index).__name__
        raise IntegrityError(
            f"Expected {what} to be an OCI image index ({IMAGE_INDEX}), found {found!r:.80}. "
            "Delete the tag and attach the referrers again."
        )
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise IntegrityError(f"Expected the manifests of {what} to be a list.")
    return [_check_descriptor(m, f"an entry of {what}") for m in manifests]
