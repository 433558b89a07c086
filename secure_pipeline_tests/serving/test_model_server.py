"""The model server: verify before load, ready only then, strict input schema, metrics.

Runs against the shared real reference run (a signed, registered model in a real MLflow store).
The request handling is exercised in process (Starlette's test client); the slot's mutual TLS
against a real slot process started with ``secure-pipeline serve`` (and a real nginx gateway in
front of it), as `secure-pipeline serving up` starts one.
"""

import http.client
import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.engineering import build_features
from secure_pipeline.pipeline import RESERVED_SPLIT_COLUMN
from secure_pipeline.promotion.bluegreen import close_slot_connections, scrape, wait_ready
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.registry.bundle import MODEL_FILE
from secure_pipeline.registry.verification import resolve
from secure_pipeline.serving.certs import (
    CONTROLLER_IDENTITY,
    GATEWAY_IDENTITY,
    SLOT_SERVER_NAME,
    DevPki,
    SlotPki,
    init_dev_pki,
    init_slot_pki,
    issue_client_cert,
)
from secure_pipeline.serving.gateway import Gateway, GatewayConfig, Slot
from secure_pipeline.serving.loader import load_verified
from secure_pipeline.serving.server import ModelService, RequestError, ServingLimits, create_app
from secure_pipeline.spec import Column
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.services import free_port

CLI = str(Path(sys.executable).parent / "secure-pipeline")

PIPELINE = adult_pipeline()

with warnings.catch_warnings():
    # Starlette's test client suggests another HTTP client package; the behaviour is the same.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def state(reference_run, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    return reference_run


def _rows(count: int = 25):
    """The first rows of the Adult test file, parsed and typed."""
    data = (DATA_DIR / "adult.test").read_bytes()
    return parse_fileset({"test": data}, ADULT_SCHEMA).frame.head(count)


def _payload(frame, fields: list[str]) -> list[dict]:
    """The rows as a caller sends them: JSON numbers, strings and nulls."""
    rows = []
    for record in frame[fields].astype(object).to_dict(orient="records"):
        rows.append({
            key: None if value is None or value is pd.NA or value != value
            else value.item() if isinstance(value, np.generic) else value
            for key, value in record.items()
        })  # fmt: skip
    return rows


def _started(service: ModelService) -> TestClient:
    client = TestClient(create_app(service))
    client.__enter__()  # runs the lifespan: verification starts in the background
    deadline = time.monotonic() + 120
    while service.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    return client


@pytest.fixture
def served(state):
    service = ModelService(PIPELINE, f"models:/{state.name}/{state.version}", "blue")
    client = _started(service)
    try:
        yield service, client
    finally:
        client.__exit__(None, None, None)


def test_serves_the_verified_model_with_correct_predictions(served, state) -> None:
    service, client = served
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["model_sha256"] == state.model_sha
    # The bundle carries a verified ONNX copy: the slot scores through it, and still gives
    # the verified skops model's scores (compared below).
    assert ready.json()["runtime"] == "onnx"
    frame = _rows()
    # Edges of every encoding: band cut points and range ends, missing categories, zero amounts.
    edges = frame.head(6).copy().reset_index(drop=True)
    edges["age"] = [17, 25, 45, 65, 90, 34]
    edges["capital_gain"] = [0, 99999, 0, 1, 0, 5]
    for column in ("workclass", "occupation", "native_country"):
        edges.loc[[1, 3], column] = None
    frame = pd.concat([frame, edges], ignore_index=True)
    fields = [f.name for f in service.fields]
    assert "sex" not in fields  # not inputs: callers do not send them
    assert "race" not in fields
    answer = client.post("/predict", json={"rows": _payload(frame, fields)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_sha256"] == state.model_sha
    assert body["slot"] == "blue"
    # the same rows through the training-time feature derivation and the verified model
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        model = load_verified(resolved.directory, trust=trust_policy(), pipeline=PIPELINE)
    features = build_features(frame.assign(**{RESERVED_SPLIT_COLUMN: "test"}), PIPELINE)
    expected = model.model.predict_proba(features[model.inputs])[:, 1]
    got = np.array([p["score"] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    labels = [p["label"] for p in body["predictions"]]
    assert labels == [">50K" if s >= 0.5 else "<=50K" for s in expected]


def test_bad_requests_get_clear_4xx_and_the_server_stays_up(served) -> None:
    service, client = served
    frame = _rows(2)
    fields = [f.name for f in service.fields]
    good = _payload(frame, fields)
    cases = [
        (client.post("/predict", content=b"{not json", headers=_json()), 400, "not valid JSON"),
        (client.post("/predict", content=b"NaN", headers=_json()), 400, "not valid JSON"),
        (client.post("/predict", content=b"[]", headers=_json()), 400, "exactly one key"),
        (client.post("/predict", content=json.dumps({"rows": good}),
                     headers={"Content-Type": "text/plain"}), 415, "Content-Type"),
        (client.post("/predict", json={"rows": []}), 400, "at least one row"),
        (client.post("/predict", json={"rows": [{}] * 1001}), 413, "rows per request"),
        (client.post("/predict", content=b" " * 300_000, headers=_json()), 413, "larger than"),
    ]  # fmt: skip
    for response, status, message in cases:
        assert response.status_code == status, (status, response.text)
        assert message in response.json()["error"]
    # What the parser said is not repeated (it can quote the body): what was expected, where.
    garbled = client.post("/predict", content=b'{"rows": [SECRET-4c1d]}', headers=_json())
    assert garbled.status_code == 400
    assert "SECRET" not in garbled.text
    assert garbled.json()["expected"].startswith("a UTF-8 JSON object")
    assert (garbled.json()["line"], garbled.json()["column"]) == (1, 11)
    wrong = [
        {**good[0], "age": "forty"},
        {**good[0], "workclass": "Pirate"},
        {**good[0], "age": 300},
        {**good[0], "age": True},
        {k: v for k, v in good[0].items() if k != "education"},
        {**good[0], "ssn": "123-45-6789"},
    ]
    response = client.post("/predict", json={"rows": wrong})
    assert response.status_code == 422
    problems = {(p["row"], p.get("field")): p["expected"] for p in response.json()["problems"]}
    assert problems[(0, "age")] == "a number (int)"
    assert problems[(1, "workclass")].startswith("one of: ")
    assert problems[(2, "age")] == "a number <= 90"
    assert problems[(3, "age")] == "a number (int)"
    assert problems[(4, "education")] == "present"
    assert problems[(5, "ssn")] == "no such field"
    # still serving
    assert client.post("/predict", json={"rows": good}).status_code == 200
    assert client.get("/healthz").status_code == 200


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_metrics_report_requests_latency_predictions_and_the_model(served, state) -> None:
    service, client = served
    frame = _rows(10)
    rows = _payload(frame, [f.name for f in service.fields])
    client.post("/predict", json={"rows": rows})
    client.post("/predict", content=b"{", headers=_json())
    text = client.get("/metrics").text
    # prometheus-client writes the labels sorted by name
    model = f'model_version="{state.version}",pipeline="adult"'
    for code in ("200", "400"):
        series = f'{{code="{code}",{model},route="/predict",slot="blue"}}'
        assert f"secure_pipeline_requests_total{series} 1.0" in text
    assert f'secure_pipeline_request_duration_seconds_bucket{{le="0.005",{model},' in text
    assert f'secure_pipeline_prediction_score_count{{{model},slot="blue"}} 10.0' in text
    assert f'model_sha256="{state.model_sha}"' in text
    assert 'secure_pipeline_ready{pipeline="adult",slot="blue"} 1.0' in text


def _count(text: str, code: str) -> float:
    """The /predict request counter of ``code`` in a metrics page (0 when absent)."""
    pattern = rf'secure_pipeline_requests_total{{code="{code}",[^}}]*route="/predict"[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


@pytest.mark.parametrize(
    "body",
    [b'{"rows": [{"age": 1e999}]}', b'{"rows": [{"age": -1E+400}]}', b'{"rows": [1e309]}',
     b'{"rows": [{"age": Infinity}]}', b'{"rows": [{"age": -Infinity}]}', b'[NaN]'],
)  # fmt: skip
def test_non_finite_numbers_are_refused_at_parse_time_and_counted(served, body: bytes) -> None:
    _, client = served
    response = client.post("/predict", content=body, headers=_json())
    assert response.status_code == 400, response.text
    assert "NaN, Infinity and numbers beyond the float range" in response.json()["error"]
    json.loads(response.text, parse_constant=_no_constant)  # strict JSON, nothing non-finite
    assert _count(client.get("/metrics").text, "400") == 1.0


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in an error document")


@pytest.mark.parametrize(
    "change",
    [
        {"age": "forty"}, {"age": True}, {"age": 300}, {"age": 16}, {"age": 17.5},
        {"age": None}, {"age": 2**60 + 1}, {"age": 10**400}, {"workclass": "Pirate"},
        {"workclass": 7}, {"capital_gain": True}, {"capital_gain": None},
        {"ssn": "123-45-6789"},
    ],
    ids=repr,
)  # fmt: skip
def test_a_bad_value_among_many_rows_is_refused_as_alone(served, change) -> None:
    # Many rows are tested a column at a time, one row value by value: the same refusal.
    service, client = served
    good = _payload(_rows(100), [f.name for f in service.fields])
    bad = {**good[57], **change}
    alone = client.post("/predict", json={"rows": [bad]})
    among = client.post("/predict", json={"rows": [*good[:57], bad, *good[58:]]})
    assert alone.status_code == among.status_code == 422, among.text
    (expected,) = alone.json()["problems"]
    (found,) = among.json()["problems"]
    assert found == {**expected, "row": 57}


def test_a_missing_field_among_many_rows_is_refused_as_alone(served) -> None:
    service, client = served
    good = _payload(_rows(100), [f.name for f in service.fields])
    bad = {k: v for k, v in good[57].items() if k != "education"}
    among = client.post("/predict", json={"rows": [*good[:57], bad, *good[58:]]})
    assert among.status_code == 422
    assert among.json()["problems"] == [{"row": 57, "field": "education", "expected": "present"}]


def test_an_integer_beyond_the_float_range_is_a_schema_error(served) -> None:
    service, client = served
    row = _payload(_rows(1), [f.name for f in service.fields])[0]
    response = client.post("/predict", json={"rows": [{**row, "age": 10**400}]})
    assert response.status_code == 422, response.text
    (problem,) = response.json()["problems"]
    assert problem["expected"] == "a finite number"
    assert problem["found"] == f"an integer of {(10**400).bit_length()} bits"
    assert _count(client.get("/metrics").text, "422") == 1.0


def test_error_documents_never_hold_non_finite_numbers() -> None:
    refused = RequestError(422, "bad", problems=[{"found": math.inf}, {"found": (math.nan,)}])
    text = json.dumps(refused.body(), allow_nan=False)
    assert "non-finite number" in text


class _BrokenModel:
    """A model that fails while scoring, with a message quoting the request."""

    def predict_proba(self, frame: pd.DataFrame) -> None:
        raise RuntimeError(f"cannot score age={frame.iloc[0].to_dict()} SECRET-77")


def test_an_unexpected_failure_answers_500_and_is_counted(served) -> None:
    service, client = served
    rows = _payload(_rows(1), [f.name for f in service.fields])
    # The skops path with a model that fails (the ONNX copy is set aside for it).
    model, service.model = service.model, _BrokenModel()
    predictor, service.predictor = service.predictor, None
    try:
        response = client.post("/predict", json={"rows": rows})
    finally:
        service.model, service.predictor = model, predictor
    assert response.status_code == 500
    assert response.json() == {"error": "internal error while scoring"}
    assert "SECRET" not in response.text
    text = client.get("/metrics").text
    assert _count(text, "500") == 1.0
    assert re.search(
        r'secure_pipeline_request_duration_seconds_count\{[^}]*route="/predict"[^}]*\} 1\.0', text
    )
    assert client.post("/predict", json={"rows": rows}).status_code == 200


def test_a_tampered_model_never_becomes_ready(state, tmp_path: Path) -> None:
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        bundle = Path(shutil.copytree(resolved.directory, tmp_path / "bundle"))
    model = bundle / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    service = ModelService(PIPELINE, str(bundle), "green", ServingLimits())
    client = _started(service)
    try:
        assert service.state == "refused"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "refusing to load the model" in ready.json()["reason"]
        refused = client.post("/predict", json={"rows": [{"age": 30}]})
        assert refused.status_code == 503
        assert "not ready" in refused.json()["error"]
        metrics = client.get("/metrics").text
        assert 'secure_pipeline_ready{pipeline="adult",slot="green"} 0.0' in metrics
    finally:
        client.__exit__(None, None, None)


def test_request_rows_encode_exactly_as_training_does() -> None:
    """Every feature kind (categories, bands, log amounts, numbers) on edge values."""
    from secure_pipeline.features.engineering import feature_catalog
    from secure_pipeline.serving.server import input_fields, rows_to_frame

    names = [f.name for f in feature_catalog(PIPELINE)]
    fields = input_fields(PIPELINE, names)
    frame = _rows(8).reset_index(drop=True)
    frame["age"] = [17, 24, 25, 35, 64, 65, 66, 90]
    frame["capital_gain"] = [0, 1, 99999, 0, 7, 0, 0, 3]
    for column in ("workclass", "occupation", "native_country"):
        frame.loc[[2, 5], column] = None
    served = rows_to_frame(_payload(frame, [f.name for f in fields]), fields, PIPELINE, names,
                           ServingLimits())  # fmt: skip
    trained = build_features(frame.assign(**{RESERVED_SPLIT_COLUMN: "test"}), PIPELINE)[names]
    pd.testing.assert_frame_equal(served, trained, check_dtype=False)
    assert (served["age_band"] == [0, 0, 1, 2, 4, 5, 5, 5]).all()


# --- the slot process: mutual TLS with the slot CA only -------------------------------------


@dataclass
class TlsSlot:
    address: str
    slot_pki: SlotPki
    gateway_pki: DevPki  # the gateway's public client CA, as every caller holds one

    def context(
        self, cert: Path | None = None, key: Path | None = None, tls12: bool = False
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.slot_pki.ca_cert)
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    def as_client(self, name: str, **options: bool) -> ssl.SSLContext:
        return self.context(
            self.slot_pki.client_cert(name), self.slot_pki.client_key(name), **options
        )

    def predict(self, context: ssl.SSLContext, body: bytes) -> tuple[int, bytes]:
        host, _, port = self.address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            tls = context.wrap_socket(raw, server_hostname=SLOT_SERVER_NAME)
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.sock = tls
            connection.request("POST", "/predict", body, _json())
            response = connection.getresponse()
            return response.status, response.read()

    def plain_predict(self, body: bytes) -> tuple[int, bytes]:
        host, _, port = self.address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("POST", "/predict", body, _json())
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def predictions_counted(self) -> float:
        return scrape(self.address, self.slot_pki).requests


@pytest.fixture(scope="module")
def tls_slot(
    reference_run, dev_keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsSlot]:
    """``secure-pipeline serve`` with the TLS files of a slot PKI, serving the reference model."""
    work = tmp_path_factory.mktemp("tls-slot")
    slot_pki = init_slot_pki(work / "slot-pki")
    gateway_pki = init_dev_pki(work / "gateway-pki")
    issue_client_cert(gateway_pki.directory, "alice")
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("SECURE_PIPELINE_", "MLFLOW_", "AWS_"))}  # fmt: skip
    environ.update(SECURE_PIPELINE_HOME=str(reference_run.home),
                   DAGSTER_HOME=str(reference_run.home),
                   SECURE_PIPELINE_DEV_KEYS=str(dev_keys))  # fmt: skip
    port = free_port()
    log = work / "slot.log"
    command = [
        CLI, "serve", f"models:/{reference_run.name}/{reference_run.version}", "--slot", "blue",
        "--port", str(port), "--tls-cert", str(slot_pki.server_cert),
        "--tls-key", str(slot_pki.server_key), "--client-ca", str(slot_pki.ca_cert),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environ, stdout=out, stderr=out)
    slot = TlsSlot(f"127.0.0.1:{port}", slot_pki, gateway_pki)
    try:
        ready, why = wait_ready(slot.address, 180, slot_pki)
        assert ready, f"{why}\n{log.read_text()}"
        yield slot
    finally:
        close_slot_connections(slot.address)
        process.terminate()
        process.wait(timeout=30)


ROW = {
    "age": 39, "workclass": "State-gov", "education": "Bachelors",
    "education_num": 13, "marital_status": "Never-married", "occupation": "Adm-clerical",
    "relationship": "Not-in-family", "capital_gain": 2174, "capital_loss": 0,
    "hours_per_week": 40, "native_country": "United-States",
}  # fmt: skip
BODY = json.dumps({"rows": [ROW]}).encode()
# What a refused handshake looks like to a client: an alert (TLS 1.3 sends the server's after
# the client's Finished, so it may arrive only with the first read) or a closed connection.
REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, TimeoutError)


def test_a_slot_answers_its_gateway_and_controller_certificates(tls_slot: TlsSlot) -> None:
    before = tls_slot.predictions_counted()
    status, body = tls_slot.predict(tls_slot.as_client(GATEWAY_IDENTITY), BODY)
    assert status == 200, body
    assert json.loads(body)["slot"] == "blue"
    assert tls_slot.predict(tls_slot.as_client(CONTROLLER_IDENTITY), BODY)[0] == 200
    assert tls_slot.predictions_counted() == before + 2


def test_a_slot_refuses_plain_http(tls_slot: TlsSlot) -> None:
    before = tls_slot.predictions_counted()
    with pytest.raises((*REFUSED, http.client.BadStatusLine)):
        tls_slot.plain_predict(BODY)
    assert tls_slot.predictions_counted() == before


def test_a_slot_refuses_tls_without_a_client_certificate(tls_slot: TlsSlot) -> None:
    before = tls_slot.predictions_counted()
    with pytest.raises(REFUSED):
        tls_slot.predict(tls_slot.context(), BODY)
    assert tls_slot.predictions_counted() == before


def test_a_slot_refuses_a_client_certificate_of_the_gateways_client_ca(tls_slot: TlsSlot) -> None:
    # alice's certificate opens the gateway, not a slot: the slot CA is a different CA.
    pki = tls_slot.gateway_pki
    before = tls_slot.predictions_counted()
    with pytest.raises(REFUSED):
        tls_slot.predict(tls_slot.context(pki.client_cert("alice"), pki.client_key("alice")), BODY)
    assert tls_slot.predictions_counted() == before


def test_a_slot_refuses_its_own_server_certificate_as_a_client(tls_slot: TlsSlot) -> None:
    # Same CA, but serverAuth only: not a client certificate.
    pki = tls_slot.slot_pki
    before = tls_slot.predictions_counted()
    with pytest.raises(REFUSED):
        tls_slot.predict(tls_slot.context(pki.server_cert, pki.server_key), BODY)
    assert tls_slot.predictions_counted() == before


def test_a_slot_refuses_a_tls12_client_in_the_handshake(tls_slot: TlsSlot) -> None:
    host, _, port = tls_slot.address.rpartition(":")
    context = tls_slot.as_client(GATEWAY_IDENTITY, tls12=True)
    # asyncio's TLS server closes the connection on a ClientHello below TLS 1.3 without an
    # alert: to the client an EOF in the handshake.
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match="(?i)protocol version|alert|unsupported|EOF"),
    ):
        context.wrap_socket(raw, server_hostname=SLOT_SERVER_NAME)
    # the same client certificate over TLS 1.3 is served
    assert tls_slot.predict(tls_slot.as_client(GATEWAY_IDENTITY), BODY)[0] == 200


def test_through_the_gateway_the_same_request_succeeds(tls_slot: TlsSlot, tmp_path: Path) -> None:
    pki, slot_pki = tls_slot.gateway_pki, tls_slot.slot_pki
    config = GatewayConfig(
        listen=f"127.0.0.1:{free_port()}", server_cert=pki.server_cert,
        server_key=pki.server_key, client_ca=pki.ca_cert, identities={"alice": ("predict",)},
        routes={"/predict": "predict"}, rate_per_second=100, burst=100,
        slots=(Slot("blue", tls_slot.address, 100),),
        upstream_cert=slot_pki.client_cert(GATEWAY_IDENTITY),
        upstream_key=slot_pki.client_key(GATEWAY_IDENTITY), upstream_ca=slot_pki.ca_cert,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(pki.client_cert("alice"), pki.client_key("alice"))
    before = tls_slot.predictions_counted()
    with Gateway(config, tmp_path / "gateway") as gateway:
        host, _, port = config.listen.rpartition(":")
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        connection.request("POST", "/predict", BODY, _json())
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        # nginx logs a request after answering it: wait for the line rather than race it.
        deadline = time.monotonic() + 10
        while not gateway.access_log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        upstream = json.loads(gateway.access_log.read_text().splitlines()[-1])["upstream"]
    assert response.status == 200, answer
    assert answer["slot"] == "blue"
    assert len(answer["predictions"]) == 1
    assert upstream == tls_slot.address
    assert tls_slot.predictions_counted() == before + 1


def test_the_exec_probe_asks_the_slot_over_mutual_tls(tls_slot: TlsSlot) -> None:
    """What the Kubernetes probes run: a client of the slot CA inside the slot's container."""
    pki = tls_slot.slot_pki
    _, _, port = tls_slot.address.rpartition(":")

    def probe(path: str, cert: Path, key: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "secure_pipeline.serving.probe", path, "--port", port,
             "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca_cert)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    controller = pki.client_cert(CONTROLLER_IDENTITY), pki.client_key(CONTROLLER_IDENTITY)
    for path in ("/healthz", "/readyz"):
        result = probe(path, *controller)
        assert result.returncode == 0, result.stderr
    other = tls_slot.gateway_pki
    refused = probe("/readyz", other.client_cert("alice"), other.client_key("alice"))
    assert refused.returncode == 1
    assert "no answer" in refused.stderr


def test_serve_without_tls_files_names_what_to_pass(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_PIPELINE_")}
    result = subprocess.run(
        [CLI, "serve", "models:/adult/1", "--slot", "blue", "--tls-cert", str(tmp_path / "c")],
        capture_output=True, text=True, env=environ, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "mutual TLS only" in result.stderr
    assert "missing: --tls-key, --client-ca" in result.stderr


# Values a caller may send in JSON, and a few only Python callers could.
_EDGE_VALUES = [
    None, True, False, 0, 1, -1, 16, 17, 17.0, 17.5, 90, 90.0, 90.5, 91, 2**53, 2**53 + 1,
    -(2**53) - 1, 2**60 + 1, 10**400, 1e308, -1e308, math.inf, -math.inf, math.nan, -0.0, 3.0,
    "", " ", "17", "State-gov", " State-gov ", "Pirate", "true", [], {}, (1,), b"17",
]  # fmt: skip


@pytest.mark.parametrize(
    "column",
    [
        Column("n", "int", minimum=17, maximum=90),
        Column("n", "int", nullable=True),
        Column("n", "float", minimum=0.0),
        Column("n", "float", nullable=True, maximum=1e6),
        Column("c", "category", allowed=("State-gov", "Private")),
        Column("c", "category", nullable=True, allowed=("State-gov",)),
        Column("b", "bool"),
        Column("b", "bool", nullable=True),
        Column("s", "string", aliases=(("17", "seventeen"),)),
    ],
    ids=lambda c: f"{c.dtype}{'-nullable' if c.nullable else ''}",
)
def test_the_fast_value_test_passes_only_what_check_passes(column: Column) -> None:
    # The request path tests values with `_accepts` and asks `check` only when it fails: a value
    # it passed that `check` refuses would be scored. It must also pass the plain good values,
    # or every request would take the slow path.
    from secure_pipeline.serving.server import InputField

    field = InputField(column, ("?",))
    for value in _EDGE_VALUES:
        if field._accepts(value):
            assert field.check(value) is None, (column, value)
    for value in _EDGE_VALUES:
        many = [value] * 20
        if field.all_valid(many):
            assert field.check(value) is None, (column, value)
    good = {"int": [17, 90, 40.0], "float": [0.0, 2.5, 7], "category": ["State-gov"],
            "bool": [True, False], "string": ["anything"]}[column.dtype]  # fmt: skip
    assert all(field._accepts(v) for v in good)
    assert field.all_valid(good * 10)


def test_columns_are_taken_once_for_any_number_of_fields() -> None:
    from secure_pipeline.serving.server import InputField, _columns

    fields = [InputField(Column(n, "int"), ()) for n in ("a", "b", "c")]
    rows = [{"a": 1, "b": 2, "c": 3}, {"c": 6, "b": 5, "a": 4}]
    assert _columns(rows, fields) == {"a": (1, 4), "b": (2, 5), "c": (3, 6)}
    assert _columns(rows, fields[:1]) == {"a": [1, 4]}
    assert _columns(rows, []) == {}
