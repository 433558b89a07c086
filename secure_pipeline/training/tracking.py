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
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import dagster as dg


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


def ui_base_url() -> str | None:
    """The MLflow web UI's address, or None when there is none to link to.

    ``SECURE_PIPELINE_MLFLOW_UI_URL``, else the tracking URI when it is a tracking server
    (http(s)); a local SQLite or file store has no web page. Credentials, query and fragment of
    the tracking URI are left out: a link shown in the UI must not carry a secret.

    Raises:
        ConfigurationError: When ``SECURE_PIPELINE_MLFLOW_UI_URL`` is not an http(s) URL.
    """
    configured = env.read("SECURE_PIPELINE_MLFLOW_UI_URL")
    uri = configured or tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        if configured:
            raise ConfigurationError(
                "SECURE_PIPELINE_MLFLOW_UI_URL must be the http(s) address of the MLflow UI "
                f"(such as https://mlflow.example.internal), found scheme "
                f"{parts.scheme or '(none)'!r}; correct it or unset it"
            )
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def run_url(run_id: str, experiment_id: str | None) -> str | None:
    """The MLflow UI page of a run, or None without a UI (`ui_base_url`)."""
    base = ui_base_url()
    if base is None:
        return None
    experiment = quote(str(experiment_id), safe="")
    return f"{base}/#/experiments/{experiment}/runs/{quote(run_id, safe='')}"


def model_version_url(name: str, version: str) -> str | None:
    """The MLflow UI page of a registered model version, or None without a UI."""
    base = ui_base_url()
    if base is None:
        return None
    return f"{base}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def run_link(run_id: str, experiment_id: str | None = None) -> str:
    """Where a person finds the run: a URL for a UI, else how to open the UI (for logs)."""
    url = run_url(run_id, experiment_id)
    if url is not None:
        return url
    uri = tracking_uri()
    return f"run {run_id} in {uri} (open with: mlflow ui --backend-store-uri {uri})"


def run_link_metadata(run_id: str, experiment_id: str | None) -> "dg.UrlMetadataValue | str":
    """Dagster metadata for the run: a link to its UI page, else the plain sentence."""
    from secure_pipeline.metadata import link

    return link(run_url(run_id, experiment_id), run_link(run_id, experiment_id))


def model_version_link_metadata(name: str, version: str) -> "dg.UrlMetadataValue | str":
    """Dagster metadata for a registered version: a link to its UI page, else its URI."""
    from secure_pipeline.metadata import link

    uri = tracking_uri()
    return link(
        model_version_url(name, version),
        f"models:/{name}/{version} in {uri} (open with: mlflow ui --backend-store-uri {uri})",
    )


def log_check(
    mlflow: Any, check: str, metrics: Mapping[str, float], result: Mapping[str, Any]
) -> None:
    """Log a check's metrics (prefixed with its name) and its full result document."""
    mlflow.log_metrics({f"{check}.{k}": float(v) for k, v in metrics.items()})
    mlflow.log_text(json.dumps(result, indent=2, default=str), f"checks/{check}.json")
