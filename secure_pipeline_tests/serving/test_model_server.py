"""The model server: verify before load, ready only then, strict input schema, metrics.

Runs against the shared real reference run (a signed, registered model in a real MLflow store).
"""

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.engineering import build_features
from secure_pipeline.pipeline import RESERVED_SPLIT_COLUMN
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.registry.bundle import MODEL_FILE
from secure_pipeline.registry.signing import trust_policy_from_environment
from secure_pipeline.registry.verification import resolve
from secure_pipeline.serving.loader import load_verified
from secure_pipeline.serving.server import ModelService, ServingLimits, create_app
from secure_pipeline.validation.parsing import parse_fileset

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
        model = load_verified(
            resolved.directory, trust=trust_policy_from_environment(), pipeline=PIPELINE
        )
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
    assert 'secure_pipeline_requests_total{code="200",route="/predict"} 1.0' in text
    assert 'secure_pipeline_requests_total{code="400",route="/predict"} 1.0' in text
    assert 'secure_pipeline_request_seconds_bucket{le="0.005",route="/predict"}' in text
    assert "secure_pipeline_prediction_score_count 10.0" in text
    assert f'model_sha256="{state.model_sha}"' in text
    assert "secure_pipeline_ready 1.0" in text


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
        assert "secure_pipeline_ready 0.0" in client.get("/metrics").text
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
