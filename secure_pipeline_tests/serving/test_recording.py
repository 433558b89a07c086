"""Live traffic recording: signed batches, bounded memory, and a reader that trusts nothing else.

Real stores (local and the moto S3 server), the real development signers and trust policy,
real Parquet. The slot end to end (its /predict and /feedback, recording, the flush at shutdown)
runs in process against the shared reference run (a signed, promoted model).
"""

import dataclasses
import datetime as dt
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from secure_pipeline.environment import Environment
from secure_pipeline.errors import PolicyViolation
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.serving.recording import (
    FEEDBACK,
    LIVE_BATCH_TYPE,
    MAX_PENDING,
    TRAFFIC,
    LiveRecorder,
    load_window,
    new_ids,
    utc_iso,
    window_digest,
    write_batch,
)
from secure_pipeline.serving.server import ModelService, create_app
from secure_pipeline.spec import MonitoringSpec
from secure_pipeline.storage import encryption as enc
from secure_pipeline.storage.resources import store_resource
from secure_pipeline.storage.tables import table_to_parquet
from secure_pipeline.trust.attestations import sign, statement, store_envelope
from secure_pipeline.trust.identities import INGEST, SERVE
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.conftest import overwrite_raw
from secure_pipeline_tests.test_real_tables import credit_pipeline

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PIPELINE = adult_pipeline()
INPUTS = ["age", "hours_per_week"]


def _pipeline(**monitoring) -> object:
    return dataclasses.replace(PIPELINE, monitoring=MonitoringSpec(**monitoring))


def _recorder(store, pipeline=PIPELINE, *, service: ModelService | None = None, **kwargs):
    return LiveRecorder(
        store, signer_for(SERVE), pipeline, slot="blue", model_sha256="ab" * 32,
        model_version="3", inputs=kwargs.pop("inputs", INPUTS),
        sensitive=kwargs.pop("sensitive", ("sex",)),
        metrics=service.live_metrics() if service else None, **kwargs,
    )  # fmt: skip


def _scored(count: int, start: int = 0):
    """What a slot hands the recorder for one request of ``count`` rows."""
    features = pd.DataFrame({
        "age": np.arange(start, start + count, dtype="float64") % 70 + 17,
        "hours_per_week": np.full(count, 40.0),
    })  # fmt: skip
    sensitive = {"sex": ["Female" if i % 2 else "Male" for i in range(count)]}
    scores = np.linspace(0.05, 0.95, count)
    labels = [">50K" if s >= 0.5 else "<=50K" for s in scores]
    return features, sensitive, scores, labels, new_ids(count)


def _window(store, pipeline="adult", **kwargs):
    now = dt.datetime.now(dt.UTC)
    return load_window(store, trust_policy(), pipeline, since=now - dt.timedelta(hours=1),
                       until=now + dt.timedelta(hours=1), **kwargs)  # fmt: skip


def test_a_batch_is_signed_stored_and_read_back(local_store) -> None:
    recorder = _recorder(local_store)
    request = _scored(5)
    assert recorder.record(*request) == 5
    for code in (200, 200, 422, 503):
        recorder.count(code)
    assert recorder.feedback([(request[4][0], ">50K")])
    written = recorder.flush()
    assert len(written) == 2
    assert written[0].startswith("snapshots/live/adult/traffic/")
    window = _window(local_store)
    assert window.refused == []
    assert (window.requests, window.errors, window.refusals) == (4, 1, 1)
    traffic = window.traffic
    assert list(traffic.columns) == [*INPUTS, "sex", "score", "label", "id", "slot",
                                     "model_sha256", "model_version"]  # fmt: skip
    assert traffic["id"].tolist() == request[4]
    assert traffic["sex"].tolist() == request[1]["sex"]
    np.testing.assert_allclose(traffic["score"], request[2])
    assert set(traffic["model_version"]) == {"3"}
    assert window.feedback.to_dict("records") == [{"id": request[4][0], "label": ">50K"}]
    kinds = sorted(b.kind for b in window.batches)
    assert kinds == [FEEDBACK, TRAFFIC]
    (batch,) = [b for b in window.batches if b.kind == TRAFFIC]
    assert batch.predicate["scored"] == 5
    assert batch.predicate["columns"][-3:] == [
        "score",
        "label",
        "id",
    ]
    # What was judged, named by one digest; another model's window is empty.
    assert window_digest(window) == window_digest(_window(local_store))
    assert _window(local_store, model_sha256="cd" * 32).traffic.empty
    # Outside the window: nothing.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    empty = load_window(local_store, trust_policy(), PIPELINE, since=later,
                        until=later + dt.timedelta(hours=1))  # fmt: skip
    assert empty.batches == []
    assert empty.requests == 0


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_columns_as_arrays_record_what_a_frame_records(local_store, sample_rate) -> None:
    # The ONNX path hands the recorder one array per input column, never a frame.
    request = _scored(40)
    columns = {name: request[0][name].to_numpy() for name in INPUTS}
    recorder = _recorder(local_store, _pipeline(sample_rate=sample_rate))
    kept = recorder.record(columns, *request[1:])
    assert 0 < kept <= 40 if sample_rate < 1 else kept == 40
    recorder.flush()
    traffic = _window(local_store).traffic
    expected = request[0].assign(id=request[4]).set_index("id").loc[traffic["id"]]
    np.testing.assert_array_equal(traffic[INPUTS].to_numpy(), expected[INPUTS].to_numpy())
    assert traffic["sex"].tolist() == [
        request[1]["sex"][request[4].index(i)] for i in traffic["id"]
    ]


def test_a_batch_without_rows_still_counts_the_answers(local_store) -> None:
    recorder = _recorder(local_store)
    for code in (500, 500, 200):
        recorder.count(code)
    (key,) = recorder.flush()
    window = _window(local_store)
    assert (window.requests, window.errors) == (3, 2)
    assert window.traffic.empty
    assert recorder.flush() == []  # nothing new: nothing written


def test_a_column_of_role_identifier_personal_or_ignore_is_never_recorded(
    isolated_env: Path,
) -> None:
    credit = credit_pipeline("file:///nonexistent/")
    store = store_resource(Environment.LOCAL, resolve=True).get_store()
    for column in ("case_id", "full_name", "name_copy"):
        with pytest.raises(PolicyViolation, match=rf"{column} \((identifier|personal|ignore)\)"):
            _recorder(store, credit, inputs=["duration", column], sensitive=())
        with pytest.raises(PolicyViolation, match="never a column with role"):
            _recorder(store, credit, inputs=["duration"], sensitive=(column,))
        with pytest.raises(PolicyViolation, match=column):
            write_batch(store, signer_for(SERVE), credit, kind=TRAFFIC,
                        frame=pd.DataFrame({"duration": [12.0], column: ["C00001"]}),
                        predicate_fields={})  # fmt: skip
    assert list(store.list_keys("snapshots/live/")) == []
    assert list(store.list_keys("attestations/live-batches/")) == []
    # What may be recorded is, and encrypted: the pipeline holds personal data.
    recorder = _recorder(store, credit, inputs=["duration"], sensitive=())
    recorder.record(pd.DataFrame({"duration": [12.0, 24.0]}), {}, np.array([0.2, 0.7]),
                    ["good", "bad"], new_ids(2))  # fmt: skip
    (key,) = recorder.flush()
    assert enc.is_encrypted(store.read_object(key))
    window = _window(store, credit)
    assert list(window.traffic.columns[:4]) == ["duration", "score", "label", "id"]
    assert len(window.traffic) == 2
    assert window.refused == []


def test_a_signed_batch_holding_a_forbidden_column_is_refused_by_the_reader(
    isolated_env: Path,
) -> None:
    """Signed with the serve key, but written around `write_batch`: the reader refuses it."""
    credit = credit_pipeline("file:///nonexistent/")
    store = store_resource(Environment.LOCAL, resolve=True).get_store()
    frame = pd.DataFrame({"duration": [12.0], "full_name": ["Ada Example"]})
    closed = dt.datetime.now(dt.UTC)
    data = table_to_parquet(pa_table(frame))
    day, hour = closed.strftime("%Y-%m-%d"), closed.strftime("%H")
    ref = store.put_bytes(("live", "credit", "traffic", day, hour), data, ext="parquet",
                          format="parquet", encrypt=True)  # fmt: skip
    predicate = {"pipeline": "credit", "kind": "traffic", "key": ref.key, "rows": 1,
                 "columns": ["duration", "full_name"], "closed_at": utc_iso(closed)}  # fmt: skip
    envelope = sign(statement({"batch": ref.sha256}, LIVE_BATCH_TYPE, predicate), signer_for(SERVE))
    store_envelope(store, "live-batches", "credit", envelope)
    window = _window(store, credit)
    assert window.batches == []
    assert window.traffic.empty
    (refused,) = window.refused
    assert refused.startswith(ref.key)
    assert "full_name" in refused


def pa_table(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def test_forged_and_unsigned_batches_are_refused_and_never_counted(local_store) -> None:
    recorder = _recorder(local_store)
    recorder.record(*_scored(3))
    recorder.count(200)
    (genuine,) = recorder.flush()
    (batch,) = _window(local_store).batches
    # Another identity's key signs a statement about more traffic, with errors.
    forged = {**batch.predicate, "requests": 1000, "errors": 999}
    by_ingest = sign(statement({"batch": batch.sha256}, LIVE_BATCH_TYPE, forged),
                     signer_for(INGEST))  # fmt: skip
    forged_key = store_envelope(local_store, "live-batches", "adult", by_ingest)
    # A genuine envelope copied under a name that is not its digest (it would count twice).
    (original_key,) = [k for k in local_store.list_keys("attestations/live-batches/adult/")
                       if k != forged_key]  # fmt: skip
    copied_key = "attestations/live-batches/adult/" + "0" * 64 + ".json"
    local_store.create_object(copied_key, local_store.read_object(original_key))
    # A Parquet file dropped where batches live, with no envelope at all.
    now = dt.datetime.now(dt.UTC)
    features, sensitive, scores, labels, ids = _scored(50)
    dropped = local_store.put_bytes(
        ("live", "adult", "traffic", now.strftime("%Y-%m-%d"), now.strftime("%H")),
        table_to_parquet(pa_table(features.assign(score=scores, label=labels, id=ids))),
        ext="parquet", format="parquet",
    )  # fmt: skip
    window = _window(local_store)
    assert (window.requests, window.errors) == (1, 0)
    assert len(window.traffic) == 3
    assert [b.key for b in window.batches] == [genuine]
    refused = "\n".join(window.refused)
    assert len(window.refused) == 3, refused
    assert f"{forged_key}: live batch is signed by" in refused
    assert "only serve may" in refused
    assert f"{copied_key}: stored under a key that is not its digest" in refused
    assert f"{dropped.key}: no verified live-batch envelope" in refused


def test_an_envelope_of_another_pipeline_is_refused(local_store) -> None:
    recorder = _recorder(local_store)
    recorder.record(*_scored(2))
    recorder.flush()
    (batch,) = _window(local_store).batches
    other = {**batch.predicate, "pipeline": "credit"}
    envelope = sign(statement({"batch": batch.sha256}, LIVE_BATCH_TYPE, other), signer_for(SERVE))
    store_envelope(local_store, "live-batches", "adult", envelope)
    window = _window(local_store)
    assert len(window.batches) == 1
    assert any("a batch of pipeline 'credit'" in r for r in window.refused)


def test_a_batch_whose_bytes_were_replaced_is_refused(store) -> None:
    recorder = _recorder(store)
    recorder.record(*_scored(4))
    recorder.count(200)
    (key,) = recorder.flush()
    features, sensitive, scores, labels, ids = _scored(4, start=30)
    replaced = features.assign(sex=sensitive["sex"], score=1 - scores, label=labels, id=ids)
    overwrite_raw(store, key, table_to_parquet(pa_table(replaced)))
    window = _window(store)
    assert window.batches == []
    assert window.traffic.empty
    assert window.requests == 0
    (refused,) = window.refused
    assert refused.startswith(f"{key}: ")
    assert "sha256" in refused


def test_rows_beyond_max_batch_rows_are_counted_not_kept(local_store) -> None:
    pipeline = _pipeline(max_batch_rows=10)
    service = ModelService(pipeline, "models:/adult/1", "blue")
    recorder = _recorder(local_store, pipeline, service=service)
    assert recorder.record(*_scored(7)) == 7
    assert recorder.record(*_scored(8)) == 3
    assert recorder.record(*_scored(5)) == 0
    sample = service.registry.get_sample_value
    labels = {"pipeline": "adult", "slot": "blue"}
    assert sample("secure_pipeline_live_recorded_rows_total", labels) == 10
    assert sample("secure_pipeline_live_dropped_rows_total", labels) == 10
    recorder.flush()
    (batch,) = _window(local_store).batches
    assert (batch.predicate["rows"], batch.predicate["dropped"]) == (10, 10)
    assert batch.predicate["scored"] == 20
    assert sample("secure_pipeline_live_batches_written_total", {**labels, "kind": "traffic"}) == 1


def test_a_full_batch_is_closed_and_written_by_the_background_thread(local_store) -> None:
    recorder = _recorder(local_store, _pipeline(max_batch_rows=10, batch_seconds=3600))
    recorder.start()
    try:
        recorder.record(*_scored(12))
        deadline = time.monotonic() + 20
        while not _window(local_store).batches and time.monotonic() < deadline:
            time.sleep(0.05)
        (batch,) = _window(local_store).batches
        assert (batch.predicate["rows"], batch.predicate["dropped"]) == (10, 2)
        assert recorder.record(*_scored(3)) == 3  # a new batch is open
    finally:
        recorder.close()
    assert len(_window(local_store).batches) == 2  # the last one written at shutdown


def test_a_batch_closes_after_batch_seconds(local_store) -> None:
    recorder = _recorder(local_store, _pipeline(batch_seconds=1))
    recorder.start()
    try:
        recorder.record(*_scored(2))
        deadline = time.monotonic() + 20
        while not _window(local_store).batches and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_window(local_store).traffic) == 2
    finally:
        recorder.close()


def test_sampling_keeps_about_sample_rate_of_the_rows(local_store) -> None:
    recorder = _recorder(local_store, _pipeline(sample_rate=0.25))
    kept = sum(recorder.record(*_scored(100, start=i)) for i in range(40))
    assert 850 < kept < 1150  # 4,000 rows at 25 %: 1,000 +- 5 standard deviations
    recorder.flush()
    (batch,) = _window(local_store).batches
    assert batch.predicate["scored"] == 4000
    assert batch.predicate["rows"] == kept
    assert batch.predicate["sample_rate"] == 0.25


def test_a_failed_write_is_counted_kept_and_retried(local_store) -> None:
    service = ModelService(PIPELINE, "models:/adult/1", "blue")
    recorder = _recorder(local_store, service=service)
    blocker = local_store.root / "snapshots" / "live"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")  # the store cannot write a batch now
    for i in range(MAX_PENDING + 2):
        recorder.record(*_scored(2, start=i))
        assert recorder.flush() == []
    labels = {"pipeline": "adult", "slot": "blue"}
    sample = service.registry.get_sample_value
    assert sample("secure_pipeline_live_batch_failures_total", labels) == MAX_PENDING + 2
    # Three wait; the two oldest were lost, their rows counted.
    assert sample("secure_pipeline_live_dropped_rows_total", labels) == 4
    blocker.unlink()
    assert len(recorder.flush()) == MAX_PENDING
    window = _window(local_store)
    assert len(window.traffic) == 2 * MAX_PENDING
    assert window.refused == []
    text = generate_latest(service.registry).decode()
    assert 'secure_pipeline_live_batches_written_total{kind="traffic",pipeline="adult"' in text


def test_only_the_serve_identity_signs_live_batches(local_store) -> None:
    from secure_pipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="'serve' identity"):
        write_batch(local_store, signer_for(INGEST), PIPELINE, kind=TRAFFIC,
                    frame=pd.DataFrame({"age": [30.0]}), predicate_fields={})  # fmt: skip
    with pytest.raises(ConfigurationError, match="'serve' identity"):
        LiveRecorder(local_store, signer_for(INGEST), PIPELINE, slot="blue", model_sha256="",
                     inputs=INPUTS)  # fmt: skip


# --- the slot: /predict ids, /feedback, the flush at shutdown --------------------------------


@pytest.fixture
def state(reference_run, monkeypatch):
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    return reference_run


def _payload(service: ModelService, count: int) -> list[dict]:
    frame = parse_fileset({"test": (DATA_DIR / "adult.test").read_bytes()}, ADULT_SCHEMA).frame
    names = [f.name for f in service.fields]
    rows = []
    for record in frame[names].head(count).astype(object).to_dict(orient="records"):
        rows.append({k: None if v is None or v is pd.NA or v != v
                     else v.item() if isinstance(v, np.generic) else v
                     for k, v in record.items()})  # fmt: skip
    return rows


def _started(service: ModelService) -> TestClient:
    client = TestClient(create_app(service))
    client.__enter__()
    deadline = time.monotonic() + 120
    while service.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.state == "ready", service.reason
    return client


def test_a_slot_records_predictions_and_feedback_and_writes_them_at_shutdown(state) -> None:
    since = dt.datetime.now(dt.UTC)
    service = ModelService(PIPELINE, f"models:/{state.name}/{state.version}", "green")
    client = _started(service)
    try:
        rows = _payload(service, 6)
        answer = client.post("/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        ids = [p["id"] for p in answer.json()["predictions"]]
        assert len(set(ids)) == 6
        assert all(len(i) == 32 for i in ids)
        assert client.post("/predict", json={"rows": [{"age": "x"}]}).status_code == 422
        good = {"feedback": [{"id": ids[0], "label": ">50K"}, {"id": ids[1], "label": "<=50K"}]}
        accepted = client.post("/feedback", json=good)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"accepted": 2, "slot": "green"}
        assert service.registry.get_sample_value(
            "secure_pipeline_feedback_total", {"pipeline": "adult", "slot": "green"}
        ) == 2  # fmt: skip
    finally:
        client.__exit__(None, None, None)  # shutdown: the recorder writes what it holds
    window = load_window(store_resource(Environment.LOCAL, resolve=True).get_store(),
                         trust_policy(), PIPELINE, since=since,
                         until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
                         model_sha256=state.model_sha)  # fmt: skip
    assert window.refused == []
    assert (window.requests, window.errors, window.refusals) == (2, 0, 1)
    traffic = window.traffic
    assert traffic["id"].tolist() == ids
    assert set(traffic["model_sha256"]) == {state.model_sha}
    # The frame the model scored: its input features, and nothing of another role.
    # The sensitive columns a request may carry beside them (none was sent: nulls).
    assert list(traffic.columns) == [*service.inputs, "race", "sex", "score", "label", "id",
                                     "slot", "model_sha256", "model_version"]  # fmt: skip
    assert traffic["sex"].isna().all()
    np.testing.assert_allclose(traffic["score"], [p["score"] for p in answer.json()["predictions"]],
                               atol=1e-6)  # fmt: skip
    assert window.feedback.to_dict("records") == [
        {"id": ids[0], "label": ">50K"}, {"id": ids[1], "label": "<=50K"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"rows": []}, 400, 'exactly one key, "feedback"'),
        ({"feedback": []}, 400, "non-empty list"),
        ({"feedback": {"id": "a"}}, 400, "non-empty list"),
        ({"feedback": [{"id": "0" * 32, "label": ">50K"}] * 1001}, 413, "at most 1000"),
        ({"feedback": [{"id": "0" * 32}]}, 422, "feedback does not match"),
        ({"feedback": [{"id": "0" * 32, "label": ">50K", "x": 1}]}, 422, "feedback does not"),
        ({"feedback": ["0" * 32]}, 422, "feedback does not match"),
    ],
)  # fmt: skip
def test_malformed_feedback_is_refused_with_a_clear_4xx(
    served_for_feedback, body, status, message
) -> None:
    service, client = served_for_feedback
    response = client.post("/feedback", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert service.recorder is not None
    assert service.recorder._feedback.rows == 0


def test_bad_ids_and_labels_are_named(served_for_feedback) -> None:
    service, client = served_for_feedback
    good = "a" * 32
    items = [
        {"id": "A" * 32, "label": ">50K"},  # upper case
        {"id": "a" * 31, "label": ">50K"},
        {"id": 12345, "label": ">50K"},
        {"id": good, "label": "rich"},
        {"id": "b" * 32, "label": None},
        {"id": good, "label": ">50K"},  # the same id twice
    ]
    response = client.post("/feedback", json={"feedback": items})
    assert response.status_code == 422, response.text
    problems = {(p["item"], p["field"]): p["expected"] for p in response.json()["problems"]}
    hex_id = "a prediction id: 32 lower-case hex characters"
    assert problems[(0, "id")] == problems[(1, "id")] == problems[(2, "id")] == hex_id
    assert problems[(3, "label")].startswith("one of: ")
    assert problems[(4, "label")] == "a label"
    assert problems[(5, "id")] == "each id once per request"
    assert "income" in response.json()["error"]
    # Nothing of a refused request is kept; a wrong content type is refused as /predict's.
    assert service.recorder._feedback.rows == 0
    wrong = client.post("/feedback", content=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415
    counted = service.registry.get_sample_value(
        "secure_pipeline_requests_total",
        {**service.model_labels(), "route": "/feedback", "code": "422"},
    )
    assert counted == 1


@pytest.fixture
def served_for_feedback(state):
    service = ModelService(PIPELINE, f"models:/{state.name}/{state.version}", "blue")
    client = _started(service)
    try:
        yield service, client
    finally:
        client.__exit__(None, None, None)


def test_a_slot_that_does_not_record_refuses_feedback(state) -> None:
    pipeline = _pipeline(record=False)
    service = ModelService(pipeline, f"models:/{state.name}/{state.version}", "blue")
    client = _started(service)
    try:
        assert service.recorder is None
        answer = client.post("/predict", json={"rows": _payload(service, 1)})
        assert answer.status_code == 200
        assert len(answer.json()["predictions"][0]["id"]) == 32
        refused = client.post("/feedback", json={"feedback": [{"id": "a" * 32, "label": ">50K"}]})
        assert refused.status_code == 409
        assert "does not record live traffic" in refused.json()["error"]
    finally:
        client.__exit__(None, None, None)


def test_in_production_a_recording_slot_needs_the_serve_key(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    service = ModelService(PIPELINE, "models:/adult/1", "blue")
    service.load()
    assert service.state == "refused"
    assert "SECURE_PIPELINE_SIGNER_SERVE is not set" in service.reason
    assert "monitoring.record" in service.reason
    # Without recording, that key is not what stops it (the rest of production is missing).
    quiet = ModelService(_pipeline(record=False), "models:/adult/1", "blue")
    quiet.load()
    assert quiet.state == "refused"
    assert "SECURE_PIPELINE_SIGNER_SERVE" not in quiet.reason


# --- the CLI: a landing file of labels --------------------------------------------------------


def test_the_cli_records_a_landing_file_as_one_signed_feedback_batch(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from secure_pipeline.cli.live import live

    store = store_resource(Environment.LOCAL, resolve=True).get_store()
    spec = ["--pipeline", "secure_pipeline.reference.adult:adult_pipeline"]
    ids = new_ids(3)
    good = tmp_path / "labels.csv"
    labels = (">50K", "<=50K", ">50K")
    good.write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, labels, strict=True)))
    result = CliRunner().invoke(live, ["feedback", str(good), *spec])
    assert result.exit_code == 0, result.output
    assert (
        "recorded 3 feedback label(s) of adult in snapshots/live/adult/feedback/" in result.output
    )
    window = _window(store)
    assert window.feedback["id"].tolist() == ids
    assert window.feedback["label"].tolist() == [">50K", "<=50K", ">50K"]
    (batch,) = window.batches
    assert batch.predicate["source"] == "labels.csv"
    # Parquet too.
    parquet = tmp_path / "labels.parquet"
    pd.DataFrame({"id": new_ids(1), "label": ["<=50K"]}).to_parquet(parquet)
    assert CliRunner().invoke(live, ["feedback", str(parquet), *spec]).exit_code == 0
    assert len(_window(store).feedback) == 4
    # Refused, saying what was expected, and nothing written.
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,label\n{ids[0]},rich\n12345,>50K\n")
    refused = CliRunner().invoke(live, ["feedback", str(bad), *spec])
    assert refused.exit_code == 2
    assert "row 1 label: expected one of: " in refused.output
    assert "row 2 id: expected a prediction id: 32 lower-case hex characters" in refused.output
    columns = tmp_path / "columns.csv"
    columns.write_text(f"id,label,name\n{ids[0]},>50K,Ada\n")
    wrong = CliRunner().invoke(live, ["feedback", str(columns), *spec])
    assert wrong.exit_code == 2
    assert "exactly the columns id and label" in wrong.output
    assert len(_window(store).batches) == 2


def test_sensitive_columns_sent_beside_the_inputs_are_recorded_not_scored(state) -> None:
    """Protected attributes are not model inputs; the live fairness check needs them per row."""
    since = dt.datetime.now(dt.UTC)
    service = ModelService(PIPELINE, f"models:/{state.name}/{state.version}", "green")
    client = _started(service)
    try:
        rows = _payload(service, 4)
        plain = client.post("/predict", json={"rows": rows}).json()["predictions"]
        carrying = [
            {**row, "sex": sex, "race": "White"}
            for row, sex in zip(rows[:3], ["Female", "Male", "Female"], strict=True)
        ]
        carrying.append(rows[3])  # optional: a row may leave them out
        answer = client.post("/predict", json={"rows": carrying})
        assert answer.status_code == 200, answer.text
        # The model never sees them: the same scores as without.
        assert [p["score"] for p in answer.json()["predictions"]] == [p["score"] for p in plain]
        wrong = client.post("/predict", json={"rows": [{**rows[0], "sex": "unknown"}]})
        assert wrong.status_code == 422
        assert wrong.json()["problems"][0]["field"] == "sex"
        assert wrong.json()["optional"] == {"sex": "category", "race": "category"}
    finally:
        client.__exit__(None, None, None)
    window = load_window(store_resource(Environment.LOCAL, resolve=True).get_store(),
                         trust_policy(), PIPELINE, since=since,
                         until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
                         model_sha256=state.model_sha)  # fmt: skip
    recorded = window.traffic.tail(4)
    assert recorded["sex"].head(3).tolist() == ["Female", "Male", "Female"]
    assert recorded["race"].head(3).tolist() == ["White"] * 3
    assert recorded[["sex", "race"]].iloc[3].isna().all()
