"""The gates inside a real run: a failing gate stops everything downstream of the model."""

import dataclasses
import io
import json
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.environment import Environment
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore


def _deployed(pipeline: str) -> dg.AssetsDefinition:
    @dg.asset(key=[pipeline, "deployed_model"], deps=[dg.AssetKey([pipeline, "trained_model"])])
    def deployed_model() -> None:
        """Stands for whatever a gated model feeds (the registry, in the next stage)."""

    return deployed_model


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def test_an_overfit_model_is_stopped_with_its_digest_recorded(instance, isolated_env) -> None:
    pipeline = adult_pipeline()
    pipeline = dataclasses.replace(
        pipeline, model=dataclasses.replace(pipeline.model, estimator="decision_tree", params={})
    )
    defs = dg.Definitions.merge(
        pipeline.build_definitions(Environment.LOCAL), dg.Definitions(assets=[_deployed("adult")])
    )
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    model = instance.get_latest_materialization_event(dg.AssetKey(["adult", "trained_model"]))
    digest = model.asset_materialization.metadata["sha256"].value
    evaluations = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()
                   if e.asset_key == dg.AssetKey(["adult", "trained_model"])}  # fmt: skip
    assert set(evaluations) == {
        "performance_meets_policy",
        "adversarial_robustness",
        "membership_inference_risk",
        "fairness_audit",
        "onnx_equivalent",
    }
    for evaluation in evaluations.values():
        assert evaluation.metadata["model_sha256"].value == digest
    assert not evaluations["performance_meets_policy"].passed
    assert "ROC AUC" in evaluations["performance_meets_policy"].description
    assert not evaluations["membership_inference_risk"].passed
    assert "attack advantage" in evaluations["membership_inference_risk"].description
    deployed = dg.AssetKey(["adult", "deployed_model"])
    assert instance.get_latest_materialization_event(deployed) is None

    out = io.StringIO()
    AuditLog(LocalSnapshotStore(isolated_env / "store")).export(out)
    verdicts = [json.loads(line) for line in out.getvalue().splitlines()]
    judged = [v for v in verdicts if v["actor"].startswith("check:adult/trained_model:")]
    assert {v["subject"] for v in judged} == {digest}
    assert {v["details"]["check"]: v["details"]["passed"] for v in judged}[
        "membership_inference_risk"
    ] is False

    import mlflow

    from secure_pipeline.training.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.get_run(model.asset_materialization.metadata["mlflow_run_id"].value)
    assert run.data.tags["secure_pipeline.model_sha256"] == digest
    assert "membership_inference_risk.attack_auc" in run.data.metrics
    assert "fairness_audit.sex.equalized_odds_difference" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/adversarial_robustness.png", "plots/fairness_audit.png"}


def test_the_second_pipeline_gets_the_same_gates(instance, tmp_path) -> None:
    """The loans pipeline (another schema, another source) is gated with no new code."""
    import numpy as np

    from secure_pipeline_tests.validation.test_validation_stage import loans_pipeline

    rng = np.random.default_rng(0)
    n = 4000
    amount = np.concatenate([rng.uniform(995, 1005, n // 2), rng.uniform(0, 4000, n - n // 2)])
    lines = [b"applicant,amount,term,region,approved"] + [
        f"a{i},{a:.3f},{rng.integers(6, 360)},{rng.choice(['N', 'S'])},"
        f"{'yes' if a > 1000 else 'no'}".encode()
        for i, a in enumerate(amount)
    ]
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "loans.csv").write_bytes(b"\n".join(lines) + b"\n")
    pipeline = loans_pipeline(folder.as_uri() + "/")
    pipeline = dataclasses.replace(
        pipeline,
        source=dataclasses.replace(pipeline.source, max_bytes=1 << 20),
        schema=dataclasses.replace(pipeline.schema, max_rows=10_000, min_rows=1_000),
        model=dataclasses.replace(
            pipeline.model, params={"C": 1e6, "max_iter": 5000}, exclude_features=("amount_band",)
        ),
    )
    defs = dg.Definitions.merge(
        pipeline.build_definitions(Environment.LOCAL), dg.Definitions(assets=[_deployed("loans")])
    )
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False
    )
    evaluations = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()
                   if e.asset_key == dg.AssetKey(["loans", "trained_model"])}  # fmt: skip
    assert evaluations["performance_meets_policy"].passed  # accurate on clean input...
    assert not evaluations["adversarial_robustness"].passed  # ...but fragile
    assert "accuracy drops" in evaluations["adversarial_robustness"].description
    assert set(evaluations) >= {"membership_inference_risk", "fairness_audit"}
    deployed = dg.AssetKey(["loans", "deployed_model"])
    assert instance.get_latest_materialization_event(deployed) is None
