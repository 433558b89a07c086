"""The zero-trust inference gateway: a real nginx in front of the blue and green model servers.

The gateway terminates TLS 1.3 with mutual authentication, so every caller is a client
certificate from the gateway's client CA. Its identity is the certificate's SPIFFE-style URI
SAN (``spiffe://secure-pipeline/<name>``), read by a small njs function (stock nginx has no
variable for subject alternative names); a certificate without exactly one such SAN, or with
one that is not configured, has no identity and is refused. Then, per request:

1. RBAC: each route (an exact path, or a prefix ending in ``/``) requires a role; an identity
   without it gets 403 and nothing reaches a model server. Unrouted paths are 404.
2. Rate limit per identity (``limit_req``): excess requests get 429 before the upstream.
3. Bodies over ``max_body_bytes`` get 413; bodies are kept in memory, never written to disk.
4. The request goes to the ``blue``/``green`` upstream by weight; a weight-0 slot is left out
   of the upstream entirely (nginx has no ``weight=0``). A slot answering 503 (not ready) has
   the request replayed on the other slot.
5. The upstream receives the caller's SPIFFE ID in `IDENTITY_HEADER`, set by nginx; a value
   a client sent in that header (or in ``X-SP-Client-Roles`` / ``X-Forwarded-Client-Cert``)
   never arrives.
6. nginx reaches the slots over mutual TLS 1.3 (``proxy_ssl_*``): it presents the gateway's
   client certificate of the slot CA and verifies the slot's certificate against that CA and
   the fixed name `secure_pipeline.serving.certs.SLOT_SERVER_NAME`. The slots accept nothing
   else, so the controls above cannot be bypassed by calling a slot directly. Upstream TLS is
   not optional; connections and TLS sessions to the slots are kept and reused.

The access log is JSON lines: time, identity, method, path (no query), status, upstream address
and status, timings. Never a body. ``GET /healthz`` is answered by the gateway itself for any
known identity (liveness of the gateway; model readiness is the slots' ``/readyz``).

`render_nginx_conf` fills ``nginx/nginx.conf.template`` beside this module; every value is
validated first and quoted where it is a string, so nothing in a `GatewayConfig` can add nginx
syntax. `Gateway` runs nginx with its own prefix directory and reloads it for new weights.
"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SecurePipelineError
from secure_pipeline.serving.certs import SLOT_SERVER_NAME, SPIFFE_PREFIX, check_identity_name

IDENTITY_HEADER = "X-SP-Client-Identity"
DEFAULT_ROUTES: Mapping[str, str] = MappingProxyType({"/predict": "predict", "/metrics": "admin"})
_MIB = 1024 * 1024
_TEMPLATE = Path(__file__).with_name("nginx") / "nginx.conf.template"
_JS_FILE = Path(__file__).with_name("nginx") / "identity.js"
_DEBIAN_MODULES = Path("/usr/lib/nginx/modules")
_JS_MODULE_NAME = "ngx_http_js_module.so"
_INSTALL_HINT = "install it with `apt-get install nginx libnginx-mod-http-js` (Debian)"
_SLOT_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_ROLE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Route paths become nginx location names and proxy_pass URIs: no spaces, quotes, braces,
# semicolons, "$" or regex metacharacters, and no dot segments.
_PATH = re.compile(r"/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*/?)*")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_IPV4 = re.compile(r"[0-9.]+")
# Characters that could end or escape a quoted nginx string or start a variable.
_UNSAFE_IN_PATH = re.compile(r"[\"'\\$;{}\x00-\x1f\x7f]")
_RESERVED_PATHS = ("/healthz",)
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
_PATH_FIELDS = ("server_cert", "server_key", "client_ca", "upstream_cert", "upstream_key",
                "upstream_ca")  # fmt: skip
# Files nginx reads to reach the slots: checked to exist and be readable up front, because a
# missing one would only show as every request failing with 502.
_UPSTREAM_FILES = ("upstream_cert", "upstream_key", "upstream_ca")


class GatewayError(SecurePipelineError):
    """The gateway could not be started, reloaded or stopped as asked."""


@dataclass(frozen=True)
class Slot:
    """One upstream model server.

    Attributes:
        name: The slot's name, ``blue`` or ``green`` (any lower-case name is accepted).
        address: ``host:port`` of its mutual-TLS listener, e.g. ``127.0.0.1:8001``.
        weight: Its share of traffic, 0 to 100; 0 means it receives none, not even retries.
    """

    name: str
    address: str
    weight: int


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway enforces, validated on construction.

    Attributes:
        listen: ``host:port`` of the TLS listener, e.g. ``127.0.0.1:8443``.
        server_cert: PEM certificate (chain) the gateway presents.
        server_key: Its private key.
        client_ca: PEM bundle of the CAs whose client certificates are accepted.
        identities: Identity name (the ``<name>`` of ``spiffe://secure-pipeline/<name>``) ->
            the roles it holds.
        routes: Path -> the role required. A path ending in ``/`` is a prefix, any other is
            exact. ``/healthz`` is the gateway's own and cannot be routed.
        rate_per_second: Requests per second allowed per identity (whole numbers, or a
            whole number per minute such as 0.5).
        burst: Requests above the rate accepted at once before 429.
        slots: The upstream model servers; their weights sum to 100.
        max_body_bytes: Largest request body; larger ones get 413.
        verify_depth: Longest client certificate chain accepted (2: leaf and one CA).
        upstream_cert: The gateway's client certificate for the slots (issued by the slot CA,
            ``spiffe://secure-pipeline/gateway``); keyword only, required.
        upstream_key: Its private key; keyword only, required.
        upstream_ca: The slot CA: a slot's certificate must chain to it; keyword only,
            required.
        upstream_name: The name a slot's certificate must carry (`SLOT_SERVER_NAME`).
    """

    listen: str
    server_cert: Path
    server_key: Path
    client_ca: Path
    identities: Mapping[str, tuple[str, ...]]
    routes: Mapping[str, str]
    rate_per_second: float
    burst: int
    slots: tuple[Slot, ...]
    max_body_bytes: int = _MIB
    verify_depth: int = 2
    _: KW_ONLY
    upstream_cert: Path
    upstream_key: Path
    upstream_ca: Path
    upstream_name: str = SLOT_SERVER_NAME

    def __post_init__(self) -> None:
        # Frozen copies: a caller mutating its dict afterwards cannot change a validated config.
        object.__setattr__(
            self,
            "identities",
            # A bare string stays a string (and is refused below): tuple("admin") would be
            # five one-letter roles.
            MappingProxyType(
                {k: v if isinstance(v, str) else tuple(v) for k, v in dict(self.identities).items()}
            ),
        )
        object.__setattr__(self, "routes", MappingProxyType(dict(self.routes)))
        object.__setattr__(self, "slots", tuple(self.slots))
        for name in _PATH_FIELDS:
            object.__setattr__(self, name, Path(getattr(self, name)))
        problems = _problems(self)
        if problems:
            raise ConfigurationError(
                "invalid gateway configuration:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    @classmethod
    def from_environment(
        cls,
        *,
        listen: str,
        slots: tuple[Slot, ...],
        routes: Mapping[str, str] = DEFAULT_ROUTES,
        rate_per_second: float = 50.0,
        burst: int = 100,
        max_body_bytes: int = _MIB,
    ) -> "GatewayConfig":
        """Build the production configuration: certificates and identities from the environment.

        Reads the caller-facing settings (`client_settings_from_environment`) and the
        upstream mutual TLS: ``SECURE_PIPELINE_GATEWAY_UPSTREAM_CERT``, ``_UPSTREAM_KEY``,
        ``_UPSTREAM_CA`` (the gateway's slot-CA client certificate, its key, the slot CA) and
        optionally ``_UPSTREAM_NAME`` (default `SLOT_SERVER_NAME`).

        Args:
            listen: ``host:port`` to listen on.
            slots: The model servers and their weights.
            routes: Path -> required role.
            rate_per_second: Per-identity rate.
            burst: Per-identity burst.
            max_body_bytes: Largest request body.

        Raises:
            ConfigurationError: Naming every missing variable, unreadable file or invalid value.
        """
        values = _read_environment({**_CLIENT_VARIABLES, **_UPSTREAM_VARIABLES})
        name = env.read("SECURE_PIPELINE_GATEWAY_UPSTREAM_NAME")
        return cls(
            listen=listen,
            server_cert=values["server_cert"],
            server_key=values["server_key"],
            client_ca=values["client_ca"],
            identities=_read_identities(values["identities"]),
            routes=routes,
            rate_per_second=rate_per_second,
            burst=burst,
            slots=slots,
            max_body_bytes=max_body_bytes,
            upstream_cert=values["upstream_cert"],
            upstream_key=values["upstream_key"],
            upstream_ca=values["upstream_ca"],
            upstream_name=name or SLOT_SERVER_NAME,
        )


_CLIENT_VARIABLES = {
    "server_cert": "SECURE_PIPELINE_GATEWAY_CERT",
    "server_key": "SECURE_PIPELINE_GATEWAY_KEY",
    "client_ca": "SECURE_PIPELINE_GATEWAY_CLIENT_CA",
    "identities": "SECURE_PIPELINE_GATEWAY_IDENTITIES",
}
_UPSTREAM_VARIABLES = {
    "upstream_cert": "SECURE_PIPELINE_GATEWAY_UPSTREAM_CERT",
    "upstream_key": "SECURE_PIPELINE_GATEWAY_UPSTREAM_KEY",
    "upstream_ca": "SECURE_PIPELINE_GATEWAY_UPSTREAM_CA",
}


def client_settings_from_environment() -> dict[str, Any]:
    """The gateway's caller-facing settings from the environment.

    ``server_cert``, ``server_key``, ``client_ca`` (paths) and ``identities`` (read from the
    JSON file ``{"identities": {"<name>": ["<role>", ...]}}``, see deploy/gateway/README.md),
    from ``SECURE_PIPELINE_GATEWAY_CERT``, ``_KEY``, ``_CLIENT_CA`` and ``_IDENTITIES``. A
    one-host deployment (`secure_pipeline.promotion.bluegreen.up`) makes the upstream side
    itself, so it needs only these.

    Raises:
        ConfigurationError: Naming every missing variable or unreadable file.
    """
    values: dict[str, Any] = _read_environment(_CLIENT_VARIABLES)
    values["identities"] = _read_identities(values["identities"])
    return values


def _read_environment(names: Mapping[str, str]) -> dict[str, Path]:
    values = {field: env.read(variable) for field, variable in names.items()}
    problems = [f"{names[f]} is not set" for f, v in values.items() if v is None]
    problems += [
        f"{names[f]}={v} is not a readable file"
        for f, v in values.items()
        if v is not None and not os.access(v, os.R_OK)
    ]
    if problems:
        raise ConfigurationError(
            "the gateway's production configuration is incomplete:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nSee deploy/gateway/README.md."
        )
    return {field: Path(str(value)) for field, value in values.items()}


def _read_identities(path: Path) -> dict[str, tuple[str, ...]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"identities file {path} is not readable JSON: {exc}") from None
    identities = document.get("identities") if isinstance(document, dict) else None
    if not isinstance(identities, dict) or set(document) != {"identities"}:
        raise ConfigurationError(
            f'identities file {path} must be {{"identities": {{"<name>": ["<role>", ...]}}}} '
            "and nothing else"
        )
    result: dict[str, tuple[str, ...]] = {}
    for name, roles in identities.items():
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ConfigurationError(f"identities file {path}: roles of {name!r} must be a list")
        result[name] = tuple(roles)
    return result


def _problems(config: GatewayConfig) -> list[str]:
    """Every reason ``config`` cannot be rendered safely."""
    problems: list[str] = []
    if not _valid_address(config.listen):
        problems.append(f"listen {config.listen!r} is not host:port")
    for name in _PATH_FIELDS:
        path = str(getattr(config, name))
        if _UNSAFE_IN_PATH.search(path) or not path:
            problems.append(f"{name} path {path!r} contains characters nginx would interpret")
        elif name in _UPSTREAM_FILES and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            problems.append(
                f"{name} {path} is not a readable file (the gateway reaches the slots over "
                "mutual TLS only: give the slot CA, and the gateway's client certificate and "
                "key issued by it)"
            )
    upstream = config.upstream_name
    if not isinstance(upstream, str) or not _HOST.fullmatch(upstream) or _IPV4.fullmatch(upstream):
        problems.append(
            f"upstream_name {upstream!r} must be the DNS name the slots' certificate carries"
        )
    if not config.identities:
        problems.append("no identities: nobody could use the gateway")
    roles_held: set[str] = set()
    for name, roles in config.identities.items():
        try:
            check_identity_name(name)
        except ConfigurationError as exc:
            problems.append(str(exc))
        if isinstance(roles, str):
            problems.append(f"roles of identity {name!r} must be a list of roles, not a string")
            continue
        for role in roles:
            if not isinstance(role, str) or not _ROLE.fullmatch(role):
                problems.append(
                    f"role {role!r} of identity {name!r} is invalid: use a-z, 0-9 and '_', "
                    "starting with a letter, at most 32 characters"
                )
            else:
                roles_held.add(role)
    if not config.routes:
        problems.append("no routes: every request would be refused")
    for path, role in config.routes.items():
        if not isinstance(path, str) or not _PATH.fullmatch(path) or path == "/":
            problems.append(
                f"route {path!r} is invalid: an absolute path of A-Z a-z 0-9 . _ ~ - segments "
                "without '.' or '..' segments (a trailing '/' makes it a prefix), not '/' alone"
            )
        elif path in _RESERVED_PATHS:
            problems.append(f"route {path!r} is reserved for the gateway itself")
        if role not in roles_held:
            problems.append(
                f"route {path!r} requires role {role!r}, which no identity holds (a typo?)"
            )
    rate = config.rate_per_second
    if not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        problems.append(f"rate_per_second must be a positive number, found {rate!r}")
    elif _rate(rate) is None:
        problems.append(
            f"rate_per_second {rate!r} must be a whole number per second or per minute (nginx "
            "counts whole requests)"
        )
    if isinstance(config.burst, bool) or not isinstance(config.burst, int) or config.burst < 0:
        problems.append(f"burst must be a non-negative integer, found {config.burst!r}")
    body = config.max_body_bytes
    if isinstance(body, bool) or not isinstance(body, int) or not 1 <= body <= 64 * _MIB:
        problems.append(f"max_body_bytes must be between 1 and {64 * _MIB}, found {body!r}")
    depth = config.verify_depth
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
        problems.append(f"verify_depth must be between 1 and 5, found {depth!r}")
    problems += _slot_problems(config.slots)
    return problems


def _slot_problems(slots: tuple[Slot, ...]) -> list[str]:
    problems: list[str] = []
    if not slots:
        return ["no slots: the gateway needs at least one model server"]
    names = [s.name for s in slots]
    addresses = [s.address for s in slots]
    if len(set(names)) != len(names):
        problems.append(f"slot names repeat: {names}")
    if len(set(addresses)) != len(addresses):
        problems.append(f"slot addresses repeat: {addresses}")
    for slot in slots:
        if not isinstance(slot, Slot):
            problems.append(f"{slot!r} is not a Slot")
            continue
        if not isinstance(slot.name, str) or not _SLOT_NAME.fullmatch(slot.name):
            problems.append(f"slot name {slot.name!r} is invalid (a-z, 0-9, '-')")
        if not _valid_address(slot.address):
            problems.append(f"slot {slot.name!r} address {slot.address!r} is not host:port")
        weight = slot.weight
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            problems.append(
                f"slot {slot.name!r} weight must be an integer 0..100, found {weight!r}"
            )
    weights = [s.weight for s in slots if isinstance(s, Slot)]
    if all(isinstance(w, int) for w in weights) and sum(weights) != 100:
        problems.append(f"slot weights must sum to 100, found {sum(weights)} ({weights})")
    return problems


def _valid_address(address: object) -> bool:
    if not isinstance(address, str):
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        return False
    return bool(_HOST.fullmatch(host) or _IPV6.fullmatch(host))


def _rate(rate: float) -> str | None:
    """The nginx rate for ``rate`` requests per second: ``Nr/s`` or ``Nr/m``, if exact."""
    if float(rate).is_integer():
        return f"{int(rate)}r/s"
    per_minute = rate * 60
    if abs(per_minute - round(per_minute)) < 1e-9 and round(per_minute) >= 1:
        return f"{round(per_minute)}r/m"
    return None


def _quote(value: str) -> str:
    """An nginx double-quoted string; refuses what could escape it or expand a variable."""
    if _UNSAFE_IN_PATH.search(value):
        raise ConfigurationError(f"{value!r} cannot be written into the nginx configuration")
    return f'"{value}"'


def render_nginx_conf(
    config: GatewayConfig, workdir: Path, *, js_module: Path | None = None, workers: int = 2
) -> str:
    """Render the nginx configuration of ``config``, with runtime files under ``workdir``.

    Args:
        config: The validated gateway configuration.
        workdir: The nginx prefix directory: ``logs/`` (error and access log), ``temp/``,
            ``nginx.pid``.
        js_module: The njs module (``ngx_http_js_module.so``); default: Debian's location.
        workers: Number of worker processes.

    Returns:
        The configuration text.

    Raises:
        ConfigurationError: When a value cannot be written safely into the configuration.
    """
    problems = _problems(config)  # again: a config built around __post_init__ is not trusted
    if problems:
        raise ConfigurationError("invalid gateway configuration:\n  - " + "\n  - ".join(problems))
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigurationError(f"workers must be between 1 and 64, found {workers!r}")
    workdir = Path(workdir).resolve()
    module = Path(js_module) if js_module is not None else _DEBIAN_MODULES / _JS_MODULE_NAME
    identity_map = "\n".join(
        f'        "~^{_regex_literal(SPIFFE_PREFIX + name)}$" {_quote(name)};'
        for name in sorted(config.identities)
    )
    roles = sorted({r for held in config.identities.values() for r in held})
    role_maps = "\n".join(
        f"    map $sp_identity $sp_role_{role} {{\n        default 0;\n"
        + "".join(
            f"        {_quote(name)} 1;\n"
            for name in sorted(config.identities)
            if role in config.identities[name]
        )
        + "    }"
        for role in roles
    )
    values = {
        "js_module": _quote(str(module)),
        "js_file": _quote(str(_JS_FILE)),
        "worker_processes": str(workers),
        "pid_file": _quote(str(workdir / "nginx.pid")),
        "error_log": _quote(str(workdir / "logs" / "error.log")),
        "access_log": _quote(str(workdir / "logs" / "access.log")),
        "max_body_bytes": str(config.max_body_bytes),
        "identity_map": identity_map,
        "role_maps": role_maps,
        "rate": _rate(config.rate_per_second) or "",
        "upstream_servers": _upstream_servers(config.slots),
        "listen": config.listen,
        "server_cert": _quote(str(config.server_cert)),
        "server_key": _quote(str(config.server_key)),
        "client_ca": _quote(str(config.client_ca)),
        "verify_depth": str(config.verify_depth),
        "upstream_cert": _quote(str(config.upstream_cert)),
        "upstream_key": _quote(str(config.upstream_key)),
        "upstream_ca": _quote(str(config.upstream_ca)),
        "upstream_name": _quote(config.upstream_name),
        "identity_header": IDENTITY_HEADER,
        "routes": _routes(config),
    }
    text = _TEMPLATE.read_text(encoding="utf-8")
    # Temporary paths are a directory plus a sub-directory name, quoted as a whole.
    text = re.sub(r"\{\{ temp_dir \}\}/(\w+)", lambda m: _quote(f"{workdir}/temp/{m[1]}"), text)
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise ConfigurationError(f"the gateway template has unknown placeholders: {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m[1]], text)


def _regex_literal(value: str) -> str:
    # Identity names are [a-z0-9._-]; "." is the only regex metacharacter they can contain.
    return value.replace(".", "[.]")


def _upstream_servers(slots: tuple[Slot, ...]) -> str:
    lines = []
    for slot in slots:
        if slot.weight == 0:
            lines.append(f"        # slot {slot.name} ({slot.address}): weight 0, no traffic")
            continue
        # max_fails=0: nginx never takes a slot out by itself, so the split is exactly what the
        # release controller set, and a failing canary keeps showing its failures (and its
        # requests keep being replayed on the other slot) until the controller acts.
        lines.append(
            f"        server {slot.address} weight={slot.weight} max_fails=0;  # slot {slot.name}"
        )
    return "\n".join(lines)


def _routes(config: GatewayConfig) -> str:
    blocks = []
    for path in sorted(config.routes):
        role = config.routes[path]
        modifier = "^~" if path.endswith("/") else "="
        blocks.append(
            f"        location {modifier} {path} {{\n"
            f"            if ($sp_role_{role} != 1) {{\n"
            "                return 403;\n"
            "            }\n"
            f"            limit_req zone=sp_per_identity burst={config.burst} nodelay;\n"
            # A URI in proxy_pass makes nginx send the normalised path it authorised, not the
            # raw one (which an upstream might resolve differently, e.g. /predict/../metrics).
            f"            proxy_pass https://sp_models{path};\n"
            "        }"
        )
    return "\n\n".join(blocks)


def find_nginx(nginx: str | None = None) -> str:
    """The nginx binary: ``nginx`` if given, else on PATH, else ``/usr/sbin/nginx``.

    Raises:
        ConfigurationError: When there is none, saying how to install it.
    """
    candidates = [nginx] if nginx else [shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigurationError(
        f"nginx not found ({nginx or 'PATH, /usr/sbin/nginx'}): {_INSTALL_HINT}"
    )


def _js_module(nginx: str) -> Path:
    """The njs module of this nginx build (its ``--modules-path``)."""
    result = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"--modules-path=(\S+)", result.stderr + result.stdout)
    directory = Path(match[1]) if match else _DEBIAN_MODULES
    module = directory / _JS_MODULE_NAME
    if not module.is_file():
        raise ConfigurationError(
            f"the nginx JavaScript module is missing ({module}); the gateway needs it to read "
            f"client identities: {_INSTALL_HINT}"
        )
    return module


_STATE_FILE = "gateway.json"


def _config_document(config: GatewayConfig, workers: int) -> dict[str, object]:
    return {
        "listen": config.listen,
        "server_cert": str(config.server_cert),
        "server_key": str(config.server_key),
        "client_ca": str(config.client_ca),
        "identities": {name: list(roles) for name, roles in config.identities.items()},
        "routes": dict(config.routes),
        "rate_per_second": config.rate_per_second,
        "burst": config.burst,
        "slots": [{"name": s.name, "address": s.address, "weight": s.weight} for s in config.slots],
        "max_body_bytes": config.max_body_bytes,
        "verify_depth": config.verify_depth,
        "upstream_cert": str(config.upstream_cert),
        "upstream_key": str(config.upstream_key),
        "upstream_ca": str(config.upstream_ca),
        "upstream_name": config.upstream_name,
        "workers": workers,
    }


def _config_from_document(document: dict) -> tuple[GatewayConfig, int]:
    values = dict(document)
    workers = int(values.pop("workers"))
    values["slots"] = tuple(Slot(**slot) for slot in values["slots"])
    values["identities"] = {name: tuple(roles) for name, roles in values["identities"].items()}
    missing = [name for name in _UPSTREAM_FILES if name not in values]
    if missing:
        # A state file from before the slots required mutual TLS: its slots speak plain HTTP.
        raise GatewayError(
            f"the recorded gateway configuration has no upstream TLS ({', '.join(missing)}): "
            "it predates mutual TLS to the slots; stop that gateway's nginx and start the "
            "deployment again"
        )
    for name in _PATH_FIELDS:
        values[name] = Path(values[name])
    return GatewayConfig(**values), workers


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Gateway:
    """A running nginx gateway with its own prefix directory ``workdir``.

    Use it as a context manager, or call `start` and `stop`. The master runs without
    daemonising, as a child of the process that started it, and keeps running if that process
    exits; another process takes it over with `attach` (the pid file and the configuration are
    in ``workdir``). `set_weights` re-renders the configuration, tests it with ``nginx -t`` and
    reloads (SIGHUP), returning once the new workers serve.

    Args:
        config: What the gateway enforces.
        workdir: Its prefix directory (created if missing): ``conf/nginx.conf``, ``logs/``,
            ``temp/``, ``nginx.pid`` and ``gateway.json`` (the configuration, for `attach`).
        nginx: The nginx binary; default: PATH, then ``/usr/sbin/nginx``.
        workers: Number of worker processes.
    """

    def __init__(
        self, config: GatewayConfig, workdir: Path, nginx: str | None = None, workers: int = 2
    ) -> None:
        self._config = config
        self._workdir = Path(workdir).resolve()
        self._nginx = find_nginx(nginx)
        self._js_module = _js_module(self._nginx)
        self._workers = workers
        self._pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # only when this object started it

    @classmethod
    def attach(cls, workdir: Path, nginx: str | None = None) -> "Gateway":
        """Take over the gateway running in ``workdir`` (started by any process).

        Raises:
            GatewayError: When no gateway of this ``workdir`` is running.
        """
        workdir = Path(workdir).resolve()
        try:
            document = json.loads((workdir / _STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GatewayError(f"no gateway configuration in {workdir}: {exc}") from None
        config, workers = _config_from_document(document)
        gateway = cls(config, workdir, nginx, workers)
        pid = gateway._running_master()
        if pid is None:
            raise GatewayError(
                f"no gateway is running in {workdir}: start it (Gateway(...).start()) first"
            )
        gateway._pid = pid
        return gateway

    @property
    def config(self) -> GatewayConfig:
        """The configuration being served."""
        return self._config

    @property
    def url(self) -> str:
        """Base URL of the gateway, e.g. ``https://127.0.0.1:8443``."""
        return f"https://{self._config.listen}"

    @property
    def access_log(self) -> Path:
        """The JSON-lines access log."""
        return self._workdir / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        """The nginx error log."""
        return self._workdir / "logs" / "error.log"

    @property
    def conf_file(self) -> Path:
        """The rendered configuration nginx runs with."""
        return self._workdir / "conf" / "nginx.conf"

    @property
    def pid(self) -> int | None:
        """The nginx master's process id while running."""
        return self._pid if self._alive() else None

    def start(self, timeout: float = 10.0) -> None:
        """Render, test and start nginx; return once it accepts connections.

        Raises:
            ConfigurationError: When ``nginx -t`` refuses the configuration.
            GatewayError: When a gateway already runs in ``workdir``, or nginx exits or does not
                listen within ``timeout`` seconds.
        """
        if self._alive() or self._running_master() is not None:
            raise GatewayError(
                f"a gateway is already running in {self._workdir}: use Gateway.attach"
            )
        for sub in ("conf", "logs", "temp"):
            (self._workdir / sub).mkdir(parents=True, exist_ok=True)
        self._install(self._config)
        with (self._workdir / "logs" / "stderr.log").open("ab") as err:
            # Not a new session: a Ctrl-C that ends a foreground caller ends nginx too (SIGINT
            # is nginx's fast shutdown), so no master is left behind holding the port.
            self._popen = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        self._pid = self._popen.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive():
                code = self._popen.poll()
                self._pid = self._popen = None
                raise GatewayError(f"nginx exited with {code}: {self._log_tail()}")
            if self._worker_pids() and self._listening():
                return
            time.sleep(0.02)
        self.stop()
        raise GatewayError(f"nginx did not listen on {self._config.listen} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx gracefully (SIGQUIT), then by force; a stopped gateway is left alone."""
        alive = self._alive()
        pid, popen = self._pid, self._popen
        self._pid = self._popen = None
        if pid is None or not alive:
            return
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(pid, popen, wait):
                return

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def set_weights(self, weights: Mapping[str, int], timeout: float = 15.0) -> None:
        """Give each slot its new share of traffic and reload nginx.

        Args:
            weights: Slot name -> weight, for every slot; the weights sum to 100.
            timeout: Seconds to wait for the new workers (old ones finish in-flight requests).

        Raises:
            ConfigurationError: When a name is unknown or missing, or the weights are invalid;
                the running configuration is unchanged.
            GatewayError: When the gateway is not running or the reload does not take effect.
        """
        known = {slot.name for slot in self._config.slots}
        unknown = sorted(set(weights) - known)
        missing = sorted(known - set(weights))
        if unknown or missing:
            raise ConfigurationError(
                f"weights must name every slot exactly ({sorted(known)}): "
                + (f"unknown {unknown} " if unknown else "")
                + (f"missing {missing}" if missing else "")
            )
        slots = tuple(replace(slot, weight=weights[slot.name]) for slot in self._config.slots)
        config = replace(self._config, slots=slots)  # validates: sum 100, integers 0..100
        pid = self._pid
        if pid is None or not self._alive():
            raise GatewayError("the gateway is not running: start it before changing weights")
        old_workers = self._worker_pids()
        self._install(config)
        self._config = config
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self._worker_pids()
            # The reload has taken effect when every worker is new: old ones stopped accepting
            # connections and finished their requests.
            if workers and not workers & old_workers:
                return
            if not self._alive():
                raise GatewayError(f"nginx exited during the reload: {self._log_tail()}")
            time.sleep(0.02)
        raise GatewayError(
            f"nginx did not switch to the new weights within {timeout} s: {self._log_tail()}"
        )

    def _alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._pid is not None and _process_alive(self._pid)

    def _wait_exit(self, pid: int, popen: subprocess.Popen[bytes] | None, wait: float) -> bool:
        if popen is not None:
            try:
                popen.wait(wait)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _process_alive(pid):
                return True
            time.sleep(0.02)
        return False

    def _running_master(self) -> int | None:
        """The pid of a live nginx master of this ``workdir``, from its pid file."""
        try:
            pid = int((self._workdir / "nginx.pid").read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        # A recycled pid is not ours: the master's command line names this configuration.
        if "nginx" not in command or str(self.conf_file) not in command:
            return None
        return pid if _process_alive(pid) else None

    def _command(self, *extra: str) -> list[str]:
        return [
            self._nginx,
            "-p",
            f"{self._workdir}/",
            "-c",
            str(self.conf_file),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def _install(self, config: GatewayConfig) -> None:
        """Render ``config`` and test it with ``nginx -t``; only then make it the live file."""
        text = render_nginx_conf(
            config, self._workdir, js_module=self._js_module, workers=self._workers
        )
        candidate = self.conf_file.with_name("nginx.conf.new")
        candidate.write_text(text, encoding="utf-8")
        command = self._command("-t", "-q")
        command[command.index(str(self.conf_file))] = str(candidate)
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise ConfigurationError(
                f"nginx refused the gateway configuration: {(result.stderr or result.stdout)}"
                f"{self._log_tail()}"
            )
        os.replace(candidate, self.conf_file)
        state = self._workdir / _STATE_FILE
        partial = state.with_name(f"{_STATE_FILE}.partial")
        partial.write_text(json.dumps(_config_document(config, self._workers), indent=2))
        os.replace(partial, state)

    def _listening(self) -> bool:
        host, _, port = self._config.listen.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def _worker_pids(self) -> frozenset[int]:
        """The master's children: its worker processes."""
        master = self._pid
        if master is None:
            return frozenset()
        children = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # the process ended while we looked
                continue
            # Field 4 is the parent pid; the name (field 2) may contain spaces and parentheses.
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(master) and fields[0] != "Z":
                children.add(int(entry))
        return frozenset(children)

    def _log_tail(self, lines: int = 10) -> str:
        text = ""
        for path in (self.error_log, self._workdir / "logs" / "stderr.log"):
            if path.is_file():
                text += path.read_text(errors="replace")
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return f"\n{tail}" if tail else ""
