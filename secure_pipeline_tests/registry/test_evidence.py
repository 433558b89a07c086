"""Every gate against the insider of the threat model: write access to the store and the MLflow
registry, no signing key. Each attack is run as they would run it (file edits, the MLflow
client, sqlite), and each is refused by signed evidence.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.names import CHAMPION
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import LineageError, build_lineage, verdict_problems
from secure_pipeline.registry.mlflow_registry import set_alias, version_source
from secure_pipeline.registry.verification import resolve
from secure_pipeline.storage.audit import AuditLog, AuditRecord, record_key
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.snapshots import canonical_json
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import INGEST, TRAIN
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline.verdicts import verdict_statement
from secure_pipeline_tests.conftest import Registered, pointed_at
from secure_pipeline_tests.helpers import materialize

CLI = str(Path(sys.executable).parent / "secure-pipeline")
PERFORMANCE = "performance_meets_policy"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=dict(os.environ))


def _strict():
    """The reference pipeline with a performance bar its model cannot clear (AUC 0.90)."""
    pipeline = adult_pipeline()
    return dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, min_roc_auc=0.95)
    )


@dataclasses.dataclass
class Failed:
    home: Path
    model_sha: str
    features_meta: dict


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, dev_keys) -> Failed:
    """A real run whose model failed ``performance_meets_policy`` (and passed the rest)."""
    home = tmp_path_factory.mktemp("failed-home")
    with pointed_at(home, dev_keys):
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
        with dg.DagsterInstance.get() as instance:
            materialize(_strict(), instance,
                        ["raw_adult", "validated_adult", "features", "trained_model"],
                        raise_on_error=False)  # fmt: skip
            event = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "trained_model"])
            )
            meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return Failed(home, str(meta["sha256"]), meta)


@pytest.fixture
def failed(failed_run, monkeypatch, tmp_path) -> Failed:
    """This test's own copy of the failed run's home (attacks write into it)."""
    home = Path(shutil.copytree(failed_run.home, tmp_path / "failed-home", symlinks=True))
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    return Failed(home, failed_run.model_sha, failed_run.features_meta)


def _lineage(failed: Failed):
    store = LocalSnapshotStore(failed.home / "store")
    return build_lineage(
        _strict(), store, trust_policy(), model_sha256=failed.model_sha,
        model_metadata=failed.features_meta, run_id="attack",
    )  # fmt: skip


def _register(failed: Failed) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.get() as instance:
        return materialize(_strict(), instance, ["registered_model"], raise_on_error=False)


def _store_verdict(
    store, subject: str, signer, *, passed: bool, asset="adult/trained_model"
) -> None:
    document = verdict_statement(
        _strict(), asset=asset, check=PERFORMANCE, subject=subject, passed=passed,
        severity="ERROR", summary={"roc_auc": 0.99}, run_id="forged", trust_digest="",
    )  # fmt: skip
    attestations.store_envelope(store, "verdicts", subject, attestations.sign(document, signer))


def test_the_failed_model_is_refused_registration(failed) -> None:
    lineage, _ = _lineage(failed)
    assert any(PERFORMANCE in p for p in verdict_problems(lineage["checks"]))
    result = _register(failed)
    assert not result.success
    store = LocalSnapshotStore(failed.home / "store")
    [refusal] = [r for r in AuditLog(store).verified_records() if r.event == "registration.refused"]
    assert refusal.identity == "release"
    assert "performance_meets_policy on adult/trained_model failed" in str(refusal.details)
    assert not list(store.list_keys("attestations/registrations/"))


def test_forged_passing_records_in_the_audit_trail_change_nothing(failed) -> None:
    """The original attack: copies of the failed verdicts, passing, with a recomputed chain."""
    store = LocalSnapshotStore(failed.home / "store")
    log = AuditLog(store)
    head = log.verify()
    failed_records = [
        r for r in log.verified_records()
        if r.event == "check.evaluated" and not r.details.get("passed")
    ]  # fmt: skip
    assert failed_records
    prev, seq = head.head_hash, head.count
    for record in failed_records:
        seq += 1
        body = {**record.body(), "seq": seq, "prev_hash": prev,
                "details": {**record.details, "passed": True}}  # fmt: skip
        digest = hashlib.sha256(canonical_json(body)).hexdigest()
        forged = AuditRecord(**body, hash=digest, signature=record.signature)
        (store.root / record_key(seq)).write_bytes(forged.to_json())
        prev = digest
    result = _register(failed)
    assert not result.success
    assert not list(store.list_keys("attestations/registrations/"))
    verified = _run("audit", "verify")
    assert verified.returncode == 1
    assert f"audit record {head.count + 1}" in verified.stderr
    assert "not signed by a key of the trust policy" in verified.stderr


def test_a_forged_attestation_does_not_pass_the_gate(failed) -> None:
    from securesystemslib.signer import CryptoSigner

    from secure_pipeline.trust.signers import IdentitySigner

    store = LocalSnapshotStore(failed.home / "store")
    intruder = IdentitySigner(TRAIN, "x", CryptoSigner.generate_ecdsa(), "")
    _store_verdict(store, failed.model_sha, intruder, passed=True)
    lineage, _ = _lineage(failed)
    assert any(PERFORMANCE in p for p in verdict_problems(lineage["checks"]))


def test_a_verdict_signed_by_the_wrong_identity_does_not_pass_the_gate(failed) -> None:
    """Whoever holds the ingest key cannot judge a model."""
    store = LocalSnapshotStore(failed.home / "store")
    _store_verdict(store, failed.model_sha, signer_for(INGEST), passed=True)
    lineage, _ = _lineage(failed)
    assert any(PERFORMANCE in p for p in verdict_problems(lineage["checks"]))


def test_a_replayed_verdict_of_another_model_does_not_pass_the_gate(failed, reference_run) -> None:
    """A genuine passing verdict (another model's) copied next to this model's verdicts."""
    store = LocalSnapshotStore(failed.home / "store")
    source = LocalSnapshotStore(reference_run.home / "store")
    for key, data in attestations.stored_envelopes(source, "verdicts", reference_run.model_sha):
        (store.root / f"attestations/verdicts/{failed.model_sha}/{Path(key).name}").write_bytes(
            data
        )
    lineage, _ = _lineage(failed)
    assert any(PERFORMANCE in p for p in verdict_problems(lineage["checks"]))


def test_verdicts_judged_under_another_policy_are_refused(reference_run, monkeypatch) -> None:
    """After the policy is tightened, yesterday's verdicts do not admit a model."""
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    store = LocalSnapshotStore(reference_run.home / "store")
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["adult", "trained_model"]))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    pipeline = adult_pipeline()
    tightened = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, max_robustness_drop=0.04)
    )
    with pytest.raises(LineageError, match="under today's policy .* judged under another policy"):
        build_lineage(tightened, store, trust_policy(), model_sha256=reference_run.model_sha,
                      model_metadata=meta, run_id="re-register")  # fmt: skip


# -- the registry and its aliases -----------------------------------------------------------


@pytest.fixture(scope="module")
def reregistered(reference_run, dev_keys) -> dict:
    """Register the reference model again: version 1's bytes before and after, version 2."""
    with pointed_at(reference_run.home, dev_keys):

        def files() -> dict[str, bytes]:
            with resolve(f"models:/{reference_run.name}/{reference_run.version}") as resolved:
                root = resolved.directory
                return {
                    p.relative_to(root).as_posix(): p.read_bytes()
                    for p in root.rglob("*")
                    if p.is_file()
                }

        before = files()
        with dg.DagsterInstance.get() as instance:
            result = materialize(adult_pipeline(), instance, ["registered_model"])
            event = instance.get_latest_materialization_event(
                dg.AssetKey(["adult", "registered_model"])
            )
        assert result.success
        after = files()
    return {
        "before": before,
        "after": after,
        "version": str(event.asset_materialization.metadata["model_version"].value),
    }


@pytest.fixture
def state(reference_run, monkeypatch) -> Registered:
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    return reference_run


def test_registering_again_never_changes_an_existing_version(state, reregistered) -> None:
    assert reregistered["version"] != state.version
    assert reregistered["after"] == reregistered["before"]  # byte for byte
    assert version_source(state.name, state.version) != version_source(
        state.name, reregistered["version"]
    )
    verified = _run("verify", f"models:/{state.name}/{state.version}")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_hand_moved_champion_alias_is_refused(state, reregistered) -> None:
    """The alias moved with the MLflow client to a version the gate never promoted."""
    from secure_pipeline.serving.server import ModelService

    version = reregistered["version"]
    set_alias(state.name, CHAMPION, version)
    try:
        shown = _run("verify", f"models:/{state.name}@champion")
        assert shown.returncode == 1
        assert "the alias was moved outside the gate" in shown.stdout
        for reference in (f"models:/{state.name}@champion", f"models:/{state.name}/{version}"):
            service = ModelService(adult_pipeline(), reference, "blue")
            service.load()
            assert service.state == "refused"
            assert "gate" in service.reason
    finally:
        set_alias(state.name, CHAMPION, state.version)
    service = ModelService(adult_pipeline(), f"models:/{state.name}/{state.version}", "blue")
    service.load()
    assert service.state == "ready", service.reason


def test_a_release_of_a_never_approved_version_is_refused(state, reregistered, tmp_path) -> None:
    """`serving release` of a registered version that never passed the gate."""
    from secure_pipeline.promotion.bluegreen import BlueGreen, DeploymentState, SlotState

    directory = tmp_path / "serving"
    directory.mkdir()
    DeploymentState(
        name=state.name, live="blue",
        slots={"blue": SlotState("127.0.0.1:1"), "green": SlotState("127.0.0.1:2")},
        weights={"blue": 100, "green": 0}, gateway={"listen": "127.0.0.1:3"},
    ).save(directory)  # fmt: skip
    audit = AuditLog(LocalSnapshotStore(state.home / "store"))
    with pytest.raises(PolicyViolation, match="never admitted by the gate"):
        BlueGreen(directory, adult_pipeline()).release(
            reregistered["version"], audit=audit, actor="test"
        )
    untouched = DeploymentState.load(directory)
    assert untouched.slots["green"].pid is None
    assert untouched.weights == {"blue": 100, "green": 0}
    refused = [r for r in audit.verified_records() if r.event == "canary.refused"]
    assert refused[-1].identity == "gate"
    cli = _run("serving", "release", reregistered["version"], "--dir", str(directory))
    assert cli.returncode == 1
    assert "never admitted by the gate" in cli.stderr


def test_a_release_without_the_approvals_todays_policy_needs_is_refused(state, tmp_path) -> None:
    """The champion was admitted with no approval; today's policy needs one before it serves."""
    from secure_pipeline.promotion.bluegreen import BlueGreen, DeploymentState, SlotState

    pipeline = adult_pipeline()
    needs_one = dataclasses.replace(
        pipeline, policy=dataclasses.replace(pipeline.policy, approvals_required=1)
    )
    directory = tmp_path / "serving"
    directory.mkdir()
    DeploymentState(
        name=state.name, live="blue",
        slots={"blue": SlotState("127.0.0.1:1"), "green": SlotState("127.0.0.1:2")},
        weights={"blue": 100, "green": 0}, gateway={"listen": "127.0.0.1:3"},
    ).save(directory)  # fmt: skip
    audit = AuditLog(LocalSnapshotStore(state.home / "store"))
    with pytest.raises(PolicyViolation, match=r"approvals: 1 signed approval\(s\) .* required"):
        BlueGreen(directory, needs_one).release(state.version, audit=audit, actor="test")
    assert DeploymentState.load(directory).slots["green"].pid is None


def test_a_version_with_copied_tags_is_refused(state) -> None:
    """A new version made with the MLflow client from version 1's source and tags."""
    from mlflow import MlflowClient

    from secure_pipeline.training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    original = client.get_model_version(state.name, state.version)
    copy = client.create_model_version(
        state.name, source=original.source, run_id=original.run_id, tags=original.tags
    )
    try:
        shown = _run("verify", f"models:/{state.name}/{copy.version}")
        assert shown.returncode == 1
        assert f"no signed registration of {state.name} version {copy.version}" in shown.stdout
    finally:
        client.delete_model_version(state.name, copy.version)


def test_a_re_pointed_version_is_refused(state, reregistered) -> None:
    """Version 2's source re-pointed at version 1's signed bundle, in the registry's database."""
    version = reregistered["version"]
    original = version_source(state.name, version)
    database = state.home / "mlflow" / "mlflow.db"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE model_versions SET source = ? WHERE name = ? AND version = ?",
            (version_source(state.name, state.version), state.name, int(version)),
        )
    try:
        shown = _run("verify", f"models:/{state.name}/{version}")
        assert shown.returncode == 1
        assert "the version was re-pointed" in shown.stdout
    finally:
        with sqlite3.connect(database) as connection:
            connection.execute(
                "UPDATE model_versions SET source = ? WHERE name = ? AND version = ?",
                (original, state.name, int(version)),
            )


# -- independent verifiers --------------------------------------------------------------------


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, written from the specification (not our code)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def test_attestations_verify_with_openssl(state, tmp_path) -> None:
    """Every envelope of the champion's chain, checked by OpenSSL against the policy's keys."""
    import base64

    store = LocalSnapshotStore(state.home / "store")
    policy = trust_policy()
    envelopes = [data for _k, data in attestations.stored_envelopes(store, "promotions", "adult")]
    envelopes += [
        data
        for _k, data in attestations.stored_envelopes(
            store, "registrations", f"{state.name}/{state.version}"
        )
    ]
    envelopes += [
        data for _k, data in attestations.stored_envelopes(store, "verdicts", state.model_sha)
    ]
    assert len(envelopes) >= 6
    for index, data in enumerate(envelopes):
        envelope = json.loads(data)
        [signature] = envelope["signatures"]
        key = policy.key(signature["keyid"])
        assert key is not None
        files = {name: tmp_path / f"{index}.{name}" for name in ("pae", "sig", "pub")}
        files["pae"].write_bytes(
            _pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
        )
        files["sig"].write_bytes(base64.b64decode(signature["sig"]))
        files["pub"].write_text(key.pem)
        command = ["openssl", "dgst", "-sha256", "-verify", str(files["pub"]), "-signature",
                   str(files["sig"]), str(files["pae"])]  # fmt: skip
        ok = subprocess.run(command, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Verified OK" in ok.stdout
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        # one changed byte of the payload: OpenSSL refuses it too
        tampered = bytearray(files["pae"].read_bytes())
        tampered[-2] ^= 1
        files["pae"].write_bytes(bytes(tampered))
        bad = subprocess.run(command, capture_output=True, text=True)
        assert bad.returncode != 0


def test_the_upstream_model_signing_cli_verifies_the_registered_bundle(state, tmp_path) -> None:
    policy = trust_policy()
    [key] = policy.identities["release"].keys
    public = tmp_path / "release.pub"
    public.write_text(key.pem)
    with resolve(f"models:/{state.name}/{state.version}") as resolved:
        command = [sys.executable, "-m", "model_signing", "verify", "key", "--signature",
                   str(resolved.directory / "model.sig"), "--public_key", str(public),
                   str(resolved.directory)]  # fmt: skip
        ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_check_evaluations_are_anchored_in_the_dagster_event_log(failed) -> None:
    """Cut the trail's last records (check verdicts) and their checkpoints: the event log's
    anchors of those check evaluations still name the truncation."""
    store = LocalSnapshotStore(failed.home / "store")
    log = AuditLog(store)
    records = list(log.verified_records())
    assert records[-1].event == "check.evaluated"
    cut = 0
    for record in reversed(records):
        if record.event != "check.evaluated":
            break
        for key in (record_key(record.seq), f"audit/checkpoints/{record.seq:012d}.json"):
            (store.root / key).unlink()
        cut += 1
    assert cut >= 2
    assert _run("audit", "verify").returncode == 0  # a consistent prefix on its own
    anchored = _run("audit", "verify", "--dagster-anchors")
    assert anchored.returncode == 1
    assert "records were removed from the end" in anchored.stderr
