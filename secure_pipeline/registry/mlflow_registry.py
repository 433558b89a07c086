"""The MLflow model registry: register signed bundles, read them back, move aliases.

Registry writes to a local SQLite store are serialised with the same file lock as tracking.
A version's description (the spec's description and the model card, rendered by MLflow's UI)
and the card logged to its run (one per version) are for people; like tags, nothing reads them as
evidence: the signed bundle and registration are.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from secure_pipeline.training.tracking import _writer_lock, tracked_run, tracking_uri

TAG_PREFIX = "secure_pipeline."
_MISSING = "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def _client() -> Iterator[Any]:
    from mlflow import MlflowClient

    uri = tracking_uri()
    with _writer_lock(uri):
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)


def bundle_artifact_path(bundle_digest: str) -> str:
    """Where a bundle goes in its MLflow run: a path derived from its digest, never reused.

    Registering again (a new bundle, with a new lineage and signature) therefore never writes
    over the files an earlier version points to.
    """
    return f"bundles/{bundle_digest}"


def register_bundle(
    experiment: str,
    run_id: str,
    name: str,
    bundle: Path,
    tags: Mapping[str, str],
    *,
    bundle_digest: str,
    description: str | None = None,
    card: str | None = None,
) -> tuple[str, str]:
    """Upload a bundle into the model's MLflow run and register it as a new model version.

    Args:
        experiment: The run's experiment.
        run_id: The model's MLflow run.
        name: The registered model.
        bundle: The signed bundle directory.
        tags: Tags of the version (prefixed with ``secure_pipeline.``).
        bundle_digest: The bundle's digest (its artifact path).
        description: The version's Markdown description, set with ``update_model_version``.
        card: The model card, also logged to the run as `card_artifact_path` of the version.

    Returns:
        The new version number and the version's source URI.
    """
    path = bundle_artifact_path(bundle_digest)
    with tracked_run(experiment, run_id=run_id) as mlflow:
        mlflow.log_artifacts(str(bundle), artifact_path=path)
    source = f"runs:/{run_id}/{path}"
    from mlflow.exceptions import MlflowException

    with _client() as client:
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != _MISSING:
                raise
            client.create_registered_model(name)
        version = client.create_model_version(
            name, source=source, run_id=run_id,
            tags={f"{TAG_PREFIX}{k}": v for k, v in tags.items()},
        )  # fmt: skip
        if description is not None:
            client.update_model_version(name, version.version, description=description)
        number = str(version.version)
    if card is not None:
        # After the version exists: its number names the card, so registering the same run's
        # model again never replaces the card an earlier version was described by.
        with tracked_run(experiment, run_id=run_id) as mlflow:
            mlflow.log_text(card, card_artifact_path(number))
    return number, source


def card_artifact_path(version: str) -> str:
    """Where a version's model card is in its run (the signed copy is in the bundle)."""
    return f"model_cards/version-{version}/MODEL_CARD.md"


def version_description(name: str, version: str) -> str:
    """A version's description, as the registry says now."""
    with _client() as client:
        return str(client.get_model_version(name, version).description or "")


def run_experiment(run_id: str) -> str:
    """The experiment id of an MLflow run (for the link to its UI page)."""
    with _client() as client:
        return str(client.get_run(run_id).info.experiment_id)


def version_source(name: str, version: str) -> str:
    """The artifact source a registered version points to, as the registry says now."""
    with _client() as client:
        return str(client.get_model_version(name, version).source)


def download_source(source: str, destination: Path) -> Path:
    """Download a version's artifact source; the returned directory holds exactly the bundle.

    The source is downloaded directly: through a ``models:/`` URI MLflow would add a metadata
    file of its own, which is not part of what was signed.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination))
    return Path(path)


def version_tags(name: str, version: str) -> dict[str, str]:
    """The project's tags on a version, without the prefix."""
    with _client() as client:
        tags = client.get_model_version(name, version).tags
    return {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def tag_version(name: str, version: str, key: str, value: str) -> None:
    """Set one project tag on a version."""
    with _client() as client:
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}{key}", value)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    from mlflow.exceptions import MlflowException

    with _client() as client:
        try:
            return str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in (_MISSING, "INVALID_PARAMETER_VALUE"):
                return None
            raise


def model_aliases(name: str) -> dict[str, str] | None:
    """A registered model's aliases (alias -> version), or None when there is no such model."""
    from mlflow.exceptions import MlflowException

    with _client() as client:
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code in (_MISSING, "INVALID_PARAMETER_VALUE"):
                return None
            raise
    return {str(alias): str(version) for alias, version in (model.aliases or {}).items()}


def set_alias(name: str, alias: str, version: str) -> None:
    """Point an alias at a version."""
    with _client() as client:
        client.set_registered_model_alias(name, alias, version)
