"""The trust policy and the stage identities: who may sign what, and how the policy is pinned."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE, INGEST, STAGE_IDENTITIES, TRAIN
from secure_pipeline.trust.keys import DEV_LABEL, fingerprint, generate_key
from secure_pipeline.trust.policy import (
    load_policy,
    parse_document,
    policy_document,
    sign_policy,
    trust_policy,
)
from secure_pipeline.trust.signers import approver_signer, signer_for

CLI = str(Path(sys.executable).parent / "secure-pipeline")


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A production-style key set made with `secure-pipeline trust init`."""
    officer = generate_key(tmp_path / "officer.pem")
    out = subprocess.run(
        [CLI, "trust", "init", str(tmp_path / "trust"), "--approver", f"officer={officer}"],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "SECURE_PIPELINE_TRUST_ROOT=" in out.stdout
    return tmp_path / "trust"


def _production(monkeypatch, deployment: Path, *, pin: bool = True) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(deployment / "trust-policy.json"))
    if pin:
        root = fingerprint((deployment / "root.pub").read_bytes())
        monkeypatch.setenv("SECURE_PIPELINE_TRUST_ROOT", root)
    for identity in STAGE_IDENTITIES:
        monkeypatch.setenv(f"SECURE_PIPELINE_SIGNER_{identity.upper()}",
                           f"file2:{deployment / f'{identity}.pem'}")  # fmt: skip


def test_a_signed_and_pinned_policy_is_accepted_in_production(deployment, monkeypatch) -> None:
    _production(monkeypatch, deployment)
    policy = trust_policy()
    assert "signed by root" in policy.established
    assert set(policy.identities) == set(STAGE_IDENTITIES)
    assert set(policy.approvers) == {"officer"}
    for identity in STAGE_IDENTITIES:
        assert signer_for(identity).identity == identity


def test_a_tampered_policy_is_refused(deployment, monkeypatch, tmp_path) -> None:
    """The insider adds their own key as the gate's, keeping the root's signature."""
    import base64

    intruder = generate_key(tmp_path / "intruder.pem")
    path = deployment / "trust-policy.json"
    signed = json.loads(path.read_text())
    document = json.loads(base64.b64decode(signed["payload"]))
    key = {"keyid": fingerprint(intruder.read_bytes()), "public_key": intruder.read_text()}
    document["identities"]["gate"]["keys"].append(key)
    signed["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    path.write_text(json.dumps(signed))
    for environment in ("local", "production"):
        _production(monkeypatch, deployment)
        monkeypatch.setenv("SECURE_PIPELINE_ENV", environment)
        with pytest.raises(SignatureError, match="was changed after it was signed"):
            trust_policy()


def test_a_policy_re_signed_by_another_root_is_refused(deployment, monkeypatch, tmp_path) -> None:
    import base64

    other_root = generate_key(tmp_path / "other-root.pem").with_suffix(".pem")
    signed = json.loads((deployment / "trust-policy.json").read_text())
    document = json.loads(base64.b64decode(signed["payload"]))
    (deployment / "trust-policy.json").write_bytes(sign_policy(document, other_root))
    _production(monkeypatch, deployment)
    with pytest.raises(SignatureError, match="not a pinned root"):
        trust_policy()


def test_production_refuses_an_unsigned_or_unpinned_policy(deployment, monkeypatch) -> None:
    import base64

    _production(monkeypatch, deployment, pin=False)
    with pytest.raises(ConfigurationError, match="signed but its root is not pinned"):
        trust_policy()
    signed = json.loads((deployment / "trust-policy.json").read_text())
    plain = deployment / "plain.json"
    plain.write_bytes(base64.b64decode(signed["payload"]))
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(plain))
    with pytest.raises(ConfigurationError, match="this one is not signed"):
        trust_policy()
    # Locally the same unsigned file is accepted, and says so.
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "local")
    assert "unsigned and unpinned" in trust_policy().established
    # Pinned by digest, production accepts it; one changed byte, and the pin refuses it.
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    digest = parse_document(json.loads(plain.read_text())).digest
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY_SHA256", digest)
    assert "pinned by digest" in trust_policy().established
    document = json.loads(plain.read_text())
    document["approvers"] = []
    plain.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="the policy was changed"):
        trust_policy()


def test_production_refuses_the_development_policy_and_dev_keys(monkeypatch, tmp_path) -> None:
    dev = trust_policy(env.Environment.LOCAL)
    assert dev.dev
    data = Path(dev.source).read_bytes()
    dev_root = fingerprint((Path(dev.source).parent / "root.pub").read_bytes())
    with pytest.raises(ConfigurationError, match="it is a development policy"):
        load_policy(data, source="dev", production=True, pinned_roots=[dev_root])
    # A non-dev policy naming a development key (its label stripped): refused by the ledger.
    dev_ingest = Path(dev.source).parent / "ingest.pub"
    stripped = dev_ingest.read_bytes().replace(DEV_LABEL, b"")
    root = generate_key(tmp_path / "root.pem").with_suffix(".pem")
    document = policy_document({"ingest": [stripped]})
    signed = sign_policy(document, root)
    root_id = fingerprint(root.with_suffix(".pub").read_bytes())
    with pytest.raises(ConfigurationError, match="trusts development keys"):
        load_policy(signed, source="p", production=True, pinned_roots=[root_id])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shared", "is given to both ingest and train"),
        ("keyid", "is not the fingerprint of its key"),
        ("unknown", "unknown identity 'auditor'"),
        ("approver", "uses the key of gate"),
    ],
)
def test_invalid_policies_are_refused(tmp_path, change, message) -> None:
    one = generate_key(tmp_path / "one.pem").read_bytes()
    two = generate_key(tmp_path / "two.pem").read_bytes()
    document = policy_document({"ingest": [one], "train": [two]})
    if change == "shared":
        document["identities"]["train"]["keys"].append(document["identities"]["ingest"]["keys"][0])
    elif change == "keyid":
        document["identities"]["ingest"]["keys"][0]["keyid"] = "0" * 64
    elif change == "unknown":
        document["identities"]["auditor"] = {"keys": []}
    else:
        three = generate_key(tmp_path / "three.pem").read_bytes()
        document = policy_document({"ingest": [one], "gate": [three]}, approvers={"mallory": three})
    with pytest.raises(ConfigurationError, match=message):
        parse_document(document)


def test_a_signer_must_hold_its_identitys_key(deployment, monkeypatch) -> None:
    _production(monkeypatch, deployment)
    # the train key configured as the ingest signer
    monkeypatch.setenv("SECURE_PIPELINE_SIGNER_INGEST", f"file2:{deployment / 'train.pem'}")
    with pytest.raises(ConfigurationError, match="not one the trust policy gives to the ingest"):
        signer_for(INGEST)
    monkeypatch.delenv("SECURE_PIPELINE_SIGNER_GATE")
    with pytest.raises(ConfigurationError, match="production needs SECURE_PIPELINE_SIGNER_GATE"):
        signer_for(GATE)


def test_a_production_signer_refuses_a_renamed_dev_key(deployment, monkeypatch, tmp_path) -> None:
    dev_train = Path(trust_policy(env.Environment.LOCAL).source).parent / "train.pem"
    renamed = tmp_path / "train-prod.pem"
    renamed.write_bytes(dev_train.read_bytes().replace(DEV_LABEL, b""))
    _production(monkeypatch, deployment)
    monkeypatch.setenv("SECURE_PIPELINE_SIGNER_TRAIN", str(renamed))
    with pytest.raises(ConfigurationError, match="is a development key"):
        signer_for(TRAIN)


def test_only_an_approver_key_makes_an_approver_signer(deployment, monkeypatch, tmp_path) -> None:
    _production(monkeypatch, deployment)
    assert approver_signer(tmp_path / "officer.pem").identity == "approver:officer"
    with pytest.raises(ConfigurationError, match="not an approver"):
        approver_signer(deployment / "gate.pem")


def test_an_attestation_counts_only_from_the_identity_allowed_to_make_it(deployment, monkeypatch):
    _production(monkeypatch, deployment)
    policy = trust_policy()
    document = attestations.statement({"x": "a" * 64}, attestations.VERDICT_TYPE, {"check": "c"})
    by_train = attestations.sign(document, signer_for(TRAIN))
    opened = attestations.open_envelope(
        by_train, policy, identities=(TRAIN,), predicate_type=attestations.VERDICT_TYPE
    )
    assert opened.identity == TRAIN
    with pytest.raises(SignatureError, match="only ingest may make it"):
        attestations.open_envelope(
            by_train, policy, identities=(INGEST,), predicate_type=attestations.VERDICT_TYPE
        )
    with pytest.raises(SignatureError, match="not 'https://slsa.dev"):
        attestations.open_envelope(
            by_train, policy, identities=(TRAIN,), predicate_type=attestations.VSA_TYPE
        )
    envelope = json.loads(by_train)
    envelope["payload"] = envelope["payload"][:-4] + "AAA="
    with pytest.raises(SignatureError, match="changed after it was signed"):
        attestations.open_envelope(
            json.dumps(envelope).encode(), policy, identities=(TRAIN,),
            predicate_type=attestations.VERDICT_TYPE,
        )  # fmt: skip


def test_trust_show_prints_how_the_policy_is_established(deployment, monkeypatch) -> None:
    _production(monkeypatch, deployment)
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "local")  # show needs no other production variable
    shown = subprocess.run([CLI, "trust", "show"], capture_output=True, text=True,
                           env=dict(os.environ))  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "signed by root" in shown.stdout
    assert "approver officer" in shown.stdout
