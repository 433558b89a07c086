"""Fixtures of the monitoring tests."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def home(reference_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the reference run's home: a promoted champion, its store, its
    registry and its instance; live batches and verdicts go there.

    It starts without recorded live traffic: serving tests record into the shared run's store.
    """
    copy = Path(shutil.copytree(reference_run.home, tmp_path / "run-home", symlinks=True))
    for recorded in ("store/snapshots/live", "store/attestations/live-batches"):
        shutil.rmtree(copy / recorded, ignore_errors=True)
    (copy / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {copy}\n")
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy))
    return copy
