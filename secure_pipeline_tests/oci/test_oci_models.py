"""Signed models in a real OCI registry, against the insider of the threat model.

The reference run's promoted model is pushed with ``secure-pipeline oci push`` to a real
distribution registry (TLS 1.3, htpasswd; no referrers API, so the fallback tag scheme is used),
pulled by digest, verified and served. Then the insider — who can write the registry (and the
store) but holds no signing key — replaces a layer and re-pushes the manifest with the referrers
copied onto it, deletes the signature referrer, strips the evidence, and moves the tag to an
unsigned artifact and to another signed one. Each is refused. A mirror to a second registry
verifies there with the first one stopped.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from secure_pipeline.oci.client import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    RegistryClient,
    canonical_json,
    fallback_tag,
)
from secure_pipeline.oci.layout import SIGNATURE_ARTIFACT_TYPE, package_bundle
from secure_pipeline.oci.reference import OciReference, parse_reference
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.evidence import verify_reference
from secure_pipeline.registry.signing import SIGNATURE_FILE
from secure_pipeline.serving.server import ModelService
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.oci.registry_server import Registry

CLI = str(Path(sys.executable).parent / "secure-pipeline")
PIPELINE = adult_pipeline()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=300
    )


@pytest.fixture
def home(reference_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the reference run's home (pushes write records into it)."""
    copy = Path(shutil.copytree(reference_run.home, tmp_path / "run-home", symlinks=True))
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy))
    return copy


@pytest.fixture
def pushed(home: Path, reference_run, oci_env: Registry, oci_repository: str) -> dict:
    """The promoted reference model pushed as ``<repository>:prod``, through the CLI."""
    target = oci_env.reference(oci_repository, "prod")
    result = _run(
        "oci", "push", "--pipeline", "adult", f"models:/adult/{reference_run.version}", target
    )
    assert result.returncode == 0, result.stderr + result.stdout
    pinned = result.stdout.strip().splitlines()[-1]
    assert pinned.startswith(oci_env.reference(oci_repository) + "@sha256:")
    return {"target": target, "pinned": pinned, "digest": pinned.rsplit("@", 1)[1]}


def _evidence(reference: str, *, store: bool = True, require: str | None = None):
    trust = trust_policy()
    local = (
        LocalSnapshotStore(Path(os.environ["SECURE_PIPELINE_HOME"]) / "store") if store else None
    )
    return verify_reference(reference, pipeline=PIPELINE, trust=trust, store=local,
                            require=require)  # fmt: skip


def _failed(reference: str, **options) -> str:
    with _evidence(reference, **options) as evidence:
        assert not evidence.ok, evidence.report()
        return evidence.report()


def _bundle_copy(reference: str, destination: Path) -> Path:
    """A copy of the bundle the reference pulls to (what the insider starts from)."""
    with _evidence(reference) as evidence:
        shutil.copytree(evidence.resolved.directory, destination)
    return destination


def _keep_referrers(
    registry: RegistryClient, ref: OciReference, keep: Callable[[dict], bool]
) -> None:
    """Rewrite the fallback referrers index of ``ref`` with only the referrers ``keep`` accepts."""
    kept = [d for d in registry.referrers(ref.repository, ref.digest) if keep(d)]
    index = {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": kept}
    registry.put_manifest(ref.repository, canonical_json(index), IMAGE_INDEX,
                          tag=fallback_tag(ref.digest))  # fmt: skip


def test_push_pull_by_digest_verify_and_serve(pushed, oci_env, reference_run, tmp_path) -> None:
    registry = oci_env.client()
    repository = parse_reference(pushed["pinned"]).repository
    manifest = json.loads(registry.get_manifest(repository, pushed["digest"])[0])
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    kinds = {
        layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"]
        for layer in manifest["layers"]
    }
    assert kinds["model.skops"] == "application/vnd.cncf.model.weight.v1.raw"
    assert kinds["MLmodel"] == "application/vnd.cncf.model.weight.config.v1.raw"
    assert (
        kinds["lineage.json"] == kinds["MODEL_CARD.md"] == "application/vnd.cncf.model.doc.v1.raw"
    )
    assert SIGNATURE_FILE not in kinds  # the signature is a referrer, not a layer
    referrers = registry.referrers(repository, pushed["digest"])
    assert {r["artifactType"] for r in referrers} == {
        SIGNATURE_ARTIFACT_TYPE,
        "application/vnd.secure-pipeline.evidence.v1+json",
    }
    # The tag moved nowhere: by tag and by digest both verify, with the gate's decision.
    for reference in (pushed["pinned"], pushed["target"]):
        result = _run("oci", "verify", "--pipeline", "adult", "--promoted", reference)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[ok] oci push" in result.stdout
        assert "[ok] promotion" in result.stdout
        assert f"-> {pushed['pinned']}" in result.stdout  # the digest is what is recorded
    out = tmp_path / "pulled"
    result = _run("oci", "pull", "--pipeline", "adult", pushed["pinned"], str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "model.skops").is_file()
    assert (out / SIGNATURE_FILE).is_file()
    records = [r for r in AuditLog(LocalSnapshotStore(Path(os.environ["SECURE_PIPELINE_HOME"])
                                                      / "store")).verified_records()
               if r.event == "oci.pushed"]  # fmt: skip
    assert records
    assert records[-1].details["manifest_digest"] == pushed["digest"]
    # The model server takes the reference itself and serves what verified.
    service = ModelService(PIPELINE, pushed["target"], "blue")
    service.load()
    assert service.state == "ready", service.reason
    assert service.model_sha256 == reference_run.model_sha
    assert service.version == reference_run.version


def test_a_replaced_layer_with_the_referrers_copied_onto_it_is_refused(pushed, oci_env) -> None:
    registry = oci_env.client()
    ref = parse_reference(pushed["pinned"])
    data, _ = registry.get_manifest(ref.repository, ref.digest)
    manifest = json.loads(data)
    # The insider uploads their own model file and re-pushes the manifest under the same tag...
    layer = next(x for x in manifest["layers"]
                 if x["annotations"]["org.cncf.model.filepath"] == "model.skops")  # fmt: skip
    forged = registry.put_blob(ref.repository, b"PK\x03\x04 not the signed model")
    layer["digest"], layer["size"] = forged["digest"], forged["size"]
    config = json.loads(_blob(registry, ref.repository, manifest["config"]["digest"]))
    config["modelfs"]["diffIds"] = [x["digest"] for x in manifest["layers"]]
    new_config = registry.put_blob(ref.repository, canonical_json(config))
    manifest["config"].update(digest=new_config["digest"], size=new_config["size"])
    body = canonical_json(manifest)
    moved = registry.put_manifest(ref.repository, body, IMAGE_MANIFEST, tag="prod")
    # ...and copies every referrer (signature and evidence) onto the new manifest.
    for descriptor in registry.referrers(ref.repository, ref.digest):
        referrer = json.loads(registry.get_manifest(ref.repository, descriptor["digest"])[0])
        referrer["subject"] = {"mediaType": IMAGE_MANIFEST, "digest": moved, "size": len(body)}
        copy = canonical_json(referrer)
        digest = registry.put_manifest(ref.repository, copy, IMAGE_MANIFEST)
        registry.add_referrer(ref.repository, {**descriptor, "digest": digest,
                                               "size": len(copy)}, moved)  # fmt: skip
    for reference in (pushed["target"], str(ref.pinned(moved))):
        report = _failed(reference)
        assert "[FAIL] signature" in report
        assert "model.skops" in report
    result = _run("oci", "verify", "--pipeline", "adult", pushed["target"])
    assert result.returncode == 1
    assert "[FAIL] signature" in result.stdout
    # The server never serves it.
    service = ModelService(PIPELINE, pushed["target"], "blue")
    service.load()
    assert service.state == "refused"


def test_a_deleted_signature_referrer_is_refused(pushed, oci_env, tmp_path) -> None:
    registry = oci_env.client()
    ref = parse_reference(pushed["pinned"])
    signature = next(d for d in registry.referrers(ref.repository, ref.digest)
                     if d["artifactType"] == SIGNATURE_ARTIFACT_TYPE)  # fmt: skip
    registry.delete_manifest(ref.repository, signature["digest"])
    report = _failed(pushed["pinned"])
    assert "[FAIL] oci artifact" in report
    assert "no model-signing bundle" in report
    # The same with the fallback index rewritten to forget it.
    _keep_referrers(registry, ref, lambda d: d["artifactType"] != SIGNATURE_ARTIFACT_TYPE)
    assert "no model-signing bundle" in _failed(pushed["pinned"])
    out = tmp_path / "nothing"
    result = _run("oci", "pull", pushed["pinned"], str(out))
    assert result.returncode == 1
    assert not out.exists()


def test_stripped_evidence_is_refused(pushed, oci_env) -> None:
    registry = oci_env.client()
    ref = parse_reference(pushed["pinned"])
    _keep_referrers(registry, ref, lambda d: d["artifactType"] == SIGNATURE_ARTIFACT_TYPE)
    # The bundle itself still verifies; without its signed push record it is not a release.
    report = _failed(pushed["pinned"])
    assert "[ok] signature" in report
    assert "[FAIL] oci push" in report


def test_a_tag_moved_to_an_unsigned_artifact_is_refused(pushed, oci_env, tmp_path) -> None:
    registry = oci_env.client()
    ref = parse_reference(pushed["pinned"])
    bundle = _bundle_copy(pushed["pinned"], tmp_path / "bundle")
    (bundle / SIGNATURE_FILE).unlink()
    files = sorted((p.relative_to(bundle).as_posix(), p) for p in bundle.rglob("*") if p.is_file())
    config = {"descriptor": {"name": "adult"}, "config": {"format": "skops"}}
    package_bundle(registry, parse_reference(pushed["target"]), bundle, files, annotations={},
                   config=config)  # fmt: skip
    assert registry.resolve(parse_reference(pushed["target"])) != ref.digest
    report = _failed(pushed["target"])
    assert "no model-signing bundle" in report
    service = ModelService(PIPELINE, pushed["target"], "green")
    service.load()
    assert service.state == "refused"
    assert "signature" in service.reason


def test_a_tag_moved_to_another_signed_push_is_refused(
    pushed, oci_env, oci_repository, reference_run
) -> None:
    registry = oci_env.client()
    other = oci_env.reference(oci_repository, "staging")
    result = _run("oci", "push", "--pipeline", "adult",
                  f"models:/adult/{reference_run.version}", other)  # fmt: skip
    assert result.returncode == 0, result.stderr
    second = parse_reference(result.stdout.strip().splitlines()[-1])
    assert second.digest != pushed["digest"]  # pushed at another time: another manifest
    data, media_type = registry.get_manifest(second.repository, str(second.digest))
    registry.put_manifest(second.repository, data, media_type, tag="prod")  # the insider
    report = _failed(pushed["target"])
    assert "the tag was moved outside the release stage" in report
    # Offline (no store), the signed push records of the artifact name another tag.
    report = _failed(pushed["target"], store=False)
    assert "no signed push record names that tag" in report
    # By digest, either artifact is what it says it is.
    with _evidence(str(second)) as evidence:
        assert evidence.ok, evidence.report()


def test_wrong_credentials_are_a_clear_error(pushed, oci_env) -> None:
    env = dict(os.environ, SECURE_PIPELINE_OCI_PASSWORD="not-the-password-123")
    result = _run("oci", "verify", pushed["pinned"], env=env)
    assert result.returncode == 2
    assert oci_env.username in result.stderr
    assert "not-the-password-123" not in result.stderr
    assert "Traceback" not in result.stderr


def test_push_refuses_a_digest_target_and_an_unregistered_reference(home, oci_env) -> None:
    result = _run("oci", "push", "--pipeline", "adult", "models:/adult/1",
                  oci_env.reference("x/y", digest="sha256:" + "0" * 64))  # fmt: skip
    assert result.returncode == 2
    assert "push to oci://host/repository:tag" in result.stderr
    result = _run("oci", "push", "--pipeline", "adult", "models:/adult/99",
                  oci_env.reference("x/y", "t"))  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_a_mirror_verifies_offline_with_the_first_registry_stopped(
    pushed, oci_env, oci_registry_factory, tmp_path, monkeypatch
) -> None:
    target = oci_registry_factory()
    # Per-host credentials from a docker config (the environment's would go to both hosts).
    config = tmp_path / "docker"
    config.mkdir()
    auths = {
        r.host: {"auth": base64.b64encode(f"{r.username}:{r.password}".encode()).decode()}
        for r in (oci_env, target)
    }
    (config / "config.json").write_text(json.dumps({"auths": auths}))
    monkeypatch.delenv("SECURE_PIPELINE_OCI_USERNAME")
    monkeypatch.delenv("SECURE_PIPELINE_OCI_PASSWORD")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    repository = parse_reference(pushed["pinned"]).repository
    result = _run("oci", "mirror", pushed["target"], target.reference(repository, "prod"))
    assert result.returncode == 0, result.stderr
    copy = result.stdout.strip().splitlines()[-1]
    assert copy == target.reference(repository, digest=pushed["digest"])  # same bytes
    oci_env.stop()
    try:
        # The air-gapped side: no store, only the mirror and the trust policy.
        monkeypatch.setenv("SECURE_PIPELINE_HOME", str(tmp_path / "enclave"))
        for reference in (copy, target.reference(repository, "prod")):
            result = _run("oci", "verify", "--offline", "--promoted", "--pipeline", "adult",
                          reference)  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            assert "carried by the artifact" in result.stdout
        assert _run("oci", "verify", "--offline", pushed["pinned"]).returncode == 2
    finally:
        oci_env.start()


def _blob(registry, repository: str, digest: str) -> bytes:
    path = Path(os.environ["SECURE_PIPELINE_HOME"]) / "blob.tmp"
    registry.get_blob(repository, digest, path)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def test_a_foreign_signature_referrer_is_refused(pushed, oci_env, tmp_path) -> None:
    from secure_pipeline.oci.layout import attach
    from secure_pipeline.registry.signing import Signer, sign_bundle
    from secure_pipeline.trust.keys import generate_key

    registry = oci_env.client()
    ref = parse_reference(pushed["pinned"])
    bundle = _bundle_copy(pushed["pinned"], tmp_path / "bundle")
    # The insider signs the very same files with a key of their own, swaps the signatures.
    (bundle / SIGNATURE_FILE).unlink()
    generate_key(tmp_path / "intruder.pem")
    sign_bundle(bundle, Signer("key", private_key=tmp_path / "intruder.pem"))
    original = next(d for d in registry.referrers(ref.repository, ref.digest)
                    if d["artifactType"] == SIGNATURE_ARTIFACT_TYPE)  # fmt: skip
    _keep_referrers(registry, ref, lambda d: d != original)
    registry.delete_manifest(ref.repository, original["digest"])
    data, _ = registry.get_manifest(ref.repository, str(ref.digest))
    attach(registry, ref.repository, str(ref.digest), len(data),
           artifact_type=SIGNATURE_ARTIFACT_TYPE,
           layers=[(SIGNATURE_FILE, (bundle / SIGNATURE_FILE).read_bytes(),
                    SIGNATURE_ARTIFACT_TYPE)])  # fmt: skip
    report = _failed(pushed["pinned"])
    assert "[FAIL] signature" in report
    assert "not signed by a trusted signer" in report
