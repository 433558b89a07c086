"""The instance and workspace files validate against Dagster's own schemas."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster_postgres import DagsterPostgresStorage

ROOT = Path(__file__).resolve().parents[1]


def test_local_instance_starts_with_retries_and_monitoring(tmp_path: Path, monkeypatch) -> None:
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled
        assert (tmp_path / "history").exists()  # SQLite storage under DAGSTER_HOME


def test_production_instance_config(tmp_path: Path, monkeypatch) -> None:
    for name, value in {
        "DAGSTER_PG_HOST": "db.internal",
        "DAGSTER_PG_PORT": "6432",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "pw-4f9c1e",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    postgres = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert postgres.success, postgres.errors
    assert postgres.value["postgres_db"]["hostname"] == "db.internal"
    assert postgres.value["postgres_db"]["port"] == 6432
    assert postgres.value["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert postgres.value["postgres_db"]["params"] == {"sslmode": "require"}
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    queued = process_config(QueuedRunCoordinator.config_type(), coordinator["config"])
    assert queued.success, queued.errors
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    raw = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    database = raw["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "port", "username", "password", "db_name"):
        assert set(database[field]) == {"env"}, f"{field} must come from the environment"


@pytest.mark.parametrize("path", ["workspace.yaml", "deploy/workspace.yaml"])
def test_workspace_files(path: str, monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_CODE_SERVER_HOST", "secure-pipeline-user-code")
    config = yaml.safe_load((ROOT / path).read_text())
    ensure_workspace_config(config, str(ROOT / path))
