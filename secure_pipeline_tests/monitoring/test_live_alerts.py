"""From a served champion's traffic to a firing alert, with every part real.

A real model-server slot (its own process, mutual TLS) serves the reference run's champion and
records what it scores; ``adult_monitor`` judges the recorded batches; the real pipeline
exporter (`secure-pipeline metrics serve`'s server) exposes the verdicts; Debian's Prometheus
scrapes the exporter and the slot (over the slot PKI's mutual TLS) with the shipped
``deploy/monitoring/alerts.yml``. Clean traffic passes the live drift check and no alert fires;
drifted traffic fails it and ``SecurePipelineLiveDrift`` fires.
"""

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline import environment as env
from secure_pipeline.compose import pipelines_of
from secure_pipeline.monitoring.exporter import PipelineCollector, serve_metrics
from secure_pipeline.names import LIVE_INPUT_DRIFT
from secure_pipeline.promotion.bluegreen import (
    SlotState,
    controller_context,
    slot_pki,
    start_slot,
    stop_slot,
    wait_ready,
)
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.serving.certs import CONTROLLER_IDENTITY, SLOT_SERVER_NAME, ensure_slot_pki
from secure_pipeline.storage.resources import store_resource
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.deploy.rendering import DEPLOY
from secure_pipeline_tests.monitoring.prometheus_server import ScrapeJob, running_prometheus
from secure_pipeline_tests.monitoring.recovery_scenario import request_rows
from secure_pipeline_tests.services import free_port

ALERTS = DEPLOY / "monitoring" / "alerts.yml"
LIVE_DRIFT = {"pipeline": "adult", "asset": "live_traffic", "check": LIVE_INPUT_DRIFT}


@dataclass
class Slot:
    """A slot process of a deployment directory, reached as the release controller."""

    directory: Path
    state: SlotState

    def post(self, path: str, document: dict) -> int:
        host, _, port = self.state.address.rpartition(":")
        pki = slot_pki(self.directory)
        connection = http.client.HTTPSConnection(
            host, int(port), context=controller_context(pki), timeout=30
        )
        try:
            connection.request("POST", path, json.dumps(document),
                               {"Content-Type": "application/json"})  # fmt: skip
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


@pytest.fixture
def slot(home: Path, reference_run, tmp_path: Path) -> Iterator[Slot]:
    directory = tmp_path / "deployment"
    ensure_slot_pki(slot_pki(directory).directory)
    state = start_slot(
        directory, "blue", SlotState(f"127.0.0.1:{free_port()}"),
        f"models:/{reference_run.name}/{reference_run.version}", "adult",
    )  # fmt: skip
    served = Slot(directory, state)
    try:
        ready, why = wait_ready(state.address, 120)
        assert ready, why + (directory / "blue.log").read_text()[-2000:]
        yield served
    finally:
        stop_slot(served.state)


def _monitor(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, bool]:
    result = defs.resolve_job_def("adult_monitor").execute_in_process(
        instance=instance, raise_on_error=False
    )
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _send(slot: Slot, rows: list[dict]) -> None:
    for start in range(0, len(rows), 50):
        assert slot.post("/predict", {"rows": rows[start : start + 50]}) == 200


def test_drifted_live_traffic_fires_the_alert_and_clean_traffic_does_not(
    home: Path, slot: Slot, tmp_path: Path
) -> None:
    defs = adult_pipeline().build_definitions(env.Environment.LOCAL)
    pki = slot_pki(slot.directory)
    with dg.DagsterInstance.get() as instance:
        collector = PipelineCollector(
            defs, instance, lambda: store_resource(env.Environment.LOCAL).get_store(),
            trust_policy, refresh_seconds=3600, pipelines=pipelines_of(),
        )  # fmt: skip
        collector.refresh()
        jobs = [
            ScrapeJob("secure-pipeline-slots", [slot.state.address], scheme="https", tls={
                "ca_file": pki.ca_cert, "cert_file": pki.client_cert(CONTROLLER_IDENTITY),
                "key_file": pki.client_key(CONTROLLER_IDENTITY), "server_name": SLOT_SERVER_NAME,
                "min_version": "TLS13"}),
        ]  # fmt: skip
        with serve_metrics(collector, port=0) as exporter:
            jobs.append(ScrapeJob("secure-pipeline-exporter", [f"127.0.0.1:{exporter.port}"]))
            with running_prometheus(tmp_path, jobs, [ALERTS]) as prometheus:
                prometheus.wait_for_targets_up(timeout=60)
                # Clean traffic: recorded, written when the slot stops, judged: no alert.
                _send(slot, request_rows(400, drifted=False))
                served = prometheus.wait_for(
                    "the slot's requests scraped",
                    lambda: prometheus.query(
                        'sum(secure_pipeline_requests_total{job="secure-pipeline-slots",'
                        'route="/predict",code="200"}) >= 8'
                    ),
                )
                assert served
                assert prometheus.query('secure_pipeline_ready{slot="blue"} == 1')
                stop_slot(slot.state)
                verdicts = _monitor(defs, instance)
                assert verdicts[LIVE_INPUT_DRIFT] is True, verdicts
                judged = prometheus.wait_for(
                    "the passed live check exported",
                    lambda: prometheus.query(
                        'secure_pipeline_check_passed{check="live_input_drift"} == 1'
                    ),
                )
                assert judged
                rule = prometheus.wait_for_evaluation("SecurePipelineLiveDrift", time.time() + 1)
                assert rule["state"] == "inactive", rule
                # Drifted traffic on a fresh slot process: the check fails, the alert fires.
                slot.state = start_slot(
                    slot.directory, "blue", slot.state, str(slot.state.model_ref), "adult"
                )
                ready, why = wait_ready(slot.state.address, 120)
                assert ready, why
                _send(slot, request_rows(400, drifted=True))
                stop_slot(slot.state)
                verdicts = _monitor(defs, instance)
                assert verdicts[LIVE_INPUT_DRIFT] is False, verdicts
                alert = prometheus.wait_for_alert(
                    "SecurePipelineLiveDrift", labels=LIVE_DRIFT, timeout=60
                )
                assert alert["labels"]["severity"] == "critical"
                psi = prometheus.query(
                    'secure_pipeline_feature_psi{check="live_input_drift",feature="age"}'
                )
                assert psi
                assert float(psi[0]["value"][1]) >= 0.25
