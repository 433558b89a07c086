"""A model bundle as a ModelPack artifact in an OCI registry, its referrers, pull and mirror.

The model manifest is an OCI image manifest with the ModelPack ``artifactType``, a ModelPack
config blob and one raw (never archived) layer per bundle file, named by the
``org.cncf.model.filepath`` annotation. The bundle's signature (``model.sig``) and its evidence
are not layers: they are referrer artifacts whose ``subject`` is the model manifest, so they can
be added after the model was pushed without changing its digest.

Pulling trusts nothing the registry says until it is checked: the manifest is fetched by digest
and hashed, it must be a ModelPack manifest, every file path must stay inside the destination,
and every blob is hashed and size-checked before it is moved into place. The destination is
written completely or not at all.
"""

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.oci.client import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    MAX_MANIFEST_BYTES,
    RegistryClient,
    _check_descriptor,
    canonical_json,
    sha256_digest,
)
from secure_pipeline.oci.reference import OciReference, check_digest

MODEL_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_MEDIA_TYPE = "application/vnd.cncf.model.doc.v1.raw"
CODE_MEDIA_TYPE = "application/vnd.cncf.model.code.v1.raw"
LAYER_MEDIA_TYPES = (WEIGHT_MEDIA_TYPE, WEIGHT_CONFIG_MEDIA_TYPE, DOC_MEDIA_TYPE, CODE_MEDIA_TYPE)
FILEPATH_ANNOTATION = "org.cncf.model.filepath"
TITLE_ANNOTATION = "org.opencontainers.image.title"
CREATED_ANNOTATION = "org.opencontainers.image.created"

SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EVIDENCE_ARTIFACT_TYPE = "application/vnd.secure-pipeline.evidence.v1+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"

SIGNATURE_FILE = "model.sig"
# The judged model and its verified ONNX copy (registry.bundle's MODEL_FILE and ONNX_FILE).
_WEIGHT_FILES = frozenset({"model.skops", "model.onnx"})
_WEIGHT_CONFIG_FILES = frozenset({"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt"})
_DOC_FILES = frozenset({"MODEL_CARD.md", "lineage.json"})
_MAX_LAYERS = 10_000
_MAX_FILEPATH = 1024
# Signature bundles and DSSE envelopes are kilobytes; a referrer layer is read into memory.
_MAX_REFERRER_LAYER = 16 * 1024 * 1024
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")


def _media_type_for(name: str) -> str:
    path = PurePosixPath(name)
    if name in _WEIGHT_FILES:
        return WEIGHT_MEDIA_TYPE
    if name in _WEIGHT_CONFIG_FILES:
        return WEIGHT_CONFIG_MEDIA_TYPE
    if name in _DOC_FILES or (str(path.parent) == "evidence" and path.suffix == ".json"):
        return DOC_MEDIA_TYPE
    return CODE_MEDIA_TYPE


def _filepath_problem(name: Any) -> str | None:
    """Why ``name`` is not a safe bundle-relative POSIX path, or None."""
    if not isinstance(name, str) or not name:
        return "it is empty or not a string"
    if len(name) > _MAX_FILEPATH:
        return f"it is longer than {_MAX_FILEPATH} characters"
    if any(not c.isprintable() for c in name):
        return "it contains control characters"
    if "\\" in name:
        return "it contains a backslash"
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        return "it is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' component (it would leave or alias the bundle)"
    if name.casefold() == SIGNATURE_FILE:
        return "model.sig is the bundle's signature: it travels as a referrer, never as a layer"
    return None


def _collision(names: list[str]) -> str | None:
    """A path named twice (ignoring case, as some file systems do) or both file and folder."""
    seen: set[str] = set()
    folders: set[str] = set()
    for name in names:
        key = name.casefold()
        if key in seen:
            return f"{name!r} is named twice"
        seen.add(key)
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(seen & folders)
    return f"{clash[0]!r} is both a file and a folder" if clash else None


def _title_problem(title: Any) -> str | None:
    if not isinstance(title, str) or not title or len(title) > 255:
        return "it is empty, not a string or too long"
    if "/" in title or "\\" in title or title in (".", "..") or not title.isprintable():
        return "it is not a plain file name"
    return None


def _check_registry(client: RegistryClient, ref: OciReference) -> None:
    if ref.registry != client.registry:
        raise ConfigurationError(
            f"The reference {ref} names the registry {ref.registry}, but the client talks to "
            f"{client.registry}. Use a client for {ref.registry}."
        )


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigurationError(
            f"Expected {what} to map strings to strings, found {value!r:.100}."
        )
    return dict(value)


def package_bundle(
    client: RegistryClient,
    ref: OciReference,
    directory: Path,
    files: list[tuple[str, Path]],
    *,
    annotations: dict[str, str],
    config: dict,
) -> str:
    """Push a bundle as a ModelPack artifact; returns the manifest digest.

    Uploads every file of ``files`` (the caller leaves out ``model.sig``) as a raw layer, then
    the ModelPack config (``config`` with ``modelfs`` filled in from the layers), then the
    manifest: under ``ref.tag`` when set, else by digest. Layers are ordered by file name, so
    the same bundle gives the same digest.

    Args:
        client: A client for ``ref.registry``.
        ref: Where to push; a digest in it must equal the digest of the manifest built.
        directory: The bundle directory; every file must be a regular file inside it.
        files: ``(bundle-relative POSIX name, path)``; a relative path is under ``directory``.
        annotations: Manifest annotations (``org.opencontainers.image.created``, ...).
        config: ModelPack config: ``descriptor`` (name, version, createdAt, ...) and
            ``config`` (format, ...) objects.

    Returns:
        The manifest digest ``sha256:<hex>``.

    Raises:
        ConfigurationError: A bad name, a file outside the bundle, a symlink, a bad config.
    """
    _check_registry(client, ref)
    annotations = _string_map(annotations, "the manifest annotations")
    if not isinstance(config, dict) or not all(
        isinstance(config.get(key), dict) for key in ("descriptor", "config")
    ):
        raise ConfigurationError(
            "Expected the ModelPack config to hold a 'descriptor' object (name, version, "
            "createdAt) and a 'config' object (format), found "
            f"{sorted(config) if isinstance(config, dict) else type(config).__name__}."
        )
    root = Path(directory).resolve()
    entries: list[tuple[str, Path]] = []
    for name, given in files:
        if problem := _filepath_problem(name):
            raise ConfigurationError(
                f"Expected bundle file names to be relative POSIX paths inside the bundle, found "
                f"{str(name)[:200]!r}: {problem}."
            )
        path = Path(given) if Path(given).is_absolute() else Path(directory) / given
        if path.is_symlink() or not path.is_file():
            raise ConfigurationError(
                f"Expected the bundle file {name!r} to be a regular file, found "
                f"{'a symlink' if path.is_symlink() else 'no file'} at {path}."
            )
        if not path.resolve().is_relative_to(root):
            raise ConfigurationError(
                f"The bundle file {name!r} ({path}) is outside the bundle directory {root}."
            )
        entries.append((name, path))
    if problem := _collision([name for name, _ in entries]):
        raise ConfigurationError(f"The bundle's file list is ambiguous: {problem}.")
    if not entries:
        raise ConfigurationError("A bundle needs at least one file; none were given.")
    layers = []
    for name, path in sorted(entries):
        blob = client.put_blob(ref.repository, path)
        layers.append(
            {
                "mediaType": _media_type_for(name),
                **blob,
                "annotations": {FILEPATH_ANNOTATION: name, TITLE_ANNOTATION: name.rsplit("/")[-1]},
            }
        )
    body = {**config, "modelfs": {"type": "layers", "diffIds": [x["digest"] for x in layers]}}
    try:
        config_bytes = canonical_json(body)
    except (TypeError, ValueError):
        raise ConfigurationError("Expected the ModelPack config to be plain JSON data.") from None
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "config": {
            "mediaType": MODEL_CONFIG_MEDIA_TYPE,
            **client.put_blob(ref.repository, config_bytes),
        },
        "layers": layers,
    }
    if annotations:
        manifest["annotations"] = annotations
    data = canonical_json(manifest)
    digest = sha256_digest(data)
    if ref.digest and ref.digest != digest:
        raise ConfigurationError(
            f"{ref} pins {ref.digest}, but the bundle's manifest has the digest {digest}: the "
            "files differ from the pinned artifact. Push without a digest, or push that bundle."
        )
    client.put_manifest(ref.repository, data, IMAGE_MANIFEST, tag=ref.tag)
    return digest


def attach(
    client: RegistryClient,
    repository: str,
    subject_digest: str,
    subject_size: int,
    *,
    artifact_type: str,
    layers: list[tuple[str, bytes, str]],
    annotations: dict[str, str] | None = None,
) -> str:
    """Push a referrer artifact of the manifest ``subject_digest`` and register it.

    Args:
        client: A client for the registry holding the subject.
        repository: The subject's repository.
        subject_digest: The model manifest's digest.
        subject_size: The model manifest's size in bytes.
        artifact_type: The referrer's ``artifactType`` (signature, evidence).
        layers: ``(title, bytes, media type)`` of each layer; titles are plain file names.
        annotations: Referrer manifest annotations (also in its referrers descriptor).

    Returns:
        The referrer manifest's digest.
    """
    check_digest(subject_digest, "subject digest")
    if not isinstance(subject_size, int) or subject_size <= 0:
        raise ConfigurationError(f"Expected the subject's size in bytes, found {subject_size!r}.")
    if not isinstance(artifact_type, str) or "/" not in artifact_type:
        raise ConfigurationError(f"Expected an artifactType media type, found {artifact_type!r}.")
    if not layers:
        raise ConfigurationError("A referrer needs at least one layer; none were given.")
    annotations = _string_map(annotations or {}, "the referrer annotations")
    titles = []
    descriptors = []
    for title, data, media_type in layers:
        if problem := _title_problem(title):
            raise ConfigurationError(
                f"Expected a layer title, found {str(title)[:100]!r}: {problem}."
            )
        titles.append(title)
        blob = client.put_blob(repository, bytes(data))
        descriptors.append(
            {"mediaType": media_type, **blob, "annotations": {TITLE_ANNOTATION: title}}
        )
    if problem := _collision(titles):
        raise ConfigurationError(f"The referrer's layer titles are ambiguous: {problem}.")
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, **client.put_blob(repository, EMPTY_JSON)},
        "layers": descriptors,
        "subject": {"mediaType": IMAGE_MANIFEST, "digest": subject_digest, "size": subject_size},
    }
    if annotations:
        manifest["annotations"] = annotations
    data = canonical_json(manifest)
    digest = client.put_manifest(repository, data, IMAGE_MANIFEST)
    client.add_referrer(repository, _referrer_entry(data, IMAGE_MANIFEST, manifest), subject_digest)
    return digest


def _referrer_entry(data: bytes, media_type: str, manifest: dict) -> dict:
    """The referrers-index descriptor of a referrer manifest, from the manifest itself."""
    entry: dict[str, Any] = {
        "mediaType": media_type,
        "digest": sha256_digest(data),
        "size": len(data),
    }
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    artifact_type = manifest.get("artifactType") or config.get("mediaType")
    if isinstance(artifact_type, str):
        entry["artifactType"] = artifact_type
    if isinstance(manifest.get("annotations"), dict) and manifest["annotations"]:
        entry["annotations"] = manifest["annotations"]
    return entry


@dataclass
class PulledArtifact:
    """A model bundle pulled from a registry and verified.

    Attributes:
        reference: The reference asked for, pinned to the digest pulled.
        digest: The model manifest's digest.
        manifest: The model manifest.
        files: ``(bundle-relative name, path under the destination)`` of every layer.
        referrers: Descriptors of its referrers (``artifactType``, ``digest``, ``annotations``).
    """

    reference: OciReference
    digest: str
    manifest: dict
    files: list[tuple[str, Path]]
    referrers: list[dict]


def _json_object(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        raise IntegrityError(f"Expected {what} to be JSON, found something else.") from None
    if not isinstance(value, dict):
        raise IntegrityError(f"Expected {what} to be a JSON object, found {type(value).__name__}.")
    return value


def _model_manifest(data: bytes, media_type: str, what: str) -> dict:
    """The manifest, if it is a ModelPack model manifest; IntegrityError naming what it is."""
    manifest = _json_object(data, f"the manifest of {what}")
    kind = manifest.get("mediaType") or media_type
    artifact_type = manifest.get("artifactType")
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    if (
        kind != IMAGE_MANIFEST
        or manifest.get("schemaVersion") != 2
        or artifact_type != MODEL_ARTIFACT_TYPE
        or config_type != MODEL_CONFIG_MEDIA_TYPE
    ):
        raise IntegrityError(
            f"Expected {what} to be a ModelPack model (an OCI image manifest, artifactType "
            f"{MODEL_ARTIFACT_TYPE}, config {MODEL_CONFIG_MEDIA_TYPE}), found media type "
            f"{str(kind)[:80]!r}, artifactType {str(artifact_type)[:80]!r}, config "
            f"{str(config_type)[:80]!r}. It is not a model pushed by `secure-pipeline oci push`; "
            "check the reference."
        )
    _check_descriptor(config, f"the config of {what}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > _MAX_LAYERS:
        raise IntegrityError(
            f"Expected {what} to list 1 to {_MAX_LAYERS} layers, found "
            f"{len(layers) if isinstance(layers, list) else type(layers).__name__}."
        )
    for layer in layers:
        _check_descriptor(layer, f"a layer of {what}")
    return manifest


def _bundle_layers(manifest: dict, what: str) -> list[tuple[str, dict]]:
    """``(file path, descriptor)`` of every layer, every path checked to stay in the bundle."""
    found = []
    for layer in manifest["layers"]:
        if layer["mediaType"] not in LAYER_MEDIA_TYPES:
            raise IntegrityError(
                f"A layer of {what} has the media type {layer['mediaType'][:80]!r}; expected one "
                f"of the raw ModelPack file types {', '.join(LAYER_MEDIA_TYPES)} (archives are "
                "never unpacked)."
            )
        name = (layer.get("annotations") or {}).get(FILEPATH_ANNOTATION)
        if problem := _filepath_problem(name):
            raise IntegrityError(
                f"Refused the layer {layer['digest']} of {what}: its {FILEPATH_ANNOTATION} "
                f"{str(name)[:200]!r} is not a safe bundle path ({problem}). Nothing was written."
            )
        found.append((name, layer))
    if problem := _collision([name for name, _ in found]):
        raise IntegrityError(f"Refused {what}: {problem}. Nothing was written.")
    return found


def _blob_bytes(client: RegistryClient, repository: str, descriptor: dict, limit: int) -> bytes:
    """A small blob in memory, its digest and size checked."""
    if descriptor["size"] > limit:
        raise IntegrityError(
            f"The blob {descriptor['digest']} of {repository} is {descriptor['size']} bytes, "
            f"over the {limit}-byte limit for this kind of blob; refusing to read it."
        )
    with tempfile.TemporaryDirectory(prefix="sp-oci-") as tmp:
        path = Path(tmp) / "blob"
        client.get_blob(repository, descriptor["digest"], path, size=descriptor["size"])
        return path.read_bytes()


def _check_destination(destination: Path) -> None:
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise ConfigurationError(
            f"Expected the pull destination {destination} to be a new or empty directory, "
            "found a file or symlink there. Choose another destination."
        )
    if destination.is_dir() and any(destination.iterdir()):
        raise ConfigurationError(
            f"Expected the pull destination {destination} to be a new or empty directory, "
            "found files in it; nothing is overwritten. Choose an empty destination."
        )


def pull_bundle(client: RegistryClient, ref: OciReference, destination: Path) -> PulledArtifact:
    """Pull and verify a ModelPack bundle into ``destination`` (new or empty).

    The tag (if any) is resolved to a digest, the manifest fetched by that digest (hashed), and
    refused unless it is a ModelPack model manifest whose layers are raw files with safe,
    distinct paths (no absolute path, no ``..``, no ``model.sig``). Every blob's digest and
    size is checked. Files are written to a staging directory beside ``destination`` that
    becomes it only when everything verified, so a refused pull leaves nothing behind.

    Raises:
        IntegrityError: A digest or size mismatch, a manifest that is not a ModelPack model,
            an unsafe or duplicate path.
        ConfigurationError: When ``destination`` is not new or empty.
        ArtifactNotFoundError: When the reference does not exist.
    """
    _check_registry(client, ref)
    destination = Path(destination)
    _check_destination(destination)
    digest = client.resolve(ref)
    data, media_type = client.get_manifest(ref.repository, digest)
    what = str(ref.pinned(digest))
    manifest = _model_manifest(data, media_type, what)
    layers = _bundle_layers(manifest, what)
    config = _json_object(
        _blob_bytes(client, ref.repository, manifest["config"], MAX_MANIFEST_BYTES),
        f"the ModelPack config of {what}",
    )
    modelfs = config.get("modelfs") if isinstance(config.get("modelfs"), dict) else {}
    if modelfs.get("diffIds") != [layer["digest"] for _, layer in layers]:
        raise IntegrityError(
            f"The ModelPack config of {what} lists other layer digests (modelfs.diffIds) than "
            "its manifest's layers: the artifact is inconsistent. Do not use it; re-push it."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    )
    try:
        root = staging.resolve()
        files = []
        for name, layer in layers:
            target = staging.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            # Only this loop writes into the fresh staging directory, so no component can be a
            # symlink; checked all the same, since the layer paths come from the registry.
            if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
                raise IntegrityError(
                    f"Refused the layer path {name!r} of {what}: it leaves the bundle."
                )
            client.get_blob(ref.repository, layer["digest"], target, size=layer["size"])
            files.append((name, destination.joinpath(*name.split("/"))))
        referrers = client.referrers(ref.repository, digest)
        _check_destination(destination)
        if destination.is_dir():
            destination.rmdir()
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PulledArtifact(ref.pinned(digest), digest, manifest, files, referrers)


def referrer_layers(
    client: RegistryClient, repository: str, descriptor: dict
) -> list[tuple[str, bytes]]:
    """Fetch a referrer manifest by digest (checked) and its layers (checked): (title, bytes).

    Raises:
        IntegrityError: A digest or size mismatch, a manifest whose artifactType is not the
            descriptor's, a missing or unsafe layer title, a layer over 16 MiB.
    """
    entry = _check_descriptor(descriptor, "the referrer descriptor")
    data, media_type = client.get_manifest(repository, entry["digest"])
    what = f"the referrer {entry['digest']} in {repository}"
    if len(data) != entry["size"]:
        raise IntegrityError(
            f"{what} is {len(data)} bytes, but its descriptor says {entry['size']}: the "
            "referrers index is inconsistent. Do not trust it; re-attach the referrer."
        )
    manifest = _json_object(data, what)
    if (manifest.get("mediaType") or media_type) != IMAGE_MANIFEST:
        raise IntegrityError(f"Expected {what} to be an OCI image manifest, found another type.")
    if entry.get("artifactType") and manifest.get("artifactType") != entry["artifactType"]:
        raise IntegrityError(
            f"{what} has the artifactType {str(manifest.get('artifactType'))[:80]!r}, but the "
            f"referrers index lists it as {entry['artifactType'][:80]!r}. Do not trust it."
        )
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise IntegrityError(f"Expected {what} to have at least one layer.")
    found = []
    for layer in layers:
        layer = _check_descriptor(layer, f"a layer of {what}")
        title = (layer.get("annotations") or {}).get(TITLE_ANNOTATION)
        if problem := _title_problem(title):
            raise IntegrityError(
                f"A layer of {what} has the title {str(title)[:100]!r}: {problem}. Refused."
            )
        found.append((title, _blob_bytes(client, repository, layer, _MAX_REFERRER_LAYER)))
    if problem := _collision([title for title, _ in found]):
        raise IntegrityError(f"Refused {what}: {problem}.")
    return found


def _copy_blobs(
    source: RegistryClient, src_repo: str, target: RegistryClient, dst_repo: str, blobs: list
) -> None:
    """Copy blobs byte for byte (streamed through a verified temporary file)."""
    for blob in blobs:
        descriptor = _check_descriptor(blob, f"a blob of {src_repo}")
        if target.blob_exists(dst_repo, descriptor["digest"]):
            continue
        with tempfile.TemporaryDirectory(prefix="sp-oci-mirror-") as tmp:
            path = Path(tmp) / "blob"
            source.get_blob(src_repo, descriptor["digest"], path, size=descriptor["size"])
            copied = target.put_blob(dst_repo, path)
        if copied["digest"] != descriptor["digest"]:  # pragma: no cover - get_blob checked it
            raise IntegrityError(f"The copy of {descriptor['digest']} changed in transit.")


def mirror(
    source: RegistryClient, src: OciReference, target: RegistryClient, dst: OciReference
) -> str:
    """Copy a model artifact and every referrer, byte for byte; returns the manifest digest.

    The model manifest keeps its bytes and so its digest; its config and layers are copied
    first, then the manifest (under ``dst.tag`` when set, else by digest), then each referrer
    (its blobs, its manifest, and its entry in the target's referrers index).

    Raises:
        IntegrityError: When a digest does not verify or a listed referrer is of another
            subject.
        ConfigurationError: When ``dst`` pins another digest than the source's.
    """
    _check_registry(source, src)
    _check_registry(target, dst)
    digest = source.resolve(src)
    if dst.digest and dst.digest != digest:
        raise ConfigurationError(
            f"The target {dst} pins {dst.digest}, but {src} is {digest}; a mirror keeps the "
            "digest. Drop the digest from the target or mirror the artifact it names."
        )
    data, media_type = source.get_manifest(src.repository, digest)
    what = str(src.pinned(digest))
    manifest = _model_manifest(data, media_type, what)
    _copy_blobs(
        source, src.repository, target, dst.repository, [manifest["config"], *manifest["layers"]]
    )
    copied = target.put_manifest(dst.repository, data, media_type or IMAGE_MANIFEST, tag=dst.tag)
    if copied != digest:  # pragma: no cover - the same bytes
        raise IntegrityError(f"The mirrored manifest has the digest {copied}, expected {digest}.")
    for descriptor in source.referrers(src.repository, digest):
        entry = _check_descriptor(descriptor, f"a referrer of {what}")
        referrer_data, referrer_type = source.get_manifest(src.repository, entry["digest"])
        referrer = _json_object(referrer_data, f"the referrer {entry['digest']} of {what}")
        subject = referrer.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            raise IntegrityError(
                f"The referrers index of {what} lists {entry['digest']}, whose subject is "
                f"{str(subject.get('digest') if isinstance(subject, dict) else None)[:80]!r}, "
                "not this manifest. The index is inconsistent; nothing more was copied."
            )
        if (referrer_type or referrer.get("mediaType")) == IMAGE_INDEX:
            raise IntegrityError(f"The referrer {entry['digest']} of {what} is an index; refused.")
        blobs = [referrer.get("config"), *(referrer.get("layers") or [])]
        _copy_blobs(source, src.repository, target, dst.repository, blobs)
        referrer_type = referrer_type or IMAGE_MANIFEST
        target.put_manifest(dst.repository, referrer_data, referrer_type)
        target.add_referrer(
            dst.repository, _referrer_entry(referrer_data, referrer_type, referrer), digest
        )
    return digest
