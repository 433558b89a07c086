"""GatewayConfig and render_nginx_conf: what they refuse, and what the rendered file contains."""

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.serving.certs import GATEWAY_IDENTITY, SLOT_SERVER_NAME, SlotPki, init_slot_pki
from secure_pipeline.serving.gateway import (
    IDENTITY_HEADER,
    GatewayConfig,
    Slot,
    client_settings_from_environment,
    find_nginx,
    render_nginx_conf,
)

SLOTS = (Slot("blue", "127.0.0.1:8001", 100), Slot("green", "127.0.0.1:8002", 0))
_SLOT_PKI: list[SlotPki] = []


@pytest.fixture(autouse=True, scope="module")
def slot_pki(tmp_path_factory: pytest.TempPathFactory) -> SlotPki:
    """The upstream TLS files must exist: one slot PKI for the module's configurations."""
    if not _SLOT_PKI:
        _SLOT_PKI.append(init_slot_pki(tmp_path_factory.mktemp("slot") / "slot-pki"))
    return _SLOT_PKI[0]


def _upstream() -> dict[str, Any]:
    pki = _SLOT_PKI[0]
    return {
        "upstream_cert": pki.client_cert(GATEWAY_IDENTITY),
        "upstream_key": pki.client_key(GATEWAY_IDENTITY),
        "upstream_ca": pki.ca_cert,
    }


def _config(**changes: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:8443",
        "server_cert": Path("/etc/sp/server.pem"),
        "server_key": Path("/etc/sp/server.key"),
        "client_ca": Path("/etc/sp/ca.pem"),
        "identities": {"alice": ("predict",), "ops": ("predict", "admin")},
        "routes": {"/predict": "predict", "/metrics": "admin", "/admin/": "admin"},
        "rate_per_second": 10,
        "burst": 20,
        "slots": SLOTS,
        **_upstream(),
    }
    values.update(changes)
    return GatewayConfig(**values)


def test_rendered_configuration_holds_every_control(tmp_path: Path) -> None:
    text = render_nginx_conf(_config(), tmp_path)
    assert "{{" not in text
    for line in (
        "ssl_protocols TLSv1.3;",
        "ssl_verify_client on;",
        'ssl_client_certificate "/etc/sp/ca.pem";',
        "ssl_verify_depth 2;",
        "server_tokens off;",
        "limit_req_status 429;",
        "limit_req_zone $sp_identity zone=sp_per_identity:1m rate=10r/s;",
        "limit_req zone=sp_per_identity burst=20 nodelay;",
        "client_max_body_size 1048576;",
        "proxy_next_upstream error timeout http_503 non_idempotent;",
        f"proxy_set_header {IDENTITY_HEADER} $sp_spiffe_id;",
        '"~^spiffe://secure-pipeline/alice$" "alice";',
        "location = /predict {",
        "location ^~ /admin/ {",
        "proxy_pass https://sp_models/admin/;",
        f'access_log "{tmp_path.resolve()}/logs/access.log" sp_access;',
        # the hop to the slots: mutual TLS 1.3, the slot CA and the slot name verified
        f'proxy_ssl_certificate "{_SLOT_PKI[0].client_cert(GATEWAY_IDENTITY)}";',
        f'proxy_ssl_certificate_key "{_SLOT_PKI[0].client_key(GATEWAY_IDENTITY)}";',
        f'proxy_ssl_trusted_certificate "{_SLOT_PKI[0].ca_cert}";',
        "proxy_ssl_verify on;",
        f'proxy_ssl_name "{SLOT_SERVER_NAME}";',
        "proxy_ssl_protocols TLSv1.3;",
        "proxy_ssl_session_reuse on;",
        "keepalive 16;",
    ):
        assert line in text, line
    assert "proxy_pass http://" not in text
    assert "$request_body" not in text
    servers = re.findall(r"^\s*server (\S+) weight=(\d+)", text, flags=re.M)
    assert servers == [("127.0.0.1:8001", "100")]  # green (weight 0) is not an upstream server


def test_rendered_configuration_passes_nginx_t(tmp_path: Path) -> None:
    from secure_pipeline.serving.certs import init_dev_pki

    pki = init_dev_pki(tmp_path / "pki")
    config = _config(server_cert=pki.server_cert, server_key=pki.server_key, client_ca=pki.ca_cert)
    for sub in ("logs", "temp", "conf"):
        (tmp_path / sub).mkdir()
    conf = tmp_path / "conf" / "nginx.conf"
    conf.write_text(render_nginx_conf(config, tmp_path))
    nginx = find_nginx()
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "logs/e.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_fractional_rates_become_per_minute(tmp_path: Path) -> None:
    assert "rate=30r/m;" in render_nginx_conf(_config(rate_per_second=0.5), tmp_path)
    with pytest.raises(ConfigurationError, match="whole number per second or per minute"):
        _config(rate_per_second=0.3333)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"routes": {"/predict": "predcit"}}, "requires role 'predcit', which no identity holds"),
        ({"slots": (Slot("blue", "127.0.0.1:8001", 90), Slot("green", "127.0.0.1:8002", 20))},
         "sum to 100"),
        ({"slots": (Slot("blue", "127.0.0.1:8001", 100), Slot("blue", "127.0.0.1:8002", 0))},
         "names repeat"),
        ({"slots": (Slot("blue", "127.0.0.1:8001", 50), Slot("green", "127.0.0.1:8001", 50))},
         "addresses repeat"),
        ({"slots": (Slot("blue", "127.0.0.1:8001", True), Slot("green", "127.0.0.1:8002", 99))},
         "integer 0..100"),
        ({"slots": ()}, "no slots"),
        ({"identities": {}}, "no identities"),
        ({"identities": {"alice": "predict"}}, "not a string"),
        ({"routes": {}}, "no routes"),
        ({"routes": {"/healthz": "predict"}}, "reserved"),
        ({"routes": {"/": "predict"}}, "route '/' is invalid"),
        ({"burst": -1}, "burst"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"rate_per_second": float("inf")}, "positive number"),
        ({"listen": "127.0.0.1"}, "not host:port"),
        ({"upstream_ca": Path("/nonexistent/slot-ca.pem")}, "upstream_ca /nonexistent/slot-ca.pem "
         "is not a readable file"),
        ({"upstream_key": Path("/nonexistent/k.pem")}, "mutual TLS only"),
        ({"upstream_name": "127.0.0.1"}, "upstream_name '127.0.0.1' must be the DNS name"),
        ({"upstream_name": ""}, "upstream_name '' must be"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_invalid_configurations_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        _config(**changes)


# Values that would add nginx syntax if written as they are.
INJECTIONS = [
    {"identities": {'alice" 1; } server { listen 80; #': ("predict",)}},
    {"identities": {"alice\n": ("predict",)}},
    {"identities": {"Alice": ("predict",)}},
    {"identities": {"alice": ("predict; allow all",)}, "routes": {"/predict": "predict"}},
    {"identities": {"alice": ("predict$x",)}},
    {"routes": {"/predict { return 200; } location /x": "predict"}},
    {"routes": {"/predict;": "predict"}},
    {"routes": {"/pre dict": "predict"}},
    {"routes": {"/predict/../metrics": "predict"}},
    {"routes": {"/$host": "predict"}},
    {"routes": {"predict": "predict"}},
    {"listen": "127.0.0.1:8443 ssl; listen 80"},
    {"server_cert": Path('/etc/sp/a"; include /etc/passwd; "')},
    {"client_ca": Path("/etc/sp/$ssl_ca.pem")},
    {"slots": (Slot("blue", "127.0.0.1:8001 backup", 100),)},
    {"slots": (Slot("blue;", "127.0.0.1:8001", 100),)},
    {"upstream_ca": Path('/etc/sp/ca.pem"; proxy_ssl_verify off; "')},
    {"upstream_cert": Path("/etc/sp/$host.pem")},
    {"upstream_name": 'slot"; proxy_ssl_verify off; "'},
    {"upstream_name": "slot.internal; proxy_ssl_verify off"},
]


@pytest.mark.parametrize("changes", INJECTIONS)
def test_values_that_could_inject_nginx_syntax_are_refused(changes: dict) -> None:
    with pytest.raises(ConfigurationError):
        _config(**changes)


def test_upstream_tls_is_required() -> None:
    values = dict(_config().__dict__)
    for name in ("upstream_cert", "upstream_key", "upstream_ca", "upstream_name"):
        values.pop(name)
    with pytest.raises(TypeError, match="upstream_ca"):
        GatewayConfig(**values)


def test_render_revalidates_a_config_changed_behind_its_back(tmp_path: Path) -> None:
    config = _config()
    object.__setattr__(config, "identities", {'x" 1; }': ("predict",)})
    with pytest.raises(ConfigurationError, match="identity name"):
        render_nginx_conf(config, tmp_path)


def test_config_is_frozen_against_later_changes_of_its_inputs() -> None:
    identities = {"alice": ["predict"]}
    config = _config(identities=identities, routes={"/predict": "predict"})
    identities["alice"].append("admin")
    identities["eve"] = ["admin"]
    assert dict(config.identities) == {"alice": ("predict",)}
    with pytest.raises(TypeError):
        config.identities["eve"] = ("admin",)  # type: ignore[index]
    assert replace(config, burst=5).identities == config.identities


# --- production: from the environment ---------------------------------------------------------

VARIABLES = (
    "SECURE_PIPELINE_GATEWAY_CERT",
    "SECURE_PIPELINE_GATEWAY_KEY",
    "SECURE_PIPELINE_GATEWAY_CLIENT_CA",
    "SECURE_PIPELINE_GATEWAY_IDENTITIES",
    "SECURE_PIPELINE_GATEWAY_UPSTREAM_CERT",
    "SECURE_PIPELINE_GATEWAY_UPSTREAM_KEY",
    "SECURE_PIPELINE_GATEWAY_UPSTREAM_CA",
)
FILES = ("c.pem", "k.pem", "ca.pem", "ids.json", "up.pem", "up.key", "slot-ca.pem")


def test_from_environment_names_every_missing_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)
    for name in VARIABLES:
        assert f"{name} is not set" in str(caught.value)


def _production_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, identities: str) -> None:
    for name, file in zip(VARIABLES, FILES, strict=True):
        (tmp_path / file).write_text(identities if file == "ids.json" else "pem")
        monkeypatch.setenv(name, str(tmp_path / file))


def test_from_environment_reads_paths_and_identities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = {"identities": {"scoring-api": ["predict"], "sre": ["predict", "admin"]}}
    _production_files(tmp_path, monkeypatch, json.dumps(document))
    config = GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)
    assert config.server_cert == tmp_path / "c.pem"
    assert config.client_ca == tmp_path / "ca.pem"
    assert dict(config.identities) == {"scoring-api": ("predict",), "sre": ("predict", "admin")}
    assert dict(config.routes) == {"/predict": "predict", "/metrics": "admin"}
    assert (config.upstream_cert, config.upstream_key, config.upstream_ca) == (
        tmp_path / "up.pem", tmp_path / "up.key", tmp_path / "slot-ca.pem",
    )  # fmt: skip
    assert config.upstream_name == SLOT_SERVER_NAME
    monkeypatch.setenv("SECURE_PIPELINE_GATEWAY_UPSTREAM_NAME", "slots.serving.example")
    named = GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)
    assert named.upstream_name == "slots.serving.example"


def test_client_settings_need_no_upstream_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `serving up` reads: it makes the upstream side (the slot PKI) itself."""
    _production_files(tmp_path, monkeypatch, '{"identities": {"a": ["predict"]}}')
    for name in VARIABLES[4:]:
        monkeypatch.delenv(name)
    settings = client_settings_from_environment()
    assert settings["server_key"] == tmp_path / "k.pem"
    assert settings["identities"] == {"a": ("predict",)}
    with pytest.raises(ConfigurationError, match="SECURE_PIPELINE_GATEWAY_UPSTREAM_CA is not set"):
        GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not readable JSON"),
        ('{"alice": ["predict"]}', "must be"),
        ('{"identities": {"alice": "predict"}}', "must be a list"),
        ('{"identities": {"alice": ["predict"]}, "routes": {}}', "nothing else"),
        ('{"identities": {"Alice Smith": ["predict"]}}', "identity name"),
    ],
)
def test_from_environment_refuses_a_bad_identities_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    _production_files(tmp_path, monkeypatch, content)
    with pytest.raises(ConfigurationError, match=message):
        GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)


def test_from_environment_refuses_unreadable_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _production_files(tmp_path, monkeypatch, '{"identities": {"a": ["predict"]}}')
    monkeypatch.setenv("SECURE_PIPELINE_GATEWAY_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigurationError, match="missing.key is not a readable file"):
        GatewayConfig.from_environment(listen="0.0.0.0:8443", slots=SLOTS)
