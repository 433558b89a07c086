"""deploy/monitoring/ in a real Prometheus: the shipped alert rules fire on scraped metrics, and
the example's slot scrape job speaks the slots' mutual TLS.

The scraped endpoint is a real prometheus-client HTTP server over a registry the test controls,
with gauges named and labelled as the pipeline exporter's; Prometheus is Debian's
/usr/bin/prometheus (`secure_pipeline_tests.monitoring.prometheus_server`).
"""

import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from secure_pipeline.monitoring.exporter import FAMILIES, PREFIX
from secure_pipeline.serving.certs import CONTROLLER_IDENTITY, init_slot_pki
from secure_pipeline_tests.deploy.rendering import DEPLOY
from secure_pipeline_tests.monitoring.prometheus_server import (
    PrometheusServer,
    ScrapeJob,
    running_prometheus,
)

MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yml"
EXPORTER_JOB = "secure-pipeline-exporter"
SLOTS_JOB = "secure-pipeline-slots"
LIVE_DRIFT = {"pipeline": "adult", "asset": "live_traffic", "check": "live_input_drift"}


@contextlib.contextmanager
def serving(registry: CollectorRegistry, **tls: object) -> Iterator[str]:
    """``host:port`` of a prometheus-client HTTP(S) server for ``registry`` on loopback."""
    server, thread = start_http_server(0, "127.0.0.1", registry, **tls)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def exporter_gauge(registry: CollectorRegistry, name: str) -> Gauge:
    """A gauge named, documented and labelled as the exporter's family ``name``."""
    kind, documentation, labels = FAMILIES[name]
    assert kind == "gauge", name
    return Gauge(PREFIX + name, documentation, list(labels), registry=registry)


def exporter_registry() -> tuple[CollectorRegistry, Gauge]:
    """Gauges as the exporter exposes them: a healthy pipeline whose live drift check passed."""
    registry = CollectorRegistry()
    passed = exporter_gauge(registry, "check_passed")
    passed.labels(severity="ERROR", **LIVE_DRIFT).set(1)
    passed.labels(pipeline="adult", asset="features", check="feature_drift", severity="ERROR").set(
        1
    )
    exporter_gauge(registry, "champion_evidence_valid").labels(pipeline="adult").set(1)
    exporter_gauge(registry, "audit_chain_valid").set(1)
    return registry, passed


def live_drift_alerts(prometheus: PrometheusServer) -> list[dict]:
    """The SecurePipelineLiveDrift alerts pending or firing now."""
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "SecurePipelineLiveDrift"]


def test_live_drift_alert_fires_on_a_failed_check_and_resolves_when_it_passes(
    tmp_path: Path,
) -> None:
    registry, passed = exporter_registry()
    passed.labels(severity="ERROR", **LIVE_DRIFT).set(0)
    with (
        serving(registry) as address,
        running_prometheus(tmp_path, {EXPORTER_JOB: [address]}, [ALERTS]) as prometheus,
    ):
        alert = prometheus.wait_for_alert("SecurePipelineLiveDrift", labels=LIVE_DRIFT)
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == EXPORTER_JOB
        assert alert["annotations"]["summary"] == (
            "Live traffic of adult drifted (live_input_drift)"
        )
        assert alert["annotations"]["runbook"].endswith("README.md#securepipelinelivedrift")
        # The general gate alert leaves the live drift checks to this one.
        assert not [
            a for a in prometheus.alerts() if a["labels"]["alertname"] == "SecurePipelineGateFailed"
        ]
        # The check passes at its next evaluation: the alert goes once Prometheus saw it.
        passed.labels(severity="ERROR", **LIVE_DRIFT).set(1)
        prometheus.wait_for(
            "the live drift alert resolved", lambda: not live_drift_alerts(prometheus)
        )


def test_live_drift_alert_stays_quiet_while_the_check_passes(tmp_path: Path) -> None:
    registry, _ = exporter_registry()
    with (
        serving(registry) as address,
        running_prometheus(tmp_path, {EXPORTER_JOB: [address]}, [ALERTS]) as prometheus,
    ):
        query = 'secure_pipeline_check_passed{check="live_input_drift", severity="ERROR"}'
        seen = prometheus.wait_for("the check scraped", lambda: prometheus.query(query))
        assert [float(sample["value"][1]) for sample in seen] == [1.0]
        # Evaluated on that sample (and twice more, to be sure), and still not firing.
        after = time.time() + 2
        rule = prometheus.wait_for_evaluation("SecurePipelineLiveDrift", after=after)
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule
        assert live_drift_alerts(prometheus) == []
        # Every shipped rule loaded and evaluates without an error.
        rules = prometheus.rules()
        assert {r["name"] for r in rules} >= {"SecurePipelineLiveDrift", "SecurePipelineGateFailed"}
        assert all(r["health"] == "ok" for r in rules), rules


def _example_slots_job(pki_dir: Path, target: str, *, client_cert: bool) -> ScrapeJob:
    """The slots job of deploy/monitoring/prometheus.yml, pointed at ``target`` and a PKI."""
    example = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = [j for j in example["scrape_configs"] if j["job_name"] == SLOTS_JOB]
    # The example's relative paths, resolved against where this test's PKI is.
    tls = {key: str(pki_dir.parent / value) if key.endswith("_file") else value
           for key, value in job["tls_config"].items()}  # fmt: skip
    if not client_cert:
        del tls["cert_file"], tls["key_file"]
    return ScrapeJob(SLOTS_JOB, [target], scheme=job["scheme"], tls=tls)


def test_the_example_slots_job_scrapes_over_the_slot_pkis_mutual_tls(tmp_path: Path) -> None:
    pki = init_slot_pki(tmp_path / "slot-pki")
    registry, _ = exporter_registry()
    # A stand-in slot: presents the slots' certificate, requires a client cert of the slot CA.
    slot_tls = {"certfile": str(pki.server_cert), "keyfile": str(pki.server_key),
                "client_cafile": str(pki.ca_cert), "client_auth_required": True,
                "tls_min_version": ssl.TLSVersion.TLSv1_3}  # fmt: skip
    assert pki.client_cert(CONTROLLER_IDENTITY).is_file()
    with serving(registry, **slot_tls) as address:
        with running_prometheus(
            tmp_path / "with-cert", [_example_slots_job(pki.directory, address, client_cert=True)]
        ) as prometheus:
            (target,) = prometheus.wait_for_targets_up()
            assert target["labels"]["job"] == SLOTS_JOB
            assert prometheus.query(
                'secure_pipeline_audit_chain_valid{job="secure-pipeline-slots"}'
            )
        # Without the controller's certificate the slot refuses the handshake: target down.
        with running_prometheus(
            tmp_path / "without-cert",
            [_example_slots_job(pki.directory, address, client_cert=False)],
        ) as prometheus:
            (target,) = prometheus.wait_for(
                "a failed scrape",
                lambda: [t for t in prometheus.targets() if t["health"] == "down"],
            )
            # TLS 1.3: the client finishes its side before the slot checks for a certificate,
            # so the refusal reaches Prometheus as the slot's alert or, when its request was
            # already on the wire, as the reset that follows it.
            error = target["lastError"]
            assert "tls: certificate required" in error or "connection reset by peer" in error, (
                target
            )
