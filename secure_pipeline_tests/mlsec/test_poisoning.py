"""The poisoning screen on ``features``: flipped labels and injected rows fail it, clean data
passes, a policy can turn it off (and says so), each source member is judged on its own.

The synthetic data is separable with a margin (the label is a function of the inputs, no row
near the boundary), so the clean batch's own suspected share is close to zero and a tenth of
flipped labels stands out: what the screen is meant to tell apart.
"""

import dataclasses
import io
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.engineering import build_features
from secure_pipeline.mlsec.poisoning import (
    MIN_CLASS_ROWS,
    CannotScreenError,
    screen_features,
)
from secure_pipeline.names import POISONING_SCREEN, REQUIRED_CHECKS
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    ModelSpec,
    SecurePipeline,
    SecurityPolicy,
    SourceFile,
    SourceSpec,
)
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.io_manager import load_recorded
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust import attestations
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.validation.parsing import parse_fileset
from secure_pipeline_tests.helpers import materialize

COLOURS = ("red", "green", "blue")


def _table(rows: int, seed: int) -> pd.DataFrame:
    """Two numbers and a category; ``approved`` is yes exactly when a score clears zero, and no
    row lies within 0.4 of the boundary."""
    rng = np.random.default_rng(seed)
    drawn = []
    while sum(len(d) for d in drawn) < rows:
        amount = rng.normal(0, 1, 4 * rows)
        term = rng.normal(0, 1, 4 * rows)
        colour = rng.integers(0, 3, 4 * rows)
        score = amount + 0.5 * term + np.array([0.5, 0.0, -0.5])[colour]
        keep = np.abs(score) > 0.4
        drawn.append(
            pd.DataFrame(
                {
                    "amount": np.round(amount[keep], 3),
                    "term": np.round(term[keep], 3),
                    "colour": np.array(COLOURS)[colour[keep]],
                    "approved": np.where(score[keep] > 0, "yes", "no"),
                }
            )
        )
    return pd.concat(drawn, ignore_index=True).iloc[:rows].reset_index(drop=True)


def _flip(table: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(table), size=int(share * len(table)), replace=False))
    flipped = table.copy()
    flipped.loc[rows, "approved"] = np.where(flipped.loc[rows, "approved"] == "yes", "no", "yes")
    return flipped, rows


def _pipeline(location: str, **policy: object) -> SecurePipeline:
    return SecurePipeline(
        name="screened",
        source=SourceSpec(
            name="applications",
            files=(SourceFile("train", "train.csv"), SourceFile("test", "test.csv")),
            location=location,
            max_bytes=1 << 20,
        ),
        schema=DatasetSchema(
            name="applications",
            columns=(
                Column("amount", "float", minimum=-10, maximum=10),
                Column("term", "float", minimum=-10, maximum=10),
                Column("colour", "category", allowed=COLOURS),
                Column("approved", "category", allowed=("yes", "no")),
            ),
            label="approved",
            positive_label="yes",
            has_header=True,
            min_rows=10,
            max_rows=100_000,
        ),
        policy=SecurityPolicy(**policy),  # type: ignore[arg-type]
        model=ModelSpec(train_member="train", test_member="test"),
    )


def _features(train: pd.DataFrame, test: pd.DataFrame, pipeline: SecurePipeline) -> pd.DataFrame:
    files = {"train": train.to_csv(index=False).encode(), "test": test.to_csv(index=False).encode()}
    return build_features(parse_fileset(files, pipeline.schema).frame, pipeline)


PIPELINE = _pipeline("file:///unused/")


def test_clean_batch_has_almost_no_suspected_rows() -> None:
    result = screen_features(_features(_table(2000, 1), _table(1000, 2), PIPELINE), PIPELINE)
    assert result.rows == 3000
    assert [m.member for m in result.members] == ["train", "test"]
    assert result.worst.share < 0.02, result.members
    assert result.fit_rows > 1000


def test_a_tenth_of_flipped_labels_is_found_row_by_row() -> None:
    train, flipped = _flip(_table(2000, 1), 0.10, seed=3)
    result = screen_features(_features(train, _table(1000, 2), PIPELINE), PIPELINE)
    found = set(result.label_issues.tolist())
    # Three in four flipped rows or more are found (the rest the fold models, fitted on flipped
    # rows too, learnt), and what is found is flipped rows.
    recall = len(found & set(flipped.tolist())) / len(flipped)
    precision = len(found & set(flipped.tolist())) / len(found)
    assert recall > 0.7, recall
    assert precision > 0.95, precision
    train_rate = result.members[0]
    assert train_rate.member == "train"
    assert train_rate.share > PIPELINE.policy.max_suspected_poisoning
    assert result.members[1].share < 0.02  # the clean test file is judged on its own


def test_injected_far_rows_are_outliers() -> None:
    train = _table(2000, 1)
    injected = np.arange(0, 2000, 100)
    train.loc[injected, ["amount", "term"]] = [9.5, -9.5]
    result = screen_features(_features(train, _table(1000, 2), PIPELINE), PIPELINE)
    assert set(injected.tolist()) <= set(result.outliers.tolist())
    assert len(result.outliers) < 2 * len(injected) + 0.005 * result.rows


def test_too_few_rows_cannot_be_judged() -> None:
    small = _table(3 * MIN_CLASS_ROWS, 1)
    small = pd.concat([small[small.approved == "no"], small[small.approved == "yes"].iloc[:10]])
    with pytest.raises(CannotScreenError, match="needs at least 50 of each") as error:
        screen_features(_features(small, _table(100, 2), PIPELINE), PIPELINE)
    assert error.value.rows_needed == MIN_CLASS_ROWS


# --- In Dagster runs: the check on the exact features snapshot, signed, audited ---------------


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def _run(
    tmp_path: Path,
    instance,
    train: pd.DataFrame,
    test: pd.DataFrame,
    with_model: bool = False,
    **policy: object,
):
    """Land the two files, run ingestion to features (and training if asked): the screen's
    evaluation."""
    folder = tmp_path / "landing"
    folder.mkdir(exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    pipeline = _pipeline(folder.as_uri() + "/", **policy)
    assets = [pipeline.raw_asset_name, "validated_applications", "features"]
    if with_model:
        assets.append("trained_model")
    result = materialize(pipeline, instance, assets=assets, raise_on_error=False)
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key.name == POISONING_SCREEN
    ]
    return pipeline, result, evaluation


def _features_digest(instance, pipeline: SecurePipeline) -> str:
    record = instance.get_latest_materialization_event(pipeline.names.features)
    return str(record.asset_materialization.metadata["sha256"].value)


def _snapshot_rows(instance, pipeline: SecurePipeline, home: Path, member: str) -> np.ndarray:
    """Positions in the features snapshot of a member's rows, in the member file's order."""
    record = instance.get_latest_materialization_event(pipeline.names.features)
    table = load_recorded(LocalSnapshotStore(home / "store"), record, pipeline.names.features)
    return np.flatnonzero(table["split"].to_numpy() == member)


def test_flipped_labels_fail_the_check_and_stop_training(tmp_path, instance, isolated_env) -> None:
    train, flipped = _flip(_table(2000, 1), 0.10, seed=3)
    pipeline, result, evaluation = _run(tmp_path, instance, train, _table(1000, 2), True)
    flipped = _snapshot_rows(instance, pipeline, isolated_env, "train")[flipped]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "train" in evaluation.description
    assert "limit 0.05" in evaluation.description
    # Blocking: no model was trained on the batch.
    assert instance.get_latest_materialization_event(pipeline.names.trained_model) is None
    meta = evaluation.metadata
    listed = meta["suspected_rows"].value
    assert all(isinstance(r, int) for r in listed)
    assert len(set(listed) & set(flipped.tolist())) > 0.7 * len(flipped)
    assert meta["suspected"].value >= meta["label_issues"].value
    assert meta["worst_member"].value == "train"
    assert meta["folds"].value == 3
    assert "HistGradientBoostingClassifier" in meta["model"].value
    rates = {r.data["member"]: r.data for r in meta["rates_by_member"].value.records}
    assert set(rates) == {"train", "test"}
    assert rates["train"]["rows"] == 2000
    assert not rates["train"]["within_limit"]
    assert rates["test"]["within_limit"]
    (batch,) = meta["rates_by_batch"].value.records
    assert batch.data["source"].startswith("file://")
    assert batch.data["rows"] == 3000
    # No values reach the metadata: only row positions, counts and shares.
    shown = json.dumps({k: str(v.value) for k, v in meta.items()})
    assert "green" not in shown
    assert "yes" not in shown
    # The stored result lists every flagged row by reason.
    document = json.loads(_stored(isolated_env, meta))
    assert set(flipped.tolist()) & set(document["label_issue_rows"])
    assert document["members"][0]["member"] == "train"


def _stored(home: Path, meta) -> bytes:
    store = LocalSnapshotStore(home / "store")
    key = meta["result_uri"].value.split("/store/", 1)[1]
    return store.read_bytes((key, meta["result_sha256"].value))


def test_clean_batch_passes_with_a_signed_verdict(tmp_path, instance, isolated_env) -> None:
    pipeline, result, evaluation = _run(tmp_path, instance, _table(2000, 1), _table(1000, 2))
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["worst_member_share"].value < 0.02
    # The verdict is an attestation about exactly this features snapshot, signed by ingest.
    digest = _features_digest(instance, pipeline)
    store = LocalSnapshotStore(isolated_env / "store")
    found = [
        attestations.open_envelope(
            data, trust_policy(), identities=("ingest",), predicate_type=attestations.VERDICT_TYPE
        )
        for _key, data in attestations.stored_envelopes(store, "verdicts", digest)
    ]
    screen = [a for a in found if a.predicate["check"] == POISONING_SCREEN]
    assert len(screen) == 1
    assert screen[0].predicate["passed"] is True
    assert screen[0].subjects == {"screened/features": digest}
    assert screen[0].predicate["policy_sha256"] == pipeline.policy.fingerprint()
    out = io.StringIO()
    AuditLog(store).export(out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(
        r["event"] == "check.evaluated" and r["details"]["check"] == POISONING_SCREEN
        for r in records
    )
    # A model needs this verdict.
    assert POISONING_SCREEN in REQUIRED_CHECKS["features"]


def test_a_poisoned_test_file_fails_although_the_training_file_is_clean(tmp_path, instance) -> None:
    test, _ = _flip(_table(1000, 2), 0.10, seed=4)
    _pipeline_, _result, evaluation = _run(tmp_path, instance, _table(2000, 1), test)
    assert not evaluation.passed
    meta = evaluation.metadata
    assert meta["worst_member"].value == "test"
    # Pooled, the batch's share is within the limit: only judging each member finds it.
    assert meta["suspected_share"].value < 0.05 < meta["worst_member_share"].value
    rates = {r.data["member"]: r.data for r in meta["rates_by_member"].value.records}
    assert rates["train"]["within_limit"]
    assert not rates["test"]["within_limit"]


def test_disabled_screen_passes_and_says_so(tmp_path, instance) -> None:
    train, _ = _flip(_table(2000, 1), 0.10, seed=3)
    pipeline, result, evaluation = _run(
        tmp_path, instance, train, _table(1000, 2), poisoning_screen=False
    )
    assert result.success
    assert evaluation.passed
    assert evaluation.metadata["screened"].value is False
    assert "turned off" in evaluation.metadata["note"].value
    assert "suspected_rows" not in evaluation.metadata
    # Still a signed verdict (a model's lineage needs one), judged under the policy that
    # turned the screen off.
    assert "attestation" in evaluation.metadata
    on = dataclasses.replace(pipeline.policy, poisoning_screen=True)
    assert on.fingerprint() != pipeline.policy.fingerprint()


def test_small_batch_warns_that_it_cannot_be_judged(tmp_path, instance) -> None:
    small = _table(80, 1)
    _pipeline_, _result, evaluation = _run(tmp_path, instance, small, _table(50, 2))
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["outcome"].value == "cannot be judged"
    assert evaluation.metadata["rows_needed_per_class"].value == MIN_CLASS_ROWS
    assert "more rows of the smaller class" in evaluation.description


def test_a_model_is_not_let_through_on_data_the_screen_could_not_judge() -> None:
    """The unjudged screen warns at features (people may look), but registration, promotion
    and serving, which all ask the same question, refuse a model trained on that data."""
    from secure_pipeline.registry.bundle import verdict_problems

    def verdict(check: str, passed: bool, severity: str) -> dict:
        return {"stage": "features", "asset": "applications/features", "check": check,
                "subject": "ab" * 32, "passed": passed, "severity": severity}  # fmt: skip

    assert verdict_problems([verdict("feature_drift", False, "WARN")]) == []  # mild drift
    (problem,) = verdict_problems([verdict(POISONING_SCREEN, False, "WARN")])
    assert "could not judge applications/features" in problem
    assert "poisoning_screen to false" in problem
    assert verdict_problems([verdict(POISONING_SCREEN, True, "ERROR")]) == []


def test_an_increase_over_the_champions_data_fails_though_under_the_limit(
    tmp_path, instance
) -> None:
    """Where the data's own share is what it is, what poisoning changes is the share: measured
    against the champion's training data through the signed verdict its lineage names."""
    from secure_pipeline_tests.helpers import materialize_all

    folder = tmp_path / "landing"
    folder.mkdir()
    _table(2000, 1).to_csv(folder / "train.csv", index=False)
    _table(1000, 2).to_csv(folder / "test.csv", index=False)
    pipeline = _pipeline(folder.as_uri() + "/", max_poisoning_increase=0.01)
    first = materialize_all(pipeline, instance)
    assert first.success, [e.message for e in first.all_events if e.is_failure]
    assert instance.get_latest_materialization_event(pipeline.names.promoted_model) is not None

    # A later batch with 3 % of its labels flipped: within the 0.05 limit, yet well above the
    # (near zero) share of the data the champion learnt from.
    train, _ = _flip(_table(2000, 5), 0.03, seed=6)
    train.to_csv(folder / "train.csv", index=False)
    _table(1000, 7).to_csv(folder / "test.csv", index=False)
    assets = [pipeline.raw_asset_name, "validated_applications", "features"]
    result = materialize(pipeline, instance, assets=assets, raise_on_error=False)
    (screen,) = [e for e in result.get_asset_check_evaluations()
                 if e.asset_check_key.name == POISONING_SCREEN]  # fmt: skip
    assert not screen.passed
    share = screen.metadata["worst_member_share"].value
    assert share <= pipeline.policy.max_suspected_poisoning  # the absolute limit alone passes
    assert screen.metadata["champion_reference"].value.startswith("version 1: share")
    assert screen.metadata["increase_over_champion"].value > 0.01
    assert "above the" in screen.description
    assert "champion version 1" in screen.description

    # Without the comparison the same batch passes: the control is what refused it.
    plain = _pipeline(folder.as_uri() + "/")
    again = materialize(plain, instance, assets=assets, raise_on_error=False)
    (screen,) = [e for e in again.get_asset_check_evaluations()
                 if e.asset_check_key.name == POISONING_SCREEN]  # fmt: skip
    assert screen.passed
