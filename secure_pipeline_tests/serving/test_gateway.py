"""The inference gateway: a real nginx on 127.0.0.1 in front of two recording upstreams.

Certificates are made with the `secure-pipeline certs` CLI, as a developer makes them; the
upstreams speak mutual TLS with a slot PKI (`init_slot_pki`), as the model server does. nginx
must be installed (Debian: nginx, libnginx-mod-http-js; .ci/run installs them): a missing
binary is an error with the install command, never a skip.
"""

import datetime as dt
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.serving.certs import (
    GATEWAY_IDENTITY,
    SLOT_SERVER_NAME,
    DevPki,
    SlotPki,
    init_slot_pki,
    spiffe_id,
)
from secure_pipeline.serving.gateway import (
    IDENTITY_HEADER,
    Gateway,
    GatewayConfig,
    GatewayError,
    Slot,
    find_nginx,
)
from secure_pipeline_tests.serving.upstream import RecordingUpstream, upstream

CLI = str(Path(sys.executable).parent / "secure-pipeline")
MAX_BODY = 64 * 1024
IDENTITIES = {"alice": ("predict",), "ops": ("predict", "admin"), "mallory": ()}
ROUTES = {"/predict": "predict", "/metrics": "admin", "/admin/": "admin"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_PIPELINE_")}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=environ, check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _odd_client_cert(pki: DevPki, name: str, uris: list[str], cn: str = "odd") -> None:
    """A client certificate from the gateway's own CA with unusual URI SANs."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key, now = ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )  # fmt: skip
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    pki.client_cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.client_key(name).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class Env:
    gateway: Gateway
    pki: DevPki
    other_pki: DevPki
    slot_pki: SlotPki
    blue: RecordingUpstream
    green: RecordingUpstream

    def context(
        self, who: str | None, pki: DevPki | None = None, tls12: bool = False
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pki.ca_cert)
        if tls12:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if who is not None:
            source = pki or self.pki
            context.load_cert_chain(source.client_cert(who), source.client_key(who))
        return context

    def request(
        self,
        who: str | None,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        pki: DevPki | None = None,
        gateway: Gateway | None = None,
    ) -> tuple[int, bytes]:
        host, _, port = (gateway or self.gateway).config.listen.rpartition(":")
        connection = http.client.HTTPSConnection(
            host, int(port), context=self.context(who, pki), timeout=10
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def seen(self) -> int:
        return self.blue.count() + self.green.count()


@pytest.fixture(scope="module")
def slot_pki(tmp_path_factory: pytest.TempPathFactory) -> SlotPki:
    return init_slot_pki(tmp_path_factory.mktemp("slot") / "slot-pki")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevPki, DevPki]:
    find_nginx()  # fail first, and clearly, when nginx is not installed
    root = tmp_path_factory.mktemp("pki")
    pki, other = DevPki(root / "ours"), DevPki(root / "other")
    for directory in (pki.directory, other.directory):
        result = _cli("certs", "init", str(directory))
        assert result.returncode == 0, result.stderr
    for name in (*IDENTITIES, "stranger"):
        result = _cli("certs", "client", str(pki.directory), name)
        assert result.returncode == 0, result.stderr
    assert _cli("certs", "client", str(other.directory), "alice").returncode == 0
    _odd_client_cert(
        pki, "two-uris", ["spiffe://secure-pipeline/alice", "spiffe://secure-pipeline/ops"]
    )
    _odd_client_cert(pki, "no-san", [], cn="alice")
    _odd_client_cert(pki, "upper", ["spiffe://secure-pipeline/ALICE"])
    _odd_client_cert(pki, "foreign-domain", ["spiffe://elsewhere/alice"])
    return pki, other


def _config(
    pki: DevPki, slot_pki: SlotPki, blue: RecordingUpstream, green: RecordingUpstream, **changes
) -> GatewayConfig:
    config = GatewayConfig(
        listen=f"127.0.0.1:{_free_port()}",
        server_cert=pki.server_cert,
        server_key=pki.server_key,
        client_ca=pki.ca_cert,
        identities=IDENTITIES,
        routes=ROUTES,
        rate_per_second=1000,
        burst=1000,
        slots=(Slot("blue", blue.address, 100), Slot("green", green.address, 0)),
        max_body_bytes=MAX_BODY,
        upstream_cert=slot_pki.client_cert(GATEWAY_IDENTITY),
        upstream_key=slot_pki.client_key(GATEWAY_IDENTITY),
        upstream_ca=slot_pki.ca_cert,
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def running(
    pkis: tuple[DevPki, DevPki], slot_pki: SlotPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    pki, other = pkis
    with upstream("blue", slot_pki) as blue, upstream("green", slot_pki) as green:
        config = _config(pki, slot_pki, blue, green)
        gateway = Gateway(config, tmp_path_factory.mktemp("gateway"))
        with gateway:
            yield Env(gateway, pki, other, slot_pki, blue, green)


@pytest.fixture
def env(running: Env) -> Env:
    """The shared gateway, back at blue 100 / green 0 with empty upstream records."""
    if {s.name: s.weight for s in running.gateway.config.slots} != {"blue": 100, "green": 0}:
        running.gateway.set_weights({"blue": 100, "green": 0})
    running.blue.reset()
    running.green.reset()
    return running


# --- authentication: mutual TLS 1.3 only ------------------------------------------------------


def test_no_client_certificate_is_refused(env: Env) -> None:
    status, body = env.request(None, "POST", "/predict", b"{}")
    assert status == 400
    assert "client certificate required" in json.loads(body)["error"]
    assert env.seen() == 0


def test_certificate_from_another_ca_is_refused(env: Env) -> None:
    status, body = env.request("alice", "POST", "/predict", b"{}", pki=env.other_pki)
    assert status == 400
    assert "not trusted" in json.loads(body)["error"]
    assert env.seen() == 0


def test_tls12_client_is_refused_in_the_handshake(env: Env) -> None:
    host, _, port = env.gateway.config.listen.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        pytest.raises(ssl.SSLError, match="(?i)protocol version|alert"),
    ):
        env.context("alice", tls12=True).wrap_socket(raw, server_hostname=host)
    assert env.seen() == 0


def test_server_certificate_is_not_a_client_certificate(env: Env) -> None:
    # The server certificate is from the same CA but has only the serverAuth usage.
    context = ssl.create_default_context(cafile=env.pki.ca_cert)
    context.load_cert_chain(env.pki.server_cert, env.pki.server_key)
    host, _, port = env.gateway.config.listen.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    connection.request("POST", "/predict", body=b"{}")
    assert connection.getresponse().status == 400
    connection.close()
    assert env.seen() == 0


# --- identity and RBAC --------------------------------------------------------------------------


def test_identity_with_the_role_reaches_the_model(env: Env) -> None:
    status, body = env.request("alice", "POST", "/predict", b'{"rows": []}')
    assert status == 200
    assert json.loads(body) == {"slot": "blue", "score": 0.5}
    (received,) = env.blue.received
    assert received.path == "/predict"
    assert received.body == b'{"rows": []}'
    assert received.headers[IDENTITY_HEADER] == "spiffe://secure-pipeline/alice"
    # ... over mutual TLS, with the gateway's certificate of the slot CA
    assert received.peer == spiffe_id(GATEWAY_IDENTITY)


# --- the hop to the slots: mutual TLS, slot CA, slot name ---------------------------------------


def test_rendered_configuration_reaches_the_slots_over_mutual_tls(env: Env) -> None:
    text = env.gateway.conf_file.read_text()
    for line in (
        "proxy_pass https://sp_models/predict;",
        "proxy_ssl_verify on;",
        f'proxy_ssl_name "{SLOT_SERVER_NAME}";',
        f'proxy_ssl_trusted_certificate "{env.slot_pki.ca_cert}";',
        "proxy_ssl_protocols TLSv1.3;",
        "proxy_ssl_session_reuse on;",
        "keepalive 16;",
    ):
        assert line in text, line
    assert "proxy_pass http://" not in text


def test_connections_to_a_slot_are_kept_across_requests(env: Env) -> None:
    # One TLS handshake to the slot per kept connection, not per request.
    host, _, port = env.gateway.config.listen.rpartition(":")
    before = env.blue.connections
    connection = http.client.HTTPSConnection(host, int(port), context=env.context("alice"))
    for _ in range(40):
        connection.request("POST", "/predict", body=b"{}")
        assert connection.getresponse().read()
    connection.close()
    assert env.blue.count("/predict") == 40
    assert env.blue.connections - before <= 2  # at most one per nginx worker


def test_a_slot_with_a_certificate_of_another_ca_gets_no_request(env: Env, tmp_path: Path) -> None:
    # An impostor that would accept the gateway's client certificate, but presents a slot
    # certificate of another slot CA: nginx must refuse it, not send it the caller's request.
    other = init_slot_pki(tmp_path / "other-slot-pki")
    with upstream("impostor", env.slot_pki, server_pki=other) as impostor:
        config = _config(env.pki, env.slot_pki, impostor, env.green)
        with Gateway(config, tmp_path / "gateway") as gateway:
            status, body = env.request("alice", "POST", "/predict", b"{}", gateway=gateway)
            log = gateway.error_log.read_text()
    assert status == 502
    assert "no model server available" in json.loads(body)["error"]
    assert impostor.count() == 0
    assert "certificate verify failed" in log or "upstream SSL certificate" in log


def test_a_slot_certificate_without_the_slot_name_is_refused(env: Env, tmp_path: Path) -> None:
    # The slots' certificate names SLOT_SERVER_NAME; a gateway expecting another name refuses it.
    config = _config(env.pki, env.slot_pki, env.blue, env.green,
                     upstream_name="elsewhere.secure-pipeline.internal")  # fmt: skip
    with Gateway(config, tmp_path / "gateway") as gateway:
        status, _ = env.request("alice", "POST", "/predict", b"{}", gateway=gateway)
    assert status == 502
    assert env.seen() == 0


def test_a_gateway_without_the_slot_certificate_cannot_reach_a_slot(
    env: Env, tmp_path: Path
) -> None:
    # A client certificate of the gateway's public client CA (what every caller holds) does not
    # open a slot: the slot refuses the handshake.
    config = _config(env.pki, env.slot_pki, env.blue, env.green,
                     upstream_cert=env.pki.client_cert("ops"),
                     upstream_key=env.pki.client_key("ops"))  # fmt: skip
    with Gateway(config, tmp_path / "gateway") as gateway:
        status, _ = env.request("alice", "POST", "/predict", b"{}", gateway=gateway)
    assert status == 502
    assert env.seen() == 0
    assert env.blue.handshakes_refused > 0


@pytest.mark.parametrize(
    ("who", "path"),
    [
        ("alice", "/metrics"),
        ("alice", "/admin/models"),
        ("mallory", "/predict"),
        ("stranger", "/predict"),  # a valid certificate of an identity nobody configured
        ("two-uris", "/predict"),  # an X509-SVID has exactly one URI SAN
        ("no-san", "/predict"),  # CN=alice is not an identity
        ("upper", "/predict"),  # spiffe://secure-pipeline/ALICE is not alice
        ("foreign-domain", "/predict"),
    ],
)
def test_identity_without_the_role_is_forbidden(env: Env, who: str, path: str) -> None:
    status, body = env.request(who, "POST" if path == "/predict" else "GET", path, b"{}")
    assert status == 403, body
    assert "forbidden" in json.loads(body)["error"]
    assert env.seen() == 0


def test_admin_role_reaches_admin_routes(env: Env) -> None:
    assert env.request("ops", "GET", "/metrics")[0] == 200
    assert env.request("ops", "GET", "/admin/status")[0] == 404  # the upstream's own 404
    assert [r.path for r in env.blue.received] == ["/metrics", "/admin/status"]


def test_unrouted_paths_and_methods_are_refused_at_the_gateway(env: Env) -> None:
    assert env.request("ops", "GET", "/readyz")[0] == 404
    assert env.request("ops", "GET", "/")[0] == 404
    assert env.request("ops", "DELETE", "/predict")[0] == 405
    assert env.seen() == 0


def test_the_upstream_gets_the_path_that_was_authorised(env: Env) -> None:
    # nginx authorises the normalised path; the upstream must see that path, not the raw one.
    assert env.request("alice", "GET", "/predict/../metrics")[0] == 403
    assert env.seen() == 0
    assert env.request("alice", "POST", "/metrics/../predict", b"{}")[0] == 200
    assert [r.path for r in env.blue.received] == ["/predict"]


def test_gateway_healthz_needs_an_identity_but_no_role(env: Env) -> None:
    assert env.request("mallory", "GET", "/healthz") == (200, b'{"status":"ok"}\n')
    assert env.request("stranger", "GET", "/healthz")[0] == 403
    assert env.seen() == 0


def test_forged_identity_headers_are_overwritten(env: Env) -> None:
    forged = {
        IDENTITY_HEADER: "spiffe://secure-pipeline/ops",
        "X-SP-Client-Roles": "admin",
        "X-Forwarded-Client-Cert": "URI=spiffe://secure-pipeline/ops",
        "X_SP_Client_Identity": "ops",
    }
    assert env.request("alice", "POST", "/predict", b"{}", headers=forged)[0] == 200
    (received,) = env.blue.received
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers[IDENTITY_HEADER.lower()] == "spiffe://secure-pipeline/alice"
    for name in ("x-sp-client-roles", "x-forwarded-client-cert", "x_sp_client_identity"):
        assert name not in headers
    assert list(headers).count(IDENTITY_HEADER.lower()) == 1


# --- bad input ------------------------------------------------------------------------------------


def test_oversize_body_is_refused(env: Env) -> None:
    status, body = env.request("alice", "POST", "/predict", b"x" * (MAX_BODY + 1))
    assert status == 413
    assert "too large" in json.loads(body)["error"]
    assert env.request("alice", "POST", "/predict", b"x" * MAX_BODY)[0] == 200
    assert env.blue.count() == 1


def test_malformed_request_gets_4xx_and_the_gateway_stays_up(env: Env) -> None:
    host, _, port = env.gateway.config.listen.rpartition(":")
    for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"POST /predict HTTP/1.1\r\nHost\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            tls = env.context("alice").wrap_socket(raw, server_hostname=host)
            tls.sendall(garbage)
            answer = tls.recv(4096)
            assert answer.startswith(b"HTTP/1.1 4"), answer
    assert env.seen() == 0
    assert env.request("alice", "POST", "/predict", b"{}")[0] == 200


def test_access_log_records_requests_but_never_bodies_or_queries(env: Env) -> None:
    marker = "SECRET-MARKER-4c1d"
    body = json.dumps({"rows": [{"name": marker}]}).encode()
    access_log = env.gateway.access_log
    start = len(access_log.read_text().splitlines())
    assert env.request("alice", "POST", f"/predict?q={marker}", body)[0] == 200
    assert env.blue.received[0].body == body
    env.request("ops", "POST", "/predict", body, headers={"X-Note": marker})
    # nginx writes a request's line after answering it (after the client has its answer): wait
    # for both requests' lines, found by identity rather than by their place in the file.
    alice, ops = (f"spiffe://secure-pipeline/{who}" for who in ("alice", "ops"))
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in access_log.read_text().splitlines()[start:]]
        if {alice, ops} <= {line.get("identity") for line in lines}:
            break
        assert time.monotonic() < deadline, f"both requests were never logged: {lines}"
        time.sleep(0.02)
    assert marker not in access_log.read_text()
    last = next(line for line in lines if line.get("identity") == alice)
    assert (last["method"], last["uri"], last["status"]) == ("POST", "/predict", 200)
    assert last["upstream"] == env.blue.address
    assert set(last) >= {"time", "request_time"}


def test_error_pages_do_not_reveal_the_version(env: Env) -> None:
    host, _, port = env.gateway.config.listen.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=env.context("alice"))
    connection.request("GET", "/nowhere")
    response = connection.getresponse()
    text = response.read().decode() + str(response.getheaders())
    connection.close()
    assert response.status == 404
    assert "nginx/" not in text
    assert "1.22" not in text


# --- blue/green weights ---------------------------------------------------------------------


def _predict_many(env: Env, count: int) -> list[int]:
    return [env.request("alice", "POST", "/predict", b"{}")[0] for _ in range(count)]


def test_weight_zero_slot_takes_no_traffic(env: Env) -> None:
    assert set(_predict_many(env, 40)) == {200}
    assert (env.blue.count(), env.green.count()) == (40, 0)


def test_set_weights_splits_traffic(env: Env) -> None:
    env.gateway.set_weights({"blue": 90, "green": 10})
    assert set(_predict_many(env, 200)) == {200}
    assert env.blue.count() + env.green.count() == 200
    assert 10 <= env.green.count() <= 30


def test_a_not_ready_slot_is_bypassed(env: Env) -> None:
    env.gateway.set_weights({"blue": 90, "green": 10})
    env.green.ready = False
    assert set(_predict_many(env, 100)) == {200}
    assert env.blue.count() == 100  # every request was answered by blue
    assert env.green.count() > 0  # green was asked, said 503, and the request went on


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"blue": 80, "green": 10}, "sum to 100"),
        ({"blue": 90, "green": 10, "red": 0}, "unknown"),
        ({"blue": 100}, "missing"),
        ({"blue": 110, "green": -10}, "0..100"),
    ],
)
def test_set_weights_refuses_bad_weights(env: Env, weights: dict, message: str) -> None:
    before = env.gateway.conf_file.read_text()
    with pytest.raises(ConfigurationError, match=message):
        env.gateway.set_weights(weights)
    assert env.gateway.conf_file.read_text() == before
    assert env.request("alice", "POST", "/predict", b"{}")[0] == 200
    assert env.blue.count() == 1


# --- rate limit (a gateway of its own, with a low rate) ---------------------------------------


def test_over_the_rate_gets_429_and_never_reaches_the_model(env: Env, tmp_path: Path) -> None:
    # 30 requests a minute: one more every 2 s, so a slow machine cannot let many more through.
    config = _config(env.pki, env.slot_pki, env.blue, env.green, rate_per_second=0.5, burst=3)
    with Gateway(config, tmp_path / "limited") as limited:
        codes = [
            env.request("alice", "POST", "/predict", b"{}", gateway=limited)[0] for _ in range(12)
        ]
        other = env.request("ops", "POST", "/predict", b"{}", gateway=limited)[0]
    assert 4 <= codes.count(200) <= 5
    assert set(codes) == {200, 429}
    assert env.blue.count() == codes.count(200) + 1
    assert other == 200  # the limit is per identity


def test_gateway_refuses_to_start_without_nginx(env: Env, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="apt-get install nginx"):
        Gateway(env.gateway.config, tmp_path, nginx=str(tmp_path / "no-nginx"))


# What `secure-pipeline serving up` does: start the gateway and exit, leaving nginx running.
_START_AND_EXIT = """
import json, sys
from pathlib import Path
from secure_pipeline.serving.gateway import Gateway, GatewayConfig, Slot
values = json.loads(sys.argv[1])
values["slots"] = tuple(Slot(**slot) for slot in values["slots"])
Gateway(GatewayConfig(**values), Path(sys.argv[2])).start()
"""


def test_a_gateway_started_by_another_process_is_attached(env: Env, tmp_path: Path) -> None:
    config = _config(env.pki, env.slot_pki, env.blue, env.green)
    values = {
        "listen": config.listen,
        "server_cert": str(config.server_cert),
        "server_key": str(config.server_key),
        "client_ca": str(config.client_ca),
        "identities": {k: list(v) for k, v in config.identities.items()},
        "routes": dict(config.routes),
        "rate_per_second": config.rate_per_second,
        "burst": config.burst,
        "slots": [{"name": s.name, "address": s.address, "weight": s.weight} for s in config.slots],
        "max_body_bytes": config.max_body_bytes,
        "upstream_cert": str(config.upstream_cert),
        "upstream_key": str(config.upstream_key),
        "upstream_ca": str(config.upstream_ca),
    }
    workdir = tmp_path / "detached"
    started = subprocess.run(
        [sys.executable, "-c", _START_AND_EXIT, json.dumps(values), str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    gateway = Gateway.attach(workdir)
    try:
        assert gateway.pid is not None
        assert gateway.config == config
        with pytest.raises(GatewayError, match="already running"):
            Gateway(config, workdir).start()
        gateway.set_weights({"blue": 0, "green": 100})
        assert env.request("alice", "POST", "/predict", b"{}", gateway=gateway)[0] == 200
        assert (env.blue.count(), env.green.count()) == (0, 1)
        assert Gateway.attach(workdir).config.slots[1].weight == 100
    finally:
        gateway.stop()
    with pytest.raises(GatewayError, match="no gateway is running"):
        Gateway.attach(workdir)
