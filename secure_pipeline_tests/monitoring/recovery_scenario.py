"""A bad champion caught by its live traffic and rolled back, every part real and timed.

Shared by the end-to-end test (`test_auto_rollback.py`) and the time-to-recover benchmark
(`benchmarks/bench_recovery.py`). On a copy of the reference run's home:

1. a serving deployment (real nginx gateway, two slot processes, mutual TLS) serves version A
   on the blue slot; a client sends predictions through the gateway all along;
2. version B is released through the canary (real `BlueGreen.release`): it passes, takes all
   the traffic on the green slot and becomes champion; blue keeps serving A, idle;
3. the traffic turns bad (inputs far from anything the model was trained on): the green slot
   records it and writes a signed batch every ``batch_seconds``;
4. ``adult_monitor`` runs (as its schedule launches it) and ``live_input_drift`` fails;
5. the ``adult_rollback_on_live_failure`` sensor ticks and requests ``adult_rollback``, which
   runs: the monitor's signed verdict is checked, A is verified again and crowned by a new
   signed decision, and all traffic moves to the blue slot;
6. the client's answers come from the blue slot only: recovered.

The slots run the pipeline spec `PIPELINE` (the reference with monitoring settings fit for a
test: 2-second batches, a 1-hour window), named to them as ``module:attribute``.
"""

import dataclasses
import http.client
import json
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from secure_pipeline.environment import Environment
from secure_pipeline.promotion.bluegreen import BlueGreen, DeploymentState, down, up
from secure_pipeline.promotion.gate import promote
from secure_pipeline.reference.adult import ADULT_SCHEMA, DATA_DIR, adult_pipeline
from secure_pipeline.serving.certs import init_dev_pki, issue_client_cert
from secure_pipeline.spec import CanaryPolicy, MonitoringSpec
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.services import free_port

BATCH_SECONDS = 2
PIPELINE = dataclasses.replace(
    adult_pipeline(),
    monitoring=MonitoringSpec(
        batch_seconds=BATCH_SECONDS, window_hours=1, min_rows=100, auto_rollback=True
    ),
    # Five distinct rows a request, cycling through 500: the slots see different samples, so the
    # canary judges more requests and allows sampling noise in the score distribution.
    canary=CanaryPolicy(canary_weight=25, min_requests=80, observe_seconds=90, max_score_psi=0.25),
)
SPEC = f"{__name__}:PIPELINE"
FIELDS = (
    "age", "workclass", "education", "education_num", "marital_status", "occupation",
    "relationship", "capital_gain", "capital_loss", "hours_per_week", "native_country",
)  # fmt: skip


def request_rows(count: int, *, drifted: bool) -> list[dict[str, Any]]:
    """Rows of the Adult test file as callers send them; drifted: far older, far longer hours."""
    import pandas as pd

    from secure_pipeline.validation.parsing import parse_fileset

    frame = parse_fileset({"test": (DATA_DIR / "adult.test").read_bytes()}, ADULT_SCHEMA).frame
    rows = []
    for record in frame[list(FIELDS)].head(count).astype(object).to_dict(orient="records"):
        row = {k: None if v is None or v is pd.NA or v != v else v.item() if hasattr(v, "item")
               else v for k, v in record.items()}  # fmt: skip
        if drifted:
            row.update(age=85, hours_per_week=99, marital_status="Widowed")
        rows.append(row)
    return rows


@dataclasses.dataclass
class Client:
    """Predictions through the gateway until stopped; answers counted by status and slot."""

    address: tuple[str, int]
    context: ssl.SSLContext
    clean: list[dict[str, Any]]
    drifted: list[dict[str, Any]]
    bad: threading.Event = dataclasses.field(default_factory=threading.Event)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    answers: Counter = dataclasses.field(default_factory=Counter)
    timeline: list[tuple[float, str | None]] = dataclasses.field(default_factory=list)

    def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            connection = http.client.HTTPSConnection(*self.address, context=self.context,
                                                     timeout=10)  # fmt: skip
            try:
                for _ in range(50):
                    rows = self.drifted if self.bad.is_set() else self.clean
                    body = json.dumps({"rows": rows[index % len(rows) : index % len(rows) + 5]})
                    index += 5
                    connection.request("POST", "/predict", body,
                                       {"Content-Type": "application/json"})  # fmt: skip
                    response = connection.getresponse()
                    data = response.read()
                    slot = json.loads(data).get("slot") if response.status == 200 else None
                    self.answers[(response.status, slot)] += 1
                    self.timeline.append((time.monotonic(), slot))
            except (OSError, http.client.HTTPException, ValueError):
                self.answers[("connection", None)] += 1
            finally:
                connection.close()


@dataclasses.dataclass
class Recovery:
    """What happened, with monotonic times (seconds)."""

    versions: tuple[str, str]
    slots: tuple[str, str]
    bad_from: float
    batch_written: float
    judged: float
    rollback_requested: float
    rolled_back: float
    traffic_back: float
    verdicts: dict[str, bool]
    outcome: dict[str, Any]
    answers_after: Counter

    def phases(self) -> dict[str, float]:
        """Seconds of each phase, from the first bad request to traffic back.

        The rollback job moves the traffic before it finishes (its audit records come last):
        "traffic back" is the first answer of the previous champion's slot after the bad
        slot's last one.
        """
        return {
            "first signed batch of bad traffic written": self.batch_written - self.bad_from,
            "monitor job (live checks judged)": self.judged - self.batch_written,
            "sensor tick (rollback requested)": self.rollback_requested - self.judged,
            "rollback: verified, signed, traffic back": (
                self.traffic_back - self.rollback_requested
            ),
            "time to recover": self.traffic_back - self.bad_from,
            "(rollback job finished, audited)": self.rolled_back - self.rollback_requested,
        }


@contextmanager
def environment(home: Path, serving_dir: Path) -> Iterator[None]:
    """The process environment of the scenario (restored afterwards)."""
    names = ("SECURE_PIPELINE_HOME", "DAGSTER_HOME", "SECURE_PIPELINE_SERVING_DIR",
             "MLFLOW_TRACKING_URI")  # fmt: skip
    saved = {name: os.environ.get(name) for name in names}
    # The registry of this home (MLflow exports the URI it last used into the environment).
    registry = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    os.environ.update({"SECURE_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(home),
                       "SECURE_PIPELINE_SERVING_DIR": str(serving_dir),
                       "MLFLOW_TRACKING_URI": registry})  # fmt: skip
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _register_again(home: Path) -> str:
    """The champion's model registered again as a new version, admitted as challenger."""
    with dg.DagsterInstance.get() as instance:
        assert materialize(PIPELINE, instance, ["registered_model"]).success
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "registered_model"])
        )
    version = str(event.asset_materialization.metadata["model_version"].value)
    store = LocalSnapshotStore(home / "store")
    promote(PIPELINE, "adult", version, store=store, audit=AuditLog(store), actor="scenario",
            crown=False)  # fmt: skip
    return version


def _wait(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _bad_batch_written(store: LocalSnapshotStore, slot: str, since: float) -> bool:
    """Whether ``slot``'s signed traffic batches hold enough of the bad traffic to judge it."""
    import datetime as dt

    from secure_pipeline.serving.recording import load_window
    from secure_pipeline.trust.policy import trust_policy

    now = dt.datetime.now(dt.UTC)
    window = load_window(store, trust_policy(), PIPELINE, since=now - dt.timedelta(hours=1),
                         until=now + dt.timedelta(seconds=1))  # fmt: skip
    served = window.traffic[window.traffic["slot"] == slot]
    bad = served[served["age"] >= 85]
    # Half the slot's recorded rows at least: the clean rows it served before the traffic
    # turned stay in the window, and a fast slot records many (with few bad ones among them
    # the drift is only a warning, which rolls nothing back).
    return len(bad) >= PIPELINE.monitoring.min_rows and len(bad) >= len(served) / 2


def run(home: Path, work: Path, version_a: str) -> Recovery:
    """Run the whole scenario on ``home`` (a copy of a promoted reference run's home)."""
    directory = work / "deployment"
    with environment(home, directory):
        pki = init_dev_pki(work / "pki")
        issue_client_cert(pki.directory, "client-app")
        up(directory, PIPELINE, model_ref=f"models:/adult/{version_a}",
           listen=f"127.0.0.1:{free_port()}",
           slot_ports={"blue": free_port(), "green": free_port()},
           server_cert=pki.server_cert, server_key=pki.server_key, client_ca=pki.ca_cert,
           identities={"client-app": ("predict",)}, rate_per_second=2000, burst=2000,
           pipeline_spec=SPEC)  # fmt: skip
        context = ssl.create_default_context(cafile=pki.ca_cert)
        context.load_cert_chain(pki.client_cert("client-app"), pki.client_key("client-app"))
        host, _, port = DeploymentState.load(directory).gateway["listen"].rpartition(":")
        client = Client((host, int(port)), context, request_rows(500, drifted=False),
                        request_rows(500, drifted=True))  # fmt: skip
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        try:
            return _scenario(home, directory, client, version_a)
        finally:
            client.stop.set()
            thread.join(timeout=30)
            down(directory)


def _scenario(home: Path, directory: Path, client: Client, version_a: str) -> Recovery:
    store = LocalSnapshotStore(home / "store")
    audit = AuditLog(store)
    version_b = _register_again(home)
    outcome = BlueGreen(directory, PIPELINE, PIPELINE.canary).release(
        version_b, audit=audit, actor="scenario"
    )
    assert outcome.promoted, outcome.reason
    bad_slot = DeploymentState.load(directory).live
    good_slot = next(s for s in ("blue", "green") if s != bad_slot)
    defs = PIPELINE.build_definitions(Environment.LOCAL)
    client.bad.set()
    bad_from = time.monotonic()
    _wait("a signed batch of the bad traffic",
          lambda: _bad_batch_written(store, bad_slot, bad_from), 60)  # fmt: skip
    batch_written = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("adult_monitor").execute_in_process(
            instance=instance, raise_on_error=False
        )
        evaluations = result.get_asset_check_evaluations()
        verdicts = {e.check_name: e.passed for e in evaluations}
        assert verdicts, [e.message for e in result.all_events if e.is_failure]
        assert verdicts.get("live_input_drift") is False, {
            e.check_name: (e.passed, e.severity, e.description) for e in evaluations
        }
        judged = time.monotonic()
        sensor = defs.get_sensor_def("adult_rollback_on_live_failure")
        with dg.build_sensor_context(instance=instance, definitions=defs) as context:
            tick = sensor(context)
        requests = tick.run_requests if isinstance(tick, dg.SensorResult) else []
        assert requests, f"the sensor requested no rollback: {tick}"
        rollback_requested = time.monotonic()
        (request,) = requests
        run = defs.resolve_job_def("adult_rollback").execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags
        )
        assert run.success
        rolled_back = time.monotonic()
    seen = client.answers.copy()
    # Back: the first answer of the previous champion's slot after the last of the bad one's.
    time.sleep(3)
    timeline = list(client.timeline)
    last_bad = max((t for t, slot in timeline if slot == bad_slot), default=0.0)
    traffic_back = min(
        t for t, slot in timeline if slot == good_slot and t > max(last_bad, rollback_requested)
    )
    after = client.answers - seen
    return Recovery(
        versions=(version_a, version_b), slots=(good_slot, bad_slot), bad_from=bad_from,
        batch_written=batch_written, judged=judged, rollback_requested=rollback_requested,
        rolled_back=rolled_back, traffic_back=traffic_back, verdicts=verdicts,
        outcome={"live": DeploymentState.load(directory).live}, answers_after=after,
    )  # fmt: skip
