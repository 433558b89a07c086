"""Experiment tracking in MLflow: one run per trained model, which every check adds to.

Locally the tracking store is SQLite under ``SECURE_PIPELINE_HOME`` (artifacts beside it);
production sets ``MLFLOW_TRACKING_URI`` to the tracking server. Checks run in parallel
processes, and SQLite allows one writer at a time: local writes are serialised with a file
lock. mlflow is imported only here, inside the functions that use it.
"""

import fcntl
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from secure_pipeline import environment as env


def _local_dir() -> Path:
    return env.secure_pipeline_home() / "mlflow"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the local SQLite store."""
    env.configure_mlflow()
    configured = env.read("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    directory = _local_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}"


@contextmanager
def _writer_lock(uri: str) -> Iterator[None]:
    if not uri.startswith("sqlite:"):
        yield
        return
    with (_local_dir() / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def tracked_run(
    experiment: str, *, run_id: str | None = None, run_name: str | None = None
) -> Iterator[Any]:
    """Open (or reopen) an MLflow run; yields the ``mlflow`` module with the run active.

    Args:
        experiment: Experiment name (created on first use).
        run_id: Reopen this run (checks add to the training run).
        run_name: Name of a new run.
    """
    import mlflow

    uri = tracking_uri()
    with _writer_lock(uri):
        mlflow.set_tracking_uri(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = (_local_dir() / "artifacts").as_uri() if uri.startswith("sqlite:") else None
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=experiment_id):
            yield mlflow


def run_link(run_id: str, experiment_id: str | None = None) -> str:
    """Where a person finds the run: a URL for a tracking server, else how to open the UI."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri} (open with: mlflow ui --backend-store-uri {uri})"


def log_check(
    mlflow: Any, check: str, metrics: Mapping[str, float], result: Mapping[str, Any]
) -> None:
    """Log a check's metrics (prefixed with its name) and its full result document."""
    mlflow.log_metrics({f"{check}.{k}": float(v) for k, v in metrics.items()})
    mlflow.log_text(json.dumps(result, indent=2, default=str), f"checks/{check}.json")
