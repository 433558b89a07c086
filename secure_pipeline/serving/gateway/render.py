"""Rendering the nginx configuration from a validated `GatewayConfig`; finding nginx."""

import os
import re
import shutil
import subprocess
from pathlib import Path

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.serving.certs import SPIFFE_PREFIX
from secure_pipeline.serving.gateway.config import (
    _UNSAFE_IN_PATH,
    IDENTITY_HEADER,
    GatewayConfig,
    Slot,
    _problems,
    _rate,
)

# The template and njs script live in serving/nginx/, beside this package.
_NGINX_DIR = Path(__file__).resolve().parent.parent / "nginx"
_TEMPLATE = _NGINX_DIR / "nginx.conf.template"
_JS_FILE = _NGINX_DIR / "identity.js"
_DEBIAN_MODULES = Path("/usr/lib/nginx/modules")
_JS_MODULE_NAME = "ngx_http_js_module.so"
_INSTALL_HINT = "install it with `apt-get install nginx libnginx-mod-http-js` (Debian)"
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


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
