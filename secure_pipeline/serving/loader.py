"""Verify-before-load: the only way the project loads a model for inference.

`load_verified` verifies the bundle (signature against the trust policy, every file's digest,
no pickle files, the lineage's verdicts for this model digest, today's policy) and only then
loads the model from its skops file with the explicit trusted-type list. There is no path that
loads without verifying.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.registry.bundle import MODEL_FILE
from secure_pipeline.registry.signing import TrustPolicy
from secure_pipeline.registry.verification import Verification, verify_bundle_dir


@dataclass(frozen=True)
class VerifiedModel:
    """A model that passed verification.

    Attributes:
        model: The loaded model.
        model_sha256: Its digest.
        signer: Who signed it.
        lineage: Its lineage document.
        inputs: The input columns it expects.
    """

    model: Any
    model_sha256: str
    signer: str
    lineage: dict[str, Any]
    inputs: list[str]


def load_verified(
    directory: Path,
    *,
    trust: TrustPolicy,
    pipeline: SecurePipeline | None,
    store: Any = None,
    audit: Any = None,
    registry_tags: Mapping[str, str] | None = None,
) -> VerifiedModel:
    """Verify a bundle directory, then load its model.

    Args:
        directory: The bundle (e.g. downloaded from the registry).
        trust: The trust policy.
        pipeline: Today's spec, whose policy the model must have been judged under.
        store: The snapshot store, when reachable (lineage snapshots are re-hashed).
        audit: The audit trail, when reachable (verdicts are looked up).
        registry_tags: The registry's tags on the version, when it came from the registry
            (they must agree with the bundle).

    Raises:
        PolicyViolation: With the verification report, when any step failed.
        UntrustedModelError: When the model file is not a trusted skops file.
    """
    from secure_pipeline.training.serialization import load_model

    verification: Verification = verify_bundle_dir(
        directory,
        trust=trust,
        pipeline=pipeline,
        store=store,
        audit=audit,
        registry_tags=registry_tags,
    )
    if not verification.ok or verification.lineage is None or verification.signer is None:
        raise PolicyViolation("refusing to load the model: " + "; ".join(verification.problems))
    # Read once, check these exact bytes against the verified digest, load these bytes: a file
    # swapped between verification and loading is not loaded.
    data = (directory / MODEL_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != verification.model_sha256:
        raise PolicyViolation(f"{MODEL_FILE} changed after it was verified; not loaded")
    model = load_model(data, source=str(directory / MODEL_FILE))
    return VerifiedModel(
        model=model,
        model_sha256=str(verification.model_sha256),
        signer=verification.signer,
        lineage=verification.lineage,
        inputs=list(verification.lineage["model"].get("inputs", [])),
    )
