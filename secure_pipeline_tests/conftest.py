"""Shared fixtures: an isolated environment per test, real local and S3 (moto server) stores."""

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.s3 import S3SnapshotStore
from secure_pipeline.storage.snapshots import SnapshotStore

_ISOLATED_PREFIXES = ("SECURE_PIPELINE_", "DAGSTER_PG_", "AWS_", "MLFLOW_")


@pytest.fixture(scope="session")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The development keys of the whole session, outside every test's home (as on a laptop,
    where they live in the user's data directory, not in the pipeline's state)."""
    return tmp_path_factory.mktemp("dev-keys")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_keys: Path) -> Path:
    """Every test starts from an empty configuration with its own homes."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES) or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SECURE_PIPELINE_DEV_KEYS", str(dev_keys))
    _forget_closed_instances()
    return home


def _forget_closed_instances() -> None:
    """Clear the definitions-state storage Dagster remembers from the last instance entered.

    Entering a DagsterInstance records its state storage in a context variable that Dagster
    reads when any Definitions object is resolved; in one long test process an instance some
    earlier test closed can stay recorded there, and resolving definitions afterwards fails on
    its dead reference. Each test process in production uses one instance, so only tests need
    this.
    """
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API server (moto) on 127.0.0.1, for the whole session."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials: moto accepts any, boto3 needs some."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def s3_client(moto_endpoint: str, aws_credentials: None):
    """A raw boto3 client on the moto server: the "attacker's" direct access in tamper tests."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client) -> str:
    """A fresh versioned bucket."""
    name = f"sp-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def s3_store(s3_bucket: str, moto_endpoint: str) -> S3SnapshotStore:
    return S3SnapshotStore(
        s3_bucket,
        endpoint_url=moto_endpoint,
        region="us-east-1",
        allow_loopback_http=True,
        # Small parts so multipart uploads are exercised with small test payloads.
        multipart_threshold=6 * 1024 * 1024,
        part_size=5 * 1024 * 1024,
    )


@pytest.fixture
def local_store(tmp_path: Path) -> LocalSnapshotStore:
    return LocalSnapshotStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> SnapshotStore:
    """Both backends: behaviour that the interface promises must hold for each."""
    return request.getfixturevalue(f"{request.param}_store")


def overwrite_raw(store: SnapshotStore, key: str, data: bytes) -> None:
    """Replace a stored object behind the store's back, as an attacker with access would."""
    if isinstance(store, LocalSnapshotStore):
        path = store.root / key
        if path.exists():
            path.chmod(0o644)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif isinstance(store, S3SnapshotStore):
        raw = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1")
        raw.put_object(Bucket=store.bucket, Key=key, Body=data)
    else:  # pragma: no cover
        raise TypeError(store)


def delete_raw(store: SnapshotStore, key: str) -> None:
    """Delete a stored object behind the store's back."""
    if isinstance(store, LocalSnapshotStore):
        (store.root / key).unlink()
    elif isinstance(store, S3SnapshotStore):
        raw = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1")
        raw.delete_object(Bucket=store.bucket, Key=key)
    else:  # pragma: no cover
        raise TypeError(store)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory):
    """A test CA and server certificates (good, expired, other CA, wrong host)."""
    from secure_pipeline_tests.tls_server import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def replace_manifest(store: SnapshotStore, target: str, source: str) -> None:
    """Give the snapshot at ``target`` the manifest of the one at ``source``, behind the store."""
    if isinstance(store, LocalSnapshotStore):
        overwrite_raw(
            store, target + ".manifest.json", store.read_object(source + ".manifest.json")
        )
    elif isinstance(store, S3SnapshotStore):
        raw = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1")
        metadata = raw.head_object(Bucket=store.bucket, Key=source)["Metadata"]
        raw.copy_object(
            Bucket=store.bucket,
            Key=target,
            CopySource={"Bucket": store.bucket, "Key": target},
            Metadata=metadata,
            MetadataDirective="REPLACE",
        )
    else:  # pragma: no cover
        raise TypeError(store)


@contextlib.contextmanager
def pointed_at(home: Path, dev_keys: Path) -> Iterator[pytest.MonkeyPatch]:
    """For module- and session-scoped fixtures (no per-test isolation yet): a clean environment
    pointing at ``home``. MLflow exports the tracking URI it last used into ``os.environ``, so a
    fixture that did not clear it would talk to another test's registry."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(_ISOLATED_PREFIXES):
                patch.delenv(name)
        patch.setenv("SECURE_PIPELINE_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home))
        patch.setenv("SECURE_PIPELINE_DEV_KEYS", str(dev_keys))
        yield patch


@dataclasses.dataclass
class Registered:
    """Where the shared reference run lives and what it registered."""

    home: Path
    name: str
    version: str
    model_sha: str


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> Registered:
    """One real run of the whole reference pipeline (trained, signed, registered, promoted).

    Shared by the registry and serving tests; they point their environment at its home.
    """
    import dagster as dg

    from secure_pipeline.reference.adult import adult_pipeline
    from secure_pipeline_tests.helpers import materialize_all

    home = tmp_path_factory.mktemp("registry-home")
    with pointed_at(home, dev_keys):
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
        with dg.DagsterInstance.get() as instance:
            result = materialize_all(adult_pipeline(), instance)
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            value = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "registered_model"])
            ).asset_materialization.metadata
    return Registered(
        home, "adult", str(value["model_version"].value), str(value["model_sha256"].value)
    )
