"""A table the project has never seen, end to end: roles, a repeated header, dates, a derived
sensitive feature, a gradient-boosting estimator by import path, small data judged by
cross-validation — registered and promoted with every gate passed, and no personal value or
identifier readable in any file of the home.
"""

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    DerivedColumn,
    FeatureSpec,
    ModelSpec,
    OrchestrationSpec,
    SecurePipeline,
    SecurityPolicy,
    SourceFile,
    SourceSpec,
)
from secure_pipeline_tests.helpers import materialize_all

ROWS = 1_000
_STATUS = ("A91", "A92", "A93", "A94")  # the public table's codes: male/female by marital status
_CHECKING = ("A11", "A12", "A13", "A14")


def _credit_file(path: Path, seed: int = 0) -> list[str]:
    """A space-delimited credit table whose header repeats ``name``; returns the names."""
    rng = np.random.default_rng(seed)
    names = [f"Applicant{i:04d} Surname{i * 7 % 997:03d}" for i in range(ROWS)]
    checking = rng.choice(_CHECKING, ROWS, p=[0.27, 0.27, 0.06, 0.40])
    status = rng.choice(_STATUS, ROWS, p=[0.05, 0.31, 0.55, 0.09])
    duration = rng.integers(4, 73, ROWS)
    opened = np.datetime64("2001-01-01") + rng.integers(0, 4000, ROWS).astype("timedelta64[D]")
    applied = opened + rng.integers(30, 2000, ROWS).astype("timedelta64[D]")
    # risk follows the checking account and the duration, not sex
    logit = -0.9 + 1.2 * (checking == "A11") - 1.1 * (checking == "A14") + 0.035 * (duration - 20)
    bad = rng.random(ROWS) < 1 / (1 + np.exp(-logit))
    lines = ['"Case ID" name checking personal_status duration opened applied name risk']
    for i in range(ROWS):
        day = applied[i].astype(object)
        lines.append(
            " ".join(
                (
                    f"C{i:05d}",
                    f'"{names[i]}"',
                    checking[i],
                    status[i],
                    str(duration[i]),
                    str(opened[i]),
                    day.strftime("%d/%m/%Y"),
                    f'"{names[i]}"',
                    "bad" if bad[i] else "good",
                )
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return names


def credit_pipeline(location: str) -> SecurePipeline:
    """The spec a new user writes for that table."""
    return SecurePipeline(
        name="credit",
        source=SourceSpec(
            "credit", (SourceFile("main", "credit.txt"),), location, max_bytes=1 << 20
        ),
        schema=DatasetSchema(
            name="credit",
            has_header=True,
            delimiter=" ",
            positive_label="bad",
            min_rows=500,
            columns=(
                Column(
                    "case_id", "string", role="identifier", source="Case ID", pattern=r"C[0-9]{5}"
                ),  # fmt: skip
                Column("full_name", "string", role="personal", source="name"),
                Column("checking", "category", allowed=_CHECKING),
                Column("personal_status", "category", allowed=_STATUS),
                Column("duration", "int", minimum=1, maximum=120),
                Column("opened", "date", earliest="1990-01-01"),
                Column("applied", "date", format="%d/%m/%Y", earliest="2000-01-01"),
                Column("name_copy", "string", role="ignore", source="name", occurrence=2),
                Column("risk", "category", allowed=("good", "bad"), role="label"),
            ),
        ),
        features=FeatureSpec(
            derived=(
                DerivedColumn(
                    "sex",
                    "map",
                    "personal_status",
                    sensitive=True,
                    values=(("A91", "male"), ("A92", "female"), ("A93", "male"), ("A94", "male")),
                ),  # fmt: skip
                DerivedColumn(
                    "account_years", "date_difference", "opened", end="applied", unit="years"
                ),  # fmt: skip
            ),
        ),
        # Credit risk is decided only weakly by these inputs (test ROC AUC about 0.75): the
        # poisoning screen finds 27 % of this clean table's labels contradicted by its model, so
        # the limit is set above that share, as the screen's failure message says to.
        policy=SecurityPolicy(
            min_roc_auc=0.65, min_balanced_accuracy=0.6, max_suspected_poisoning=0.35
        ),
        model=ModelSpec(
            estimator="sklearn.ensemble.HistGradientBoostingClassifier",
            params={"max_depth": 2, "max_iter": 60, "learning_rate": 0.05},
            exclude_features=("sex", "personal_status"),  # audited, not inputs
            train_member="main",
            test_member=None,
        ),
        orchestration=OrchestrationSpec(ingest_cron=None),
    )


@pytest.fixture
def credit_run(isolated_env: Path, tmp_path: Path) -> tuple[SecurePipeline, list[str], Path]:
    landing = tmp_path / "landing"
    landing.mkdir()
    names = _credit_file(landing / "credit.txt")
    return credit_pipeline(landing.as_uri() + "/"), names, isolated_env


def test_a_new_table_runs_end_to_end_with_every_gate_judged(credit_run) -> None:
    pipeline, names, home = credit_run
    with dg.DagsterInstance.get() as instance:
        result = materialize_all(pipeline, instance)
        failures = [e.message for e in result.all_events if e.is_failure]
        verdicts = {
            (e.asset_key.path[-1], e.asset_check_key.name): e.passed
            for e in result.get_asset_check_evaluations()
        }
        assert result.success, (failures, verdicts)
        # live_traffic has no traffic in a pipeline run: inconclusive warnings, blocking nothing.
        assert all(v for (asset, _), v in verdicts.items() if asset != "live_traffic"), verdicts
        assert ("trained_model", "fairness_audit") in verdicts
        promoted = instance.get_latest_materialization_event(pipeline.names.promoted_model)
        assert promoted is not None
        fairness = next(
            e for e in result.get_asset_check_evaluations()
            if e.asset_check_key.name == "fairness_audit"
        )  # fmt: skip
        # every training row was judged (five folds), not a 200-row holdout
        evaluation = fairness.metadata["evaluation"].value
        assert evaluation["method"] == "cross_validation"
        assert evaluation["rows"] == ROWS
    # No name is readable in any file of the home (all bytes, every format): the raw snapshot
    # that keeps them is encrypted, as is every row-level snapshot of a source naming people.
    snapshots = [p for p in home.rglob("*") if p.is_file()]
    assert any("raw_credit" in str(p) for p in snapshots)
    probes = [n.encode() for n in names[:50]] + [f"C{i:05d}".encode() for i in range(0, 1000, 97)]
    for path in snapshots:  # the event log, MLflow's store and the audit trail too
        data = path.read_bytes()
        leaked = [p for p in probes if p in data]
        assert not leaked, f"{path} holds {leaked[:2]}"


def test_a_renamed_header_column_still_fails_as_drift(credit_run) -> None:
    pipeline, _, _ = credit_run
    landing = Path(pipeline.source.location.removeprefix("file://"))
    text = (landing / "credit.txt").read_text().replace(" duration ", " months ", 1)
    (landing / "credit.txt").write_text(text)
    with dg.DagsterInstance.get() as instance:
        result = materialize_all(dataclasses.replace(pipeline), instance)
        schema = next(
            e for e in result.get_asset_check_evaluations()
            if e.asset_check_key.name == "schema_conforms"
        )  # fmt: skip
        assert not schema.passed
        assert "unexpected: ['months']" in str(schema.metadata)
