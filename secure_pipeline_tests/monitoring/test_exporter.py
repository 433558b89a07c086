"""The pipeline exporter against the real reference run, a real Dagster instance and the insider.

The exposition of the session's reference run (materializations, every check, the signed
champion, the audit trail) is read as Prometheus parses it. Then, each on a private copy of the
run's home, the insider of the threat model — write access to the store and the MLflow registry,
no signing key — edits an audit record, moves the champion alias, edits the champion decision
and edits the champion's bundle: each shows as a failed gauge, never as a valid one. Synthetic
pipelines in a real instance cover freshness windows, failed runs, failed checks with
``psi_by_feature`` and new evaluations between scrapes. The server is scraped over HTTP and over
TLS 1.3 (TLS 1.2 refused), and the command refuses plain HTTP off loopback.
"""

import base64
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
import warnings
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from secure_pipeline.environment import Environment
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.monitoring.exporter import (
    ExporterTls,
    PipelineCollector,
    metric_names,
    registry_of,
    serving,
)
from secure_pipeline.names import LIVE_TRAFFIC, PIPELINE_TAG, REQUIRED_CHECKS
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.audit import record_key
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.conftest import Registered, overwrite_raw

PIPELINE = adult_pipeline()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of an exposition, by sample name, as Prometheus' text parser reads it."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(found: dict, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` with these labels, or None."""
    matching = [
        v for got, v in found.get(name, []) if all(got.get(k) == w for k, w in labels.items())
    ]
    assert len(matching) <= 1, (name, labels, matching)
    return matching[0] if matching else None


def scrape(collector: PipelineCollector) -> dict:
    return samples(generate_latest(registry_of(collector)).decode())


def _collector(home: Path, instance: dg.DagsterInstance) -> PipelineCollector:
    store = LocalSnapshotStore(home / "store")
    return PipelineCollector(
        PIPELINE.build_definitions(Environment.LOCAL), instance, lambda: store, trust_policy,
        pipelines={"adult": PIPELINE},
    )  # fmt: skip


@pytest.fixture
def home(reference_run: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the reference run's home (the insider edits it; the run is shared).

    Its ``dagster.yaml`` still names the shared run's instance, which these tests only read.
    """
    copy = Path(shutil.copytree(reference_run.home, tmp_path / "run-home", symlinks=True))
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy))
    return copy


def test_describe_lists_every_family_of_the_contract() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        collector = PipelineCollector(
            dg.Definitions(), instance, lambda: LocalSnapshotStore(Path("unused")), trust_policy
        )
        names = [m.name for m in collector.describe()]
    assert [m.samples for m in collector.describe()] == [[]] * len(names)
    assert metric_names() == [
        f"secure_pipeline_{n}"
        for n in (
            "asset_last_materialization_timestamp_seconds", "asset_last_run_success",
            "asset_stale_after_seconds", "check_passed", "check_last_evaluation_timestamp_seconds",
            "check_failed_partitions", "check_value", "feature_psi", "champion_version",
            "champion_info",
            "champion_promoted_timestamp_seconds", "champion_age_seconds",
            "champion_evidence_valid", "audit_chain_valid", "audit_records",
            "monitoring_refresh_timestamp_seconds", "exporter_scrape_duration_seconds",
            "exporter_errors_total",
        )
    ]  # fmt: skip
    assert names == [n.removesuffix("_total") for n in metric_names()]


def test_the_reference_run_as_prometheus_reads_it(home: Path, reference_run: Registered) -> None:
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        collector.refresh()
        found = scrape(collector)
        graph = PIPELINE.build_definitions(Environment.LOCAL).resolve_asset_graph()
        # The live stage runs on its own schedule, from live traffic: not part of this run.
        keys = [k for k in graph.get_all_asset_keys() if k.path[-1] != LIVE_TRAFFIC]
        assert len(keys) >= 6
        for key in keys:
            event = instance.get_latest_materialization_event(key)
            asset = "/".join(key.path[1:])
            materialized = "secure_pipeline_asset_last_materialization_timestamp_seconds"
            assert value(found, materialized, pipeline="adult", asset=asset) == pytest.approx(
                event.timestamp
            )
            assert value(found, "secure_pipeline_asset_last_run_success", pipeline="adult",
                         asset=asset) is not None  # fmt: skip
        checks = {
            (k.asset_key.path[1], k.name)
            for k in graph.asset_check_keys
            if k.asset_key.path[-1] != LIVE_TRAFFIC
        }
    passed = {(s["asset"], s["check"]): v for s, v in found["secure_pipeline_check_passed"]
              if s["asset"] != LIVE_TRAFFIC}  # fmt: skip
    assert set(passed) == checks
    assert set(passed.values()) == {1.0}
    # The whole-graph run judged live_traffic too, with no traffic: inconclusive warnings.
    live = {s["check"]: (s["severity"], v) for s, v in found["secure_pipeline_check_passed"]
            if s["asset"] == LIVE_TRAFFIC}  # fmt: skip
    assert live["live_input_drift"] == ("WARN", 0.0)
    assert {c for _, c in checks} >= {c for stage in REQUIRED_CHECKS.values() for c in stage}
    severity = {s["check"]: s["severity"] for s, _ in found["secure_pipeline_check_passed"]}
    assert severity["performance_meets_policy"] == "ERROR"
    assert len(found["secure_pipeline_check_last_evaluation_timestamp_seconds"]) == len(
        checks
    ) + len(live)
    roc_auc = value(found, "secure_pipeline_check_value", check="performance_meets_policy",
                    metric="roc_auc")  # fmt: skip
    assert roc_auc is not None
    assert 0.85 < roc_auc < 1.0
    assert value(found, "secure_pipeline_check_value", check="reject_rate_within_limit",
                 metric="rows") == 48842  # fmt: skip
    # Text, JSON and table metadata are not values; booleans neither.
    metrics = {s["metric"] for s, _ in found["secure_pipeline_check_value"]}
    assert not metrics & {"attestation", "audit_record", "signed_by", "psi_by_feature"}
    psi = {s["feature"]: v for s, v in found["secure_pipeline_feature_psi"]
           if s["check"] == "feature_drift"}  # fmt: skip
    assert {"age", "education_num", "hours_per_week"} <= set(psi)
    assert all(v >= 0 for v in psi.values())
    assert value(found, "secure_pipeline_champion_version", pipeline="adult") == float(
        reference_run.version
    )
    info = {"version": reference_run.version, "model_sha256": reference_run.model_sha}
    assert value(found, "secure_pipeline_champion_info", pipeline="adult", **info) == 1.0
    promoted = value(found, "secure_pipeline_champion_promoted_timestamp_seconds", pipeline="adult")
    assert promoted is not None
    assert promoted <= time.time()
    age = value(found, "secure_pipeline_champion_age_seconds", pipeline="adult")
    assert age == pytest.approx(time.time() - promoted, abs=60)
    assert value(found, "secure_pipeline_champion_evidence_valid", pipeline="adult") == 1.0
    assert value(found, "secure_pipeline_audit_chain_valid") == 1.0
    assert value(found, "secure_pipeline_audit_records") > 10
    assert value(found, "secure_pipeline_monitoring_refresh_timestamp_seconds") <= time.time()
    assert 0 < value(found, "secure_pipeline_exporter_scrape_duration_seconds") < 5
    errors = {s["part"]: v for s, v in found["secure_pipeline_exporter_errors_total"]}
    assert errors == {"dagster": 0.0, "audit": 0.0, "champion": 0.0}


def test_an_edited_audit_record_shows_the_chain_broken(home: Path) -> None:
    store = LocalSnapshotStore(home / "store")
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        collector.refresh()
        assert value(scrape(collector), "secure_pipeline_audit_chain_valid") == 1.0
        record = json.loads(store.read_object(record_key(3)))
        record["actor"] = "someone else"  # the insider's edit: its hash no longer holds
        overwrite_raw(store, record_key(3), json.dumps(record).encode())
        refreshed = collector.refresh()
        found = scrape(collector)
    assert not refreshed.audit.valid
    assert "audit record 3" in refreshed.audit.detail
    assert value(found, "secure_pipeline_audit_chain_valid") == 0.0
    assert value(found, "secure_pipeline_audit_records") is None  # no length of a broken trail
    assert value(found, "secure_pipeline_exporter_errors_total", part="audit") == 1.0


def test_a_hand_moved_champion_alias_shows_the_evidence_invalid(
    home: Path, reference_run: Registered
) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.names import CHAMPION
    from secure_pipeline.registry.mlflow_registry import set_alias
    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    assert tracking_uri().startswith(f"sqlite:///{home}")  # the copy's registry, not the run's
    original = client.get_model_version(reference_run.name, reference_run.version)
    moved = client.create_model_version(
        reference_run.name, source=original.source, run_id=original.run_id, tags=original.tags
    )
    set_alias(reference_run.name, CHAMPION, str(moved.version))
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        status = collector.refresh().champions["adult"]
        found = scrape(collector)
    # The champion is still the signed one; the alias the slots follow disagrees with it.
    assert value(found, "secure_pipeline_champion_version", pipeline="adult") == float(
        reference_run.version
    )
    assert value(found, "secure_pipeline_champion_evidence_valid", pipeline="adult") == 0.0
    assert any("moved outside the gate" in p for p in status.problems), status.problems


def test_an_edited_champion_decision_shows_the_evidence_invalid(
    home: Path, reference_run: Registered
) -> None:
    store = LocalSnapshotStore(home / "store")
    # Every decision of the shared run's home (a test that ran earlier may have promoted
    # again there): none may stand in for the edited one.
    keys = list(store.list_keys("attestations/promotions/adult/"))
    assert keys
    for key in keys:
        envelope = json.loads(store.read_object(key))
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["secure_pipeline"]["version"] = "99"  # crown another version
        statement["predicate"]["resourceUri"] = "models:/adult/99"
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        overwrite_raw(store, key, json.dumps(envelope).encode())
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        status = collector.refresh().champions["adult"]
        found = scrape(collector)
    assert value(found, "secure_pipeline_champion_evidence_valid", pipeline="adult") == 0.0
    assert value(found, "secure_pipeline_champion_version", pipeline="adult") != 99.0
    assert any("do not verify" in p for p in status.problems), status.problems


def test_an_edited_champion_bundle_shows_the_evidence_invalid(
    home: Path, reference_run: Registered
) -> None:
    """The run's artifacts re-pointed (sqlite) at a copy the insider edits."""
    database = home / "mlflow" / "mlflow.db"
    with sqlite3.connect(database) as connection:
        [(run_id, uri)] = connection.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall()
        assert uri.startswith(f"file://{reference_run.home}")
        copied = uri.replace(str(reference_run.home), str(home))
        connection.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (copied, run_id))
    cards = list(Path(copied.removeprefix("file://")).rglob("MODEL_CARD.md"))
    assert cards
    for card in cards:
        card.write_text(card.read_text().replace("fairness", "fair-ish"))
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        status = collector.refresh().champions["adult"]
        found = scrape(collector)
    assert value(found, "secure_pipeline_champion_evidence_valid", pipeline="adult") == 0.0
    assert any("MODEL_CARD.md" in p for p in status.problems), status.problems


def test_the_untampered_copy_is_valid(home: Path) -> None:
    """The control of the four tests above: the same copy, not edited, verifies."""
    with dg.DagsterInstance.get() as instance:
        collector = _collector(home, instance)
        refreshed = collector.refresh()
    assert refreshed.audit.valid
    assert refreshed.champions["adult"].evidence_valid, refreshed.champions["adult"].problems


# -- synthetic pipelines in a real instance ---------------------------------------------------


def _synthetic(outcome: dict) -> dg.Definitions:
    """Pipeline ``demo``: ``source`` (2-hour freshness window) with a drift check, and
    ``model``, which fails when ``outcome["fail"]``."""
    source = dg.AssetSpec(
        ["demo", "source"], tags={PIPELINE_TAG: "demo"},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2)),
    )  # fmt: skip
    model = dg.AssetSpec(["demo", "model"], tags={PIPELINE_TAG: "demo"}, deps=[source.key])
    drift = dg.AssetCheckSpec("feature_drift", asset=source.key)

    @dg.multi_asset(specs=[source], check_specs=[drift], name="demo_source")
    def build_source():  # noqa: ANN202 - yields Dagster results
        yield dg.MaterializeResult(asset_key=source.key)
        yield dg.AssetCheckResult(
            asset_key=source.key, check_name="feature_drift", passed=outcome["passed"],
            severity=dg.AssetCheckSeverity.ERROR, metadata={
                "max_psi": outcome["psi"], "rows": 500, "ok": True,
                "psi_by_feature": dg.MetadataValue.json({"age": outcome["psi"], "hours": 0.01}),
            },
        )  # fmt: skip

    @dg.multi_asset(specs=[model], name="demo_model")
    def build_model():  # noqa: ANN202 - yields Dagster results
        if outcome["fail"]:
            raise RuntimeError("training failed")
        yield dg.MaterializeResult(asset_key=model.key)

    return dg.Definitions(assets=[build_source, build_model])


def test_synthetic_pipeline_freshness_failures_and_new_evaluations(isolated_env: Path) -> None:
    outcome = {"passed": False, "psi": 0.4, "fail": True}
    definitions = _synthetic(outcome)
    with dg.DagsterInstance.get() as instance:
        collector = PipelineCollector(
            definitions, instance, lambda: LocalSnapshotStore(isolated_env / "store"),
            trust_policy, pipelines={},
        )  # fmt: skip
        before = scrape(collector)
        assert "secure_pipeline_check_passed" not in before  # never evaluated: no sample
        assert value(before, "secure_pipeline_asset_stale_after_seconds", pipeline="demo",
                     asset="source") == 7200  # fmt: skip
        assert value(before, "secure_pipeline_asset_stale_after_seconds", asset="model") is None
        result = dg.materialize(definitions.assets, instance=instance, raise_on_error=False)
        assert not result.success
        found = scrape(collector)
        assert value(found, "secure_pipeline_check_passed", check="feature_drift",
                     severity="ERROR") == 0.0  # fmt: skip
        assert value(found, "secure_pipeline_feature_psi", check="feature_drift",
                     feature="age") == 0.4  # fmt: skip
        assert value(found, "secure_pipeline_check_value", metric="max_psi") == 0.4
        assert value(found, "secure_pipeline_check_value", metric="ok") is None  # a boolean
        # Both assets were targeted by a failed run; only the source was materialized.
        assert value(found, "secure_pipeline_asset_last_run_success", asset="model") == 0.0
        assert value(found, "secure_pipeline_asset_last_run_success", asset="source") == 0.0
        assert value(found, "secure_pipeline_asset_last_materialization_timestamp_seconds",
                     asset="model") is None  # fmt: skip
        # The next run's evaluation replaces the one already read (each read once, cached).
        outcome.update(passed=True, psi=0.02, fail=False)
        assert dg.materialize(definitions.assets, instance=instance).success
        again = scrape(collector)
        assert value(again, "secure_pipeline_check_passed", check="feature_drift") == 1.0
        assert value(again, "secure_pipeline_feature_psi", feature="age") == 0.02
        assert value(again, "secure_pipeline_asset_last_run_success", asset="model") == 1.0
        refreshed = collector.refresh()
    # This home has no audit trail and no champion: an empty trail verifies, no champion
    # decision means no champion gauges at all (not a failing one).
    assert refreshed.audit.valid
    assert refreshed.audit.records == 0
    assert refreshed.champions["demo"].evidence_valid is False  # no spec given for "demo"
    assert collector.errors()["champion"] == 1


def _synthetic_daily(verdicts: dict[str, bool], *, partitioned: bool = True) -> dg.Definitions:
    """Pipeline ``daily``: a daily-partitioned ``source`` whose check passes per ``verdicts``.

    Not ``partitioned``: the same asset and check without partitions (verdict ``"whole"``).
    """
    days = dg.DailyPartitionsDefinition(start_date="2026-11-01") if partitioned else None
    source = dg.AssetSpec(["daily", "source"], tags={PIPELINE_TAG: "daily"}, partitions_def=days)
    with warnings.catch_warnings():  # per-partition checks: a preview feature of Dagster
        warnings.simplefilter("ignore", dg.PreviewWarning)
        rows = dg.AssetCheckSpec("reject_rate", asset=source.key, partitions_def=days)

    @dg.multi_asset(specs=[source], check_specs=[rows], name="daily_source", partitions_def=days)
    def build_source(context: dg.AssetExecutionContext):  # noqa: ANN202 - yields results
        yield dg.MaterializeResult(asset_key=source.key)
        yield dg.AssetCheckResult(
            asset_key=source.key, check_name="reject_rate",
            passed=verdicts[context.partition_key if partitioned else "whole"],
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"day": context.partition_key if partitioned else "whole"},
        )  # fmt: skip

    return dg.Definitions(assets=[build_source])


def test_a_partitioned_asset_shows_its_newest_day_and_counts_failed_days(
    isolated_env: Path,
) -> None:
    # A backfill of older days evaluates them after today's: the latest evaluation overall is
    # then an old day's, and a pass there must not hide today's failure.
    verdicts = {"2026-11-01": True, "2026-11-02": True, "2026-11-03": False}
    definitions = _synthetic_daily(verdicts)

    def run(day: str) -> float:
        """Materialize ``day``; when its materialization happened."""
        dg.materialize(definitions.assets, instance=instance, partition_key=day,
                       raise_on_error=False)  # fmt: skip
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["daily", "source"]),
                                  asset_partitions=[day]), limit=1,
        ).records  # fmt: skip
        return record.timestamp

    with dg.DagsterInstance.get() as instance:
        collector = PipelineCollector(
            definitions, instance, lambda: LocalSnapshotStore(isolated_env / "store"),
            trust_policy, pipelines={},
        )  # fmt: skip
        today = run("2026-11-03")  # today's batch fails its check
        run("2026-11-01")  # then the older days are backfilled; they pass
        backfilled = run("2026-11-02")
        found = scrape(collector)
        labels = {"pipeline": "daily", "asset": "source", "check": "reject_rate"}
        # Fresh as of the newest day, not the backfill (which did not bring a new day).
        fresh = "secure_pipeline_asset_last_materialization_timestamp_seconds"
        assert backfilled > today
        assert value(found, fresh, pipeline="daily", asset="source") == today
        assert value(found, "secure_pipeline_check_passed", **labels) == 0.0
        failed = "secure_pipeline_check_failed_partitions"
        assert value(found, failed, **labels, severity="ERROR") == 1.0
        assert value(found, failed, **labels, severity="WARN") == 0.0
        # The day is fixed and judged again: every day passes.
        verdicts["2026-11-03"] = True
        today = run("2026-11-03")
        again = scrape(collector)
        assert value(again, fresh, pipeline="daily", asset="source") == today
        assert value(again, "secure_pipeline_check_passed", **labels) == 1.0
        assert value(again, failed, **labels, severity="ERROR") == 0.0
        # An older day failing now is counted, though the newest day still shows passed.
        verdicts["2026-11-01"] = False
        run("2026-11-01")
        last = scrape(collector)
        assert value(last, "secure_pipeline_check_passed", **labels) == 1.0
        assert value(last, failed, **labels, severity="ERROR") == 1.0


def test_an_asset_no_longer_partitioned_is_judged_by_its_new_evaluations(
    isolated_env: Path,
) -> None:
    # Its old days: one failed, the newest passed; its first evaluation as a whole fails. The
    # days' verdicts must not
    # hide that failure, nor keep counting as failed partitions of an unpartitioned asset.
    with dg.DagsterInstance.get() as instance:
        old = _synthetic_daily({"2026-11-01": False, "2026-11-02": True})
        for day in ("2026-11-01", "2026-11-02"):
            dg.materialize(old.assets, instance=instance, partition_key=day, raise_on_error=False)
        now = _synthetic_daily({"whole": False}, partitioned=False)
        dg.materialize(now.assets, instance=instance, raise_on_error=False)
        collector = PipelineCollector(
            now, instance, lambda: LocalSnapshotStore(isolated_env / "store"), trust_policy,
            pipelines={},
        )  # fmt: skip
        found = scrape(collector)
    labels = {"pipeline": "daily", "asset": "source", "check": "reject_rate"}
    assert value(found, "secure_pipeline_check_passed", **labels) == 0.0
    assert "secure_pipeline_check_failed_partitions" not in found


def test_an_unpartitioned_check_has_no_failed_partitions_sample(
    demo_collector: PipelineCollector,
) -> None:
    found = scrape(demo_collector)
    assert value(found, "secure_pipeline_check_passed", check="feature_drift") == 1.0
    assert "secure_pipeline_check_failed_partitions" not in found


# -- serving ----------------------------------------------------------------------------------


@pytest.fixture
def demo_collector(isolated_env: Path):
    definitions = _synthetic({"passed": True, "psi": 0.1, "fail": False})
    with dg.DagsterInstance.get() as instance:
        dg.materialize(definitions.assets, instance=instance)
        yield PipelineCollector(
            definitions, instance, lambda: LocalSnapshotStore(isolated_env / "store"),
            trust_policy, pipelines={},
        )  # fmt: skip


def test_served_over_http_on_loopback_only(demo_collector: PipelineCollector) -> None:
    with serving(demo_collector, "127.0.0.1", 0) as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=10)
    assert refused.value.code == 404
    assert value(samples(text), "secure_pipeline_check_passed", check="feature_drift") == 1.0
    assert "process_cpu_seconds_total" not in text  # its own registry, nothing else
    for host in ("0.0.0.0", "192.0.2.10", "::", "example.org"):
        with pytest.raises(ConfigurationError, match="not a loopback address"):
            serving(demo_collector, host, 0).__enter__()


def test_served_over_tls_13_only(demo_collector: PipelineCollector, pki) -> None:
    tls = ExporterTls(pki.directory / "good.pem", pki.directory / "good.key")
    with serving(demo_collector, "127.0.0.1", 0, tls) as server:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=pki.ca)
        with urllib.request.urlopen(server.url, context=context, timeout=10) as response:
            assert b"secure_pipeline_check_passed" in response.read()
        old = ssl.create_default_context(cafile=pki.ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.url, context=old, timeout=10)
        # A client that connects and says nothing does not stop others from scraping.
        with (
            socket.create_connection(("127.0.0.1", server.port)),
            urllib.request.urlopen(server.url, context=context, timeout=10) as response,
        ):
            assert response.status == 200
    mismatched = ExporterTls(pki.directory / "good.pem", pki.directory / "otherca.key")
    with pytest.raises(ConfigurationError, match="do not load as a PEM pair"):
        serving(demo_collector, "127.0.0.1", 0, mismatched).__enter__()


def test_the_command_refuses_plain_http_off_loopback() -> None:
    from secure_pipeline.cli.metrics import metrics

    runner = CliRunner()
    result = runner.invoke(metrics, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output
    result = runner.invoke(metrics, ["serve", "--tls-cert", "cert.pem"])
    assert result.exit_code == 2
    assert "go together" in result.output
    result = runner.invoke(metrics, ["serve", "--module", "no_such_module:defs"])
    assert result.exit_code == 2
    assert "cannot load the code location" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_command_serves_the_code_location(home: Path, reference_run: Registered) -> None:
    port = _free_port()
    code = "from secure_pipeline.cli.metrics import metrics; metrics()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", str(port), "--refresh", "3600"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        text = None
        while text is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert text is not None, process.communicate(timeout=30)
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    found = samples(text)
    assert value(found, "secure_pipeline_champion_evidence_valid", pipeline="adult") == 1.0
    assert value(found, "secure_pipeline_champion_version", pipeline="adult") == float(
        reference_run.version
    )
    assert value(found, "secure_pipeline_audit_chain_valid") == 1.0
    assert value(found, "secure_pipeline_check_passed", check="signature_verifies") == 1.0
    assert f"serving http://127.0.0.1:{port}/metrics" in err
