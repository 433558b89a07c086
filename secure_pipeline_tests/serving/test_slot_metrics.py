"""The slot's /metrics page: the names, types and labels dashboards and alerts are written against.

A real slot (the shared reference run's verified model, in process) answers real /predict and
/feedback requests; its page is read as Prometheus reads it (prometheus-client's parser) and
linted by the real ``promtool check metrics``.
"""

import math
import re
import shutil
import subprocess
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from secure_pipeline.promotion.canary import parse_metrics
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.serving.server import ModelService, create_app
from secure_pipeline.validation.parsing import parse_fileset

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PIPELINE = adult_pipeline()
SLOT = {"pipeline", "slot"}
MODEL = {*SLOT, "model_version"}
# DESIGN15 A: exposition name -> (TYPE line, labels every sample carries besides le).
CONTRACT = {
    "secure_pipeline_requests_total": ("counter", {*MODEL, "route", "code"}),
    "secure_pipeline_request_duration_seconds": ("histogram", {*MODEL, "route"}),
    "secure_pipeline_prediction_score": ("histogram", MODEL),
    "secure_pipeline_predictions_total": ("counter", {*MODEL, "label"}),
    "secure_pipeline_ready": ("gauge", SLOT),
    "secure_pipeline_model_info": (
        "gauge",
        {*MODEL, "model_ref", "model_sha256", "state"},
    ),
    "secure_pipeline_live_recorded_rows_total": ("counter", SLOT),
    "secure_pipeline_live_dropped_rows_total": ("counter", SLOT),
    "secure_pipeline_live_batches_written_total": ("counter", {*SLOT, "kind"}),
    "secure_pipeline_live_batch_failures_total": ("counter", SLOT),
    "secure_pipeline_feedback_total": ("counter", SLOT),
}
PROCESS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_collections_total",
)


@pytest.fixture
def state(reference_run, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    return reference_run


def _payload(service: ModelService, count: int) -> list[dict]:
    frame = parse_fileset({"test": (DATA_DIR / "adult.test").read_bytes()}, ADULT_SCHEMA).frame
    names = [f.name for f in service.fields]
    return [
        {k: None if v is None or v is pd.NA or v != v
         else v.item() if isinstance(v, np.generic) else v
         for k, v in record.items()}
        for record in frame[names].head(count).astype(object).to_dict(orient="records")
    ]  # fmt: skip


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


@pytest.fixture
def page(state) -> str:
    """The metrics page of a slot after real predictions, a refusal and feedback."""
    service = ModelService(PIPELINE, f"models:/{state.name}/{state.version}", "blue")
    client = TestClient(create_app(service))
    client.__enter__()
    try:
        deadline = time.monotonic() + 120
        while service.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.state == "ready", service.reason
        answer = client.post("/predict", json={"rows": _payload(service, 8)})
        assert answer.status_code == 200, answer.text
        assert client.post("/predict", json={"rows": []}).status_code == 400
        first = answer.json()["predictions"][0]["id"]
        feedback = {"feedback": [{"id": first, "label": ">50K"}]}
        assert client.post("/feedback", json=feedback).status_code == 202
        service.recorder.flush()  # one traffic and one feedback batch written
        return client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)


def test_the_page_has_every_contract_name_type_and_label(page: str, state) -> None:
    types, samples = _types(page), _samples(page)
    for name, (kind, labels) in CONTRACT.items():
        assert types.get(name) == kind, (name, types.get(name))
        series = [s for n, found in samples.items() if n.startswith(name) for s in found]
        assert series, f"{name} has no samples"
        for labelled in series:
            assert set(labelled) - {"le"} == labels, (name, labelled)
            assert (labelled["pipeline"], labelled["slot"]) == ("adult", "blue")
            if "model_version" in labels:
                assert labelled["model_version"] == state.version, (name, labelled)
    for name in PROCESS:
        assert name in samples, f"{name} is missing: the process collectors are not registered"
    (info,) = samples["secure_pipeline_model_info"]
    assert (info["model_sha256"], info["state"]) == (state.model_sha, "ready")

    def value(name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        raise AssertionError(f"no {name} {labels}")

    assert value("secure_pipeline_live_recorded_rows_total") == 8
    assert value("secure_pipeline_feedback_total") == 1
    assert value("secure_pipeline_live_batches_written_total", kind="traffic") == 1
    assert value("secure_pipeline_live_batches_written_total", kind="feedback") == 1
    assert value("secure_pipeline_prediction_score_count") == 8
    assert value("secure_pipeline_requests_total", route="/feedback", code="202") == 1
    # The canary reads this page: the new names, summed over the new labels.
    metrics = parse_metrics(page)
    assert (metrics.requests, metrics.errors) == (2, 1)
    assert metrics.model_sha256 == state.model_sha
    assert metrics.latency[-1][1] == 2


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus)")
def test_promtool_finds_nothing_to_lint(page: str) -> None:
    linted = subprocess.run(["promtool", "check", "metrics"], input=page.encode(),
                            capture_output=True, timeout=60, check=False)  # fmt: skip
    assert linted.returncode == 0, linted.stdout.decode() + linted.stderr.decode()


def test_two_slots_in_one_process_keep_their_own_metrics() -> None:
    blue = ModelService(PIPELINE, "models:/adult/1", "blue")
    green = ModelService(PIPELINE, "models:/adult/1", "green")  # no duplicate registration
    blue.observe_request("/predict", "200", 0.01)
    blue_page, green_page = (generate_latest(s.registry).decode() for s in (blue, green))
    assert 'route="/predict",slot="blue"' in blue_page
    assert "secure_pipeline_requests_total{" not in green_page
    for text in (blue_page, green_page):
        assert "process_cpu_seconds_total" in text
        assert "python_gc_objects_collected_total" in text
    # Before a model loaded: not ready, no version, the reference asked for.
    assert 'secure_pipeline_ready{pipeline="adult",slot="green"} 0.0' in green_page
    assert 'model_ref="models:/adult/1",model_sha256="",model_version=""' in green_page


def test_the_score_histogram_exposes_what_prometheus_clients_histogram_would() -> None:
    """Scores observed a request at a time give the samples of one observe() per score."""
    from prometheus_client import CollectorRegistry, Histogram

    from secure_pipeline.serving.server import SCORE_BUCKETS, _ScoreHistogram

    values = np.array([0.0, 0.1, 0.1000001, 0.5, 0.49999, 0.73, 1.0, 0.3, 0.3, 0.95])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = _ScoreHistogram("s", "Predicted scores.", ["slot"], SCORE_BUCKETS, ours)
    single = Histogram("s", "Predicted scores.", ["slot"], buckets=SCORE_BUCKETS, registry=theirs)
    # Requests of several rows and of one row (observed by bisection, not numpy), on bounds too.
    requests = [("blue", values[:4]), ("blue", values[4:]), ("green", values[:1])]
    requests += [("red", values[i : i + 1]) for i in range(len(values))]
    # NaN (a graph fed a value it does not impute): in no bucket and not counted, either path
    requests += [("nan", np.array([math.nan])), ("nan", np.array([0.2, math.nan]))]
    for slot, chunk in requests:
        batched.observe({"slot": slot}, chunk)
        for value in chunk:
            single.labels(slot=slot).observe(float(value))

    def samples(registry) -> dict:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    mine, expected = samples(ours), samples(theirs)
    assert mine.keys() == expected.keys()
    for key, value in expected.items():  # sums added in another order: equal to the last bits
        assert mine[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert mine[("s_count", (("slot", "nan"),))] == 1
    assert mine[("s_count", (("slot", "blue"),))] == len(values)
    assert mine[("s_count", (("slot", "red"),))] == len(values)
