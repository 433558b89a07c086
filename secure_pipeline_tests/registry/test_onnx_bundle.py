"""The ONNX copy in the registered bundle: signed, recorded in the lineage, verified on load."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.bundle import LINEAGE_FILE, ONNX_FILE
from secure_pipeline.registry.signing import sign_bundle, signer_from_environment
from secure_pipeline.registry.verification import resolve, verify_bundle_dir
from secure_pipeline.serving.loader import load_verified
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.training.onnx import TOLERANCE, onnx_scores
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.conftest import Registered


@pytest.fixture
def bundle(reference_run: Registered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(reference_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    with resolve(f"models:/{reference_run.name}/{reference_run.version}") as resolved:
        return Path(shutil.copytree(resolved.directory, tmp_path / "bundle"))


def _load(bundle: Path, reference_run: Registered):
    return load_verified(
        bundle, trust=trust_policy(), pipeline=adult_pipeline(),
        store=LocalSnapshotStore(reference_run.home / "store"),
    )  # fmt: skip


def test_the_registered_bundle_holds_a_signed_onnx_copy_that_agrees(bundle, reference_run):
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    assert lineage[ONNX_FILE]["converter"].startswith("skl2onnx ")
    loaded = _load(bundle, reference_run)
    assert loaded.onnx == (bundle / ONNX_FILE).read_bytes()
    example = json.loads((bundle / "input_example.json").read_text())
    columns = {c: np.array([row[i] for row in example["data"]])
               for i, c in enumerate(example["columns"])}  # fmt: skip
    import pandas as pd

    expected = loaded.model.predict_proba(pd.DataFrame(columns))[:, 1]
    assert np.abs(onnx_scores(loaded.onnx, columns) - expected).max() <= TOLERANCE


def test_an_insider_replacing_model_onnx_is_refused(bundle, reference_run):
    data = bytearray((bundle / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / ONNX_FILE).write_bytes(bytes(data))
    assert not verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None).ok
    with pytest.raises(PolicyViolation, match="model.onnx|signature"):
        _load(bundle, reference_run)


def test_a_keyed_signer_dropping_the_onnx_file_is_refused(bundle, reference_run):
    # Even re-signed with the release key, the lineage still names the ONNX file.
    (bundle / ONNX_FILE).unlink()
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, signer_from_environment())
    result = verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None)
    assert not result.ok
    assert any("lineage records model.onnx but the bundle has none" in p for p in result.problems)


def _resign_with_lineage(bundle: Path, edit) -> list[str]:
    """A holder of the release key edits the lineage and re-signs; the verification problems."""
    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    edit(lineage)
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, signer_from_environment())
    result = verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None)
    assert not result.ok
    return result.problems


def test_a_keyed_signer_swapping_in_an_unproved_onnx_copy_is_refused(bundle, reference_run):
    # The release key cannot vouch for a graph: only the train identity's onnx_equivalent
    # verdict, which proved one digest on the evaluation rows, can.
    import hashlib

    other = bytearray((bundle / ONNX_FILE).read_bytes())
    other[-1] ^= 0x01
    (bundle / ONNX_FILE).write_bytes(bytes(other))

    def point_at_it(lineage):
        lineage[ONNX_FILE]["sha256"] = hashlib.sha256(bytes(other)).hexdigest()

    problems = _resign_with_lineage(bundle, point_at_it)
    assert any("is not the copy the signed onnx_equivalent verdict proved" in p for p in problems)


def test_a_keyed_signer_removing_the_proved_copy_from_file_and_lineage_is_refused(bundle):
    # Serving a verified ONNX model through skops instead is a silent change of runtime.
    (bundle / ONNX_FILE).unlink()
    problems = _resign_with_lineage(bundle, lambda lineage: lineage.pop(ONNX_FILE))
    assert any("verdict proved ONNX copy" in p and "does not record" in p for p in problems)


def test_a_bundle_from_before_the_onnx_gate_verifies_and_is_served_through_skops(
    bundle, reference_run
):
    # A lineage of version 2 (registered before onnx_equivalent existed) needs no such verdict,
    # so models promoted then keep verifying; its ONNX copy was vouched for by the release
    # identity alone, so it is never served: the skops file the checks judged is.
    def as_version_2(lineage):
        lineage["lineage_version"] = 2
        lineage["checks"] = [c for c in lineage["checks"] if c["check"] != "onnx_equivalent"]

    lineage = json.loads((bundle / LINEAGE_FILE).read_text())
    as_version_2(lineage)
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
    (bundle / "evidence" / "model.onnx_equivalent.json").unlink()
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, signer_from_environment())
    result = verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None)
    assert result.ok, result.problems
    loaded = load_verified(bundle, trust=trust_policy(), pipeline=None)
    assert loaded.onnx is None
    # The same lineage claiming version 3 must have the verdict.
    lineage["lineage_version"] = 3
    (bundle / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
    (bundle / "model.sig").unlink()
    sign_bundle(bundle, signer_from_environment())
    result = verify_bundle_dir(bundle, trust=trust_policy(), pipeline=None, store=None)
    assert any("no verdict of onnx_equivalent" in p for p in result.problems)
