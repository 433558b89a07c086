"""Gateway settings: what the gateway enforces, validated before anything is written."""

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SecurePipelineError
from secure_pipeline.serving.certs import SLOT_SERVER_NAME, check_identity_name

IDENTITY_HEADER = "X-SP-Client-Identity"
# /feedback (role ``feedback``): the true labels of earlier predictions, recorded by the slots
# for the live checks; RBAC decides who may send them.
DEFAULT_ROUTES: Mapping[str, str] = MappingProxyType(
    {"/predict": "predict", "/feedback": "feedback", "/metrics": "admin"}
)
_MIB = 1024 * 1024
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
        # A default route whose role no identity holds is closed (left out: the gateway answers
        # 404 there), not a typo: a deployment that lets nobody send feedback need not spell
        # that out. Any other route naming a role nobody holds is refused below.
        held = {
            role for roles in self.identities.values() if not isinstance(roles, str)
            for role in roles
        }  # fmt: skip
        routes = {
            path: role
            for path, role in dict(self.routes).items()
            if not (DEFAULT_ROUTES.get(path) == role and role not in held)
        }
        object.__setattr__(self, "routes", MappingProxyType(routes))
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
