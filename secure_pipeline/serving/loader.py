"""Verify-before-load: the only way the project loads a model for inference.

`load_evidence` loads the model of a reference whose whole chain of evidence verified (bundle,
signed verdicts, signed registration, the gate's signed decision: see
`secure_pipeline.registry.evidence`); `load_verified` a bundle directory that verified on its
own. Both load only from a verification that passed every step, from the skops file with the
explicit trusted-type list. There is no path that loads without verifying.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.registry.bundle import MODEL_FILE, ONNX_FILE, onnx_proved
from secure_pipeline.registry.verification import Verification, verify_bundle_dir
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from secure_pipeline.registry.evidence import Evidence


@dataclass(frozen=True)
class VerifiedModel:
    """A model that passed verification.

    Attributes:
        model: The loaded model.
        model_sha256: Its digest.
        signer: Who signed it.
        lineage: Its lineage document.
        inputs: The input columns it expects.
        onnx: The ONNX copy's bytes, re-hashed against the verified lineage digest (None when
            the bundle has none: served through skops). Load with onnxruntime from bytes.
    """

    model: Any
    model_sha256: str
    signer: str
    lineage: dict[str, Any]
    inputs: list[str]
    onnx: bytes | None = None


def load_verified(
    directory: Path,
    *,
    trust: TrustPolicy,
    pipeline: PipelineSpec | None,
    store: Any = None,
) -> VerifiedModel:
    """Verify a bundle directory, then load its model.

    Args:
        directory: The bundle (e.g. downloaded from the registry).
        trust: The trust policy.
        pipeline: Today's spec, whose policy the model must have been judged under.
        store: The snapshot store, when reachable (lineage snapshots are re-hashed, later
            verdicts looked up).

    Raises:
        PolicyViolation: With the verification report, when any step failed.
        UntrustedModelError: When the model file is not a trusted skops file.
    """
    verification = verify_bundle_dir(directory, trust=trust, pipeline=pipeline, store=store)
    # Without a spec only the project's own types load (fail closed).
    return load_from(verification, trusted=pipeline.model.trusted_types if pipeline else ())


def load_evidence(evidence: "Evidence", *, trusted: Sequence[str] = ()) -> VerifiedModel:
    """Load the model of a reference whose whole chain of evidence verified.

    Args:
        evidence: The verified reference.
        trusted: The serving pipeline spec's ``model.trusted_types``.

    Raises:
        PolicyViolation: With every failed step, when any failed.
        UntrustedModelError: When the model file is not a trusted skops file.
    """
    return load_from(evidence.verification, trusted=trusted)


def load_from(verification: Verification, *, trusted: Sequence[str] = ()) -> VerifiedModel:
    """Load the model of a verification that passed every step; refuse any other.

    Args:
        verification: The bundle's verification.
        trusted: The pipeline spec's ``model.trusted_types``, accepted beyond the project's
            own types. They come from the spec (code), never from the bundle's lineage: a
            record in the registry must not widen what loading accepts.

    Raises:
        PolicyViolation: With every failed step, when any failed.
    """
    from secure_pipeline.training.serialization import load_model

    if not verification.ok or verification.lineage is None or verification.signer is None:
        raise PolicyViolation("refusing to load the model: " + "; ".join(verification.problems))
    directory = verification.directory
    # Read once, check these exact bytes against the verified digest, load these bytes: a file
    # swapped between verification and loading is not loaded.
    data = (directory / MODEL_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != verification.model_sha256:
        raise PolicyViolation(f"{MODEL_FILE} changed after it was verified; not loaded")
    model = load_model(data, source=str(directory / MODEL_FILE), trusted=trusted)
    onnx = None
    entry = verification.lineage.get(ONNX_FILE)
    # A copy no signed onnx_equivalent verdict proved (a bundle registered before those
    # verdicts) is not served: the skops file is what the checks judged.
    if entry is not None and onnx_proved(verification.lineage):
        # The same read-once rule: these bytes, checked against the verified digest.
        onnx = (directory / ONNX_FILE).read_bytes()
        if hashlib.sha256(onnx).hexdigest() != entry.get("sha256"):
            raise PolicyViolation(f"{ONNX_FILE} changed after it was verified; not loaded")
    return VerifiedModel(
        model=model,
        model_sha256=str(verification.model_sha256),
        signer=verification.signer,
        lineage=verification.lineage,
        inputs=list(verification.lineage["model"].get("inputs", [])),
        onnx=onnx,
    )
