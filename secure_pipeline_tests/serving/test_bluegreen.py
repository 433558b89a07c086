"""Blue-green releases through the real gateway (nginx) and real model-server processes.

A deployment serves the reference run's champion on the blue slot behind nginx (mutual TLS);
a client keeps sending predictions through the gateway while versions are released:

* a healthy challenger (through the ``canary_analysis`` asset) passes its canary, takes all the
  traffic and becomes champion;
* a release whose slot answers errors is rolled back: traffic back, champion unchanged;
* a tampered model never becomes ready and never receives a request.

The slots speak mutual TLS with the deployment's own slot PKI (``<dir>/slot-pki``): a caller's
certificate of the gateway's client CA, or plain HTTP, does not reach them directly.
"""

import http.client
import json
import ssl
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.promotion.bluegreen import (
    BlueGreen,
    DeploymentState,
    controller_context,
    down,
    slot_pki,
    up,
)
from secure_pipeline.promotion.canary import CanaryPolicy
from secure_pipeline.promotion.gate import CHALLENGER, CHAMPION
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import MODEL_FILE
from secure_pipeline.registry.decisions import champion, decisions
from secure_pipeline.registry.mlflow_registry import alias_version, set_alias
from secure_pipeline.serving.certs import (
    CONTROLLER_IDENTITY,
    GATEWAY_IDENTITY,
    DevPki,
    init_dev_pki,
    issue_client_cert,
)
from secure_pipeline.serving.server import ServingLimits
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.conftest import pointed_at
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
    pki: DevPki


def _admitted_challenger(home: Path) -> str:
    """The reference model registered again by the release stage and admitted by the gate as
    challenger (not champion): what a blue-green release may deploy."""
    from secure_pipeline.promotion.gate import promote
    from secure_pipeline_tests.helpers import materialize

    with dg.DagsterInstance.get() as instance:
        assert materialize(adult_pipeline(), instance, ["registered_model"]).success
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "registered_model"])
        )
    version = str(event.asset_materialization.metadata["model_version"].value)
    store = LocalSnapshotStore(home / "store")
    promote(adult_pipeline(), "adult", version, store=store, audit=AuditLog(store),
            actor="test", crown=False)  # fmt: skip
    return version


@pytest.fixture(scope="module")
def deployment(reference_run, dev_keys, tmp_path_factory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("serving")
    with pointed_at(reference_run.home, dev_keys):
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
                           reference_run.version, reference_run.model_sha, [], pki)  # fmt: skip
        try:
            yield state
        finally:
            traffic.stop.set()
            thread.join(timeout=30)
            down(directory)
            set_alias(reference_run.name, CHAMPION, reference_run.version)
            set_alias(reference_run.name, CHALLENGER, reference_run.version)
            # The champion decisions these tests made stay in the store; the reference
            # version must be the signed champion again for the modules after this one.
            from secure_pipeline.promotion.gate import promote

            store = LocalSnapshotStore(reference_run.home / "store")
            promote(adult_pipeline(), reference_run.name, reference_run.version, store=store,
                    audit=AuditLog(store), actor="test teardown")  # fmt: skip


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
    # Directly, only with a certificate of the deployment's slot CA (here the controller's).
    context = controller_context(slot_pki(env.directory))
    direct = http.client.HTTPSConnection(host, int(port), context=context)
    direct.request("POST", "/predict", body, headers)
    straight = json.loads(direct.getresponse().read())
    # Every prediction has an id of its own (what feedback names); all else is the same.
    for document in (straight, answer):
        ids = [p.pop("id") for p in document["predictions"]]
        assert all(len(i) == 32 for i in ids)
    assert straight == answer
    assert answer["model_sha256"] == env.model_sha
    assert answer["predictions"][0]["label"] in ("<=50K", ">50K")


def test_the_deployment_has_its_own_slot_pki(env) -> None:
    pki = slot_pki(env.directory)
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for name in (GATEWAY_IDENTITY, CONTROLLER_IDENTITY):
        assert stat.S_IMODE(pki.client_key(name).stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.server_key.stat().st_mode) == 0o600
    assert not list(pki.directory.rglob("ca.key"))  # nobody can issue another slot certificate
    recorded = json.loads((env.directory / "gateway" / "gateway.json").read_text())
    assert recorded["upstream_cert"] == str(pki.client_cert(GATEWAY_IDENTITY))
    assert recorded["upstream_ca"] == str(pki.ca_cert)
    assert (
        "proxy_pass https://sp_models/predict;"
        in (env.directory / "gateway" / "conf" / "nginx.conf").read_text()
    )


def test_a_caller_certificate_does_not_open_a_slot_directly(env) -> None:
    """client-app may predict through the gateway; straight to the slot it is refused."""
    state = DeploymentState.load(env.directory)
    host, _, port = state.slots[state.live].address.rpartition(":")
    body, headers = json.dumps({"rows": [ROW]}), {"Content-Type": "application/json"}
    context = ssl.create_default_context(cafile=slot_pki(env.directory).ca_cert)
    context.load_cert_chain(env.pki.client_cert("client-app"), env.pki.client_key("client-app"))
    refused = (ssl.SSLError, ConnectionError, http.client.HTTPException)
    for connection in (
        http.client.HTTPConnection(host, int(port), timeout=10),
        http.client.HTTPSConnection(host, int(port), context=context, timeout=10),
    ):
        with pytest.raises(refused):
            _post(connection, body, headers)
    gateway = http.client.HTTPSConnection(*env.traffic.url, context=env.traffic.context)
    assert _post(gateway, body, headers) == 200


def _post(connection: http.client.HTTPConnection, body: str, headers: dict[str, str]) -> int:
    try:
        connection.request("POST", "/predict", body, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_healthy_challenger_passes_its_canary_through_the_asset(env) -> None:
    version = _admitted_challenger(env.home)
    env.versions.append(version)
    pipeline = adult_pipeline()
    import dataclasses

    defs = dataclasses.replace(pipeline, canary=POLICY).build_definitions()
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["adult", "canary_analysis"])]
        )
    assert result.success
    assert alias_version(env.name, CHAMPION) == version
    store = LocalSnapshotStore(env.home / "store")
    current = champion(decisions(store, trust_policy(), env.name)[0])
    assert current is not None
    assert current.version == version
    assert current.facts["reason"] == "canary"
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
    crowned = alias_version(env.name, CHAMPION)
    version = _admitted_challenger(env.home)
    env.versions.append(version)
    audit = AuditLog(LocalSnapshotStore(env.home / "store"))
    controller = BlueGreen(env.directory, adult_pipeline(), POLICY)
    # A misconfigured release: the new slot accepts one row per request, clients send two.
    with pytest.raises(PolicyViolation, match="canary of version .* failed, rolled back"):
        controller.release(version, audit=audit, actor="test", limits=ServingLimits(max_rows=1))
    state = DeploymentState.load(env.directory)
    assert state.live == live_before
    assert state.weights[live_before] == 100
    assert alias_version(env.name, CHAMPION) == crowned
    record = _audit(env.home)[-1]
    assert record.event == "canary.rolled_back"
    assert "error rate" in record.details["reason"]
    before = env.traffic.snapshot()
    _wait_for(env.traffic, before, 40)
    served = _served_by(env.traffic, before)
    assert set(served) == {(200, live_before)}  # every answer from the live slot again


def test_an_admitted_model_tampered_in_the_registry_is_never_deployed(env) -> None:
    """The gate admitted it; then its files were edited in MLflow's artifact store."""
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    version = _admitted_challenger(env.home)
    env.versions.append(version)
    client = MlflowClient(tracking_uri())
    run_id, path = (
        client.get_model_version(env.name, version).source.removeprefix("runs:/").split("/", 1)
    )
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / path
    model = artifacts / MODEL_FILE
    original = model.read_bytes()
    data = bytearray(original)
    data[len(data) // 3] ^= 0x20
    live = DeploymentState.load(env.directory).live
    crowned = alias_version(env.name, CHAMPION)
    audit = AuditLog(LocalSnapshotStore(env.home / "store"))
    before = env.traffic.snapshot()
    try:
        model.write_bytes(bytes(data))
        with pytest.raises(PolicyViolation, match="is not released: signature"):
            BlueGreen(env.directory, adult_pipeline(), POLICY).release(version, audit=audit,
                                                                        actor="test")  # fmt: skip
    finally:
        model.write_bytes(original)
    # The refusal can come before the load generator's next request; wait for some answers so
    # the assertion is about traffic, not about an empty window.
    _wait_for(env.traffic, before, 20)
    served = _served_by(env.traffic, before)
    assert set(served) == {(200, live)}
    state = DeploymentState.load(env.directory)
    assert state.weights[live] == 100
    assert state.slots[next(s for s in state.slots if s != live)].pid is None
    assert alias_version(env.name, CHAMPION) == crowned
    record = _audit(env.home)[-1]
    assert record.event == "canary.refused"
    assert record.identity == "gate"
    assert "does not match its signature" in record.details["reason"]


def _wait_for(traffic: Traffic, since: Counter, count: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while sum(_served_by(traffic, since).values()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
