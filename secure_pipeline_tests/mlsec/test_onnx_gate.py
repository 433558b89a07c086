"""The onnx_equivalent gate in a real run: a copy that scores otherwise stops registration."""

import copy
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.registry.bundle import LineageError, onnx_copy
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust import attestations
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.helpers import materialize
from secure_pipeline_tests.mlsec.test_small_data import _credit, _pipeline


@pytest.fixture
def instance(isolated_env: Path):
    with dg.instance_for_test(temp_dir=str(isolated_env)) as inst:
        yield inst


def test_a_converter_whose_copy_disagrees_fails_the_gate_and_nothing_is_registered(
    instance, isolated_env, tmp_path, monkeypatch
) -> None:
    import secure_pipeline.training.onnx as onnx_module

    real = onnx_module.convert

    def drifting_converter(model, pipeline):
        # A converter bug, made real: the graph of the same model with its weights negated
        # (every ranking reversed), converted by skl2onnx itself.
        wrong = copy.deepcopy(model)
        wrong.steps[-1][1].coef_ = -wrong.steps[-1][1].coef_
        return real(wrong, pipeline)

    monkeypatch.setattr(onnx_module, "convert", drifting_converter)
    folder = tmp_path / "landing"
    folder.mkdir()
    _credit(1000, seed=0, signal=2.0).to_csv(folder / "loans.csv", index=False,
                                             float_format="%.3f")  # fmt: skip
    pipeline = _pipeline(folder.as_uri() + "/")
    assets = ["raw_loans", "validated_loans", "features", "trained_model", "registered_model"]
    result = materialize(pipeline, instance, assets=assets, raise_on_error=False)
    key = dg.AssetKey(["loans", "trained_model"])
    evaluations = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()
                   if e.asset_key == key}  # fmt: skip
    gate = evaluations["onnx_equivalent"]
    assert not gate.passed
    assert "does not score like the model" in gate.description
    assert gate.metadata["label_disagreements"].value > 0
    assert evaluations["performance_meets_policy"].passed  # the model itself is sound
    # Blocking: the registry stage never ran, so no bundle carries the wrong copy.
    assert instance.get_latest_materialization_event(pipeline.names.registered_model) is None
    # The signed verdict records the failure and names no copy to serve.
    store = LocalSnapshotStore(isolated_env / "store")
    digest = gate.metadata["model_sha256"].value
    found = [
        attestations.open_envelope(
            data, trust_policy(), identities=("train",), predicate_type=attestations.VERDICT_TYPE
        )  # fmt: skip
        for _, data in attestations.stored_envelopes(store, "verdicts", digest)
    ]
    mine = [a.predicate for a in found if a.predicate["check"] == "onnx_equivalent"]
    assert [(p["passed"], p["metrics"]["onnx_sha256"]) for p in mine] == [(False, None)]


def test_registration_takes_the_copy_only_from_a_train_signed_verdict(isolated_env) -> None:
    store = LocalSnapshotStore(isolated_env / "store")
    lineage = {"checks": [{"stage": "model", "check": "onnx_equivalent",
                           "attestation": "evidence/model.onnx_equivalent.json"}]}  # fmt: skip
    # An insider's unsigned envelope naming a copy of their choosing is not evidence.
    forged = b'{"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}'
    with pytest.raises(LineageError):
        onnx_copy(
            None, store, trust_policy(), lineage, {"evidence/model.onnx_equivalent.json": forged}
        )  # type: ignore[arg-type]
    with pytest.raises(LineageError, match="no signed verdict of onnx_equivalent"):
        onnx_copy(None, store, trust_policy(), {"checks": []}, {})  # type: ignore[arg-type]
