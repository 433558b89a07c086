"""deploy/monitoring/: rules, their unit tests, Prometheus and Alertmanager configs and the
Grafana dashboard, checked with the real tools (Debian's promtool and amtool) and against the
metric names the exporter and the slots really expose.
"""

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from secure_pipeline.serving.certs import CONTROLLER_IDENTITY, SLOT_SERVER_NAME, SlotPki
from secure_pipeline_tests.deploy.rendering import DEPLOY
from secure_pipeline_tests.monitoring.prometheus_server import AMTOOL, PROMTOOL, require_binary

MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yml"
DASHBOARD = MONITORING / "grafana" / "secure-pipeline.json"
README = MONITORING / "README.md"

# The alerts DESIGN15 agreed on; a new one needs its runbook section and unit tests too.
EXPECTED_ALERTS = {
    "SecurePipelineGateFailed",
    "SecurePipelinePartitionGateFailed",
    "SecurePipelineAssetStale",
    "SecurePipelineLiveDrift",
    "SecurePipelineChampionEvidenceInvalid",
    "SecurePipelineAuditChainBroken",
    "SecurePipelineSlotErrorRate",
    "SecurePipelineSlotLatency",
    "SecurePipelineTargetDown",
}
SEVERITIES = {"critical", "warning"}
# What Grafana substitutes in a target's expr, with a value of the right kind, so that promtool
# can parse the expression. A variable not listed here is an error in the dashboard.
GRAFANA_VARIABLES = {
    "pipeline": "adult",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

# ---------------------------------------------------------------------------------------------
# PromQL metric names


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
# A number (with a duration unit: offset 5m), or an identifier, with a "(" when it is a call.
_TOKEN = re.compile(
    r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*|(?<![\w:])[A-Za-z_:][\w:]*(\s*\()?", re.I
)
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "le",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Label matchers, strings, ranges, grouping clauses (``by``, ``on``, ``group_left``, ...),
    function and aggregation calls, keywords, numbers and Grafana variables are not names.
    """
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if match.group(1) or token[0].isdigit() or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def exposition_names(families: Iterable[Any]) -> set[str]:
    """The series names a scrape of these prometheus-client families can contain.

    A family is named without its suffixes (a counter ``x`` is exposed as ``x_total``); this is
    what Prometheus stores and PromQL selects.
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in families:
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@cache
def slot_names() -> frozenset[str]:
    """Every name a model-server slot's ``/metrics`` exposes.

    No model is loaded: the families exist before the first load or request.
    """
    from secure_pipeline.reference.adult import adult_pipeline
    from secure_pipeline.serving.server import ModelService

    service = ModelService(adult_pipeline(), "models:/adult/1", "blue")
    return frozenset(exposition_names(service.registry.collect()))


def exporter_names(tmp_path: Path) -> frozenset[str]:
    """Every name the pipeline exporter declares for the real code location."""
    import dagster as dg

    from secure_pipeline.definitions import defs
    from secure_pipeline.monitoring.exporter import PipelineCollector
    from secure_pipeline.storage.local import LocalSnapshotStore
    from secure_pipeline.trust.policy import trust_policy

    definitions = defs() if callable(defs) else defs
    with dg.DagsterInstance.ephemeral() as instance:
        collector = PipelineCollector(
            definitions, instance, lambda: LocalSnapshotStore(tmp_path / "store"), trust_policy
        )
        return frozenset(exposition_names(collector.describe()))


@pytest.fixture
def exposed(tmp_path: Path) -> frozenset[str]:
    """What Prometheus can hold from the secure pipeline: the slots', the exporter's, ``up``."""
    return slot_names() | exporter_names(tmp_path) | {"up"}


# ---------------------------------------------------------------------------------------------
# The files


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The dashboard, parsed afresh (tests mutate it)."""
    return json.loads(DASHBOARD.read_text())


def dashboard_targets(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query of the dashboard, rows' nested panels included."""

    def panels(items: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [(p, t) for p in panels(board["panels"]) for t in p.get("targets", [])]


def grafana_expr(expr: str) -> str:
    """``expr`` as Prometheus receives it from the dashboard (its variables substituted)."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in GRAFANA_VARIABLES, f"unknown dashboard variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run Debian's promtool."""
    return subprocess.run(  # noqa: S603 - the fixed Debian binary, our own arguments
        [str(require_binary(PROMTOOL)), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def amtool(*args: str) -> subprocess.CompletedProcess:
    """Run Debian's amtool."""
    return subprocess.run(  # noqa: S603 - the fixed Debian binary, our own arguments
        [str(require_binary(AMTOOL)), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (lower case, punctuation dropped)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


# ---------------------------------------------------------------------------------------------
# Alert rules


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_fail_when_a_rule_is_broken(tmp_path: Path) -> None:
    # The unit tests have teeth: the live drift rule reading the wrong value fails them.
    rules = ALERTS.read_text()
    broken = rules.replace('severity="ERROR"} == 0\n        labels:\n          severity: critical',
                           'severity="ERROR"} == 1\n        labels:\n          severity: critical',
                           1)  # fmt: skip
    assert broken != rules
    (tmp_path / ALERTS.name).write_text(broken)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "live drift" in result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    anchors = heading_anchors(README.read_text())
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name} has no {key}"
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "deploy/monitoring/README.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"no runbook section for {name}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_every_alert_expr_names_only_exposed_metrics(exposed: frozenset[str]) -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exposed, f"{rule['alert']} reads unexposed {sorted(names - exposed)}"


# ---------------------------------------------------------------------------------------------
# Metric names


def test_metric_names_of_promql() -> None:
    assert metric_names(
        "histogram_quantile(0.95, sum by (pipeline, slot, le) (rate("
        'secure_pipeline_request_duration_seconds_bucket{route="/predict", '
        'pipeline=~"$pipeline"}[$__rate_interval]))) > 0.25'
    ) == {"secure_pipeline_request_duration_seconds_bucket"}
    assert metric_names("time() - a_seconds > on(pipeline, asset) b_seconds") == {
        "a_seconds",
        "b_seconds",
    }
    assert metric_names(
        "sum(rate(x_total[5m])) by (le) / ignoring(code) group_left(slot) y:ratio offset 5m"
    ) == {"x_total", "y:ratio"}
    assert metric_names('up{job=~"secure-pipeline-.*"} == 0 and bool 1e3') == {"up"}
    assert metric_names('{__name__="x"}') == set()


def test_exposed_names_are_the_contract_and_refuse_others(exposed: frozenset[str]) -> None:
    # The slots' names of DESIGN15 A, in their exposition form.
    for name in (
        "secure_pipeline_requests_total",
        "secure_pipeline_request_duration_seconds_bucket",
        "secure_pipeline_prediction_score_count",
        "secure_pipeline_predictions_total",
        "secure_pipeline_ready",
        "secure_pipeline_model_info",
        "secure_pipeline_live_recorded_rows_total",
        "process_cpu_seconds_total",
    ):
        assert name in exposed, name
    # The exporter's of DESIGN15 D.
    for name in (
        "secure_pipeline_check_passed",
        "secure_pipeline_feature_psi",
        "secure_pipeline_champion_evidence_valid",
        "secure_pipeline_exporter_errors_total",
    ):
        assert name in exposed, name
    # A family's bare name and a name nobody exposes would select nothing in Prometheus.
    expr = "rate(secure_pipeline_requests[5m]) + secure_pipeline_request_seconds_bucket"
    assert metric_names(expr) - exposed == {
        "secure_pipeline_requests",
        "secure_pipeline_request_seconds_bucket",
    }


# ---------------------------------------------------------------------------------------------
# Prometheus and Alertmanager configuration


def test_the_example_prometheus_config_scrapes_exporter_and_slots_over_the_slot_pki() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"secure-pipeline-exporter", "secure-pipeline-slots"}
    slots = jobs["secure-pipeline-slots"]
    assert slots["scheme"] == "https"
    # The slot PKI's own layout (relative to the config file), the controller's client cert.
    pki = SlotPki(Path("slot-pki"))
    assert slots["tls_config"] == {
        "ca_file": str(pki.ca_cert),
        "cert_file": str(pki.client_cert(CONTROLLER_IDENTITY)),
        "key_file": str(pki.client_key(CONTROLLER_IDENTITY)),
        "server_name": SLOT_SERVER_NAME,
        "min_version": "TLS13",
    }


def test_promtool_accepts_the_example_config_beside_a_real_slot_pki(tmp_path: Path) -> None:
    from secure_pipeline.serving.certs import init_slot_pki

    # promtool opens the client certificate and key: render the example where they exist.
    for source in (PROMETHEUS_CONFIG, ALERTS):
        shutil.copy(source, tmp_path / source.name)
    missing = promtool("check", "config", str(tmp_path / PROMETHEUS_CONFIG.name))
    assert missing.returncode != 0
    assert "controller.pem" in missing.stdout + missing.stderr
    init_slot_pki(tmp_path / "slot-pki")
    result = promtool("check", "config", str(tmp_path / PROMETHEUS_CONFIG.name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=SecurePipelineLiveDrift"], "page"),
        (["severity=warning", "alertname=SecurePipelineAssetStale"], "ticket"),
        (["alertname=SomethingElse"], "ticket"),
    ],
)
def test_alertmanager_pages_critical_and_tickets_the_rest(labels: list[str], receiver: str) -> None:
    result = amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_alertmanager_inhibits_warnings_while_critical_fires() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert config["inhibit_rules"] == [
        {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["pipeline"],
        }
    ]
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].startswith("https://"), receiver["name"]


# ---------------------------------------------------------------------------------------------
# Grafana dashboard

DATASOURCE = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        # Grafana's limit; a fixed uid keeps links and provisioning stable across imports.
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": {"$ref": "#/$defs/variable"}}},
        },
    },
    "$defs": {
        "datasource": DATASOURCE,
        "gridPos": {
            "type": "object",
            "required": ["x", "y", "w", "h"],
            "additionalProperties": False,
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "h": {"type": "integer", "minimum": 1},
            },
        },
        "target": {
            "type": "object",
            "required": ["expr", "refId", "datasource"],
            "properties": {
                "expr": {"type": "string", "minLength": 1},
                "refId": {"type": "string", "pattern": "^[A-Z]$"},
                "datasource": {"$ref": "#/$defs/datasource"},
                "legendFormat": {"type": "string"},
                "instant": {"type": "boolean"},
                "format": {"enum": ["time_series", "table", "heatmap"]},
            },
        },
        "panel": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["row", "timeseries", "stat", "bargauge", "table", "gauge"]},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"$ref": "#/$defs/gridPos"},
            },
            "if": {"properties": {"type": {"const": "row"}}},
            "then": {
                "not": {"required": ["targets"]},
                "properties": {"panels": {"type": "array", "maxItems": 0}},
            },
            "else": {
                "required": ["datasource", "targets", "description"],
                "properties": {
                    "datasource": {"$ref": "#/$defs/datasource"},
                    "description": {"type": "string", "minLength": 1},
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/target"},
                    },
                },
            },
        },
        "variable": {
            "type": "object",
            "required": ["name", "type"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z_]+$"},
                "type": {"enum": ["query", "datasource", "custom", "constant", "interval"]},
            },
            "if": {"properties": {"type": {"const": "query"}}},
            "then": {
                "required": ["datasource", "definition", "query"],
                "properties": {"datasource": {"$ref": "#/$defs/datasource"}},
            },
        },
    },
}


def schema_errors(board: dict[str, Any]) -> list[str]:
    """Every violation of `DASHBOARD_SCHEMA`, with its path."""
    validator = jsonschema.Draft202012Validator(DASHBOARD_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(board)]


def layout_errors(board: dict[str, Any]) -> list[str]:
    """Duplicate ids or refIds, panels wider than the grid or overlapping another."""
    errors = []
    cells: dict[tuple[int, int], int] = {}
    ids = [panel["id"] for panel in board["panels"]]
    if len(ids) != len(set(ids)):
        errors.append(f"duplicate panel ids {sorted(ids)}")
    for panel in board["panels"]:
        refs = [target["refId"] for target in panel.get("targets", [])]
        if len(refs) != len(set(refs)):
            errors.append(f"panel {panel['id']} repeats a refId: {refs}")
        pos = panel["gridPos"]
        if pos["x"] + pos["w"] > 24:
            errors.append(f"panel {panel['id']} is wider than the grid: {pos}")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    errors.append(f"panel {panel['id']} overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = panel["id"]
            else:
                continue
            break
    return errors


def test_the_dashboard_matches_its_schema_and_lays_out() -> None:
    board = dashboard()
    assert schema_errors(board) == []
    assert layout_errors(board) == []
    assert board["uid"] == "secure-pipeline"


def test_the_schema_and_layout_checks_refuse_a_broken_dashboard() -> None:
    board = dashboard()
    panel = next(p for p in board["panels"] if p["type"] == "timeseries")
    del panel["targets"][0]["expr"]
    panel["datasource"] = {"type": "prometheus", "uid": "a-fixed-uid"}
    errors = schema_errors(board)
    assert any("'expr' is a required property" in e for e in errors), errors
    assert any("${datasource}" in e for e in errors), errors
    board = dashboard()
    board["panels"][2]["gridPos"] = dict(board["panels"][1]["gridPos"])
    board["panels"][2]["id"] = board["panels"][1]["id"]
    errors = layout_errors(board)
    assert any("duplicate panel ids" in e for e in errors), errors
    assert any("overlaps" in e for e in errors), errors


def test_the_dashboard_has_its_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    pipeline = variables["pipeline"]
    assert pipeline["type"] == "query"
    definition = "label_values(secure_pipeline_champion_version, pipeline)"
    assert pipeline["definition"] == definition
    assert pipeline["query"]["query"] == definition


def test_the_dashboard_shows_health_gates_drift_serving_and_evidence() -> None:
    exprs = [target["expr"] for _, target in dashboard_targets(dashboard())]
    wanted = [
        "secure_pipeline_asset_last_materialization_timestamp_seconds",
        "secure_pipeline_asset_last_run_success",
        "secure_pipeline_check_passed",
        "secure_pipeline_check_value",
        'secure_pipeline_feature_psi{pipeline=~"$pipeline", check="live_input_drift"}',
        "histogram_quantile(0.95, sum by (pipeline, slot, le) "
        "(rate(secure_pipeline_request_duration_seconds_bucket",
        'code=~"5.."',
        'code=~"4.."',
        "secure_pipeline_champion_evidence_valid",
        "secure_pipeline_audit_chain_valid",
        "secure_pipeline_champion_version",
        "secure_pipeline_champion_age_seconds",
    ]
    for fragment in wanted:
        assert any(fragment in expr for expr in exprs), fragment
    # Every panel that reads a pipeline's metrics follows the pipeline variable.
    for panel, target in dashboard_targets(dashboard()):
        if re.search(
            r"secure_pipeline_(asset|check|feature|champion|request|ready|live)", target["expr"]
        ):
            assert 'pipeline=~"$pipeline"' in target["expr"], (panel["title"], target["expr"])


def test_every_dashboard_expr_names_only_exposed_metrics(exposed: frozenset[str]) -> None:
    board = dashboard()
    for panel, target in dashboard_targets(board):
        names = metric_names(target["expr"])
        assert names, (panel["title"], target["expr"])
        assert names <= exposed, f"{panel['title']} reads unexposed {sorted(names - exposed)}"
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            assert match.group(1) in exposed, variable["definition"]


def test_promtool_parses_every_dashboard_expr(tmp_path: Path) -> None:
    # Each query, as Grafana sends it, becomes a recording rule: promtool parses them all.
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
         "expr": grafana_expr(target["expr"])}
        for panel, target in dashboard_targets(dashboard())
    ]  # fmt: skip
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_readme_documents_every_file_and_alert() -> None:
    readme = README.read_text()
    for path in (ALERTS, ALERT_TESTS, PROMETHEUS_CONFIG, ALERTMANAGER_CONFIG, DASHBOARD):
        assert f"`{path.relative_to(MONITORING)}`" in readme, path.name
    for name in EXPECTED_ALERTS:
        assert f"### {name}" in readme, name


def test_the_readmes_slot_targets_command_lists_the_running_slots(tmp_path: Path) -> None:
    from secure_pipeline.promotion.bluegreen import DeploymentState, SlotState

    # A real deployment.json: blue live and running, green stopped after a release.
    DeploymentState(
        name="adult",
        live="blue",
        slots={
            "blue": SlotState("127.0.0.1:8101", "models:/adult/4", pid=4242),
            "green": SlotState("127.0.0.1:8102"),
        },
        weights={"blue": 100, "green": 0},
        gateway={},
    ).save(tmp_path)
    (line,) = [line for line in README.read_text().splitlines() if line.strip().startswith("jq ")]
    command, _, output = line.partition(">")
    assert output.strip() == "slot-targets.json"
    jq = shutil.which("jq")
    assert jq, "jq is missing: install the Debian package jq"
    args = [arg.replace("DIR/", f"{tmp_path}/") for arg in shlex.split(command)[1:]]
    result = subprocess.run([jq, *args], capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, result.stderr
    # The file_sd format Prometheus reads: a list of target groups.
    assert json.loads(result.stdout) == [{"targets": ["127.0.0.1:8101"]}]
