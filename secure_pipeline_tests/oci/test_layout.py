"""ModelPack bundles in a real registry: push, referrers, verified pull, refusals, mirror."""

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.oci.client import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    RegistryClient,
    canonical_json,
    fallback_tag,
)
from secure_pipeline.oci.layout import (
    CODE_MEDIA_TYPE,
    DOC_MEDIA_TYPE,
    DSSE_MEDIA_TYPE,
    EVIDENCE_ARTIFACT_TYPE,
    FILEPATH_ANNOTATION,
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG_MEDIA_TYPE,
    SIGNATURE_ARTIFACT_TYPE,
    TITLE_ANNOTATION,
    WEIGHT_CONFIG_MEDIA_TYPE,
    WEIGHT_MEDIA_TYPE,
    attach,
    mirror,
    package_bundle,
    pull_bundle,
    referrer_layers,
)
from secure_pipeline.oci.reference import OciReference
from secure_pipeline_tests.oci.registry_server import Registry

CONFIG = {
    "descriptor": {"name": "adult", "version": "3", "createdAt": "2026-01-01T00:00:00Z"},
    "config": {"format": "skops"},
}
ANNOTATIONS = {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docker").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A model bundle directory (random weights: the transport never reads them)."""
    directory = tmp_path / "bundle"
    (directory / "evidence").mkdir(parents=True)
    (directory / "model.skops").write_bytes(os.urandom(200_000))
    (directory / "model.onnx").write_bytes(os.urandom(20_000))
    (directory / "MLmodel").write_text("flavors:\n  sklearn: {}\n")
    (directory / "lineage.json").write_text(json.dumps({"run": os.urandom(4).hex()}))
    (directory / "evidence" / "x.json").write_text('{"verdict": "pass"}')
    (directory / "score.py").write_text("print('code')\n")
    (directory / "model.sig").write_text('{"signature": "bundle"}')
    return directory


def _files(directory: Path) -> list[tuple[str, Path]]:
    return sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and p.name != "model.sig"
    )


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


def _push(client: RegistryClient, registry: Registry, repository: str, bundle: Path):
    ref = OciReference(registry.host, repository, tag="v3")
    digest = package_bundle(
        client, ref, bundle, _files(bundle), annotations=ANNOTATIONS, config=CONFIG
    )
    size = len(client.get_manifest(repository, digest)[0])
    signature = attach(
        client,
        repository,
        digest,
        size,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        layers=[("model.sig", (bundle / "model.sig").read_bytes(), SIGNATURE_ARTIFACT_TYPE)],
    )
    evidence = attach(
        client,
        repository,
        digest,
        size,
        artifact_type=EVIDENCE_ARTIFACT_TYPE,
        layers=[
            ("registration.json", b'{"payload": "r"}', DSSE_MEDIA_TYPE),
            ("gate.json", b'{"payload": "g"}', DSSE_MEDIA_TYPE),
        ],
        annotations={"org.opencontainers.image.created": "2026-01-02T00:00:00Z"},
    )
    return ref, digest, signature, evidence


def test_push_attach_and_pull(
    oci_registry: Registry, oci_repository: str, bundle: Path, tmp_path: Path
) -> None:
    client = oci_registry.client()
    ref, digest, signature, evidence = _push(client, oci_registry, oci_repository, bundle)

    manifest = json.loads(client.get_manifest(oci_repository, digest)[0])
    assert manifest["artifactType"] == MODEL_ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == MODEL_CONFIG_MEDIA_TYPE
    assert manifest["annotations"] == ANNOTATIONS
    types = {
        layer["annotations"][FILEPATH_ANNOTATION]: (
            layer["mediaType"],
            layer["annotations"][TITLE_ANNOTATION],
        )
        for layer in manifest["layers"]
    }
    assert types == {
        "MLmodel": (WEIGHT_CONFIG_MEDIA_TYPE, "MLmodel"),
        "evidence/x.json": (DOC_MEDIA_TYPE, "x.json"),
        "lineage.json": (DOC_MEDIA_TYPE, "lineage.json"),
        "model.skops": (WEIGHT_MEDIA_TYPE, "model.skops"),
        "model.onnx": (WEIGHT_MEDIA_TYPE, "model.onnx"),  # the ONNX copy is weights too
        "score.py": (CODE_MEDIA_TYPE, "score.py"),
    }
    # The same bundle pushed again is the same artifact.
    again = package_bundle(
        client, ref, bundle, list(reversed(_files(bundle))), annotations=ANNOTATIONS, config=CONFIG
    )
    assert again == digest

    # Referrers, found through the fallback tag (distribution 2.8 has no referrers API).
    listed = client.referrers(oci_repository, digest)
    assert {(d["digest"], d["artifactType"]) for d in listed} == {
        (signature, SIGNATURE_ARTIFACT_TYPE),
        (evidence, EVIDENCE_ARTIFACT_TYPE),
    }
    assert next(d for d in listed if d["digest"] == evidence)["annotations"] == {
        "org.opencontainers.image.created": "2026-01-02T00:00:00Z"
    }
    index, media_type = client.get_manifest(oci_repository, fallback_tag(digest))
    assert media_type == IMAGE_INDEX
    assert len(json.loads(index)["manifests"]) == 2
    by_type = {d["artifactType"]: d for d in listed}
    assert referrer_layers(client, oci_repository, by_type[SIGNATURE_ARTIFACT_TYPE]) == [
        ("model.sig", (bundle / "model.sig").read_bytes())
    ]
    assert referrer_layers(client, oci_repository, by_type[EVIDENCE_ARTIFACT_TYPE]) == [
        ("registration.json", b'{"payload": "r"}'),
        ("gate.json", b'{"payload": "g"}'),
    ]
    referrer_manifest = json.loads(client.get_manifest(oci_repository, signature)[0])
    assert referrer_manifest["subject"]["digest"] == digest
    assert referrer_manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"

    # Pulled by digest and by tag: the same names and bytes, without model.sig.
    expected = {k: v for k, v in _tree(bundle).items() if k != "model.sig"}
    by_digest = OciReference(ref.registry, ref.repository, digest=digest)
    for pulled_ref, name in ((by_digest, "by-digest"), (ref, "by-tag")):
        pulled = pull_bundle(client, pulled_ref, tmp_path / name)
        assert pulled.digest == digest
        assert pulled.reference.digest == digest
        assert _tree(tmp_path / name) == expected
        assert sorted(n for n, _ in pulled.files) == sorted(expected)
        assert all(path.read_bytes() == expected[n] for n, path in pulled.files)
        assert {d["digest"] for d in pulled.referrers} == {signature, evidence}
        assert pulled.manifest == manifest


def test_pull_refuses_a_non_empty_destination(
    oci_registry: Registry, oci_repository: str, bundle: Path, tmp_path: Path
) -> None:
    client = oci_registry.client()
    ref, digest, _, _ = _push(client, oci_registry, oci_repository, bundle)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="new or empty directory"):
        pull_bundle(client, ref, tmp_path / "used")
    assert _tree(tmp_path / "used") == {"keep.txt": b"mine"}


def test_a_tampered_blob_fails_the_pull(
    oci_registry: Registry, oci_repository: str, bundle: Path, tmp_path: Path
) -> None:
    client = oci_registry.client()
    ref, digest, _, _ = _push(client, oci_registry, oci_repository, bundle)
    manifest = json.loads(client.get_manifest(oci_repository, digest)[0])
    weights = next(x for x in manifest["layers"] if x["mediaType"] == WEIGHT_MEDIA_TYPE)
    stored = oci_registry.blob_path(weights["digest"])
    stored.write_bytes(bytes(b ^ 0xFF for b in stored.read_bytes()))  # same size, other bytes
    with pytest.raises(IntegrityError, match="has the digest"):
        pull_bundle(client, ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]  # no staging left


def _crafted(client: RegistryClient, repository: str, change: Callable[[dict], None]) -> str:
    """Push a model manifest (real blobs) altered by ``change``; returns its digest."""
    names = ["model.skops", "MLmodel"]
    layers = []
    for name in names:
        blob = client.put_blob(repository, os.urandom(64))
        layers.append(
            {
                "mediaType": WEIGHT_MEDIA_TYPE,
                **blob,
                "annotations": {FILEPATH_ANNOTATION: name, TITLE_ANNOTATION: name},
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "config": {},
        "layers": layers,
    }
    change(manifest)
    diff_ids = [x["digest"] for x in manifest["layers"]]
    config = {**CONFIG, "modelfs": {"type": "layers", "diffIds": diff_ids}}
    manifest["config"] = {
        "mediaType": manifest.get("_config_type", MODEL_CONFIG_MEDIA_TYPE),
        **client.put_blob(repository, canonical_json(config)),
    }
    manifest.pop("_config_type", None)
    return client.put_manifest(repository, canonical_json(manifest), IMAGE_MANIFEST, tag="bad")


def _set_path(index: int, path: str) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        manifest["layers"][index]["annotations"][FILEPATH_ANNOTATION] = path

    return change


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        manifest[key] = value

    return change


def _layer_type(manifest: dict) -> None:
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"


def _no_path(manifest: dict) -> None:
    del manifest["layers"][0]["annotations"][FILEPATH_ANNOTATION]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_set_path(0, "../x"), "'..' component"),
        (_set_path(0, "a/../../x"), "'..' component"),
        (_set_path(0, "/etc/cron.d/x"), "absolute path"),
        (_set_path(0, "C:/x"), "absolute path"),
        (_set_path(0, "a\\..\\x"), "backslash"),
        (_set_path(0, "./model.skops"), "'.' or '..' component"),
        (_set_path(0, "MLmodel"), "named twice"),
        (_set_path(0, "mlmodel"), "named twice"),
        (_set_path(0, "MLmodel/inner"), "both a file and a folder"),
        (_set_path(0, "model.sig"), "model.sig is the bundle's signature"),
        (_no_path, "not a safe bundle path"),
        (_layer_type, "raw ModelPack file types"),
        (_set("artifactType", "application/vnd.oci.image.config.v1+json"), "ModelPack model"),
        (_set("_config_type", "application/vnd.oci.image.config.v1+json"), "ModelPack model"),
    ],
)
def test_pull_refuses_unsafe_or_foreign_manifests(
    oci_registry: Registry, oci_repository: str, tmp_path: Path, change, problem: str
) -> None:
    client = oci_registry.client()
    _crafted(client, oci_repository, change)
    ref = OciReference(oci_registry.host, oci_repository, tag="bad")
    with pytest.raises(IntegrityError, match=re.escape(problem)):
        pull_bundle(client, ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


def test_pull_accepts_the_crafted_manifest_unchanged(
    oci_registry: Registry, oci_repository: str, tmp_path: Path
) -> None:
    """The control for the refusals above: the same manifest without the change pulls."""
    client = oci_registry.client()
    _crafted(client, oci_repository, lambda manifest: None)
    ref = OciReference(oci_registry.host, oci_repository, tag="bad")
    pulled = pull_bundle(client, ref, tmp_path / "out")
    assert sorted(n for n, _ in pulled.files) == ["MLmodel", "model.skops"]


def test_pull_refuses_a_config_that_disagrees_with_the_layers(
    oci_registry: Registry, oci_repository: str, tmp_path: Path
) -> None:
    client = oci_registry.client()
    digest = _crafted(client, oci_repository, lambda manifest: None)
    manifest = json.loads(client.get_manifest(oci_repository, digest)[0])
    manifest["layers"].reverse()  # the config's diffIds keep the original order
    client.put_manifest(oci_repository, canonical_json(manifest), IMAGE_MANIFEST, tag="swapped")
    ref = OciReference(oci_registry.host, oci_repository, tag="swapped")
    with pytest.raises(IntegrityError, match="modelfs.diffIds"):
        pull_bundle(client, ref, tmp_path / "out")


def test_push_refuses_unsafe_file_lists(
    oci_registry: Registry, oci_repository: str, bundle: Path, tmp_path: Path
) -> None:
    client = oci_registry.client()
    ref = OciReference(oci_registry.host, oci_repository, tag="v1")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (bundle / "link.txt").symlink_to(outside)
    cases = [
        ([("model.sig", bundle / "model.sig")], "model.sig is the bundle's signature"),
        ([("../x", bundle / "MLmodel")], "'..' component"),
        ([("MLmodel", bundle / "MLmodel"), ("mlmodel", bundle / "MLmodel")], "named twice"),
        ([("link.txt", bundle / "link.txt")], "symlink"),
        ([("outside.txt", outside)], "outside the bundle directory"),
        ([("missing", bundle / "missing")], "no file"),
        ([], "at least one file"),
    ]
    for files, problem in cases:
        with pytest.raises(ConfigurationError, match=re.escape(problem)):
            package_bundle(client, ref, bundle, files, annotations={}, config=CONFIG)
    (bundle / "link.txt").unlink()
    with pytest.raises(ConfigurationError, match="'descriptor' object"):
        package_bundle(client, ref, bundle, _files(bundle), annotations={}, config={})
    with pytest.raises(ConfigurationError, match="pins"):
        package_bundle(
            client, ref.pinned("sha256:" + "1" * 64), bundle, _files(bundle), annotations={},
            config=CONFIG,
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="not a plain file name"):
        attach(
            client, oci_repository, "sha256:" + "1" * 64, 10, artifact_type=EVIDENCE_ARTIFACT_TYPE,
            layers=[("../registration.json", b"{}", DSSE_MEDIA_TYPE)],
        )  # fmt: skip


def test_referrer_layers_refuses_a_lying_index(
    oci_registry: Registry, oci_repository: str, bundle: Path
) -> None:
    client = oci_registry.client()
    _, digest, signature, _ = _push(client, oci_registry, oci_repository, bundle)
    descriptor = next(
        d for d in client.referrers(oci_repository, digest) if d["digest"] == signature
    )
    lying = copy.deepcopy(descriptor)
    lying["artifactType"] = EVIDENCE_ARTIFACT_TYPE
    with pytest.raises(IntegrityError, match="lists it as"):
        referrer_layers(client, oci_repository, lying)
    lying = {**descriptor, "size": descriptor["size"] + 1}
    with pytest.raises(IntegrityError, match="descriptor says"):
        referrer_layers(client, oci_repository, lying)


def test_mirror_keeps_digests_and_referrers(
    oci_registry_factory, oci_repository: str, bundle: Path, tmp_path: Path
) -> None:
    first, second = oci_registry_factory(), oci_registry_factory()
    source, target = first.client(), second.client()
    src, digest, signature, evidence = _push(source, first, oci_repository, bundle)
    source_referrers = sorted(source.referrers(oci_repository, digest), key=lambda d: d["digest"])
    dst = OciReference(second.host, "mirror/adult", tag="v3")

    assert mirror(source, src, target, dst) == digest
    assert mirror(source, src, target, dst) == digest  # repeatable: nothing is added twice

    first.stop()  # the source is gone: everything below comes from the mirror
    pulled = pull_bundle(target, dst, tmp_path / "from-mirror")
    assert pulled.digest == digest
    assert _tree(tmp_path / "from-mirror") == {
        k: v for k, v in _tree(bundle).items() if k != "model.sig"
    }
    mirrored = sorted(target.referrers("mirror/adult", digest), key=lambda d: d["digest"])
    assert mirrored == source_referrers
    assert {d["digest"] for d in mirrored} == {signature, evidence}
    index, media_type = target.get_manifest("mirror/adult", fallback_tag(digest))
    assert media_type == IMAGE_INDEX
    signature_entry = next(d for d in mirrored if d["digest"] == signature)
    assert referrer_layers(target, "mirror/adult", signature_entry) == [
        ("model.sig", (bundle / "model.sig").read_bytes())
    ]
    with pytest.raises(ConfigurationError, match="a mirror keeps the digest"):
        mirror(target, dst, target, dst.pinned("sha256:" + "2" * 64))
