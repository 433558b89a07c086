"""Verify a model bundle before any use: signature, files, lineage, signed verdicts, no pickle.

Registration, promotion, rollback, ``secure-pipeline verify`` and serving all call
`verify_bundle_dir` (and, for a registered version, `verify_registered`); none of them trusts an
earlier verification, another step's word, or a record anyone with write access could change.
"""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.registry.bundle import (
    CARD_FILE,
    ERASED_LINEAGE,
    EVIDENCE_DIR,
    LINEAGE_FILE,
    MODEL_FILE,
    LineageError,
    bundle_digest,
    bundle_files,
    read_lineage,
    verify_lineage,
)
from secure_pipeline.registry.signing import SIGNATURE_FILE, signed_digests, verify_bundle
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.snapshots import SnapshotStore
from secure_pipeline.trust.attestations import Attestation
from secure_pipeline.trust.policy import TrustPolicy

# The step that reports lineage snapshots destroyed by erasure or retention.
ERASED_STEP = "erased lineage data"
_TEXT_FILES = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", LINEAGE_FILE,
               CARD_FILE, SIGNATURE_FILE}  # fmt: skip
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".dill", ".cloudpickle")


@dataclass
class Verification:
    """What verifying a bundle established.

    Attributes:
        directory: The bundle.
        steps: ``(step, ok, detail)`` in order, for a readable report.
        signer: The trusted signer, when the signature verified.
        lineage: The lineage document, when the signature verified.
        model_sha256: The model digest the lineage records.
        bundle_digest: Digest of the bundle's files.
        name: Registered model name (registry references).
        version: Registered version.
        source: The registry's artifact source of the version.
        registration: The release identity's signed registration of this bundle as the version.
    """

    directory: Path
    steps: list[tuple[str, bool, str]] = field(default_factory=list)
    signer: str | None = None
    lineage: dict[str, Any] | None = None
    model_sha256: str | None = None
    bundle_digest: str | None = None
    name: str | None = None
    version: str | None = None
    source: str | None = None
    registration: Attestation | None = None

    @property
    def ok(self) -> bool:
        """Whether every step passed."""
        return bool(self.steps) and all(ok for _, ok, _ in self.steps)

    @property
    def problems(self) -> list[str]:
        """Each failed step's detail."""
        return [f"{step}: {detail}" for step, ok, detail in self.steps if not ok]

    def report(self) -> str:
        """A readable report, one line per step."""
        lines = [f"bundle {self.directory}"]
        lines += [
            f"  [{'ok' if ok else 'FAIL'}] {step}: {detail}" for step, ok, detail in self.steps
        ]
        return "\n".join(lines)


def pickle_files(directory: Path, files: list[tuple[str, Path]] | None = None) -> list[str]:
    """Files of a bundle that are (or claim to be) pickles."""
    found = []
    for name, path in files if files is not None else bundle_files(directory):
        if name in _TEXT_FILES or name == MODEL_FILE:
            continue
        if name.startswith(f"{EVIDENCE_DIR}/") and path.suffix == ".json":
            continue
        head = path.open("rb").read(2)
        if path.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80":
            found.append(name)
    return found


def verify_bundle_dir(
    directory: Path,
    *,
    trust: TrustPolicy,
    pipeline: PipelineSpec | None,
    store: SnapshotStore | None,
) -> Verification:
    """Verify a bundle directory; never raises for a failed check, reports it.

    Args:
        directory: The bundle.
        trust: The trust policy.
        pipeline: Today's spec (requires today's policy), if known.
        store: The snapshot store (re-hash lineage snapshots, look for later verdicts), if
            reachable; None verifies offline, from the bundle alone.
    """
    result = Verification(directory)
    try:
        result.signer = verify_bundle(directory, trust)
    except SignatureError as exc:
        result.steps.append(("signature", False, str(exc)))
        return result  # nothing in an unverified bundle is worth reading
    result.steps.append(("signature", True, f"signed by {result.signer}; every file matches"))
    # Once the signature verified, the signed manifest lists exactly the bundle's files (an
    # added or missing file fails it), so the bundle need not be walked or hashed again.
    signed = signed_digests(directory)
    files = (
        [(name, directory / name) for name in sorted(signed)]
        if signed is not None
        else [(n, p) for n, p in bundle_files(directory) if n != SIGNATURE_FILE]
    )
    pickles = pickle_files(directory, files)
    result.steps.append(
        (
            "no pickle",
            not pickles,
            "no pickle files"
            if not pickles
            else f"pickle files {pickles}: refused even though signed (a signature proves who "
            "published bytes, not that loading them is safe)",
        )
    )
    lineage, problems = _lineage(directory, trust, store, pipeline)
    if lineage is None:
        result.steps.append(("lineage", False, problems[0]))
        return result
    result.lineage = lineage
    result.model_sha256 = result.lineage.get("model", {}).get("sha256")
    result.bundle_digest = _digest(directory, files, signed)
    scope = ["verdicts signed by their stage identities"]
    if store is not None:
        scope.append("snapshots re-hashed, no later verdict overturns them")
    if pipeline is not None:
        scope.append("today's policy")
    erased = [p for p in problems if p.startswith(ERASED_LINEAGE)]
    problems = [p for p in problems if not p.startswith(ERASED_LINEAGE)]
    result.steps.append(
        (
            "lineage",
            not problems,
            "; ".join(problems)
            or f"model {str(result.model_sha256)[:12]}, every required check passed for it "
            f"({', '.join(scope)})",
        )
    )
    if erased:
        # The signed lineage holds; the data it names was destroyed (erasure or retention).
        warn = pipeline is not None and pipeline.privacy.erased_data_models == "warn"
        detail = (
            "the model was trained on data since erased: " + "; ".join(erased)
            + ". Retrain it on the current snapshots (later ingestions exclude erased subjects)"
        )  # fmt: skip
        result.steps.append((ERASED_STEP, warn, f"warning: {detail}" if warn else detail))
    return result


def _lineage(
    directory: Path,
    trust: TrustPolicy,
    store: SnapshotStore | None,
    pipeline: PipelineSpec | None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The lineage document and its problems (None and the reason when it is unreadable)."""
    try:
        lineage = read_lineage(directory)
    except LineageError as exc:
        return None, [str(exc)]
    return lineage, verify_lineage(directory, lineage, trust=trust, store=store, pipeline=pipeline)


def _digest(directory: Path, files: list[tuple[str, Path]], signed: dict[str, str] | None) -> str:
    """The bundle digest, from the signed manifest when it lists exactly these files."""
    names = [name for name, _path in files if name != SIGNATURE_FILE]
    if signed is None or sorted(signed) != names:
        return bundle_digest(directory, files)
    entries = [f"{name}\0{signed[name]}" for name in names]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def verify_registered(
    directory: Path,
    *,
    trust: TrustPolicy,
    pipeline: PipelineSpec | None,
    store: SnapshotStore,
    name: str,
    version: str,
    source: str,
) -> Verification:
    """Verify a registered version's downloaded bundle and its signed registration."""
    from secure_pipeline.registry.registration import check_registration

    result = verify_bundle_dir(directory, trust=trust, pipeline=pipeline, store=store)
    result.name, result.version, result.source = name, str(version), source
    if result.bundle_digest is None or result.model_sha256 is None:
        return result
    result.registration, detail = check_registration(
        store, trust, name=name, version=str(version), source=source,
        bundle_digest=result.bundle_digest, model_sha256=result.model_sha256,
    )  # fmt: skip
    result.steps.append(("registration", result.registration is not None, detail))
    return result


def file_sha256(path: Path) -> str:
    """SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Resolved:
    """A model reference turned into a local bundle directory.

    Attributes:
        directory: The bundle.
        name: Registered model name (None for a directory reference).
        version: Version number.
        alias: The alias it was reached through, if any.
        source: The artifact source the registry gave for the version (what was downloaded).
        oci: For an ``oci://`` reference, what was pulled (`secure_pipeline.registry.oci.Pulled`):
            the digest and the carried evidence, verified by `verify_reference`.
    """

    directory: Path
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    source: str | None = None
    oci: Any = None


@contextmanager
def resolve(reference: str, trust: TrustPolicy | None = None) -> Iterator[Resolved]:
    """Resolve ``models:/name@alias``, ``models:/name/version``, ``oci://...`` or a directory.

    Registry references are downloaded into a temporary directory removed afterwards. An
    ``oci://`` reference is pulled by digest (a tag is resolved first); ``trust`` picks its
    signature referrer when several are attached.

    Raises:
        ConfigurationError: For a malformed reference or an unknown alias or version.
    """
    if reference.startswith("oci://"):
        from secure_pipeline.registry.oci import pull

        if trust is None:
            raise ConfigurationError("an oci:// reference is resolved under a trust policy")
        with TemporaryDirectory(prefix="bundle-") as temporary:
            pulled = pull(reference, Path(temporary), trust)
            yield Resolved(Path(temporary), source=str(pulled.pinned), oci=pulled)
        return
    from secure_pipeline.registry.mlflow_registry import (
        alias_version,
        download_source,
        model_aliases,
        version_source,
    )

    if not reference.startswith("models:/"):
        path = Path(reference)
        if not path.is_dir():
            raise ConfigurationError(
                f"{reference!r} is neither models:/name@alias, models:/name/version, "
                "oci://host/repository@sha256:... nor a bundle directory"
            )
        yield Resolved(path)
        return
    rest = reference[len("models:/") :]
    alias = None
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = alias_version(name, alias)
        if version is None:
            existing = model_aliases(name)
            if existing is None:
                raise ConfigurationError(
                    f"no such model {name!r} in the registry: register it first (its pipeline's "
                    "release job), or check the name"
                )
            raise ConfigurationError(
                f"model {name!r} has no alias {alias!r} (existing: "
                f"{', '.join(sorted(existing)) or 'none'})"
            )
    elif "/" in rest:
        name, version = rest.split("/", 1)
    else:
        raise ConfigurationError(f"{reference!r}: expected models:/name@alias or models:/name/N")
    with TemporaryDirectory(prefix="bundle-") as temporary:
        try:
            # The source is read once and that exact source downloaded: what is verified against
            # the signed registration is what was fetched.
            source = version_source(name, version)
            directory = download_source(source, Path(temporary))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several unrelated types
            raise ConfigurationError(
                f"cannot download {reference}: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        yield Resolved(directory, name, version, alias, source)
