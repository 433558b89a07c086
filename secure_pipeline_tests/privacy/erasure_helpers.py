"""A small pipeline with an identifier column, run for real, for the erasure and retention tests.

It is the credit table of `secure_pipeline_tests.test_real_tables` (1,000 applicants, each
named by a ``case_id`` identifier and a ``full_name`` personal column), with a fast model: a
logistic regression judged on the holdout, and no sensitive feature (so no cross-validated
fairness audit). A whole run (ingest, validate, features, train, every check, sign, register,
promote) takes about 15 s.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.pipeline import DerivedColumn, FeatureSpec, SecurePipeline
from secure_pipeline.spec import PrivacySpec
from secure_pipeline.storage.resources import store_resource
from secure_pipeline.storage.snapshots import SnapshotStore
from secure_pipeline_tests.conftest import pointed_at
from secure_pipeline_tests.helpers import materialize, materialize_all
from secure_pipeline_tests.test_real_tables import _credit_file, credit_pipeline

PRIVACY = PrivacySpec(
    purpose="credit risk scoring of loan applications",
    controller="Example Lending Ltd, privacy@example.test",
    legal_basis="contract (Art. 6(1)(b))",
    data_subjects=("loan applicants",),
    recipients=("credit risk team",),
)


def small_pipeline(
    location: str = "file:///nonexistent/",
    *,
    privacy: PrivacySpec = PRIVACY,
    retention_days: int | None = None,
) -> SecurePipeline:
    """The credit pipeline with a model that trains and is judged in a few seconds."""
    base = credit_pipeline(location)
    return dataclasses.replace(
        base,
        sensitive_features=(),
        features=FeatureSpec(
            derived=(
                DerivedColumn(
                    "account_years", "date_difference", "opened", end="applied", unit="years"
                ),
            )
        ),
        model=dataclasses.replace(
            base.model,
            estimator="logistic_regression",
            params={},
            exclude_features=(),
            evaluation="holdout",
        ),
        source=dataclasses.replace(base.source, retention_days=retention_days),
        privacy=privacy,
    )


def cli_pipeline() -> SecurePipeline:
    """What ``--pipeline secure_pipeline_tests.privacy.erasure_helpers:cli_pipeline`` loads."""
    return small_pipeline()


@dataclasses.dataclass
class Run:
    """A pipeline home: its store, its Dagster instance, its landing directory.

    Attributes:
        home: SECURE_PIPELINE_HOME (and DAGSTER_HOME).
        landing: Where the source file is.
        pipeline: The pipeline.
    """

    home: Path
    landing: Path
    pipeline: SecurePipeline

    def point(self, monkeypatch: pytest.MonkeyPatch) -> "Run":
        """Point this test's environment at the run's home."""
        monkeypatch.setenv("SECURE_PIPELINE_HOME", str(self.home))
        monkeypatch.setenv("DAGSTER_HOME", str(self.home))
        return self

    def store(self) -> SnapshotStore:
        """The store as the pipeline and the command line build it (with its keyring)."""
        return store_resource(Environment.LOCAL, resolve=True).get_store()

    def source(self, seed: int = 0, drop: Sequence[str] = ()) -> list[str]:
        """Write the source file (``drop``: case ids left out); returns the applicants' names."""
        names = _credit_file(self.landing / "credit.txt", seed)
        if drop:
            path = self.landing / "credit.txt"
            lines = path.read_text().splitlines()
            kept = [line for line in lines if line.split(" ", 1)[0] not in set(drop)]
            path.write_text("\n".join(kept) + "\n")
        return names

    def run_all(self) -> dg.ExecuteInProcessResult:
        """Materialize the whole graph (train, register, promote)."""
        with dg.DagsterInstance.get() as instance:
            result = materialize_all(self.pipeline, instance)
        failures = [e.message for e in result.all_events if e.is_failure]
        assert result.success, failures
        return result

    def ingest(self) -> dg.ExecuteInProcessResult:
        """Materialize the ingest stage only: raw, validated, features."""
        with dg.DagsterInstance.get() as instance:
            return materialize(
                self.pipeline, instance, ["raw_credit", "validated_credit", "features"]
            )


def new_run(tmp_path_factory: pytest.TempPathFactory, name: str, **options: object) -> Run:
    """A fresh home and landing directory with the source written (``options``: of
    `small_pipeline`). Run it inside ``pointed_at(run.home, dev_keys)``."""
    home = tmp_path_factory.mktemp(f"{name}-home")
    landing = tmp_path_factory.mktemp(f"{name}-landing")
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    run = Run(home, landing, small_pipeline(landing.as_uri() + "/", **options))  # type: ignore[arg-type]
    run.source()
    return run


__all__ = ["PRIVACY", "Run", "cli_pipeline", "new_run", "pointed_at", "small_pipeline"]
