"""Bundle signatures: what verifies, what is refused, and a property test of the verifier."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.registry.signing import (
    SIGNATURE_FILE,
    sign_bundle,
    signer_from_environment,
    verify_bundle,
)
from secure_pipeline.registry.verification import pickle_files
from secure_pipeline.trust.keys import dev_fingerprints, fingerprint, generate_key
from secure_pipeline.trust.policy import (
    TrustPolicy,
    parse_document,
    policy_document,
    sign_policy,
    trust_policy,
)

FILES = {"model.skops": os.urandom(4096), "lineage.json": b'{"model": 1}', "MODEL_CARD.md": b"# c"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key(folder / f"{name}.pem") for name in ("release", "intruder")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    from secure_pipeline.registry.signing import Signer

    bundle = tmp_path_factory.mktemp("signed") / "bundle"
    bundle.mkdir()
    for name, data in FILES.items():
        (bundle / name).write_bytes(data)
    sign_bundle(bundle, Signer("key", private_key=keys["release"].with_suffix(".pem")))
    return bundle


def trust(keys, *names: str) -> TrustPolicy:
    """A policy whose release identity holds the keys ``names``."""
    return parse_document(policy_document({"release": [keys[n].read_bytes() for n in names]}))


def copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_a_signed_bundle_verifies_with_the_trusted_key(signed, keys) -> None:
    release = fingerprint(keys["release"].read_bytes())
    assert verify_bundle(signed, trust(keys, "intruder", "release")) == (
        f"release key {release[:16]}"
    )


def test_an_untrusted_signer_is_refused(signed, keys) -> None:
    with pytest.raises(SignatureError, match="not signed by a trusted signer"):
        verify_bundle(signed, trust(keys, "intruder"))


def test_one_byte_changed_in_the_model_is_refused(signed, keys, tmp_path) -> None:
    bundle = copy(signed, tmp_path)
    data = bytearray((bundle / "model.skops").read_bytes())
    data[100] ^= 0x01
    (bundle / "model.skops").write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"does not match its signature.*model\.skops"):
        verify_bundle(bundle, trust(keys, "release"))


@pytest.mark.parametrize("change", ["added", "removed", "renamed"])
def test_files_added_removed_or_renamed_are_refused(signed, keys, tmp_path, change) -> None:
    bundle = copy(signed, tmp_path)
    if change == "added":
        (bundle / "extra.py").write_text("import os")
    elif change == "removed":
        (bundle / "MODEL_CARD.md").unlink()
    else:
        (bundle / "lineage.json").rename(bundle / "lineage.JSON")
    with pytest.raises(SignatureError, match="does not match its signature"):
        verify_bundle(bundle, trust(keys, "release"))


def test_an_unsigned_bundle_is_refused(signed, keys, tmp_path) -> None:
    bundle = copy(signed, tmp_path)
    (bundle / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(bundle, trust(keys, "release"))


def test_the_upstream_command_line_verifies_the_bundle(signed, keys, tmp_path) -> None:
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--signature",
               str(signed / SIGNATURE_FILE), "--public_key", str(keys["release"])]  # fmt: skip
    ok = subprocess.run([*command, str(signed)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bundle = copy(signed, tmp_path)
    (bundle / "lineage.json").write_bytes(b'{"model": 2}')
    command[command.index(str(signed / SIGNATURE_FILE))] = str(bundle / SIGNATURE_FILE)
    tampered = subprocess.run([*command, str(bundle)], capture_output=True, text=True)
    assert tampered.returncode != 0


def test_pickle_files_are_detected_by_name_and_content(tmp_path) -> None:
    (tmp_path / "model.skops").write_bytes(b"PK...")
    (tmp_path / "helper.pkl").write_bytes(b"anything")
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04\x95")
    (tmp_path / "MLmodel").write_text("flavors: {}")
    assert pickle_files(tmp_path) == ["helper.pkl", "weights.bin"]


MUTATIONS = st.sampled_from(["flip", "truncate", "append", "delete", "rename", "add"])


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    mutation=MUTATIONS,
    target=st.sampled_from(sorted(FILES)),
    position=st.integers(min_value=0, max_value=1 << 30),
    bit=st.integers(min_value=0, max_value=7),
)
def test_property_any_mutation_of_a_signed_bundle_fails_verification(
    signed, keys, mutation, target, position, bit
) -> None:
    policy = trust(keys, "release")
    with tempfile.TemporaryDirectory() as temporary:
        bundle = Path(temporary) / "b"
        shutil.copytree(signed, bundle)
        path = bundle / target
        data = bytearray(path.read_bytes())
        if mutation == "flip":
            data[position % len(data)] ^= 1 << bit
            path.write_bytes(bytes(data))
        elif mutation == "truncate":
            path.write_bytes(bytes(data[: position % len(data)]))
        elif mutation == "append":
            path.write_bytes(bytes(data) + bytes([bit]))
        elif mutation == "delete":
            path.unlink()
        elif mutation == "rename":
            path.rename(bundle / f"{target}.{bit}")
        else:
            (bundle / f"new-{bit}.txt").write_bytes(bytes([bit]))
        with pytest.raises(SignatureError):
            verify_bundle(bundle, policy)


def test_local_default_is_a_labelled_dev_key_outside_the_home(isolated_env, dev_keys) -> None:
    signer = signer_from_environment(env.Environment.LOCAL)
    assert signer.dev
    assert signer.name.startswith("dev:")
    assert signer.private_key is not None
    assert signer.private_key.parent == dev_keys
    assert isolated_env not in signer.private_key.parents
    assert signer.private_key.stat().st_mode & 0o777 == 0o600
    public = signer.private_key.with_suffix(".pub").read_bytes()
    assert fingerprint(public) in dev_fingerprints()
    assert trust_policy(env.Environment.LOCAL).dev


def test_dev_keys_inside_the_home_are_refused(isolated_env, monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_DEV_KEYS", str(isolated_env / "keys"))
    with pytest.raises(ConfigurationError, match="must live outside SECURE_PIPELINE_HOME"):
        signer_from_environment(env.Environment.LOCAL)


def test_production_refuses_a_renamed_dev_key(isolated_env, monkeypatch, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="needs a configured signer"):
        signer_from_environment(env.Environment.PRODUCTION)
    dev = signer_from_environment(env.Environment.LOCAL).private_key
    assert dev is not None
    # The insider's copy: another name, no label, nothing beside it.
    from secure_pipeline.trust.keys import DEV_LABEL

    renamed = tmp_path / "release-2026.pem"
    renamed.write_bytes(dev.read_bytes().replace(DEV_LABEL, b""))
    monkeypatch.setenv("SECURE_PIPELINE_SIGNING_MODE", "key")
    monkeypatch.setenv("SECURE_PIPELINE_SIGNING_KEY", str(renamed))
    with pytest.raises(ConfigurationError, match="is a development key .* whatever the file"):
        signer_from_environment(env.Environment.PRODUCTION)


def test_a_production_key_signs_and_its_policy_verifies(isolated_env, monkeypatch, tmp_path):
    key = generate_key(tmp_path / "k" / "release.pem").with_suffix(".pem")
    root = generate_key(tmp_path / "k" / "root.pem").with_suffix(".pem")
    monkeypatch.setenv("SECURE_PIPELINE_SIGNING_MODE", "key")
    monkeypatch.setenv("SECURE_PIPELINE_SIGNING_KEY", str(key))
    document = policy_document({"release": [key.with_suffix(".pub").read_bytes()]})
    (tmp_path / "trust.json").write_bytes(sign_policy(document, root))
    monkeypatch.setenv("SECURE_PIPELINE_TRUST_POLICY", str(tmp_path / "trust.json"))
    monkeypatch.setenv(
        "SECURE_PIPELINE_TRUST_ROOT", fingerprint(root.with_suffix(".pub").read_bytes())
    )
    signer = signer_from_environment(env.Environment.PRODUCTION)
    assert not signer.dev
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "model.skops").write_bytes(b"m")
    sign_bundle(bundle, signer)
    policy = trust_policy(env.Environment.PRODUCTION)
    assert verify_bundle(bundle, policy).startswith("release key")


def _certificate_authority(tmp_path: Path, name: str):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(subject(name)).issuer_name(subject(name))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(subject("model-signer")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    paths = {part: tmp_path / f"{name}-{part}.pem" for part in ("ca", "leaf", "key")}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["leaf"].write_bytes(leaf.public_bytes(pem))
    paths["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_certificate_mode_verifies_against_the_ca_root_only(tmp_path) -> None:
    from secure_pipeline.registry.signing import Signer

    corp = _certificate_authority(tmp_path, "corp")
    other = _certificate_authority(tmp_path, "other")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.skops").write_bytes(b"model")
    sign_bundle(
        bundle,
        Signer("certificate", private_key=corp["key"], certificate=corp["leaf"],
               chain=(corp["ca"],)),
    )  # fmt: skip
    corp_policy = parse_document(
        policy_document({"release": []}, release_ca_roots=[corp["ca"].read_bytes()])
    )
    assert verify_bundle(bundle, corp_policy) == "release CA"
    other_policy = parse_document(
        policy_document({"release": []}, release_ca_roots=[other["ca"].read_bytes()])
    )
    with pytest.raises(SignatureError, match="not signed by a trusted signer"):
        verify_bundle(bundle, other_policy)
