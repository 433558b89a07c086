"""The one-way layout: the layers contract holds, and it refuses an upward import."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import secure_pipeline

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run the contract on the package found in ``package_parent`` (not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT), "--config", str(CONFIG), "--no-cache"],
        cwd=package_parent, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_package_keeps_the_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # A stage reaching up into a later stage, inside a function (imports there count).
        (
            "ingestion/_probe.py",
            "def probe() -> None:\n    from secure_pipeline.promotion import gate  # noqa: F401\n",
            "secure_pipeline.ingestion is not allowed to import secure_pipeline.promotion",
        ),
        # The spec importing a stage, even for type hints only.
        (
            "spec/_probe.py",
            "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from secure_pipeline.features import engineering  # noqa: F401\n",
            "secure_pipeline.spec is not allowed to import secure_pipeline.features",
        ),
        # A shared helper importing composition.
        (
            "storage/_probe.py",
            "import secure_pipeline.compose  # noqa: F401\n",
            "secure_pipeline.storage is not allowed to import secure_pipeline.compose",
        ),
    ],
)
def test_an_upward_import_breaks_the_contract(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    package = Path(secure_pipeline.__file__).parent
    copy = tmp_path / "secure_pipeline"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    # The copy itself keeps the contract: only the added module breaks it.
    assert _lint(tmp_path).returncode == 0
    (copy / module).write_text(source, encoding="utf-8")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout
    assert "1 broken" in result.stdout
