"""The signed registry and the promotion gate, on a real run of the reference pipeline.

One session-scoped run trains, gates, signs, registers and promotes the reference model into a
real MLflow store (SQLite, local artifacts); each test then attacks a copy of what was stored,
or the registry itself as an insider with the MLflow client would, and shows the refusal.
"""

import dataclasses
import hashlib
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
from secure_pipeline.names import CHAMPION
from secure_pipeline.promotion.gate import promote, rollback
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.approvals import sign_approval, store_approval
from secure_pipeline.registry.bundle import EVIDENCE_DIR, LINEAGE_FILE, MODEL_FILE
from secure_pipeline.registry.decisions import champion, decisions, issue
from secure_pipeline.registry.evidence import verify_reference
from secure_pipeline.registry.mlflow_registry import alias_version, set_alias, version_tags
from secure_pipeline.registry.signing import Signer, sign_bundle, signer_from_environment
from secure_pipeline.registry.verification import resolve, verify_bundle_dir
from secure_pipeline.serving.loader import load_evidence, load_verified
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.training.serialization import UntrustedModelError
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE, TRAIN
from secure_pipeline.trust.keys import generate_key
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import approver_signer, signer_for
from secure_pipeline.verdicts import verdict_statement
from secure_pipeline_tests.conftest import Registered
from secure_pipeline_tests.trust_helpers import policy_with_approvers

CLI = str(Path(sys.executable).parent / "secure-pipeline")


@pytest.fixture(scope="module")
def registered(reference_run: Registered) -> Registered:
    return reference_run


@pytest.fixture
def state(registered, monkeypatch) -> Registered:
    """Point this test's environment at the session's run."""
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(registered.home))
    monkeypatch.setenv("DAGSTER_HOME", str(registered.home))
    return registered


@pytest.fixture
def store(state) -> LocalSnapshotStore:
    return LocalSnapshotStore(state.home / "store")


@pytest.fixture
def private(state, tmp_path, monkeypatch) -> LocalSnapshotStore:
    """A private copy of the store, with the same registry: for tests whose records are signed
    by keys only their own trust policy knows (the shared trail must keep verifying)."""
    home = tmp_path / "private-home"
    shutil.copytree(state.home / "store", home / "store")
    (home / "mlflow").mkdir()  # its lock file; the registry itself stays the shared one
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state.home / 'mlflow' / 'mlflow.db'}")
    return LocalSnapshotStore(home / "store")


@pytest.fixture
def bundle(state, tmp_path) -> Path:
    """A private copy of the registered bundle."""
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        return Path(shutil.copytree(resolved.directory, tmp_path / "bundle"))


def verify(directory: Path, store: LocalSnapshotStore | None, pipeline=None):
    return verify_bundle_dir(
        directory, trust=trust_policy(), pipeline=pipeline or adult_pipeline(), store=store
    )


def resign(directory: Path) -> None:
    """Sign a modified bundle again with the release key: a holder of that key, not the insider."""
    (directory / "model.sig").unlink()
    sign_bundle(directory, signer_from_environment())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=dict(os.environ))


def test_the_reference_run_registers_and_promotes_a_verified_model(state, store) -> None:
    assert alias_version(state.name, CHAMPION) == state.version
    assert alias_version(state.name, "challenger") == state.version
    current = champion(decisions(store, trust_policy(), state.name)[0])
    assert current is not None
    assert current.version == state.version
    assert current.attestation.identity == "gate"
    tags = version_tags(state.name, state.version)
    assert tags["model_sha256"] == state.model_sha
    assert tags["signer"].startswith("dev:")
    result = _run("verify", f"models:/{state.name}@champion")
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("lineage", "registration", "promotion", "approvals", "audit checkpoint"):
        assert f"[ok] {step}" in result.stdout
    out = io.StringIO()
    AuditLog(store).export(out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [r["event"] for r in records]
    for event in ("model.trained", "model.registered", "promotion.verified",
                  "promotion.challenger", "promotion.champion"):  # fmt: skip
        assert event in events
    by_event = {r["event"]: r["identity"] for r in records}
    assert by_event["model.trained"] == "train"
    assert by_event["model.registered"] == "release"
    assert by_event["promotion.champion"] == "gate"
    assert by_event["ingestion.stored"] == "ingest"


def test_lineage_names_every_snapshot_and_signed_verdict(bundle, state) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    assert lineage["model"]["sha256"] == state.model_sha
    assert set(lineage["data"]) == {"raw", "validated", "features"}
    assert {c["check"] for c in lineage["checks"]} == {
        "provenance_complete", "schema_conforms", "reject_rate_within_limit",
        "expectations_met", "feature_drift", "poisoning_screen", "performance_meets_policy",
        "adversarial_robustness", "membership_inference_risk", "fairness_audit",
        "onnx_equivalent",
    }  # fmt: skip
    model_checks = [c for c in lineage["checks"] if c["stage"] == "model"]
    assert {c["subject"] for c in model_checks} == {state.model_sha}
    assert {c["identity"] for c in model_checks} == {"train"}
    assert {c["identity"] for c in lineage["checks"] if c["stage"] != "model"} == {"ingest"}
    for check in lineage["checks"]:
        data = (bundle / check["attestation"]).read_bytes()
        assert check["attestation"].startswith(f"{EVIDENCE_DIR}/")
        assert hashlib.sha256(data).hexdigest() == check["attestation_sha256"]
    card = (bundle / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Fairness", "## Robustness", "## Privacy risk",
                    "## Limitations"):  # fmt: skip
        assert section in card


def test_the_bundle_verifies_offline_from_its_own_signed_verdicts(bundle) -> None:
    result = verify(bundle, None)
    assert result.ok, result.problems
    assert "verdicts signed by their stage identities" in result.report()


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


def test_a_verdict_bound_to_another_digest_fails_even_when_re_signed(bundle, store) -> None:
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    for check in lineage["checks"]:
        if check["check"] == "fairness_audit":
            check["subject"] = "f" * 64  # the verdict was about some other model
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]  # validly signed
    assert any("fairness_audit judged ffffffffffff" in p for p in result.problems)


def test_a_verdict_swapped_for_another_checks_attestation_fails(bundle, store) -> None:
    """A release-key holder puts robustness's (passing) envelope where fairness's belongs."""
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    by_name = {c["check"]: c for c in lineage["checks"]}
    fairness, robustness = by_name["fairness_audit"], by_name["adversarial_robustness"]
    (bundle / fairness["attestation"]).write_bytes(
        (bundle / robustness["attestation"]).read_bytes()
    )
    fairness["attestation_sha256"] = robustness["attestation_sha256"]
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any(
        "verdict of fairness_audit" in p and "differs from the lineage in check" in p
        for p in result.problems
    )


def test_a_pickle_file_in_the_bundle_is_refused_even_when_signed(bundle, store) -> None:
    import pickle

    (bundle / "preprocess.pkl").write_bytes(pickle.dumps({"x": 1}))
    resign(bundle)
    result = verify(bundle, store)
    assert result.steps[0][1]
    assert any("pickle files ['preprocess.pkl']" in p for p in result.problems)
    with pytest.raises(PolicyViolation, match="pickle"):
        load_verified(bundle, trust=trust_policy(), pipeline=adult_pipeline())


def test_a_pickled_model_file_is_refused_at_load_even_when_signed(bundle, state) -> None:
    """Every key held, every verdict re-signed for the pickle: only the file format is left."""
    import pickle

    from secure_pipeline.training.serialization import load_model

    model = load_model((bundle / MODEL_FILE).read_bytes())
    pickled = pickle.dumps(model)
    (bundle / MODEL_FILE).write_bytes(pickled)
    digest = hashlib.sha256(pickled).hexdigest()
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    lineage["model"]["sha256"] = digest
    for check in lineage["checks"]:
        if check["stage"] == "model":
            check["subject"] = digest
            # The ONNX copy stays the one its verdict proved: only the skops file changes.
            summary = ({"onnx_sha256": lineage["model.onnx"]["sha256"]}
                       if check["check"] == "onnx_equivalent" else {})  # fmt: skip
            document = verdict_statement(
                adult_pipeline(), asset="adult/trained_model", check=check["check"], subject=digest,
                passed=True, severity=check["severity"], summary=summary, run_id="r",
                trust_digest="",
            )  # fmt: skip
            envelope = attestations.sign(document, signer_for(TRAIN))
            (bundle / check["attestation"]).write_bytes(envelope)
            check["attestation_sha256"] = hashlib.sha256(envelope).hexdigest()
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage))
    resign(bundle)
    assert verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None).ok
    with pytest.raises(UntrustedModelError):
        load_verified(bundle, trust=trust_policy(), pipeline=None)


def test_serving_loads_the_verified_champion(state, store) -> None:
    with verify_reference(f"models:/{state.name}@champion", pipeline=adult_pipeline(),
                  trust=trust_policy(), store=store) as evidence:  # fmt: skip
        loaded = load_evidence(evidence)
    assert loaded.model_sha256 == state.model_sha
    assert loaded.inputs[0] == "age"
    assert hasattr(loaded.model, "predict_proba")


def test_todays_stricter_policy_refuses_the_champion(state, store) -> None:
    pipeline = adult_pipeline()
    stricter = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, max_robustness_drop=0.01)
    )
    with verify_reference(f"models:/{state.name}@champion", pipeline=stricter, trust=trust_policy(),
                  store=store) as evidence:  # fmt: skip
        assert not evidence.ok
        assert any("different policy than today's" in p for p in evidence.problems)
        with pytest.raises(PolicyViolation, match="different policy"):
            load_evidence(evidence)


def test_approvals_are_required_signed_bound_and_from_allowed_keys(
    state, private, tmp_path, monkeypatch
):
    store = private
    officer = generate_key(tmp_path / "officer.pem").with_suffix(".pem")
    outsider = generate_key(tmp_path / "outsider.pem").with_suffix(".pem")
    policy = policy_with_approvers(
        tmp_path / "trust.json", {"risk-officer": officer.with_suffix(".pub")}
    )
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(policy))
    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    audit = AuditLog(store)
    signer = approver_signer(officer)
    bundle_digest = version_tags(state.name, state.version)["bundle_digest"]

    def attempt(needed=needs_one):
        return promote(needed, state.name, state.version, store=store, audit=audit,
                       actor="test")  # fmt: skip

    with pytest.raises(PolicyViolation, match=r"needs 1 signed approval\(s\).*has 0"):
        attempt()
    # A key that is not an approver's: the command refuses before writing anything.
    before = (audit.verify().count, sorted(store.list_keys("approvals/")))
    refused = _run("approve", f"models:/{state.name}/{state.version}", "--key", str(outsider),
                   "--reason", "looks fine")  # fmt: skip
    assert refused.returncode == 2
    assert "is not an approver" in refused.stderr
    assert "nothing was written" in refused.stderr
    assert (audit.verify().count, sorted(store.list_keys("approvals/"))) == before
    # A document the outsider signed and stored by hand does not count either.
    from securesystemslib.signer import CryptoSigner

    intruder = CryptoSigner.generate_ecdsa()
    forged = attestations.statement(
        {"model.skops": state.model_sha, "bundle": bundle_digest}, attestations.APPROVAL_TYPE,
        {"approver": "risk-officer", "decision": "approve", "reason": "forged"},
    )  # fmt: skip
    from securesystemslib.dsse import Envelope

    from secure_pipeline.storage.snapshots import canonical_json

    envelope = Envelope(canonical_json(forged), attestations.PAYLOAD_TYPE, {})
    envelope.sign(intruder)
    store_approval(store, state.model_sha, canonical_json(envelope.to_dict()))
    with pytest.raises(PolicyViolation, match="only approver:risk-officer may make it"):
        attempt()
    # The right key, but another model, and then another bundle holding the same model.
    store_approval(store, state.model_sha, sign_approval(
        signer, model_sha256="0" * 64, bundle_digest="x", reason="other model"))  # fmt: skip
    with pytest.raises(PolicyViolation, match="approves model 0000"):
        attempt()
    store_approval(store, state.model_sha, sign_approval(
        signer, model_sha256=state.model_sha, bundle_digest="b" * 64,
        reason="other bundle"))  # fmt: skip
    with pytest.raises(PolicyViolation, match="approves bundle bbbbbbbbbbbb, not this bundle"):
        attempt()
    # Through the command line, bound to this model and bundle after verifying them.
    result = _run("approve", f"models:/{state.name}/{state.version}", "--key", str(officer),
                  "--reason", "reviewed the card")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = attempt()
    assert outcome["approvals"] == ["risk-officer"]
    records = list(audit.verified_records())
    assert any(
        r.event == "approval.recorded" and r.identity == "approver:risk-officer" for r in records
    )
    # The champion decision cites that approval, and verify checks it again.
    shown = _run("verify", f"models:/{state.name}@champion")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # The same approver twice still counts once.
    needs_two = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=2)
    )
    store_approval(store, state.model_sha, sign_approval(
        signer, model_sha256=state.model_sha, bundle_digest=bundle_digest,
        reason="again"))  # fmt: skip
    with pytest.raises(PolicyViolation, match="has 1"):
        attempt(needs_two)


def test_the_mlflow_artifact_store_edited_directly_is_caught(state, store) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    source = client.get_model_version(state.name, state.version).source
    run_id, path = source.removeprefix("runs:/").split("/", 1)
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / path
    card = artifacts / "MODEL_CARD.md"
    original = card.read_bytes()
    try:
        card.write_bytes(original.replace(b"fairness", b"fair-ish"))
        with pytest.raises(PolicyViolation, match="failed verification"):
            promote(adult_pipeline(), state.name, state.version, store=store,
                    audit=AuditLog(store), actor="test")  # fmt: skip
        result = _run("verify", f"models:/{state.name}/{state.version}")
        assert result.returncode == 1
        assert "MODEL_CARD.md" in result.stdout
    finally:
        card.write_bytes(original)


def test_status_shows_the_signed_champion_and_a_disagreeing_alias(state) -> None:
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    original = client.get_model_version(state.name, state.version)
    copy = client.create_model_version(
        state.name, source=original.source, run_id=original.run_id, tags=original.tags
    )
    try:
        set_alias(state.name, CHAMPION, str(copy.version))  # moved by hand since the last run
        shown = _run("status")
        assert shown.returncode == 0, shown.stderr
        registry = shown.stdout.split(f"registry ({state.name}, now):")[1]
        assert f"champion (signed decision): models:/{state.name}/{state.version}" in registry
        assert f"alias champion: models:/{state.name}/{copy.version}" in registry
        assert "disagrees with the signed decision" in registry
    finally:
        set_alias(state.name, CHAMPION, state.version)
        client.delete_model_version(state.name, copy.version)


def test_rollback_needs_a_previous_signed_champion(state, store, tmp_path) -> None:
    """The previous_champion tag is registry data anyone with write access can set."""
    from secure_pipeline.registry.mlflow_registry import tag_version

    # The store as it was after the first promotion: one champion decision, no predecessor.
    copied = LocalSnapshotStore(Path(shutil.copytree(state.home / "store", tmp_path / "store")))
    history = decisions(copied, trust_policy(), state.name)[0]
    for later in history[1:]:
        (copied.root / later.key).unlink()
    tag_version(state.name, state.version, "previous_champion", state.version)
    with pytest.raises(PolicyViolation, match="has no previous champion"):
        rollback(adult_pipeline(), state.name, store=copied, audit=AuditLog(copied),
                 actor="test")  # fmt: skip
    assert alias_version(state.name, CHAMPION) == state.version


def test_rollback_needs_todays_approvals(state, store) -> None:
    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    audit = AuditLog(store)
    promote(pipeline, state.name, state.version, store=store, audit=audit, actor="test")
    with pytest.raises(PolicyViolation, match=r"needs 1 signed approval\(s\)"):
        rollback(needs_one, state.name, store=store, audit=audit, actor="test")
    # With today's policy satisfied, rollback is a signed decision naming the one it replaces.
    before = champion(decisions(store, trust_policy(), state.name)[0])
    outcome = rollback(pipeline, state.name, store=store, audit=audit, actor="test")
    after = champion(decisions(store, trust_policy(), state.name)[0])
    assert after is not None
    assert before is not None
    assert outcome["to"] == state.version
    assert after.facts["reason"] == "rollback"
    assert after.facts["previous_champion"]["attestation"] == before.sha256
    out = io.StringIO()
    audit.export(out)
    assert '"promotion.rollback"' in out.getvalue()


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


def test_a_later_signed_failed_verdict_overturns_the_lineage(bundle, state, tmp_path) -> None:
    copied = LocalSnapshotStore(Path(shutil.copytree(state.home / "store", tmp_path / "store")))

    def evaluated(passed: bool, signer) -> None:
        document = verdict_statement(
            adult_pipeline(), asset="adult/trained_model", check="fairness_audit",
            subject=state.model_sha, passed=passed, severity="ERROR", summary={}, run_id="r",
            trust_digest="",
        )  # fmt: skip
        attestations.store_envelope(
            copied, "verdicts", state.model_sha, attestations.sign(document, signer)
        )

    evaluated(True, signer_for(TRAIN))  # the same check passing again on the same model
    assert verify(bundle, copied).ok, verify(bundle, copied).problems
    # A failing verdict signed by another stage's key is not the check's word: ignored.
    evaluated(False, signer_for("ingest"))
    assert verify(bundle, copied).ok, verify(bundle, copied).problems
    evaluated(False, signer_for(TRAIN))
    result = verify(bundle, copied)
    assert not result.ok
    assert any("later signed verdict of fairness_audit" in p for p in result.problems)


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
    from secure_pipeline.registry.evidence import champion_lineage

    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    with dg.DagsterInstance.get() as instance:
        refs, sha, what = drift_reference(instance, store, adult_pipeline(), champion_lineage)
    assert sha == lineage["data"]["features"]["sha256"]
    assert refs == [(lineage["data"]["features"]["key"], sha)]
    assert "champion version" in what


def test_the_chain_sensors_start_the_next_stages_after_passed_gates(state) -> None:
    defs = adult_pipeline().build_definitions()
    with dg.DagsterInstance.get() as instance:
        for sensor_name, upstream, prefix, job in (
            ("adult_train_on_new_features", "features", "train", "adult_train"),
            ("adult_release_on_passed_model", "trained_model", "release", "adult_release"),
        ):
            event = instance.get_latest_materialization_event(dg.AssetKey(["adult", upstream]))
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
    state, private, tmp_path, monkeypatch
) -> None:
    officer = generate_key(tmp_path / "officer.pem").with_suffix(".pem")
    policy = policy_with_approvers(
        tmp_path / "trust.json", {"officer": officer.with_suffix(".pub")}
    )
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(policy))
    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    defs = needs_one.build_definitions()
    sensor = defs.resolve_sensor_def("adult_promote_on_approval")
    resources = {"snapshot_store": defs.resources["snapshot_store"]}
    # The newest registered version (other modules may have registered the model again).
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["adult", "registered_model"])
        )
    meta = event.asset_materialization.metadata
    version, model_sha = str(meta["model_version"].value), str(meta["model_sha256"].value)
    bundle_digest = str(meta["bundle_digest"].value)

    def tick():
        with dg.DagsterInstance.get() as instance:
            return sensor.evaluate_tick(dg.build_sensor_context(instance, resources=resources))

    # No signed champion decision in the store: the alias alone is no evidence of one.
    for key in list(private.list_keys("attestations/promotions/")):
        (private.root / key).unlink()
    set_alias(state.name, CHAMPION, version)
    try:
        assert f"version {version} has 0 of 1" in tick().skip_message
    finally:
        set_alias(state.name, CHAMPION, state.version)
    store_approval(private, model_sha, sign_approval(
        approver_signer(officer), model_sha256=model_sha, bundle_digest=bundle_digest,
        reason="reviewed the card"))  # fmt: skip
    [request] = tick().run_requests
    assert request.run_key.startswith(f"promote:{version}:")
    assert request.asset_selection == [dg.AssetKey(["adult", "promoted_model"])]
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
        dg.AssetKey(["adult", "promoted_model"]),
        dg.AssetKey(["adult", "canary_analysis"]),
    ]
    # once the gate signed that version champion, there is nothing left to do
    issue(
        private, signer_for(GATE), pipeline="adult", name=state.name, version=version,
        decision=CHAMPION, reason="promotion", model_sha256=model_sha,
        bundle_digest=bundle_digest, security_policy_sha256=pipeline.policy.fingerprint(),
        inputs=[], previous_champion=None, audit_head=None,
    )  # fmt: skip
    assert "already the champion" in tick().skip_message
