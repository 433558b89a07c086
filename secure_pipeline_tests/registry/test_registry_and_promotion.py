"""The signed registry and the promotion gate, on a real run of the reference pipeline.

One module-scoped run trains, gates, signs, registers and promotes the reference model into a
real MLflow store (SQLite, local artifacts); each test then attacks a copy of what was stored
and shows the refusal.
"""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.promotion.approvals import sign_approval, store_approval
from secure_pipeline.promotion.gate import CHAMPION, promote, rollback
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import LINEAGE_FILE, MODEL_FILE
from secure_pipeline.registry.mlflow_registry import alias_version, set_alias, version_tags
from secure_pipeline.registry.signing import (
    Signer,
    generate_key,
    sign_bundle,
    trust_policy_from_environment,
)
from secure_pipeline.registry.verification import resolve, verify_bundle_dir
from secure_pipeline.serving.loader import load_verified
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.training.serialization import UntrustedModelError
from secure_pipeline_tests.conftest import Registered

CLI = str(Path(sys.executable).parent / "secure-pipeline")


@pytest.fixture(scope="module")
def registered(reference_run: Registered) -> Registered:
    return reference_run


@pytest.fixture
def state(registered, monkeypatch) -> Registered:
    """Point this test's environment at the module's run."""
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(registered.home))
    monkeypatch.setenv("DAGSTER_HOME", str(registered.home))
    return registered


@pytest.fixture
def store(state) -> LocalSnapshotStore:
    return LocalSnapshotStore(state.home / "store")


@pytest.fixture
def bundle(state, tmp_path) -> Path:
    """A private copy of the registered bundle."""
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        return Path(shutil.copytree(resolved.directory, tmp_path / "bundle"))


def verify(directory: Path, store: LocalSnapshotStore, pipeline=None):
    return verify_bundle_dir(
        directory,
        trust=trust_policy_from_environment(),
        pipeline=pipeline or adult_pipeline(),
        store=store,
        audit=AuditLog(store),
    )


def resign(directory: Path) -> None:
    """Sign a modified bundle again with the trusted (dev) key: a valid signature."""
    from secure_pipeline.registry.signing import signer_from_environment

    (directory / "model.sig").unlink()
    sign_bundle(directory, signer_from_environment())


def test_the_reference_run_registers_and_promotes_a_verified_model(state, store) -> None:
    assert alias_version(state.name, CHAMPION) == state.version
    assert alias_version(state.name, "challenger") == state.version
    tags = version_tags(state.name, state.version)
    assert tags["model_sha256"] == state.model_sha
    assert tags["signer"].startswith("dev:")
    result = subprocess.run([CLI, "verify", f"models:/{state.name}@champion"],
                            capture_output=True, text=True, env=dict(os.environ))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok] lineage" in result.stdout
    assert "[ok] registry tags" in result.stdout
    out = io.StringIO()
    AuditLog(store).export(out)
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    for event in ("model.trained", "model.registered", "promotion.verified",
                  "promotion.challenger", "promotion.champion"):  # fmt: skip
        assert event in events


def test_lineage_names_every_snapshot_and_verdict(bundle, state) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    assert lineage["model"]["sha256"] == state.model_sha
    assert set(lineage["data"]) == {"raw", "validated", "features"}
    assert {c["check"] for c in lineage["checks"]} == {
        "provenance_complete", "schema_conforms", "reject_rate_within_limit",
        "expectations_met", "feature_drift", "performance_meets_policy",
        "adversarial_robustness", "membership_inference_risk", "fairness_audit",
    }  # fmt: skip
    model_checks = [c for c in lineage["checks"] if c["stage"] == "model"]
    assert {c["subject"] for c in model_checks} == {state.model_sha}
    card = (bundle / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Fairness", "## Robustness", "## Privacy risk",
                    "## Limitations"):  # fmt: skip
        assert section in card


def test_one_byte_changed_in_the_model_fails(bundle, store) -> None:
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 3] ^= 0x20
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    result = verify(bundle, store)
    assert not result.ok
    assert "model.skops" in result.problems[0]


def test_a_bundle_signed_by_an_untrusted_key_fails(bundle, store, tmp_path) -> None:
    intruder = generate_key(tmp_path / "intruder.pem").with_suffix(".pem")
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, Signer("key", private_key=intruder))
    result = verify(bundle, store)
    assert not result.ok
    assert "not signed by a trusted signer" in result.problems[0]


def test_a_lineage_snapshot_whose_bytes_changed_fails(bundle, state, tmp_path) -> None:
    copied = LocalSnapshotStore(Path(shutil.copytree(state.home / "store", tmp_path / "store")))
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    path = copied.root / lineage["data"]["features"]["key"]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify(bundle, copied)  # the signature is intact; the data behind it is not
    assert result.steps[0][1]
    assert not result.ok
    assert any("failed verification" in p and "features" in p for p in result.problems)


def test_a_check_result_bound_to_another_digest_fails(bundle, store) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    for check in lineage["checks"]:
        if check["check"] == "fairness_audit":
            check["subject"] = "f" * 64  # the verdict was about some other model
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]  # validly signed
    assert any("fairness_audit judged ffffffffffff" in p for p in result.problems)


def test_a_pickle_file_in_the_bundle_is_refused_even_when_signed(bundle, store) -> None:
    import pickle

    (bundle / "preprocess.pkl").write_bytes(pickle.dumps({"x": 1}))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any("pickle files ['preprocess.pkl']" in p for p in result.problems)
    with pytest.raises(PolicyViolation, match="pickle"):
        load_verified(bundle, trust=trust_policy_from_environment(), pipeline=adult_pipeline())


def test_a_pickled_model_file_is_refused_at_load_even_when_signed(bundle, store) -> None:
    import pickle

    from secure_pipeline.training.serialization import load_model

    model = load_model((bundle / MODEL_FILE).read_bytes())
    pickled = pickle.dumps(model)
    (bundle / MODEL_FILE).write_bytes(pickled)
    digest = __import__("hashlib").sha256(pickled).hexdigest()
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    lineage["model"]["sha256"] = digest
    for check in lineage["checks"]:
        if check["stage"] == "model":
            check["subject"] = digest  # a consistent lie: only the file format is left to refuse
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    trust = trust_policy_from_environment()
    assert verify_bundle_dir(bundle, trust=trust, pipeline=None, store=None, audit=None).ok
    with pytest.raises(UntrustedModelError):
        load_verified(bundle, trust=trust_policy_from_environment(), pipeline=None)


def test_serving_loads_the_verified_champion(state, store) -> None:
    with resolve(f"models:/{state.name}@champion") as resolved:
        verified = load_verified(
            resolved.directory,
            trust=trust_policy_from_environment(),
            pipeline=adult_pipeline(),
            store=store,
            audit=AuditLog(store),
        )
    assert verified.model_sha256 == state.model_sha
    assert verified.inputs[0] == "age"
    assert hasattr(verified.model, "predict_proba")


def test_an_older_model_under_champion_fails_todays_policy(state, store) -> None:
    """Someone points `champion` at a version judged under yesterday's (laxer) policy."""
    pipeline = adult_pipeline()
    stricter = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, max_robustness_drop=0.01)
    )
    set_alias(state.name, CHAMPION, state.version)  # pushed directly through the registry API
    with resolve(f"models:/{state.name}@champion") as resolved:
        result = verify(resolved.directory, store, pipeline=stricter)
        assert not result.ok
        assert any("different policy than today's" in p for p in result.problems)
        with pytest.raises(PolicyViolation, match="different policy"):
            load_verified(resolved.directory, trust=trust_policy_from_environment(),
                          pipeline=stricter)  # fmt: skip


def test_approvals_are_required_signed_bound_and_from_allowed_keys(
    state, store, tmp_path, monkeypatch
):
    officer = generate_key(tmp_path / "officer.pem").with_suffix(".pem")
    outsider = generate_key(tmp_path / "outsider.pem").with_suffix(".pem")
    dev_public = state.home / "keys" / "dev-signing-key.pub"
    policy_file = tmp_path / "trust.json"
    policy_file.write_text(json.dumps({
        "keys": [{"name": "dev", "public_key": str(dev_public)}],
        "approvers": [{"name": "risk-officer", "public_key": str(officer.with_suffix(".pub"))}],
    }))  # fmt: skip
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(policy_file))
    pipeline = adult_pipeline()
    needs_two = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    audit = AuditLog(store)

    def attempt():
        return promote(needs_two, state.name, state.version, store=store, audit=audit,
                       actor="test")  # fmt: skip

    with pytest.raises(PolicyViolation, match=r"needs 1 signed approval\(s\).*has 0"):
        attempt()
    # an approval signed by a key the policy does not list
    stranger = sign_approval(outsider, model_sha256=state.model_sha, bundle_digest="x",
                             approver="risk-officer", reason="looks fine")  # fmt: skip
    store_approval(store, state.model_sha, stranger)
    with pytest.raises(PolicyViolation, match="does not list as an approver"):
        attempt()
    # an approval by the right key, but for another model
    other = sign_approval(officer, model_sha256="0" * 64, bundle_digest="x",
                          approver="risk-officer", reason="other model")  # fmt: skip
    store_approval(store, state.model_sha, other)
    with pytest.raises(PolicyViolation, match="approves model 0000"):
        attempt()
    # the right key and model, seen in another bundle (another lineage, another card)
    elsewhere = sign_approval(officer, model_sha256=state.model_sha, bundle_digest="b" * 64,
                              approver="risk-officer", reason="other bundle")  # fmt: skip
    store_approval(store, state.model_sha, elsewhere)
    with pytest.raises(PolicyViolation, match="approves bundle bbbbbbbbbbbb, not this bundle"):
        attempt()
    # through the command line, bound to this model's digest after verifying it
    result = subprocess.run(
        [CLI, "approve", f"models:/{state.name}/{state.version}", "--key", str(officer),
         "--approver", "risk-officer", "--reason", "reviewed the card"],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = attempt()
    assert outcome["approvals"] == ["risk-officer"]
    # the same approver twice still counts once
    needs_two = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=2)
    )
    store_approval(store, state.model_sha, sign_approval(
        officer, model_sha256=state.model_sha,
        bundle_digest=version_tags(state.name, state.version)["bundle_digest"],
        approver="risk-officer", reason="again"))  # fmt: skip
    with pytest.raises(PolicyViolation, match="has 1"):
        attempt()


def test_the_mlflow_artifact_store_edited_directly_is_caught(state, store) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    source = client.get_model_version(state.name, state.version).source
    run_id = source.split("/")[1]
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "bundle"
    card = artifacts / "MODEL_CARD.md"
    original = card.read_bytes()
    try:
        card.write_bytes(original.replace(b"fairness", b"fair-ish"))
        with pytest.raises(PolicyViolation, match="failed verification"):
            promote(adult_pipeline(), state.name, state.version, store=store,
                    audit=AuditLog(store), actor="test")  # fmt: skip
        result = subprocess.run([CLI, "verify", f"models:/{state.name}/{state.version}"],
                                capture_output=True, text=True, env=dict(os.environ))  # fmt: skip
        assert result.returncode == 1
        assert "MODEL_CARD.md" in result.stdout
    finally:
        card.write_bytes(original)


def test_rollback_verifies_the_previous_champion_and_is_audited(state, store) -> None:
    audit = AuditLog(store)
    from secure_pipeline.registry.mlflow_registry import tag_version

    set_alias(state.name, CHAMPION, state.version)
    with pytest.raises(PolicyViolation, match="no previous champion"):
        rollback(adult_pipeline(), state.name, store=store, audit=audit, actor="test")
    # a second registration of the same model becomes the champion, recording the first
    tag_version(state.name, state.version, "previous_champion", state.version)
    outcome = rollback(adult_pipeline(), state.name, store=store, audit=audit, actor="test")
    assert outcome["to"] == state.version
    out = io.StringIO()
    audit.export(out)
    assert '"promotion.rollback"' in out.getvalue()


def test_status_shows_the_registry_as_it_is_now(state) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    original = client.get_model_version(state.name, state.version)
    copy = client.create_model_version(
        state.name, source=original.source, run_id=original.run_id, tags=original.tags
    )
    try:
        set_alias(state.name, CHAMPION, str(copy.version))  # moved since the last run
        shown = subprocess.run([CLI, "status"], capture_output=True, text=True,
                               env=dict(os.environ))  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        registry = shown.stdout.split(f"registry ({state.name}, now):")[1]
        assert f"champion: models:/{state.name}/{copy.version}" in registry
        assert f"challenger: models:/{state.name}/{state.version}" in registry
    finally:
        set_alias(state.name, CHAMPION, state.version)
        client.delete_model_version(state.name, copy.version)


def test_rollback_refuses_a_version_that_never_was_champion(state, store) -> None:
    """The previous_champion tag is registry data anyone with write access can set."""
    from mlflow import MlflowClient

    from secure_pipeline.registry.mlflow_registry import tag_version
    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    original = client.get_model_version(state.name, state.version)
    # the same, validly signed and verified bundle, registered again but never promoted
    copy = client.create_model_version(
        state.name, source=original.source, run_id=original.run_id, tags=original.tags
    )
    audit = AuditLog(store)
    try:
        set_alias(state.name, CHAMPION, state.version)
        tag_version(state.name, state.version, "previous_champion", str(copy.version))
        with pytest.raises(PolicyViolation, match="never promoted to champion through the gate"):
            rollback(adult_pipeline(), state.name, store=store, audit=audit, actor="test")
        assert alias_version(state.name, CHAMPION) == state.version
    finally:
        client.delete_model_version(state.name, copy.version)
        tag_version(state.name, state.version, "previous_champion", state.version)


def test_rollback_needs_todays_approvals(state, store) -> None:
    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    from secure_pipeline.registry.mlflow_registry import tag_version

    set_alias(state.name, CHAMPION, state.version)
    tag_version(state.name, state.version, "previous_champion", state.version)
    with pytest.raises(PolicyViolation, match=r"needs 1 signed approval\(s\)"):
        rollback(needs_one, state.name, store=store, audit=AuditLog(store), actor="test")


def test_files_added_under_git_names_are_not_ignored(bundle, store) -> None:
    (bundle / ".gitattributes").write_text("model.skops filter=lfs\n")
    result = verify(bundle, store)
    assert not result.ok
    assert any(".gitattributes" in p for p in result.problems)


def test_a_lineage_naming_another_model_file_fails(bundle, store) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    lineage["model"]["file"] = "other.skops"
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any("names model file 'other.skops', not model.skops" in p for p in result.problems)


def test_a_lineage_without_its_data_stages_fails(bundle, store) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    del lineage["data"]["raw"]
    lineage["checks"] = [c for c in lineage["checks"] if c["stage"] != "raw"]
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any("must name the raw, validated and features" in p for p in result.problems)
    assert any("no verdict of provenance_complete (raw)" in p for p in result.problems)


def test_a_verdict_citing_another_audit_record_fails(bundle, store) -> None:
    """A signer who copies a passing record's anchor onto a verdict that never passed."""
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    by_name = {c["check"]: c for c in lineage["checks"]}
    by_name["fairness_audit"]["audit_record"] = by_name["adversarial_robustness"]["audit_record"]
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any(
        "verdict of fairness_audit" in p and "is not a verdict the audit trail holds" in p
        for p in result.problems
    )


def test_a_later_failed_verdict_overturns_the_lineage(bundle, state, tmp_path) -> None:
    copied = LocalSnapshotStore(Path(shutil.copytree(state.home / "store", tmp_path / "store")))
    audit = AuditLog(copied)

    def evaluated(passed: bool) -> None:
        audit.append("check.evaluated", actor="test", subject=state.model_sha,
                     details={"asset": "trained_model", "check": "fairness_audit",
                              "passed": passed, "severity": "ERROR"})  # fmt: skip

    evaluated(True)  # the same check passing again on the same model: a re-run
    assert verify(bundle, copied).ok, verify(bundle, copied).problems
    evaluated(False)
    result = verify(bundle, copied)
    assert not result.ok
    assert any("later verdict of fairness_audit" in p for p in result.problems)


def test_checks_refuse_a_model_trained_on_another_split(state, store) -> None:
    from secure_pipeline.errors import IntegrityError
    from secure_pipeline.mlsec.checks import judge
    from secure_pipeline.storage.resources import LocalSnapshotStoreResource

    pipeline = adult_pipeline()
    resource = LocalSnapshotStoreResource(root=str(store.root))
    with dg.DagsterInstance.get() as instance:
        assert judge(instance, resource, pipeline).model_sha256 == state.model_sha
        other = dataclasses.replace(
            pipeline, model=dataclasses.replace(pipeline.model, holdout_fraction=0.3)
        )
        with pytest.raises(IntegrityError, match="different split"):
            judge(instance, resource, other)


def test_drift_is_measured_against_the_champions_training_data(state, store, bundle) -> None:
    from secure_pipeline.features.assets import drift_reference

    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    with dg.DagsterInstance.get() as instance:
        key, sha, what = drift_reference(instance, store, AuditLog(store), adult_pipeline())
    assert sha == lineage["data"]["features"]["sha256"]
    assert key == lineage["data"]["features"]["key"]
    assert "champion version" in what


def test_the_chain_sensors_start_the_next_stages_after_passed_gates(state) -> None:
    defs = adult_pipeline().build_definitions()
    with dg.DagsterInstance.get() as instance:
        for sensor_name, upstream, prefix, job in (
            ("adult_train_on_new_features", "features", "train", "adult_train"),
            ("adult_release_on_passed_model", "trained_model", "release", "adult_release"),
        ):
            event = instance.get_latest_materialization_event(dg.AssetKey(upstream))
            digest = event.asset_materialization.tags["dagster/data_version"]
            sensor = defs.resolve_sensor_def(sensor_name)
            tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
            [request] = tick.run_requests
            assert request.run_key == f"{prefix}:{digest}"
            assert sensor.job_name == job
            # the saved cursor: the same snapshot never starts a second run
            again = sensor.evaluate_tick(
                dg.build_sensor_context(instance=instance, cursor=tick.cursor)
            )
            assert not again.run_requests


def test_the_approval_sensor_promotes_once_a_valid_approval_arrives(
    state, store, tmp_path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    officer = generate_key(tmp_path / "officer.pem").with_suffix(".pem")
    outsider = generate_key(tmp_path / "outsider.pem").with_suffix(".pem")
    policy_file = tmp_path / "trust.json"
    policy_file.write_text(json.dumps({
        "keys": [{"name": "dev", "public_key": str(state.home / "keys" / "dev-signing-key.pub")}],
        "approvers": [{"name": "officer", "public_key": str(officer.with_suffix(".pub"))}],
    }))  # fmt: skip
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(policy_file))
    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    defs = needs_one.build_definitions()
    sensor = defs.resolve_sensor_def("adult_promote_on_approval")
    resources = {"snapshot_store": defs.resources["snapshot_store"]}
    bundle_digest = version_tags(state.name, state.version)["bundle_digest"]

    def tick():
        with dg.DagsterInstance.get() as instance:
            return sensor.evaluate_tick(dg.build_sensor_context(instance, resources=resources))

    set_alias(state.name, CHAMPION, state.version)
    assert "already the champion" in tick().skip_message
    MlflowClient(tracking_uri()).delete_registered_model_alias(state.name, CHAMPION)
    try:
        assert f"version {state.version} has 0 of 1" in tick().skip_message
        # signed by a key the trust policy does not list as an approver
        store_approval(store, state.model_sha, sign_approval(
            outsider, model_sha256=state.model_sha, bundle_digest=bundle_digest,
            approver="officer", reason="not mine to give"))  # fmt: skip
        assert "has 0 of 1" in tick().skip_message
        store_approval(store, state.model_sha, sign_approval(
            officer, model_sha256=state.model_sha, bundle_digest=bundle_digest,
            approver="officer", reason="reviewed the card"))  # fmt: skip
        [request] = tick().run_requests
        assert request.run_key.startswith(f"promote:{state.version}:")
        assert request.asset_selection == [dg.AssetKey("promoted_model")]
        assert sensor.job_name == "adult_release"
        # seen again, the same approvals: the same run key, which Dagster launches once
        assert tick().run_requests[0].run_key == request.run_key
        # with a serving deployment, the canary releases what promotion makes challenger
        monkeypatch.setenv("SECURE_PIPELINE_SERVING_DIR", str(tmp_path / "serving"))
        serving = needs_one.build_definitions().resolve_sensor_def("adult_promote_on_approval")
        with dg.DagsterInstance.get() as instance:
            context = dg.build_sensor_context(instance, resources=resources)
            [request] = serving.evaluate_tick(context).run_requests
        assert request.asset_selection == [
            dg.AssetKey("promoted_model"),
            dg.AssetKey("canary_analysis"),
        ]
    finally:
        set_alias(state.name, CHAMPION, state.version)
