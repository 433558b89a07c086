"""``live_traffic`` and its blocking live checks, on the reference run's real promoted champion.

Each test copies the reference run's home (a promoted, signed champion of the Adult pipeline),
writes live batches into its store with the real writer (`serving.recording.write_batch`,
signed by the serve identity), and materializes ``live_traffic`` with its checks in a real
Dagster instance. The rows are sampled from the champion's own training features and scored by
the champion (loaded verified), as a slot would have recorded them.
"""

import dataclasses
import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from secure_pipeline import environment as env
from secure_pipeline.features.engineering import LABEL_COLUMN
from secure_pipeline.monitoring.assets import build_live_stage
from secure_pipeline.names import (
    LIVE_CHECKS,
    LIVE_ERROR_RATE,
    LIVE_FAIRNESS,
    LIVE_INPUT_DRIFT,
    LIVE_PERFORMANCE,
    LIVE_SCORE_DRIFT,
)
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.evidence import champion_lineage, verify_reference
from secure_pipeline.serving.loader import load_evidence
from secure_pipeline.serving.recording import (
    ENVELOPE_KIND,
    LIVE_BATCH_TYPE,
    batch_asset,
    utc_iso,
    write_batch,
)
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.resources import build_resources
from secure_pipeline.trust import attestations
from secure_pipeline.trust.attestations import VERDICT_TYPE
from secure_pipeline.trust.identities import INGEST, MONITOR, SERVE
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import pointed_at

PIPELINE = adult_pipeline()
POSITIVE, NEGATIVE = ">50K", "<=50K"


@dataclasses.dataclass(frozen=True)
class Champion:
    """The reference run's champion and live-like rows built from its training data."""

    version: str
    model_sha256: str
    inputs: list[str]
    rows: pd.DataFrame  # training feature rows: inputs, raw sex and race, score, truth


@pytest.fixture(scope="module")
def champion(reference_run, dev_keys: Path) -> Champion:
    """The champion's training rows, scored by the champion loaded through verify-before-load."""
    from secure_pipeline.storage.tables import parquet_to_table

    with pointed_at(reference_run.home, dev_keys):
        store, trust = LocalSnapshotStore(reference_run.home / "store"), trust_policy()
        version, lineage = champion_lineage(PIPELINE, store, trust)
        features = lineage["data"]["features"]
        table = parquet_to_table(store.read_bytes((features["key"], features["sha256"])))
        frame = table.to_pandas()
        with verify_reference(f"models:/{PIPELINE.names.model_name}/{version}",
                              pipeline=PIPELINE, trust=trust, store=store,
                              require="promoted") as evidence:  # fmt: skip
            verified = load_evidence(evidence, trusted=PIPELINE.model.trusted_types)
    inputs = list(verified.inputs)
    rows = frame[inputs].copy()
    rows["score"] = verified.model.predict_proba(frame[inputs])[:, 1]
    catalog = {f.name: f for f in _catalog()}
    # The raw sensitive values a request carrying them would have sent (decoded from codes).
    for name in ("sex", "race"):
        names = np.asarray([*catalog[name].categories, None], dtype=object)
        rows[name] = names[frame[name].to_numpy().astype(int)]
    rows["truth"] = frame[LABEL_COLUMN].to_numpy()
    return Champion(str(version), verified.model_sha256, inputs, rows)


def _catalog():
    from secure_pipeline.spec import feature_catalog

    return feature_catalog(PIPELINE)


def _store(home: Path) -> LocalSnapshotStore:
    return LocalSnapshotStore(home / "store")


def _sample(champion: Champion, count: int, seed: int = 0) -> pd.DataFrame:
    return champion.rows.sample(count, random_state=seed).reset_index(drop=True)


def _traffic_frame(
    sample: pd.DataFrame, inputs: list[str], *, sensitive: tuple[str, ...]
) -> pd.DataFrame:
    """A traffic batch's rows as the recorder writes them."""
    from secure_pipeline.serving.recording import new_ids

    frame = sample[inputs].copy()
    for name in sensitive:
        frame[name] = sample[name]
    frame["score"] = sample["score"].to_numpy()
    frame["label"] = np.where(frame["score"] >= 0.5, POSITIVE, NEGATIVE).astype(object)
    frame["id"] = new_ids(len(frame))
    return frame


def _write_traffic(
    home: Path,
    champion: Champion,
    sample: pd.DataFrame,
    *,
    requests: int | None = None,
    errors: int = 0,
    sensitive: tuple[str, ...] = ("sex",),
    signer_identity: str = SERVE,
) -> pd.DataFrame:
    frame = _traffic_frame(sample, champion.inputs, sensitive=sensitive)
    now = dt.datetime.now(dt.UTC)
    fields = {
        "slot": "blue", "model_sha256": champion.model_sha256,
        "model_version": champion.version, "opened_at": utc_iso(now - dt.timedelta(minutes=5)),
        "closed_at": utc_iso(now - dt.timedelta(milliseconds=200)), "scored": len(frame),
        "dropped": 0,
        "requests": len(frame) if requests is None else requests, "errors": errors,
        "refusals": 0, "sample_rate": 1.0,
    }  # fmt: skip
    if signer_identity == SERVE:
        write_batch(_store(home), signer_for(SERVE), PIPELINE, kind="traffic", frame=frame,
                    predicate_fields=fields)  # fmt: skip
    else:
        _forge(home, frame, fields, signer_identity)
    return frame


def _forge(home: Path, frame: pd.DataFrame, fields: dict, identity: str) -> str:
    """A batch stored exactly as the writer stores one, but signed by another identity's key
    (the insider who holds some pipeline key, not the slots')."""
    import pyarrow as pa

    from secure_pipeline.storage.tables import table_to_parquet

    store = _store(home)
    data = table_to_parquet(pa.Table.from_pandas(frame, preserve_index=False))
    closed = dt.datetime.fromisoformat(fields["closed_at"].replace("Z", "+00:00"))
    ref = store.put_bytes(batch_asset(PIPELINE.name, "traffic", closed), data, ext="parquet",
                          format="parquet", encrypt=PIPELINE.holds_personal_data)  # fmt: skip
    predicate = {**fields, "pipeline": PIPELINE.name, "kind": "traffic", "key": ref.key,
                 "rows": len(frame), "columns": [str(c) for c in frame.columns],
                 "code_version": PIPELINE.code_version}  # fmt: skip
    envelope = attestations.sign(
        attestations.statement({"batch": ref.sha256}, LIVE_BATCH_TYPE, predicate),
        signer_for(identity),
    )
    attestations.store_envelope(store, ENVELOPE_KIND, PIPELINE.name, envelope)
    return ref.key


def _write_feedback(
    home: Path, traffic: pd.DataFrame, truth: np.ndarray, *, invert: bool = False
) -> None:
    labels = np.where((1 - truth if invert else truth) == 1, POSITIVE, NEGATIVE).astype(object)
    frame = pd.DataFrame({"id": traffic["id"].to_numpy(), "label": labels})
    write_batch(_store(home), signer_for(SERVE), PIPELINE, kind="feedback", frame=frame,
                predicate_fields={"slot": "blue"})  # fmt: skip


def _run(home: Path) -> dg.ExecuteInProcessResult:
    asset, checks = build_live_stage(PIPELINE, champion_lineage)
    defs = dg.Definitions(
        assets=[asset], asset_checks=checks, resources=build_resources(env.Environment.LOCAL)
    )
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(instance=instance, raise_on_error=False)


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _materialization(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.asset_materializations_for_node("adult__live_traffic")
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def _signed_verdict(home: Path, evaluation: dg.AssetCheckEvaluation) -> dict:
    """The verdict's envelope, verified as the monitor identity's."""
    key = evaluation.metadata["attestation"].value
    data = _store(home).read_object(key)
    opened = attestations.open_envelope(data, trust_policy(), identities=(MONITOR,),
                                        predicate_type=VERDICT_TYPE)  # fmt: skip
    assert opened.identity == MONITOR
    return opened.predicate


def _value(evaluation: dg.AssetCheckEvaluation, name: str):
    return evaluation.metadata[name].value


def test_a_clean_window_passes_and_a_forged_batch_is_not_counted(home, champion) -> None:
    sample = _sample(champion, 5000)
    traffic = _write_traffic(home, champion, sample)
    _write_feedback(home, traffic, sample["truth"].to_numpy())
    # Signed, stored where a batch goes, in the window: but by the ingest identity's key.
    drifted = _sample(champion, 400, seed=1).assign(age=lambda f: f["age"] + 40)
    _write_traffic(home, champion, drifted, signer_identity=INGEST)

    result = _run(home)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = _materialization(result)
    assert meta["rows"] == 5000  # the forged 400 rows are not in the window
    assert meta["labelled_rows"] == 5000
    assert meta["batches"] == 2
    assert meta["requests"] == 5000
    assert meta["champion_version"] == champion.version
    assert meta["model_sha256"] == champion.model_sha256
    # Its envelope is refused, and so is its Parquet file, which no verified envelope names.
    assert meta["refused_count"] == 2
    envelope = next(r for r in meta["refused"] if r.startswith("attestations/live-batches/"))
    assert "ingest" in envelope
    assert any(r.startswith("snapshots/live/adult/traffic/") for r in meta["refused"])
    manifest = json.loads(_store(home).read_bytes((meta["snapshot_key"], meta["sha256"])))
    assert manifest["champion"] == {"version": champion.version,
                                    "model_sha256": champion.model_sha256}  # fmt: skip
    assert len(manifest["batches"]) == 2

    evaluations = _evaluations(result)
    assert set(evaluations) == set(LIVE_CHECKS)
    # The requests carried sex but not race: race cannot be judged live (a warning, which
    # blocks nothing); every other check passes.
    fairness = evaluations[LIVE_FAIRNESS]
    assert not fairness.passed
    assert fairness.severity == dg.AssetCheckSeverity.WARN
    assert _value(fairness, "not_recorded") == ["race"]
    assert _value(fairness, "features_judged") == 1
    for name, evaluation in evaluations.items():
        assert evaluation.passed or name == LIVE_FAIRNESS, (name, evaluation.description)
        assert _value(evaluation, "signed_by") == MONITOR
        predicate = _signed_verdict(home, evaluation)
        assert predicate["check"] == name
        assert predicate["passed"] is evaluation.passed
        assert predicate["metrics"]["champion_version"] == champion.version
        assert predicate["metrics"]["model_sha256"] == champion.model_sha256
    drift = evaluations[LIVE_INPUT_DRIFT]
    psi = _value(drift, "psi_by_feature")
    assert set(psi) == set(champion.inputs)
    assert _value(drift, "max_psi") == max(psi.values())
    assert _value(drift, "rows") == 5000
    assert isinstance(_value(evaluations[LIVE_SCORE_DRIFT], "score_psi"), float)
    assert _value(evaluations[LIVE_ERROR_RATE], "error_rate") == 0.0
    performance = evaluations[LIVE_PERFORMANCE]
    assert _value(performance, "roc_auc") >= PIPELINE.policy.min_roc_auc
    assert _value(performance, "labelled_rows") == 5000


def test_a_drifted_window_fails_live_input_drift_with_error(home, champion) -> None:
    sample = _sample(champion, 1000)
    sample["age"] = sample["age"] + 30
    size = len(next(f for f in _catalog() if f.name == "relationship").categories)
    sample["relationship"] = (size - 1) - sample["relationship"]
    _write_traffic(home, champion, sample)

    evaluations = _evaluations(_run(home))
    drift = evaluations[LIVE_INPUT_DRIFT]
    assert not drift.passed
    assert drift.severity == dg.AssetCheckSeverity.ERROR
    assert _value(drift, "max_psi") >= PIPELINE.policy.drift_fail_psi
    assert _value(drift, "psi_by_feature")["age"] >= PIPELINE.policy.drift_fail_psi
    assert "drifted" in str(drift.description)
    predicate = _signed_verdict(home, drift)
    assert predicate["passed"] is False
    assert predicate["severity"] == "ERROR"
    assert predicate["metrics"]["model_sha256"] == champion.model_sha256


def test_too_few_rows_warn_and_server_errors_fail(home, champion) -> None:
    sample = _sample(champion, 50)
    sample["age"] = sample["age"] + 30  # drifted, but 50 rows cannot say so
    _write_traffic(home, champion, sample, requests=100, errors=5)

    evaluations = _evaluations(_run(home))
    for name in (LIVE_INPUT_DRIFT, LIVE_SCORE_DRIFT, LIVE_PERFORMANCE, LIVE_FAIRNESS):
        evaluation = evaluations[name]
        assert not evaluation.passed, name
        assert evaluation.severity == dg.AssetCheckSeverity.WARN, name
        assert _value(evaluation, "inconclusive") is True
    errors = evaluations[LIVE_ERROR_RATE]
    assert not errors.passed
    assert errors.severity == dg.AssetCheckSeverity.ERROR
    assert _value(errors, "error_rate") == 0.05
    assert _value(errors, "requests") == 100
    assert _value(errors, "errors") == 5
    assert _signed_verdict(home, errors)["severity"] == "ERROR"


def test_inverted_feedback_fails_live_performance(home, champion) -> None:
    sample = _sample(champion, 800)
    traffic = _write_traffic(home, champion, sample, sensitive=())
    _write_feedback(home, traffic, sample["truth"].to_numpy(), invert=True)

    evaluations = _evaluations(_run(home))
    performance = evaluations[LIVE_PERFORMANCE]
    assert not performance.passed
    assert performance.severity == dg.AssetCheckSeverity.ERROR
    assert _value(performance, "roc_auc") < PIPELINE.policy.min_roc_auc
    assert _value(performance, "labelled_rows") == 800
    assert _signed_verdict(home, performance)["passed"] is False
    # Without the sensitive columns (the Adult model's callers do not send sex or race) the
    # gating features cannot be judged live: a warning naming them, never a pass.
    fairness = evaluations[LIVE_FAIRNESS]
    assert not fairness.passed
    assert fairness.severity == dg.AssetCheckSeverity.WARN
    assert _value(fairness, "not_recorded") == ["sex", "race"]
    assert evaluations[LIVE_INPUT_DRIFT].passed


def test_live_fairness_judges_the_sensitive_columns_requests_carry(home, champion) -> None:
    # Enough rows for two race groups to have 50 positives and 50 negatives each.
    sample = _sample(champion, 5000)
    traffic = _write_traffic(home, champion, sample, sensitive=("sex", "race"))
    _write_feedback(home, traffic, sample["truth"].to_numpy())

    fairness = _evaluations(_run(home))[LIVE_FAIRNESS]
    assert _value(fairness, "features_judged") == 2  # sex and race; age is reported only
    gaps = _value(fairness, "gaps")
    assert set(gaps) == {"sex", "race", "age"}
    assert gaps["age"]["gating"] is False
    limit = PIPELINE.policy.max_equalized_odds_difference
    assert gaps["sex"]["gap_beyond_noise"] <= limit
    # On 5,000 labelled rows the reference model's true-positive rate for Black applicants is
    # measurably below White applicants' (beyond sampling error): the live gate says so.
    assert gaps["race"]["gap_beyond_noise"] > limit
    assert not fairness.passed
    assert fairness.severity == dg.AssetCheckSeverity.ERROR
    assert "race" in str(fairness.description)
    assert (
        _value(fairness, "max_equalized_odds_difference")
        >= gaps["race"]["equalized_odds_difference"]
    )
    predicate = _signed_verdict(home, fairness)
    assert predicate["passed"] is False
    assert predicate["metrics"]["champion_version"] == champion.version


def test_the_checks_judge_the_window_as_recorded_not_a_batch_written_since(home, champion) -> None:
    """A slot writes a batch while the checks run: they judge exactly what was recorded."""
    _write_traffic(home, champion, _sample(champion, 1000))
    asset, checks = build_live_stage(PIPELINE, champion_lineage)
    key = PIPELINE.names.live_traffic
    only_checks = dg.define_asset_job(
        "live_checks_only", selection=dg.AssetSelection.checks_for_assets(key)
    )
    defs = dg.Definitions(
        assets=[asset], asset_checks=checks, jobs=[only_checks],
        resources=build_resources(env.Environment.LOCAL),
    )  # fmt: skip
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        recorded = job.execute_in_process(instance=instance, asset_selection=[key])
        assert recorded.success
        # Drifted rows closed within the window's hours, written after it was recorded.
        drifted = _sample(champion, 1000, seed=3).assign(age=lambda f: f["age"] + 40)
        _write_traffic(home, champion, drifted)
        judged = defs.resolve_job_def("live_checks_only").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert judged.success, [e.message for e in judged.all_events if e.is_failure]
    evaluations = _evaluations(judged)
    drift = evaluations[LIVE_INPUT_DRIFT]
    assert drift.passed, drift.description
    assert _value(drift, "rows") == 1000


def test_the_definitions() -> None:
    asset, checks = build_live_stage(PIPELINE, champion_lineage)
    spec = next(iter(asset.specs))
    assert spec.key == PIPELINE.names.live_traffic
    assert spec.group_name == "monitoring"
    assert spec.tags["secure_pipeline/stage"] == "monitoring"
    assert spec.freshness_policy.fail_window.to_timedelta() == dt.timedelta(
        hours=PIPELINE.monitoring.stale_after_hours
    )
    # The monitor job runs it on a schedule; an automation condition would launch ad-hoc runs,
    # which on Kubernetes fail closed in the control namespace.
    assert spec.automation_condition is None
    assert asset.op.tags["secure_pipeline/identity"] == MONITOR
    assert asset.op.tags["secure_pipeline/k8s_namespace"] == "sp-monitor"
    (check,) = checks
    assert check.op.tags["secure_pipeline/identity"] == MONITOR
    specs = {s.name: s for s in check.check_specs}
    assert set(specs) == set(LIVE_CHECKS)
    assert all(s.blocking and s.asset_key == PIPELINE.names.live_traffic for s in specs.values())


def test_without_a_champion_nothing_is_judged(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "has no champion" in failure.step_failure_data.error.message
