"""Trust policies for tests: the development policy with approvers added, keys of outsiders."""

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secure_pipeline.trust.policy import ensure_dev_identities, policy_document


def dev_document() -> dict[str, Any]:
    """The development policy's document (its signed payload)."""
    envelope = json.loads((ensure_dev_identities() / "trust-policy.json").read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def policy_with_approvers(path: Path, approvers: Mapping[str, Path]) -> Path:
    """Write the development identities plus ``approvers`` (name -> public key) as a policy.

    Unsigned: the local environment accepts that (production does not).
    """
    document = dev_document()
    with_approvers = policy_document(
        {
            name: [k["public_key"] for k in entry["keys"]]
            for name, entry in document["identities"].items()
        },
        approvers={name: public.read_bytes() for name, public in approvers.items()},
    )
    path.write_text(json.dumps(with_approvers, indent=2))
    return path
