"""Blue-green releases through the real gateway (nginx) and real model-server processes.

A deployment serves the reference run's champion on the blue slot behind nginx (mutual TLS);
a client keeps sending predictions through the gateway while versions are released:

* a healthy challenger (through the ``canary_analysis`` asset) passes its canary, takes all the
  traffic and becomes champion;
* a release whose slot answers errors is rolled back: traffic back, champion unchanged;
* a tampered model never becomes ready and never receives a request.
"""

import http.client
import json
import os
import shutil
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.promotion.bluegreen import BlueGreen, DeploymentState, down, up
from secure_pipeline.promotion.canary import CanaryPolicy
from secure_pipeline.promotion.gate import CHALLENGER, CHAMPION
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import MODEL_FILE
from secure_pipeline.registry.mlflow_registry import alias_version, set_alias
from secure_pipeline.registry.verification import resolve
from secure_pipeline.serving.certs import init_dev_pki, issue_client_cert
from secure_pipeline.serving.server import ServingLimits
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.services import free_port

POLICY = CanaryPolicy(canary_weight=25, min_requests=30, observe_seconds=90)
ROW = {
    "age": 39, "workclass": "State-gov", "education": "Bachelors",
    "education_num": 13, "marital_status": "Never-married", "occupation": "Adm-clerical",
    "relationship": "Not-in-family", "capital_gain": 2174, "capital_loss": 0,
    "hours_per_week": 40, "native_country": "United-States",
}  # fmt: skip


@dataclass
class Traffic:
    """A client sending two-row predictions through the gateway until stopped."""

    url: tuple[str, int]
    context: ssl.SSLContext
    answers: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = json.dumps({"rows": [ROW, ROW]})
        while not self.stop.is_set():
            connection = http.client.HTTPSConnection(*self.url, context=self.context, timeout=10)
            try:
                for _ in range(20):
                    connection.request("POST", "/predict", body,
                                       {"Content-Type": "application/json"})  # fmt: skip
                    response = connection.getresponse()
                    data = response.read()
                    slot = json.loads(data).get("slot") if response.status == 200 else None
                    self.answers[(response.status, slot)] += 1
            except (OSError, http.client.HTTPException, ValueError):
                self.answers[("connection", None)] += 1
            finally:
                connection.close()

    def snapshot(self) -> Counter:
        return Counter(self.answers)


@dataclass
class Deployment:
    directory: Path
    traffic: Traffic
    home: Path
    name: str
    version: str
    model_sha: str
    versions: list[str]


def _register_copy(name: str, version: str, source: str | None = None) -> str:
    """The same verified bundle registered again (or a given directory as a new version)."""
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    original = client.get_model_version(name, version)
    copy = client.create_model_version(
        name, source=source or original.source, run_id=original.run_id, tags=original.tags
    )
    return str(copy.version)


@pytest.fixture(scope="module")
def deployment(reference_run, tmp_path_factory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        # MLflow exports the last tracking URI it was given; start from a clean slate.
        for name in list(os.environ):
            if name.startswith(("SECURE_PIPELINE_", "MLFLOW_", "AWS_")):
                patch.delenv(name)
        patch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
        patch.setenv("DAGSTER_HOME", str(reference_run.home))
        pki = init_dev_pki(work / "pki")
        issue_client_cert(pki.directory, "client-app")
        directory = work / "deployment"
        set_alias(reference_run.name, CHAMPION, reference_run.version)
        up(
            directory,
            adult_pipeline(),
            model_ref=f"models:/{reference_run.name}/{reference_run.version}",
            listen=f"127.0.0.1:{free_port()}",
            slot_ports={"blue": free_port(), "green": free_port()},
            server_cert=pki.server_cert,
            server_key=pki.server_key,
            client_ca=pki.ca_cert,
            identities={"client-app": ("predict",), "ops": ("admin",)},
            rate_per_second=1000,
            burst=1000,
        )
        context = ssl.create_default_context(cafile=pki.ca_cert)
        context.load_cert_chain(pki.client_cert("client-app"), pki.client_key("client-app"))
        host, _, port = DeploymentState.load(directory).gateway["listen"].rpartition(":")
        traffic = Traffic((host, int(port)), context)
        thread = threading.Thread(target=traffic.run, daemon=True)
        thread.start()
        state = Deployment(directory, traffic, reference_run.home, reference_run.name,
                           reference_run.version, reference_run.model_sha, [])  # fmt: skip
        try:
            yield state
        finally:
            traffic.stop.set()
            thread.join(timeout=30)
            down(directory)
            from mlflow import MlflowClient

            from secure_pipeline.training.tracking import tracking_uri

            set_alias(reference_run.name, CHAMPION, reference_run.version)
            set_alias(reference_run.name, CHALLENGER, reference_run.version)
            client = MlflowClient(tracking_uri())
            for version in state.versions:
                client.delete_model_version(reference_run.name, version)


@pytest.fixture
def env(deployment, monkeypatch) -> Deployment:
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(deployment.home))
    monkeypatch.setenv("DAGSTER_HOME", str(deployment.home))
    monkeypatch.setenv("SECURE_PIPELINE_SERVING_DIR", str(deployment.directory))
    return deployment


def _audit(home: Path) -> list:
    return list(AuditLog(LocalSnapshotStore(home / "store")).verified_records())


def _served_by(traffic: Traffic, since: Counter) -> Counter:
    return traffic.snapshot() - since


def test_through_the_gateway_the_prediction_is_the_models(env) -> None:
    """The caller with the role gets the live slot's verified model's answer, unchanged."""
    state = DeploymentState.load(env.directory)
    body = json.dumps({"rows": [ROW]})
    headers = {"Content-Type": "application/json"}
    gateway = http.client.HTTPSConnection(*env.traffic.url, context=env.traffic.context)
    gateway.request("POST", "/predict", body, headers)
    through = gateway.getresponse()
    assert through.status == 200
    answer = json.loads(through.read())
    host, _, port = state.slots[answer["slot"]].address.rpartition(":")
    direct = http.client.HTTPConnection(host, int(port))
    direct.request("POST", "/predict", body, headers)
    assert json.loads(direct.getresponse().read()) == answer
    assert answer["model_sha256"] == env.model_sha
    assert answer["predictions"][0]["label"] in ("<=50K", ">50K")


def test_a_healthy_challenger_passes_its_canary_through_the_asset(env) -> None:
    version = _register_copy(env.name, env.version)
    env.versions.append(version)
    set_alias(env.name, CHALLENGER, version)
    pipeline = adult_pipeline()
    import dataclasses

    defs = dataclasses.replace(pipeline, canary=POLICY).build_definitions()
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("canary_analysis")]
        )
    assert result.success
    assert alias_version(env.name, CHAMPION) == version
    state = DeploymentState.load(env.directory)
    assert state.live == "green"
    assert state.weights == {"blue": 0, "green": 100}
    before = env.traffic.snapshot()
    _wait_for(env.traffic, before, 40)
    served = _served_by(env.traffic, before)
    assert served[(200, "green")] >= 40, served
    assert served[(200, "blue")] == 0
    events = [r.event for r in _audit(env.home)]
    passed = len(events) - 1 - events[::-1].index("canary.passed")
    assert "promotion.champion" in events[passed:]


def test_a_release_answering_errors_is_rolled_back(env) -> None:
    live_before = DeploymentState.load(env.directory).live
    champion = alias_version(env.name, CHAMPION)
    version = _register_copy(env.name, env.version)
    env.versions.append(version)
    audit = AuditLog(LocalSnapshotStore(env.home / "store"))
    controller = BlueGreen(env.directory, adult_pipeline(), POLICY)
    # A misconfigured release: the new slot accepts one row per request, clients send two.
    with pytest.raises(PolicyViolation, match="canary of version .* failed, rolled back"):
        controller.release(version, audit=audit, actor="test", limits=ServingLimits(max_rows=1))
    state = DeploymentState.load(env.directory)
    assert state.live == live_before
    assert state.weights[live_before] == 100
    assert alias_version(env.name, CHAMPION) == champion
    record = _audit(env.home)[-1]
    assert record.event == "canary.rolled_back"
    assert "error rate" in record.details["reason"]
    before = env.traffic.snapshot()
    _wait_for(env.traffic, before, 40)
    served = _served_by(env.traffic, before)
    assert set(served) == {(200, live_before)}  # every answer from the live slot again


def test_a_tampered_model_never_becomes_ready_or_takes_traffic(env, tmp_path) -> None:
    with resolve(f"models:/{env.name}/{env.version}") as resolved:
        bundle = Path(shutil.copytree(resolved.directory, tmp_path / "tampered"))
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 3] ^= 0x20
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    version = _register_copy(env.name, env.version, source=str(bundle))
    env.versions.append(version)
    live = DeploymentState.load(env.directory).live
    champion = alias_version(env.name, CHAMPION)
    audit = AuditLog(LocalSnapshotStore(env.home / "store"))
    before = env.traffic.snapshot()
    with pytest.raises(PolicyViolation, match="never became ready"):
        BlueGreen(env.directory, adult_pipeline(), POLICY).release(version, audit=audit,
                                                                    actor="test")  # fmt: skip
    served = _served_by(env.traffic, before)
    assert set(served) == {(200, live)}
    state = DeploymentState.load(env.directory)
    assert state.weights[live] == 100
    assert alias_version(env.name, CHAMPION) == champion
    record = _audit(env.home)[-1]
    assert record.event == "canary.refused"
    assert "refusing to load the model" in record.details["reason"]


def _wait_for(traffic: Traffic, since: Counter, count: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while sum(_served_by(traffic, since).values()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
